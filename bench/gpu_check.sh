#!/usr/bin/env bash
# The GPU-ready check in one command: install the offline bundle, then run every GPU figure
# docs/benchmarks.md promises (bench/gpu_check.py) and write them as JSON. Made to end within 6 minutes on
# one H100, the install included.
#
#   bench/gpu_check.sh [--bundle DIR] [--no-install] [--python PY] [--venv DIR] [--base-site DIR]...
#                      [--total S] [--dry-run] [gpu_check.py options]
#
# gpu_check.py options: --sections sam2,detector,grounded  --quick  --device auto|cuda|cpu  --out FILE
#   --budget S  --sam2-sizes tiny,small,base+,large  --modes fp32,bf16,fp16,compile
#   --backends groundingdino,transformers  --models DIR ...  (python bench/gpu_check.py --help lists them all)
#   --modes: the sam2 section's precision modes (fp32, bf16, fp16, compile = bf16 + upstream's vos_optimized
#   predictor, built and compiled last per size: minutes). This script passes --modes bf16 unless told
#   otherwise, so the whole check still ends in 6 minutes; the modes' own run is
#     bench/gpu_check.sh --sections sam2 --modes fp32,bf16,fp16,compile --sam2-sizes tiny,large --total 560
#   (all four modes of all four sizes need --total 1200 or more; what did not fit is listed).
#
# --bundle DIR   the folder bench/gpu_bundle.sh made (default .gpu_bundle if it is there): its wheels are
#                installed offline (pip --no-index) into a virtual environment that sees the machine's
#                torch through a .pth file (python -m venv --system-site-packages would not, where the
#                machine's python3 is itself a virtual environment, as on the lent GPU machines)
# --no-install   run with PY as it is (its packages must be complete: the project's .venv is)
# --python PY    the interpreter that has torch (default $PYTHON, else python3); torch is never installed
# --venv DIR     where the environment goes (default ${TMPDIR:-/tmp}/dl_utils_gpu_check); reused when the
#                bundle is unchanged
# --base-site D  the folders whose packages the environment sees, instead of PY's site-packages (tests)
# --total S      the time the whole check should end in (default 345 s): gpu_check.py's --budget is what is
#                left after the install, less 45 s for the step in flight (an explicit --budget wins)
# --dry-run      print what would run
# Exit status: gpu_check.py's (0 all measured, 1 a figure failed, 2 bad usage or no CUDA with --device cuda).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE=""
INSTALL=1
PY="${PYTHON:-python3}"
VENV="${TMPDIR:-/tmp}/dl_utils_gpu_check"
BASE_SITES=()
TOTAL=345
DRY_RUN=0
PASS=()
HAVE_BUDGET=0
HAVE_MODES=0
START=$SECONDS

say() { printf '[gpu_check] %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 2
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE="${2:?--bundle needs a folder}"; shift 2 ;;
    --bundle=*) BUNDLE="${1#*=}"; shift ;;
    --no-install) INSTALL=0; shift ;;
    --python) PY="${2:?--python needs an interpreter}"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
    --venv=*) VENV="${1#*=}"; shift ;;
    --base-site) BASE_SITES+=("${2:?--base-site needs a folder}"); shift 2 ;;
    --base-site=*) BASE_SITES+=("${1#*=}"); shift ;;
    --total) TOTAL="${2:?--total needs seconds}"; shift 2 ;;
    --total=*) TOTAL="${1#*=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --budget | --budget=*) HAVE_BUDGET=1; PASS+=("$1"); shift ;;
    --modes | --modes=*) HAVE_MODES=1; PASS+=("$1"); shift ;;
    *) PASS+=("$1"); shift ;;
  esac
done
[[ "$TOTAL" =~ ^[0-9]+$ ]] || die "--total takes whole seconds, not '$TOTAL'"
if [ -z "$BUNDLE" ] && [ "$INSTALL" = 1 ] && [ -d "$ROOT/.gpu_bundle" ]; then
  BUNDLE="$ROOT/.gpu_bundle"
fi
if [ -n "$BUNDLE" ]; then
  BUNDLE="$(cd "$BUNDLE" 2>/dev/null && pwd)" || die "bundle folder not found (make it with bench/gpu_bundle.sh)"
  [ -f "$BUNDLE/requirements.txt" ] && [ -d "$BUNDLE/wheels" ] ||
    die "$BUNDLE is not a bundle (no requirements.txt / wheels): make it with bench/gpu_bundle.sh"
