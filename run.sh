#!/usr/bin/env bash
# dl_utils launcher.
#   ./run.sh            start JupyterLab on notebooks/: in the GPU container when Docker and the NVIDIA
#                       runtime are present (dockerPreAnnotation/), else from the local virtual environment
#                       (.venv, created on first use). DL_UTILS_MODE=local|docker overrides the choice.
#   ./run.sh test [ARGS] install the test dependencies into .venv and run the test suite (always local)
#   ./run.sh shell      a shell with the local environment activated
#   ./run.sh --dry-run  print what would run (combine with the commands above)
# JupyterLab is on 127.0.0.1 (DL_UTILS_HOST to change) port 8888 (DL_UTILS_PORT) with a token; the URL with
# the token is in .run/lab.url (readable by you only). ./stop.sh stops whichever mode runs.
# Re-running reuses what is installed: .venv is rebuilt only when setup.cfg or the extras change.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${DL_UTILS_VENV:-$ROOT/.venv}"
CONSTRAINTS="$ROOT/dockerPreAnnotation/constraints.txt"
PORT="${DL_UTILS_PORT:-8888}"
HOST="${DL_UTILS_HOST:-127.0.0.1}"
RUN_DIR="${DL_UTILS_RUN_DIR:-$ROOT/.run}"
DRY_RUN=0

say() { printf '[run.sh] %s\n' "$*" >&2; }

find_python() {
  local py
  for py in "${PYTHON:-}" python3.12 python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$py"
      return 0
    fi
  done
  say "error: Python >= 3.11 is needed; install it or set PYTHON=/path/to/python3.11"
  return 1
}

# ensure_env EXTRAS: create .venv if needed and install dl_utils[EXTRAS] unless already installed
# for the same setup.cfg (a stamp file records the hash).
ensure_env() {
  local extras="$1" stamp want
  if [ "$DRY_RUN" = 1 ]; then
    say "would ensure $VENV with dl-utils[$extras]"
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local py
    py="$(find_python)"
    say "creating virtual environment $VENV with $py"
    "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  want="$( (cat setup.cfg pyproject.toml "$CONSTRAINTS"; torch_spec) | sha256sum | cut -c1-16)-$extras"
  stamp="$VENV/.dl_utils-$extras.stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  ensure_sam2
  ensure_dino
  say "installing dl-utils[$extras] into $VENV (versions held at $CONSTRAINTS)"
  # The tested versions, as the Dockerfiles install them, so a fresh clone tests what was tested and
  # a new release on PyPI cannot change a run. torch and torchvision are left out: torch_spec chose
  # them above (another pair on aarch64 or with DL_UTILS_TORCH).
  local held="$VENV/.dl_utils-constraints.txt"
  grep -v -E '^(torch|torchvision)==' "$CONSTRAINTS" >"$held.tmp" && mv "$held.tmp" "$held"
  "$VENV/bin/python" -m pip install -q -c "$held" -e ".[$extras]"
  if [ "$extras" = test ]; then ensure_ultralytics; fi
  echo "$want" >"$stamp"
}

# The torch/torchvision pair to install when none is present. PyPI's newest torch is a multi-GB CUDA
# build that also runs on the CPU; the pinned pairs are ones whose torchvision imports beside it.
# Override with DL_UTILS_TORCH="torch==X torchvision==Y" (e.g. a CPU wheel index pair).
torch_spec() {
  if [ -n "${DL_UTILS_TORCH:-}" ]; then
    echo "$DL_UTILS_TORCH"
  elif [ "$(uname -m)" = aarch64 ]; then
    echo "torch==2.9.1 torchvision==0.24.1"
  else
    echo "torch==2.14.1 torchvision==0.29.1"
  fi
}

# sam2 cannot be installed as a plain dependency: its setup.py imports torch (so it must come after
# torch, without build isolation) and compiles a CUDA extension unless SAM2_BUILD_CUDA=0. The
# extension only speeds up hole filling in masks; sam2 runs without it, so we skip it unless a CUDA
# compiler is present and the user asks for it (SAM2_BUILD_CUDA=1).
ensure_sam2() {
  local py="$VENV/bin/python"
  if ! "$py" -c 'import torch, torchvision' >/dev/null 2>&1; then
    say "installing $(torch_spec) into $VENV (large: CUDA build, runs on CPU too)"
    # shellcheck disable=SC2046  # the spec is a list of requirement words
    "$py" -m pip install -q $(torch_spec)
  fi
  if ! "$py" -c 'import sam2' >/dev/null 2>&1; then
    say "installing sam2 (SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0}, no build isolation)"
    "$py" -m pip install -q setuptools wheel
    SAM2_BUILD_CUDA="${SAM2_BUILD_CUDA:-0}" "$py" -m pip install -q --no-build-isolation "sam2==1.1.0"
  fi
}

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"
    printf '\n'
    return 0
  fi
  exec "$@"
}

