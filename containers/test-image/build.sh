#!/usr/bin/env bash
# test-image/build.sh: a small CPU test image made with no registry at all, for the container tests.
#   rootfs = debootstrap minbase bookworm + python3 + a venv holding the project with its HF backend
#            (torch CPU from the local wheel, transformers), then imported as
#   docker/podman image  localhost/launcher-test:cpu      (whichever of the two answers)
#   apptainer SIF        $STATE/test-image/launcher-test.sif
#   and the same podman image in the rootless store of each non-root test user (container_users in common.sh)
# The SIF uses lz4, not gzip: 15 s instead of 100 s to pack on 2 cores, for 530 MB instead of 350 MB.
# Each stage is cached under a key made from its inputs, so a second run with nothing changed takes a
# second or two, and a change to the project's code rebuilds only the last stage.
#   usage: containers/test-image/build.sh [docker] [podman] [apptainer]    (default: every runtime found)
#   env:   TORCH_SPEC (torch==2.13.0+cpu), TORCH_WHEELS (/opt/wheels: where that wheel lies), SRC (repo root)
# shellcheck source=containers/runtimes/common.sh
source "$(dirname "$0")/../runtimes/common.sh"
need_root

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:-$(cd "$HERE/../.." && pwd)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TAG=localhost/launcher-test:cpu
DIR="$LAUNCHER_CONTAINERS_STATE/test-image"
SIF="$DIR/launcher-test.sif"
BASE_PACKAGES="python3 python3-venv"
[[ -f $SRC/pyproject.toml ]] || die "no pyproject.toml in $SRC" "run from the repo or set SRC=/path/to/repo"
[[ -f $ENV_FILE ]] && source "$ENV_FILE"     # DOCKER_HOST, CONTAINERS_CONF from the runtime scripts

