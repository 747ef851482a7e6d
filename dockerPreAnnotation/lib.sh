# shellcheck shell=bash
# Shared by dockerPreAnnotation/{run,stop}.sh and docker/{run,stop}.sh (sourced, not run).
# The caller sets SCRIPT (its name for messages), DOCKER and DRY_RUN before calling these.

say() { printf '[%s] %s\n' "$SCRIPT" "$*" >&2; }

# run CMD...: run it, or print it (shell-quoted) under --dry-run
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# image_uid_gid: the host user's ids go into the image so that files written in the container stay
# the user's; root on the host still gets an unprivileged user (1000) inside. Sets uid and gid.
image_uid_gid() {
  # shellcheck disable=SC2034  # uid and gid are read by the caller
  uid="$(id -u)"
  gid="$(id -g)"
  # shellcheck disable=SC2034
  if [ "$uid" = 0 ]; then uid=1000 gid=1000; fi
}

# build_if_missing IMAGE REBUILD DOCKERFILE BUILD_ARGS...: build unless the image exists (or REBUILD=1)
build_if_missing() {
  local image="$1" rebuild="$2" dockerfile="$3"
  shift 3
  if [ "$DRY_RUN" = 1 ]; then
    echo "# build (only when $image is missing, or with --rebuild)"
  elif [ "$rebuild" = 0 ] && "$DOCKER" image inspect "$image" >/dev/null 2>&1; then
    return 0
  fi
  [ "$DRY_RUN" = 1 ] || say "building $image (first time: compiles SAM2's CUDA extension, takes minutes)"
  run "$DOCKER" build -f "$dockerfile" -t "$image" "$@"
}

# container_running NAME: true when a container of exactly that name runs
container_running() {
  [ -n "$("$DOCKER" ps -q --filter "name=^${1}\$")" ]
}

# new_token: DL_UTILS_TOKEN or 32 random hex digits
new_token() {
  if [ -n "${DL_UTILS_TOKEN:-}" ]; then printf '%s' "$DL_UTILS_TOKEN"; else od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; fi
}

# stop_container NAME: stop it (it runs with --rm, so stopping removes it), or say it is not running
stop_container() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$DOCKER" stop "$1"
    printf '\n'
    return 0
  fi
  if container_running "$1"; then
    "$DOCKER" stop "$1" >/dev/null
    echo "stopped container $1"
  else
    echo "nothing to stop: container $1 is not running"
  fi
}