# groundingdino-py and supervision declare opencv-python, whose cv2 would overwrite the headless
# build the project uses (no GUI libraries in containers); install them without their declared
# dependencies and let the `dino` extra bring the real ones (transformers 4.57.x: groundingdino-py
# 0.4.0 breaks with transformers 5).
ensure_dino() {
  local py="$VENV/bin/python"
  if ! "$py" -c 'import groundingdino, supervision' >/dev/null 2>&1; then
    say "installing groundingdino-py 0.4.0 and supervision 0.6.0 (--no-deps, keeps opencv headless)"
    "$py" -m pip install -q --no-deps "groundingdino-py==0.4.0" "supervision==0.6.0"
  fi
}

# The YOLO export tests read our datasets back with Ultralytics' own checker and loader. Its declared
# dependencies include opencv-python (the GUI build, which would overwrite opencv-python-headless's cv2);
# everything the checker imports is already in the test environment, so it goes in without them.
ensure_ultralytics() {
  local py="$VENV/bin/python"
  if ! "$py" -c 'import ultralytics' >/dev/null 2>&1; then
    say "installing ultralytics 8.4.190 (--no-deps, keeps opencv headless; the YOLO export tests use its checker)"
    "$py" -m pip install -q --no-deps "ultralytics==8.4.190"
  fi
}

# docker_gpu: Docker answers and has the NVIDIA runtime (registered with the daemon, or its CLI tools
# installed: `--gpus all` needs one of them).
docker_gpu() {
  local docker="${DOCKER:-docker}" runtimes
  command -v "$docker" >/dev/null 2>&1 || return 1
  runtimes="$("$docker" info --format '{{json .Runtimes}}' 2>/dev/null)" || return 1
  case "$runtimes" in *nvidia*) return 0 ;; esac
  command -v nvidia-container-cli >/dev/null 2>&1 || command -v nvidia-ctk >/dev/null 2>&1
}

lab_mode() {
  case "${DL_UTILS_MODE:-auto}" in
    local | docker) echo "$DL_UTILS_MODE" ;;
    auto) if docker_gpu; then echo docker; else echo local; fi ;;
    *)
      say "error: DL_UTILS_MODE must be local, docker or auto, not '$DL_UTILS_MODE'"
      return 2
      ;;
  esac
}

cmd_lab() {
  local mode
  mode="$(lab_mode)"
  if [ "$mode" = docker ]; then
    say "mode: docker (GPU container dockerPreAnnotation/; DL_UTILS_MODE=local for the local environment)"
    local flags=()
    [ "$DRY_RUN" = 1 ] && flags+=(--dry-run)
    # run.sh of the container writes .run/lab.url, .run/mode and .run/container for ./stop.sh
    exec "$ROOT/dockerPreAnnotation/run.sh" "${flags[@]+"${flags[@]}"}" "$@"
  fi
  say "mode: local ($VENV)"
  ensure_env "jupyter,sam2,dino,cvat,train"
  local token="${DL_UTILS_TOKEN:-}"
  if [ -z "$token" ]; then
    token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  fi
  say "JupyterLab on http://$HOST:$PORT/lab?token=<token> (token in $RUN_DIR/lab.url, readable by you only)"
  if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$RUN_DIR"
    (umask 077 && printf 'http://%s:%s/lab?token=%s\n' "$HOST" "$PORT" "$token" >"$RUN_DIR/lab.url")
    echo $$ >"$RUN_DIR/lab.pid"
    echo local >"$RUN_DIR/mode"
  fi
  local extra=()
  # containers and CI machines often run as root; JupyterLab refuses that unless told
  [ "$(id -u)" = 0 ] && extra+=(--allow-root)
  JUPYTER_TOKEN="$token" run "$VENV/bin/jupyter" lab --no-browser --ip "$HOST" --port "$PORT" \
    --ServerApp.root_dir="$ROOT/notebooks" "${extra[@]+"${extra[@]}"}"
}

# ensure_browser: the real-browser test drives Debian's chromium through Playwright (Playwright cannot
# download its own browsers here); install it with apt when we may, else that one test skips.
ensure_browser() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (apt) for the browser test"
    if [ "$DRY_RUN" = 0 ]; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
        say "warning: chromium could not be installed; the browser test will skip"
    fi
  else
    say "note: no chromium and no root apt-get; the browser test will skip (apt-get install chromium)"
  fi
}

cmd_test() {
  ensure_env test
  ensure_browser
  run "$VENV/bin/python" -m pytest "$@"
}

main() {
  local args=()
  for a in "$@"; do
    if [ "$a" = "--dry-run" ]; then DRY_RUN=1; else args+=("$a"); fi
  done
  set -- "${args[@]+"${args[@]}"}"
  local sub="${1:-lab}"
  [ $# -gt 0 ] && shift
  case "$sub" in
    lab) cmd_lab "$@" ;;
    test) cmd_test "$@" ;;
    shell) ensure_env test && run bash --rcfile <(echo "source '$VENV/bin/activate'") -i ;;
    -h | --help | help) sed -n '2,12p' "$0" ;;
    *)
      say "unknown command '$sub' (use: lab, test, shell, --dry-run)"
      exit 2
      ;;
  esac
}

main "$@"
