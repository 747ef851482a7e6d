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
SCRIPT=docker/stop.sh
# shellcheck source=dockerPreAnnotation/lib.sh
. "$ROOT/dockerPreAnnotation/lib.sh"

for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,4p' "$0"; exit 0 ;;
    *) say "unknown argument '$a' (use --dry-run)"; exit 2 ;;
  esac
done

stop_container "$NAME"
[ "$DRY_RUN" = 1 ] && exit 0
rm -f "$RUN_DIR/workspace.url" "$RUN_DIR/workspace.container"
