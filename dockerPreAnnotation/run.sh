#!/usr/bin/env bash
# Start the GPU pre-annotation container: JupyterLab on the repository's notebooks.
#   dockerPreAnnotation/run.sh [--dry-run] [--rebuild]
# --dry-run prints the docker commands and runs nothing; --rebuild builds the image even if it exists.
# Settings (environment): DL_UTILS_PORT (8888), DL_UTILS_HOST (127.0.0.1: the host address the port is
# published on), DL_UTILS_TOKEN (random), DL_UTILS_DATA (../shared/data if present, else ./data),
# DL_UTILS_IMAGE, DL_UTILS_CONTAINER, DL_UTILS_MODELS_VOLUME, DL_UTILS_RUN_DIR (.run), DOCKER (docker).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/dl_utils/__init__.py")"
IMAGE="${DL_UTILS_IMAGE:-dl-utils/preannotation:$VERSION}"
NAME="${DL_UTILS_CONTAINER:-dl-utils-preannotation}"
VOLUME="${DL_UTILS_MODELS_VOLUME:-dl-utils-models}"
PORT="${DL_UTILS_PORT:-8888}"
HOST="${DL_UTILS_HOST:-127.0.0.1}"
RUN_DIR="${DL_UTILS_RUN_DIR:-$ROOT/.run}"
if [ -n "${DL_UTILS_DATA:-}" ]; then
  DATA="$DL_UTILS_DATA"
elif [ -d "$ROOT/../shared/data" ]; then
  DATA="$(cd "$ROOT/../shared/data" && pwd)"
else
  DATA="$ROOT/data"
fi
DRY_RUN=0
REBUILD=0

SCRIPT=dockerPreAnnotation/run.sh
# shellcheck source=dockerPreAnnotation/lib.sh
. "$ROOT/dockerPreAnnotation/lib.sh"

for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --rebuild) REBUILD=1 ;;
    -h | --help) sed -n '2,8p' "$0"; exit 0 ;;
    *) say "unknown argument '$a' (use --dry-run, --rebuild)"; exit 2 ;;
  esac
done

image_uid_gid
build_if_missing "$IMAGE" "$REBUILD" "$ROOT/dockerPreAnnotation/Dockerfile" \
  --build-arg "USER_UID=$uid" --build-arg "USER_GID=$gid" --build-arg "DL_UTILS_VERSION=$VERSION" "$ROOT"

if [ "$DRY_RUN" = 0 ] && container_running "$NAME"; then
  say "container $NAME is already running; stop it with dockerPreAnnotation/stop.sh or restart with drs.sh"
  exit 1
fi

token="$(new_token)"
url="http://$HOST:$PORT/lab?token=$token"
if [ "$DRY_RUN" = 0 ]; then
  # bind-mount sources that do not exist would be created by the Docker daemon, owned by root
  mkdir -p "$DATA" "$RUN_DIR"
fi

# JUPYTER_TOKEN is passed by name (-e NAME takes the value from this environment), so the token shows
# in neither the process list nor this output.
export JUPYTER_TOKEN="$token"
run "$DOCKER" run -d --rm --name "$NAME" --gpus all --shm-size 8g \
  -p "$HOST:$PORT:8888" -e JUPYTER_TOKEN \
  -v "$ROOT/notebooks:/work/dl_utils/notebooks" -v "$DATA:/work/shared/data" -v "$VOLUME:/models" \
  "$IMAGE"

if [ "$DRY_RUN" = 0 ]; then
  (
    umask 077
    printf '%s\n' "$url" >"$RUN_DIR/lab.url"
    printf 'docker\n' >"$RUN_DIR/mode"
    printf '%s\n' "$NAME" >"$RUN_DIR/container"
  )
  say "JupyterLab: $url"
  say "(saved in $RUN_DIR/lab.url, readable by you only; stop with ./stop.sh or dockerPreAnnotation/stop.sh)"
else
  echo "# JupyterLab would be at http://$HOST:$PORT/lab?token=<token>, saved in $RUN_DIR/lab.url"
fi
