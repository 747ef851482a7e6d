#!/usr/bin/env bash
# Stop what ./run.sh started (the local JupyterLab). Later: the GPU container too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIDFILE="$ROOT/.run/lab.pid"
if [ "${1:-}" = "--dry-run" ]; then
  echo "would stop the JupyterLab whose pid is in $PIDFILE"
  exit 0
fi
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  kill "$(cat "$PIDFILE")"
  echo "stopped JupyterLab (pid $(cat "$PIDFILE"))"
  rm -f "$PIDFILE" "$ROOT/.run/lab.url"
else
  echo "nothing to stop: no JupyterLab started by ./run.sh is running"
  rm -f "$PIDFILE"
fi
