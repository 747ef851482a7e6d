#!/usr/bin/env bash
# Stop what ./run.sh started: the GPU container (dockerPreAnnotation/stop.sh) or the local JupyterLab,
# whichever .run/mode records.
#   ./stop.sh [--dry-run]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${DL_UTILS_RUN_DIR:-$ROOT/.run}"
PIDFILE="$RUN_DIR/lab.pid"
mode="$(cat "$RUN_DIR/mode" 2>/dev/null || echo local)"
if [ "$mode" = docker ]; then
  exec "$ROOT/dockerPreAnnotation/stop.sh" "$@"
fi
if [ "${1:-}" = "--dry-run" ]; then
  echo "would stop the JupyterLab whose pid is in $PIDFILE"
  exit 0
fi
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  kill "$(cat "$PIDFILE")"
  echo "stopped JupyterLab (pid $(cat "$PIDFILE"))"
  rm -f "$PIDFILE" "$RUN_DIR/lab.url" "$RUN_DIR/mode"
else
  echo "nothing to stop: no JupyterLab started by ./run.sh is running"
  rm -f "$PIDFILE"
fi