runtimes=("$@")
if [[ ${#runtimes[@]} -eq 0 ]]; then
    [[ -n ${DOCKER_HOST:-} ]] && docker version >/dev/null 2>&1 && runtimes+=(docker)
    command -v podman >/dev/null && runtimes+=(podman)
    command -v apptainer >/dev/null && runtimes+=(apptainer)
fi
mkdir -p "$DIR"
key_of() { sha256sum | cut -c1-16; }
step_t0=$(date +%s.%N)
step() { local now; now=$(date +%s.%N); log "$(awk -v a="$step_t0" -v b="$now" 'BEGIN{printf "%5.1f s", b-a}')  $*"; step_t0=$now; }

# ---- stage 1: debootstrap + python3 --------------------------------------------------------------
base_key=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" | key_of)
BASE="$DIR/base-$base_key"
if [[ ! -f $BASE/.done ]]; then
    apt_install debootstrap
    rm -rf "$BASE" && mkdir -p "$BASE"
    debootstrap --variant=minbase "$SUITE" "$BASE/rootfs" "$MIRROR" > "$DIR/debootstrap.log" 2>&1 \
        || die "debootstrap $SUITE failed; see $DIR/debootstrap.log" "check that $MIRROR is reachable"
    # shellcheck disable=SC2086  # the package list is meant to split
    chroot "$BASE/rootfs" env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends \
        $BASE_PACKAGES > "$DIR/apt.log" 2>&1 || die "apt-get install in the rootfs failed; see $DIR/apt.log"
    chroot "$BASE/rootfs" apt-get clean
    rm -rf "$BASE/rootfs"/var/lib/apt/lists/* "$BASE/rootfs"/usr/share/{doc,man,info,locale}/*
    touch "$BASE/.done"
    step "base rootfs built ($(du -sh "$BASE/rootfs" | cut -f1))"
fi

# The CA bundle pip must trust: the host's (a TLS-inspecting proxy may sit between us and PyPI).
CA_BUNDLE=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}

# in_rootfs ROOTFS CMD...: run CMD chrooted with a clean environment (the host's PIP_* settings name host
# paths), with proc, the torch wheel folder, the pip cache, the CA bundle and the staged project mounted;
# the private mount namespace drops every mount when CMD ends, so nothing of the host stays in the image.
in_rootfs() {
    local root=$1; shift
    mkdir -p "$root/mnt/wheels" "$root/mnt/src" "$root/root/.cache/pip" "$DIR/pip-cache" "$DIR/src"
    touch "$root/mnt/ca-certificates.crt"
    local proxies=()
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n ${!v:-} ]] && proxies+=("$v=${!v}")
    done
    # shellcheck disable=SC2016  # the inner script expands its own positional parameters
    unshare -m --propagation private bash -euc '
        root=$1 wheels=$2 cache=$3 src=$4 ca=$5; shift 5
        mount -t proc proc "$root/proc"
        mount --bind "$wheels" "$root/mnt/wheels"
        mount --bind "$cache" "$root/root/.cache/pip"
        mount --bind "$src" "$root/mnt/src"
        [[ -f $ca ]] && mount --bind "$ca" "$root/mnt/ca-certificates.crt"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        exec chroot "$root" "$@"
    ' in_rootfs "$root" "$TORCH_WHEELS" "$DIR/pip-cache" "$DIR/src" "$CA_BUNDLE" \
        env -i PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/mnt/ca-certificates.crt "${proxies[@]}" "$@"
}

# ---- stage 2: venv with torch (CPU) and the project's dependencies with its [hf] extra -------------
# The requirement list comes from pyproject.toml, so the image follows the project's own pins.
requirements=$(python3 - "$SRC/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join([*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("hf", [])]))
PY
)
deps_key=$(printf '%s\n' "$base_key" "$TORCH_SPEC" "$requirements" | key_of)
DEPS="$DIR/deps-$deps_key"
if [[ ! -f $DEPS/.done ]]; then
    ls "$TORCH_WHEELS"/torch-* >/dev/null 2>&1 || log "no torch wheel in $TORCH_WHEELS: pip will look on PyPI"
    rm -rf "$DEPS" && mkdir -p "$DEPS"
    cp -a "$BASE/rootfs" "$DEPS/rootfs"
    printf '%s\n' "$TORCH_SPEC" > "$DEPS/rootfs/constraints.txt"
    printf '%s\n' "$requirements" > "$DEPS/rootfs/requirements.txt"
    in_rootfs "$DEPS/rootfs" python3 -m venv /opt/venv
    # The constraint keeps pip from swapping the CPU torch for PyPI's CUDA build (gigabytes of nvidia-*).
    in_rootfs "$DEPS/rootfs" pip install -q --find-links /mnt/wheels -c /constraints.txt "$TORCH_SPEC" \
        > "$DIR/pip-deps.log" 2>&1 || die "pip install $TORCH_SPEC failed; see $DIR/pip-deps.log"
    in_rootfs "$DEPS/rootfs" pip install -q --find-links /mnt/wheels -c /constraints.txt -r /requirements.txt \
        >> "$DIR/pip-deps.log" 2>&1 || die "pip install of the project's dependencies failed; see $DIR/pip-deps.log"
    touch "$DEPS/.done"
    step "dependencies installed ($(du -sh "$DEPS/rootfs" | cut -f1))"
fi

# ---- stage 3: the project itself (tracked + untracked-not-ignored files, as git sees them) -----------
rm -rf "$DIR/src"
stage_project "$SRC" "$DIR/src"
src_key=$( (cd "$DIR/src" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | key_of)
key=$(printf '%s\n' "$deps_key" "$src_key" | key_of)
FINAL="$DIR/image-$key"
if [[ ! -f $FINAL/.done ]]; then
    rm -rf "$DIR"/image-* && mkdir -p "$FINAL"
    # Hard links: the project stage only adds files, so sharing the dependency stage's inodes is safe.
    cp -al "$DEPS/rootfs" "$FINAL/rootfs"
    [[ -f $DIR/src/README.md ]] || : > "$DIR/src/README.md"   # pyproject names a readme
    in_rootfs "$FINAL/rootfs" pip install -q --no-deps --no-build-isolation /mnt/src > "$DIR/pip-src.log" 2>&1 \
        || in_rootfs "$FINAL/rootfs" pip install -q --no-deps /mnt/src >> "$DIR/pip-src.log" 2>&1 \
        || die "pip install of the project failed; see $DIR/pip-src.log"
    rm -f "$FINAL/rootfs/constraints.txt" "$FINAL/rootfs/requirements.txt"
    versions=$(in_rootfs "$FINAL/rootfs" python -c 'import sys, torch, transformers; print(f"{sys.version_info[0]}.{sys.version_info[1]} {torch.__version__} {transformers.__version__}")')
    read -r py_version torch_version transformers_version <<< "$versions"
    # Labels, in the same keys the real images carry (see containers/Dockerfile); CUDA "none": a CPU image.
    cat > "$FINAL/labels.env" <<LABELS
org.opencontainers.image.title=launcher-test
org.opencontainers.image.description=CPU test image of the launcher toolkit (HF backend, no vLLM)
launcher.python.version=$py_version
launcher.torch.version=${torch_version%%+*}
launcher.cuda.version=none
launcher.vllm.version=none
launcher.transformers.version=$transformers_version
launcher.test.key=$key
LABELS
    # Apptainer reads these from the rootfs when it builds the SIF from this folder.
    mkdir -p "$FINAL/rootfs/.singularity.d/env"
    python3 - "$FINAL/labels.env" "$FINAL/rootfs/.singularity.d/labels.json" <<'PY'
import json, sys
pairs = dict(line.split("=", 1) for line in open(sys.argv[1]).read().splitlines() if line)
json.dump(pairs, open(sys.argv[2], "w"), indent=2)
PY
    # shellcheck disable=SC2016  # $PATH is for the container's shell
    printf 'export PATH=/opt/venv/bin:$PATH\nexport HF_HUB_OFFLINE=1\n' > "$FINAL/rootfs/.singularity.d/env/90-environment.sh"
    touch "$FINAL/.done"
    step "project installed, image rootfs $(du -sh "$FINAL/rootfs" | cut -f1)"
fi

# docker/podman get two layers: the dependencies (imported once per dependency key, ~1.3 GB) and the
# project (a few hundred kB, rebuilt in seconds whenever the code changes). The project layer is what
# pip added in stage 3: the files that are not hard links into the dependency stage.
DEPS_TAG=localhost/launcher-test-deps:$deps_key
LAYER="$FINAL/layer"
if [[ ! -d $LAYER ]]; then
    mkdir -p "$LAYER.tmp/files"
    (cd "$FINAL/rootfs" && find . -path ./.singularity.d -prune -o \( -type f -links 1 -o -type l \) -print0 \
        | xargs -0 -r cp -a --parents -t "$LAYER.tmp/files")
    {
        echo "FROM $DEPS_TAG"
        echo "COPY files/ /"
        # One LABEL line: every instruction is a commit, and each commit may walk the whole 1.3 GB tree.
        printf 'LABEL'
        while IFS= read -r label; do printf ' %s="%s"' "${label%%=*}" "${label#*=}"; done < "$FINAL/labels.env"
        echo
    } > "$LAYER.tmp/Dockerfile"
    mv "$LAYER.tmp" "$LAYER"
fi

IMAGE_PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

import_into() {   # import_into docker|podman: skipped when the image there already carries this key
    local tool=$1 have quiet=()
    [[ $tool == podman ]] && quiet=(--quiet)
    have=$("$tool" image inspect --format '{{index .Config.Labels "launcher.test.key"}}' "$TAG" 2>/dev/null || true)
    if [[ $have == "$key" ]]; then log "$tool: $TAG is current ($key)"; return; fi
    if ! "$tool" image inspect "$DEPS_TAG" >/dev/null 2>&1; then
        tar -C "$DEPS/rootfs" -cf - . | "$tool" import "${quiet[@]}" \
            --change "ENV PATH=$IMAGE_PATH" --change "ENV HF_HUB_OFFLINE=1" - "$DEPS_TAG" >/dev/null
        step "$tool: imported the dependency layer $DEPS_TAG"
    fi
    "$tool" build "${quiet[@]}" -t "$TAG" "$LAYER" > "$DIR/$tool-build.log" 2>&1 \
        || die "$tool build of the project layer failed; see $DIR/$tool-build.log"
    "$tool" image prune -f >/dev/null 2>&1 || true   # the replaced project layer; our private daemon/storage only
    step "$tool: built $TAG ($("$tool" image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
}

# import_rootless USER: the same image in USER's rootless podman store (podman-setup.sh gives each user one).
# `podman build` there would diff the whole 1.3 GB tree on every commit (a user namespace has no native overlay
# diff: 82 s per build here), so the image goes over as an OCI "dir:" layout instead: the dependency layer, a tar
# made once per dependency key that the store skips by digest once it holds it, and the project layer (~1 MB).
import_rootless() {
    local user=$1 have id as=(runuser -u "$1" --) where="podman ($1, rootless)"
    have=$(cd / && "${as[@]}" podman image inspect --format '{{index .Config.Labels "launcher.test.key"}}' "$TAG" 2>/dev/null || true)
    if [[ $have == "$key" ]]; then log "$where: $TAG is current ($key)"; return; fi
    local deps_tar="$DEPS/layer.tar"
    if [[ ! -f $deps_tar.sha256 ]]; then
        tar -C "$DEPS/rootfs" -cf "$deps_tar.tmp" . && mv "$deps_tar.tmp" "$deps_tar"
        sha256sum "$deps_tar" | cut -d' ' -f1 > "$deps_tar.sha256"
        chmod 644 "$deps_tar" "$deps_tar.sha256"
    fi
    local oci="$FINAL/oci"
    if [[ ! -f $oci/manifest.json ]]; then
        rm -rf "$oci" && mkdir -p "$oci"
        tar -C "$LAYER/files" -cf "$oci/project.tar" .
        python3 - "$deps_tar" "$(cat "$deps_tar.sha256")" "$oci" "$FINAL/labels.env" "PATH=$IMAGE_PATH" HF_HUB_OFFLINE=1 <<'PY'
import hashlib, json, os, platform, sys
deps_tar, deps_hex, oci, labels_env, *env = sys.argv[1:]
def blob(data: bytes) -> dict:
    hexd = hashlib.sha256(data).hexdigest()
    open(os.path.join(oci, hexd), "wb").write(data)
    return {"digest": f"sha256:{hexd}", "size": len(data)}
os.link(deps_tar, os.path.join(oci, deps_hex))
project = os.path.join(oci, "project.tar")
project_hex = hashlib.sha256(open(project, "rb").read()).hexdigest()
os.replace(project, os.path.join(oci, project_hex))
labels = dict(line.split("=", 1) for line in open(labels_env).read().splitlines() if line)
arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
config = blob(json.dumps({"architecture": arch, "os": "linux", "config": {"Env": env, "Labels": labels},
                          "rootfs": {"type": "layers", "diff_ids": [f"sha256:{deps_hex}", f"sha256:{project_hex}"]}}).encode())
layer = "application/vnd.oci.image.layer.v1.tar"
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": layer, "digest": f"sha256:{deps_hex}", "size": os.path.getsize(deps_tar)},
                       {"mediaType": layer, "digest": f"sha256:{project_hex}",
                        "size": os.path.getsize(os.path.join(oci, project_hex))}]}
open(os.path.join(oci, "manifest.json"), "w").write(json.dumps(manifest))
open(os.path.join(oci, "version"), "w").write("Directory Transport Version: 1.1\n")
PY
        chmod -R a+rX "$oci"
    fi
    id=$(cd / && "${as[@]}" podman pull -q "dir:$oci" 2> "$DIR/podman-$user-pull.log") \
        || die "$where: podman pull dir:$oci failed; see $DIR/podman-$user-pull.log"
    (cd / && "${as[@]}" podman tag "$id" "$TAG" && "${as[@]}" podman image prune -f >/dev/null 2>&1) || true
    step "$where: loaded $TAG"
}

for rt in "${runtimes[@]}"; do
    case $rt in
        docker) import_into docker ;;
        podman)
            import_into podman
            while IFS= read -r user; do import_rootless "$user"; done < <(container_users) ;;
        apptainer)
            if [[ -f $SIF && $(cat "$SIF.key" 2>/dev/null) == "$key" ]]; then
                log "apptainer: $SIF is current ($key)"
            else
                apptainer build --force --mksquashfs-args "-comp lz4" "$SIF.tmp" "$FINAL/rootfs" > "$DIR/apptainer-build.log" 2>&1 \
                    || die "apptainer build failed; see $DIR/apptainer-build.log"
                mv "$SIF.tmp" "$SIF" && echo "$key" > "$SIF.key"
                step "apptainer: built $SIF ($(du -h "$SIF" | cut -f1))"
            fi ;;
        *) die "unknown runtime '$rt'" "use docker, podman or apptainer" ;;
    esac
done
env_file_set LAUNCHER_TEST_IMAGE "$TAG"
env_file_set LAUNCHER_TEST_SIF "$SIF"
done_msg "test image $key ready for: ${runtimes[*]:-no runtime}"
