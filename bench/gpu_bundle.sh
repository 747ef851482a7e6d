#!/usr/bin/env bash
# Prepare the offline bundle that bench/gpu_check.sh installs on a CUDA machine (no network there).
#
#   bench/gpu_bundle.sh [--out DIR] [--python 3.12[,3.11,...]] [--complete] [--with-fat] [--with-media]
#                       [--dry-run]
#
# The bundle holds pinned wheels for what the GPU check imports and the lent GPU machines lack (or hold
# in a version that breaks); with --complete, everything except the torch stack (torch, torchvision
# and what they bring: numpy, pillow, typing-extensions, filelock, fsspec, jinja2, sympy, networkx,
# triton, nvidia-*), which the check always takes from the machine. dl_utils itself is not in it:
# the check runs from the source tree, which travels with the device tool's working tree.
#   DIR/wheels/         the wheels (manylinux x86_64, for each --python; pure-python ones once)
#   DIR/requirements.txt  exact pins, installed with pip's resolver (--no-index --find-links)
#   DIR/nodeps.txt      groundingdino-py and supervision: installed with --no-deps (both declare
#                       opencv-python, which would replace opencv-python-headless)
#   DIR/bundle.txt      what was built, for whom, and its size
# sam2, groundingdino-py, iopath and antlr4-python3-runtime have no wheels on PyPI: they are built here
# as pure-python wheels (sam2 with SAM2_BUILD_CUDA=0: no CUDA extension; it only fills mask holes).
#
# --complete   also the dependencies the lent GPU machines' image already has (see COMPLETE below)
# --python     Python versions of the target machine (default 3.12: the lent GPU machines run 3.12.3;
#              most wheels are pure or abi3, so each extra version adds ~2 MiB)
# --with-fat   also opencv-python-headless and matplotlib (+ its deps), ~60 MiB more: needed only where
#              the machine lacks them (the lent GPU machines have both); too big to travel with the
#              device tool's 64 MiB limit together with the rest
# --with-media also ../shared/data/bedroom.mp4 (2.3 MiB) as DIR/media: SAM2's own benchmark clip;
#              without it the check synthesises its frames (speed does not depend on the content)
# --dry-run    print the pins and the commands, fetch nothing
# Needs network (PyPI) and, to build sam2's wheel, a Python with torch and setuptools: $PYTHON, else
# the project's .venv (./run.sh test creates it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="$ROOT/.gpu_bundle"
PYVERSIONS="3.12"
WITH_FAT=0
COMPLETE_SET=0
WITH_MEDIA=0
DRY_RUN=0

# Exact pins: the versions of the tested environment (.venv; dockerPreAnnotation/constraints.txt
# for the names it lists: tests/test_gpu_check.py checks they agree).
# PINS: what the lent GPU machines' image ('cuda', /work/.library/device/KINDS.md) lacks, or holds in a
# version that breaks: transformers 5 (groundingdino-py needs 4.57.x) and with it tokenizers 0.23 and
# huggingface_hub 1.x.
PINS=(
  # sam2 and what it imports (hydra builds the network from its YAML configs)
  "sam2==1.1.0" "hydra-core==1.3.8" "omegaconf==2.3.1" "antlr4-python3-runtime==4.9.3" "iopath==0.1.10"
  # dl_utils' own imports (video_utils, cv_utils); opencv-python-headless: see --with-fat
  "av==18.1.0" "pycocotools==2.0.11" "natsort==8.4.0"
  # GroundingDINO
  "addict==2.4.0" "yapf==0.43.0" "platformdirs==4.14.9"
  "transformers==4.57.6" "tokenizers==0.22.2" "huggingface_hub==0.36.2"
)
# COMPLETE (--complete): the rest of the dependencies, which that image has; for a machine with only
# the torch stack. ~12 MiB more: with it the bundle no longer travels beside the working tree within
# the device tool's 64 MiB.
COMPLETE=(
  "PyYAML==6.0.4" "portalocker==4.4.2" "tqdm==4.67.3" "packaging==26.4" "timm==1.0.31" "hf-xet==1.8.0"
  "safetensors==0.8.0" "regex==2026.12.2"
  "requests==2.34.2" "urllib3==2.8.0" "idna==3.21" "certifi==2026.10.19.post1" "charset-normalizer==3.5.3"
  # tests/dino_fixtures.py (the random-weight detectors) imports pytest
  "pytest==9.2.0" "pluggy==1.7.0" "iniconfig==2.3.1" "Pygments==2.21.0"
)
NODEPS=("groundingdino-py==0.4.0" "supervision==0.6.0")
FAT=(
  "opencv-python-headless==4.14.0.94" "matplotlib==3.11.2" "contourpy==1.3.3" "cycler==0.12.1"
  "fonttools==4.69.1" "kiwisolver==1.5.1" "pyparsing==3.3.3" "python-dateutil==4.0.0" "six==1.17.0"
)
# no wheels on PyPI: built here (pure python)
BUILD=("sam2==1.1.0" "antlr4-python3-runtime==4.9.3" "iopath==0.1.10" "groundingdino-py==0.4.0")

say() { printf '[gpu_bundle] %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 2
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="${2:?--out needs a folder}"; shift 2 ;;
    --out=*) OUT_DIR="${1#*=}"; shift ;;
    --python) PYVERSIONS="${2:?--python needs versions, e.g. 3.12}"; shift 2 ;;
    --python=*) PYVERSIONS="${1#*=}"; shift ;;
    --with-fat) WITH_FAT=1; shift ;;
    --complete) COMPLETE_SET=1; shift ;;
    --with-media) WITH_MEDIA=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

