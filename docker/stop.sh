#!/usr/bin/env bash
# Stop the workspace container docker/run.sh started (run with --rm: stopping removes it; the models
# volume and everything under /workspace stay).
#   docker/stop.sh [--dry-run]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
RUN_DIR="${DL_UTILS_RUN_DIR:-$ROOT/.run}"
NAME="${DL_UTILS_CONTAINER:-}"
if [ -z "$NAME" ] && [ -f "$RUN_DIR/workspace.container" ]; then NAME="$(cat "$RUN_DIR/workspace.container")"; fi
NAME="${NAME:-dl-utils-workspace}"
DRY_RUN=0

for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "[docker/stop.sh] unknown argument '$a' (use --dry-run)" >&2; exit 2 ;;
  esac
done

if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "$DOCKER" stop "$NAME"
  printf '\n'
  exit 0
fi
if [ -n "$("$DOCKER" ps -q --filter "name=^${NAME}\$")" ]; then
  "$DOCKER" stop "$NAME" >/dev/null
  echo "stopped container $NAME"
else
  echo "nothing to stop: container $NAME is not running"
fi
rm -f "$RUN_DIR/workspace.url" "$RUN_DIR/workspace.container"