fi
if [ "$INSTALL" = 1 ] && [ -z "$BUNDLE" ]; then
  say "no bundle (.gpu_bundle missing, no --bundle): running with $PY as it is"
  INSTALL=0
fi

show() {
  printf '%q ' "$@"
  printf '\n'
}

if [ "$DRY_RUN" = 0 ]; then
  command -v "$PY" >/dev/null 2>&1 || [ -x "$PY" ] || die "no Python '$PY' (use --python)"
  if [ ${#BASE_SITES[@]} -eq 0 ]; then
    "$PY" -c 'import torch' 2>/dev/null || die "$PY has no torch: this check uses the torch it finds, never installs one"
  fi
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | sed 's/^/[gpu_check] /' >&2 || true
fi

RUN_PY="$PY"
if [ "$INSTALL" = 1 ]; then
  if [ ${#BASE_SITES[@]} -eq 0 ] && [ "$DRY_RUN" = 0 ]; then
    mapfile -t BASE_SITES < <("$PY" -c 'import site
user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
print("\n".join(user + site.getsitepackages()))')
  fi
  STAMP="$( (cat "$BUNDLE/requirements.txt" "$BUNDLE/nodeps.txt"; ls "$BUNDLE/wheels"; printf '%s\n' "$PY" "${BASE_SITES[@]}") |
    cksum | cut -d' ' -f1)"
  RUN_PY="$VENV/bin/python"
  PIP=("$RUN_PY" -m pip install -q --no-index --find-links "$BUNDLE/wheels" --no-compile --disable-pip-version-check)
  if [ "$DRY_RUN" = 1 ]; then
    show "$PY" -m venv --without-pip "$VENV"
    echo "# then $VENV/lib/pythonX.Y/site-packages/_dl_utils_base.pth: site.addsitedir for each of: ${BASE_SITES[*]:-the site-packages of $PY}"
    show "${PIP[@]}" -r "$BUNDLE/requirements.txt"
    show "${PIP[@]}" --no-deps -r "$BUNDLE/nodeps.txt"
  elif [ -f "$VENV/.bundle-stamp" ] && [ "$(cat "$VENV/.bundle-stamp")" = "$STAMP" ]; then
    say "reusing $VENV (bundle unchanged)"
  else
    say "installing the bundle $BUNDLE ($(du -sh "$BUNDLE" | cut -f1)) offline into $VENV"
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV"
    site_dir="$("$RUN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    for d in "${BASE_SITES[@]}"; do
      [ -d "$d" ] || continue
      printf 'import site; site.addsitedir(%s)\n' "$("$PY" -c 'import sys; print(repr(sys.argv[1]))' "$d")"
    done >"$site_dir/_dl_utils_base.pth"
    if ! "$RUN_PY" -c 'import pip' 2>/dev/null; then
      "$PY" -m pip --version >/dev/null 2>&1 || die "no pip next to $PY or in the base site-packages"
      PIP=("$PY" -m pip --python "$RUN_PY" "${PIP[@]:3}")
    fi
    if ! "${PIP[@]}" -r "$BUNDLE/requirements.txt"; then
      # e.g. the machine holds a dependency in a version outside a pin's range and the bundle has no
      # other: install the bundle's own wheels as they are; the import check of gpu_check.py names
      # whatever is then still missing
      say "pip could not resolve the bundle against this machine's packages; installing its wheels with --no-deps"
      "${PIP[@]}" --no-deps -r "$BUNDLE/requirements.txt"
    fi
    "${PIP[@]}" --no-deps -r "$BUNDLE/nodeps.txt"
    echo "$STAMP" >"$VENV/.bundle-stamp"
    say "installed in $((SECONDS - START)) s"
  fi
  if [ -d "$BUNDLE/media" ]; then
    export DL_UTILS_SHARED_DATA="$BUNDLE/media"
  fi
fi

if [ "$HAVE_BUDGET" = 0 ]; then
  budget=$((TOTAL - (SECONDS - START) - 45))
  [ "$budget" -lt 30 ] && budget=30
  PASS+=(--budget "$budget")
fi
if [ "$HAVE_MODES" = 0 ]; then
  PASS+=(--modes bf16)  # the one-command check's 6 minutes; the modes' own run names them (usage)
fi
CMD=("$RUN_PY" "$ROOT/bench/gpu_check.py" "${PASS[@]}")
if [ "$DRY_RUN" = 1 ]; then
  show "${CMD[@]}"
  exit 0
fi
rc=0
PYTHONUNBUFFERED=1 "${CMD[@]}" || rc=$?
say "done in $((SECONDS - START)) s (exit $rc)"
exit "$rc"
