#!/usr/bin/env bash
# Split a video into parts of about SECONDS seconds without re-encoding (cuts land on keyframes).
# Usage: ./split-video.sh VIDEO SECONDS [OUT_DIR]    (OUT_DIR defaults to <video dir>/<stem>_parts)
set -euo pipefail

usage() {
    echo "usage: $(basename "$0") VIDEO SECONDS [OUT_DIR]" >&2
    echo "  split VIDEO into parts of about SECONDS seconds, without re-encoding;" >&2
    echo "  parts are written as <stem>_part001.<ext>, ... into OUT_DIR" >&2
    echo "  (default: <video dir>/<stem>_parts)" >&2
}

if [[ $# -lt 2 || $# -gt 3 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 2
fi

video=$1
seconds=$2
if [[ ! -f "$video" ]]; then
    echo "error: $video does not exist or is not a file" >&2
    exit 1
fi
if ! [[ "$seconds" =~ ^[0-9]*\.?[0-9]+$ ]]; then
    echo "error: SECONDS must be a positive number, got '$seconds'" >&2
    usage
    exit 2
fi
dir=$(dirname -- "$video")
name=$(basename -- "$video")
stem=${name%.*}
out=${3:-$dir/${stem}_parts}

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
if [[ -x "$here/.venv/bin/python" ]]; then
    py=$here/.venv/bin/python
else
    py=python3
fi
# Run from the script's folder so `-m dl_utils` resolves even when the package is not installed.
video_abs=$(cd -- "$dir" && pwd)/$name
case "$out" in /*) out_abs=$out ;; *) out_abs=$(pwd)/$out ;; esac
cd -- "$here"
exec "$py" -m dl_utils frames split "$video_abs" --seconds "$seconds" --out "$out_abs"
