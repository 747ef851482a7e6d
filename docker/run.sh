#!/usr/bin/env bash
# Start the workspace container: dl_utils as a submodule of a larger project. The parent project is
# mounted at /workspace and dl_utils is used editable from /workspace/<its path in the parent>.
#   docker/run.sh [--dry-run] [--rebuild]
# --dry-run prints the docker commands and runs nothing; --rebuild builds the image even if it exists.
# Settings (environment): DL_UTILS_PARENT (the superproject's work tree, else the checkout's parent
# folder), DL_UTILS_PORT (8888), DL_UTILS_HOST (127.0.0.1: the host address the port is published on),
# DL_UTILS_TOKEN (random), DL_UTILS_IMAGE, DL_UTILS_CONTAINER, DL_UTILS_MODELS_VOLUME,
# DL_UTILS_RUN_DIR (.run of the dl_utils checkout), DOCKER (docker).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-docker}"
PARENT="${DL_UTILS_PARENT:-}"
if [ -z "$PARENT" ]; then
  # a git submodule knows its superproject; a plain checkout inside a project uses its parent folder
  PARENT="$(git -C "$ROOT" rev-parse --show-superproject-working-tree 2>/dev/null || true)"
fi
PARENT="$(cd "${PARENT:-$ROOT/..}" && pwd)"
case "$ROOT/" in
  "$PARENT"/*) SUBDIR="${ROOT#"$PARENT"/}" ;;
  *)
    echo "[docker/run.sh] the dl_utils checkout $ROOT is not inside DL_UTILS_PARENT=$PARENT; set DL_UTILS_PARENT to the project folder that contains it" >&2
    exit 2
    ;;
esac
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/dl_utils/__init__.py")"
# the submodule path is built into the image (the editable install points at it), so it names the tag
IMAGE="${DL_UTILS_IMAGE:-dl-utils/workspace:$VERSION-$(printf '%s' "$SUBDIR" | tr -c 'A-Za-z0-9_.-' '_')}"
NAME="${DL_UTILS_CONTAINER:-dl-utils-workspace}"
VOLUME="${DL_UTILS_MODELS_VOLUME:-dl-utils-models}"
PORT="${DL_UTILS_PORT:-8888}"
HOST="${DL_UTILS_HOST:-127.0.0.1}"
RUN_DIR="${DL_UTILS_RUN_DIR:-$ROOT/.run}"
DRY_RUN=0
REBUILD=0

SCRIPT=docker/run.sh
# shellcheck source=dockerPreAnnotation/lib.sh
. "$ROOT/dockerPreAnnotation/lib.sh"

for a in "$@"; do
  case "$a" in
    --dry-run) DRY_RUN=1 ;;
    --rebuild) REBUILD=1 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) say "unknown argument '$a' (use --dry-run, --rebuild)"; exit 2 ;;
  esac
done

image_uid_gid
build_if_missing "$IMAGE" "$REBUILD" "$ROOT/docker/Dockerfile" \
  --build-arg "DL_UTILS_SUBDIR=$SUBDIR" --build-arg "USER_UID=$uid" --build-arg "USER_GID=$gid" \
  --build-arg "DL_UTILS_VERSION=$VERSION" "$ROOT"

if [ "$DRY_RUN" = 0 ] && container_running "$NAME"; then
  say "container $NAME is already running; stop it with docker/stop.sh first"
  exit 1
fi

token="$(new_token)"
url="http://$HOST:$PORT/lab?token=$token"
[ "$DRY_RUN" = 1 ] || mkdir -p "$RUN_DIR"

# the token travels by name (-e NAME), so it shows in neither the process list nor this output
export JUPYTER_TOKEN="$token"
run "$DOCKER" run -d --rm --name "$NAME" --gpus all --shm-size 8g \
  -p "$HOST:$PORT:8888" -e JUPYTER_TOKEN -v "$PARENT:/workspace" -v "$VOLUME:/models" \
  "$IMAGE"

if [ "$DRY_RUN" = 0 ]; then
  (
    umask 077
    printf '%s\n' "$url" >"$RUN_DIR/workspace.url"
    printf '%s\n' "$NAME" >"$RUN_DIR/workspace.container"
  )
  say "JupyterLab on /workspace = $PARENT: $url"
  say "(saved in $RUN_DIR/workspace.url, readable by you only; stop with docker/stop.sh)"
else
  echo "# /workspace = $PARENT, dl_utils at /workspace/$SUBDIR; JupyterLab would be at http://$HOST:$PORT/lab?token=<token>, saved in $RUN_DIR/workspace.url"
fi
