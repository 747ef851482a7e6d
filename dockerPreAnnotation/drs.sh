#!/usr/bin/env bash
# Restart the pre-annotation container: stop.sh, then run.sh (arguments go to both; --rebuild to run.sh).
#   dockerPreAnnotation/drs.sh [--dry-run] [--rebuild]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stop_args=()
for a in "$@"; do
  [ "$a" = --dry-run ] && stop_args+=("$a")
done
"$HERE/stop.sh" "${stop_args[@]+"${stop_args[@]}"}"
exec "$HERE/run.sh" "$@"