IFS=',' read -r -a PYS <<<"$PYVERSIONS"
for v in "${PYS[@]}"; do
  [[ "$v" =~ ^3\.[0-9]+$ ]] || die "--python takes versions like 3.12,3.11, not '$v'"
  [ "${v#3.}" -ge 11 ] || die "dl_utils needs Python >= 3.11 (asked for $v)"
done

is_built() {
  local p="$1" b
  for b in "${BUILD[@]}"; do [ "$b" = "$p" ] && return 0; done
  return 1
}

ACTIVE=("${PINS[@]}")
[ "$COMPLETE_SET" = 1 ] && ACTIVE+=("${COMPLETE[@]}")
[ "$WITH_FAT" = 1 ] && ACTIVE+=("${FAT[@]}")
DOWNLOAD=()
for p in "${ACTIVE[@]}" "${NODEPS[@]}"; do is_built "$p" || DOWNLOAD+=("$p"); done
PLATFORMS=(manylinux1_x86_64 manylinux2014_x86_64)
for n in 17 24 27 28 31 34 35 39; do PLATFORMS+=("manylinux_2_${n}_x86_64"); done
PLATFORM_ARGS=()
for p in "${PLATFORMS[@]}"; do PLATFORM_ARGS+=(--platform "$p"); done

requirements() {
  printf '# bench/gpu_bundle.sh: installed with pip install --no-index --find-links wheels -r requirements.txt\n'
  printf '%s\n' "${ACTIVE[@]}"
}

if [ "$DRY_RUN" = 1 ]; then
  echo "# bundle: $OUT_DIR (Python ${PYS[*]}; complete: $COMPLETE_SET; fat: $WITH_FAT; media: $WITH_MEDIA)"
  echo "# requirements.txt"
  requirements | sed 1d
  echo "# nodeps.txt (pip install --no-deps)"
  printf '%s\n' "${NODEPS[@]}"
  echo "# built here as pure-python wheels (SAM2_BUILD_CUDA=0 for sam2)"
  printf '%s\n' "${BUILD[@]}"
  echo "# commands"
  for v in "${PYS[@]}"; do
    printf 'python -m pip download --no-deps --only-binary=:all: --python-version %s --implementation cp' "$v"
    printf ' --platform %s' "${PLATFORMS[@]}"
    printf ' -d %s/wheels %s\n' "$OUT_DIR" "${DOWNLOAD[*]}"
  done
  echo "SAM2_BUILD_CUDA=0 python -m pip wheel --no-deps --no-build-isolation -w $OUT_DIR/wheels ${BUILD[*]}"
  exit 0
fi

BUILD_PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$BUILD_PY" ] || BUILD_PY="$(command -v python3)" || die "no Python found (set PYTHON)"
"$BUILD_PY" -c 'import torch, setuptools, wheel' 2>/dev/null ||
  die "$BUILD_PY lacks torch, setuptools or wheel (needed to build sam2's wheel); run ./run.sh test first or set PYTHON"

WHEELS="$OUT_DIR/wheels"
mkdir -p "$WHEELS"
for v in "${PYS[@]}"; do
  say "downloading wheels for CPython $v manylinux x86_64"
  "$BUILD_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$v" --implementation cp "${PLATFORM_ARGS[@]}" -d "$WHEELS" "${DOWNLOAD[@]}"
done
say "building pure-python wheels: ${BUILD[*]}"
SAM2_BUILD_CUDA=0 "$BUILD_PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$WHEELS" "${BUILD[@]}"
for w in "$WHEELS"/sam2-1.1.0-*.whl; do
  case "$w" in *-py3-none-any.whl) ;; *) die "sam2 wheel is not pure python: $w" ;; esac
  if "$BUILD_PY" -m zipfile -l "$w" | grep -q '\.so '; then die "sam2 wheel holds a compiled extension: $w"; fi
done
# keep one version of each name: an older bundle's leftovers would make two
(
  cd "$WHEELS"
  wanted=" $(printf '%s ' "${ACTIVE[@]}" "${NODEPS[@]}" | tr 'A-Z_.' 'a-z--' | sed 's/==/-/g') "
  for f in *.whl; do
    dist="${f%%-*}"
    ver="${f#*-}"
    ver="${ver%%-*}"
    key="$(printf '%s-%s' "$dist" "$ver" | tr 'A-Z_.' 'a-z--')"
    case "$wanted" in *" $key "*) ;; *) say "removing $f (not pinned)"; rm -f "$f" ;; esac
  done
)
requirements >"$OUT_DIR/requirements.txt"
printf '%s\n' "${NODEPS[@]}" >"$OUT_DIR/nodeps.txt"

rm -rf "${OUT_DIR:?}/media"
if [ "$WITH_MEDIA" = 1 ]; then
  media="${DL_UTILS_SHARED_DATA:-$ROOT/../shared/data}/bedroom.mp4"
  [ -f "$media" ] || die "--with-media: $media not found"
  mkdir -p "$OUT_DIR/media"
  cp "$media" "$OUT_DIR/media/"
fi

bytes="$(du -sb "$OUT_DIR" | cut -f1)"
mib="$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
{
  echo "bench/gpu_bundle.sh bundle, made $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "python: ${PYS[*]}"
  echo "complete: $COMPLETE_SET"
  echo "fat: $WITH_FAT"
  echo "media: $WITH_MEDIA"
  echo "wheels: $(find "$WHEELS" -name '*.whl' | wc -l)"
  echo "size_mib: $mib"
} >"$OUT_DIR/bundle.txt"
say "bundle $OUT_DIR: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $mib MiB"
if awk -v m="$mib" 'BEGIN { exit !(m > 60) }'; then
  say "warning: $mib MiB: the device tool carries at most 64 MiB with the working tree"
fi
echo "$mib MiB"
