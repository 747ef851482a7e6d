#!/usr/bin/env bash
# Stop the container dockerPreAnnotation/run.sh started (it was run with --rm, so stopping removes it;
# the models volume stays).
#   dockerPreAnnotation/stop.sh [--dry-run]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
RUN_DIR="${DL_UTILS_RUN_DIR:-$ROOT/.run}"
NAME="${DL_UTILS_CONTAINER:-}"
if [ -z "$NAME" ] && [ -f "$RUN_DIR/container" ]; then NAME="$(cat "$RUN_DIR/container")"; fi
NAME="${NAME:-dl-utils-preannotation}"
DRY_RUN=0
SCRIPT=dockerPreAnnotation/stop.sh
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
# the records are the container's unless the top-level ./run.sh started the local JupyterLab since
if [ "$(cat "$RUN_DIR/mode" 2>/dev/null || true)" != local ]; then
  rm -f "$RUN_DIR/lab.url" "$RUN_DIR/mode" "$RUN_DIR/container"
fi
