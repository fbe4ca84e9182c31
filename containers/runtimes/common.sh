# shellcheck shell=bash
# common.sh: helpers shared by the runtime set-up scripts (sourced, never run).
# Everything lives under one state dir so a test machine can be cleaned with one `rm -rf`.

set -euo pipefail

LAUNCHER_CONTAINERS_STATE="${LAUNCHER_CONTAINERS_STATE:-/var/tmp/launcher-containers}"
export LAUNCHER_CONTAINERS_STATE
# One file of `export` lines that tests and people source to reach the runtimes we start.
ENV_FILE="$LAUNCHER_CONTAINERS_STATE/env.sh"

_t0=$(date +%s.%N)

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

die() {
    printf '[%s] error: %s\n' "$(basename "$0")" "$1" >&2
    [[ $# -gt 1 ]] && printf '  fix:   %s\n' "$2" >&2
    exit 1
}

elapsed() { awk -v a="$_t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

done_msg() { log "$* (took $(elapsed) s)"; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "this script installs packages and mounts file systems: it must run as root" \
        "sudo $0"
}

# apt_install PKG...: installs only what is missing, so a second run costs one dpkg query.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing ${missing[*]}"
    # Another script (e.g. slurm/) may hold the dpkg lock: wait for it instead of failing.
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -q)
    if ! "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        "${apt[@]}" update >/dev/null
        "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# container_users: the non-root users who run containers in the tests, one per line. LAUNCHER_CONTAINER_USERS
# (space-separated) names them; unset, it is `slurmtest`, the local Slurm's test user (slurm/), when it exists.
container_users() {
    local u
    for u in ${LAUNCHER_CONTAINER_USERS-slurmtest}; do
        id -u "$u" >/dev/null 2>&1 && [[ $(id -u "$u") -ne 0 ]] && echo "$u"
    done
    return 0
}

# env_file_set NAME VALUE: one `export NAME=VALUE` line in $ENV_FILE, replaced if already there.
env_file_set() {
    local name=$1 value=$2
    mkdir -p "$(dirname "$ENV_FILE")"
    touch "$ENV_FILE"
    local tmp="$ENV_FILE.$$"
    grep -v "^export $name=" "$ENV_FILE" > "$tmp" || true
    printf 'export %s=%q\n' "$name" "$value" >> "$tmp"
    mv "$tmp" "$ENV_FILE"
}

# stage_project REPO DEST: copy what an image needs of the project (pyproject, README, LICENSE, the
# package) as git sees it: tracked and untracked-but-not-ignored files, never .venv, .git or caches.
stage_project() {
    local repo=$1 dest=$2
    mkdir -p "$dest"
    if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
        (cd "$repo" && git ls-files -z -co --exclude-standard -- pyproject.toml README.md LICENSE launcher \
            | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
            | xargs -0 -r cp --parents -t "$dest")
    else
        cp -r "$repo/pyproject.toml" "$repo/launcher" "$dest/"
        [[ -f $repo/README.md ]] && cp "$repo/README.md" "$dest/"
    fi
    find "$dest" -name __pycache__ -prune -exec rm -rf {} +
}
