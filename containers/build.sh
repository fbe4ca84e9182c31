#!/usr/bin/env bash
# build.sh: build the launcher image for one line of containers/matrix.toml.
#   usage: containers/build.sh [--dry-run] RUNTIME LINE
#     RUNTIME  apptainer | singularity | docker | podman
#     LINE     a line name from matrix.toml (vllm0.26-cu130), a CUDA version (13.0 or cu130: the newest
#              line with it), `default`, or `auto`: the newest line whose CUDA the local driver runs
#              (read from nvidia-smi; with no GPU here it says so and takes the newest line).
#   make container RUNTIME=apptainer CUDA=auto   calls this.
#   --dry-run prints the build command instead of running it (tests/test_matrix.py uses it).
#   env: OUT (where SIFs go, default containers/build), TAG (docker/podman tag, default localhost/launcher:LINE)
# Every version comes from matrix.toml: nothing about torch, vLLM or CUDA is written in this file.
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=containers/runtimes/common.sh
source "$HERE/runtimes/common.sh"   # set -euo pipefail, stage_project
ROOT=$(cd "$HERE/.." && pwd)
MATRIX="$HERE/matrix.toml"
dry_run=0
if [[ ${1:-} == --dry-run ]]; then dry_run=1; shift; fi
if [[ $# -ne 2 ]]; then
    echo "usage: $0 [--dry-run] RUNTIME LINE    (RUNTIME: apptainer|singularity|docker|podman; LINE: name|CUDA x.y|default|auto)" >&2
    exit 2
fi
runtime=$1 wanted=$2
case $runtime in apptainer | singularity | docker | podman) ;; *)
    echo "error: unknown RUNTIME '$runtime'" >&2
    echo "  fix:   use one of apptainer, singularity, docker, podman" >&2
    exit 2 ;;
esac

t0=$(date +%s)
driver_cuda="" driver_version=""
if [[ $wanted == auto ]]; then
    if smi=$("${NVIDIA_SMI:-nvidia-smi}" 2>/dev/null); then
        driver_cuda=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' <<< "$smi" | head -n 1)
        driver_version=$(sed -n 's/.*Driver Version: *\([0-9.]*\).*/\1/p' <<< "$smi" | head -n 1)
    fi
fi

# The matrix line, resolved by python's tomllib, as KEY=VALUE lines (values carry no newline).
resolved=$(DRIVER_CUDA=$driver_cuda DRIVER_VERSION=$driver_version python3 - "$MATRIX" "$wanted" <<'PY'
import os, sys, tomllib

def vtuple(text):
    return tuple(int(p) for p in text.split(".") if p.isdigit())

matrix = tomllib.load(open(sys.argv[1], "rb"))
lines, wanted = matrix["line"], sys.argv[2]
names = ", ".join(line["name"] for line in lines)
if wanted == "default":
    wanted = matrix["default"]
if wanted == "auto":
    cuda, driver = os.environ["DRIVER_CUDA"], os.environ["DRIVER_VERSION"]
    if not cuda:
        chosen = lines[0]
        print(f"auto: no GPU driver here (nvidia-smi not found or failed): taking the newest line, "
              f"{chosen['name']}. Build on a GPU node, or name the line, to match a cluster's driver.", file=sys.stderr)
    else:
        # Same rule as launcher/doctor.py Matrix.best_for: the newest line the driver runs fully (its CUDA
        # <= the driver's), else the newest it runs through minor-version compatibility (same major).
        runs = [l for l in lines if vtuple(l["cuda"])[:1] <= vtuple(cuda)[:1]
                and (not driver or vtuple(driver) >= vtuple(l["min_driver"]))]
        fits = [l for l in runs if vtuple(l["cuda"]) <= vtuple(cuda)] or runs
        if not fits:
            sys.exit(f"error: the driver here ({driver}, CUDA {cuda}) is older than every matrix line ({names})\n"
                     f"  fix:   upgrade the NVIDIA driver, or add an older line to {sys.argv[1]}")
        chosen = fits[0]
        print(f"auto: driver {driver} runs CUDA <= {cuda}: taking {chosen['name']} (CUDA {chosen['cuda']})", file=sys.stderr)
else:
    by_name = [l for l in lines if l["name"] == wanted]
    cuda = wanted.removeprefix("cu")
    if "." not in cuda and cuda.isdigit() and len(cuda) >= 3:
        cuda = f"{cuda[:-1]}.{cuda[-1]}"          # cu130 -> 13.0
    by_cuda = [l for l in lines if l["cuda"] == cuda]
    if not (by_name or by_cuda):
        sys.exit(f"error: no matrix line '{sys.argv[2]}' in {sys.argv[1]}\n"
                 f"  allowed: {names}, a CUDA version ({', '.join(sorted({l['cuda'] for l in lines}))}), default, auto\n"
                 f"  fix:   make container RUNTIME=... CUDA={lines[0]['name']}")
    chosen = (by_name or by_cuda)[0]
for key, value in chosen.items():
    print(f"{key}={value}")
PY
)
declare -A line
while IFS='=' read -r key value; do line[$key]=$value; done <<< "$resolved"
name=${line[name]}

launcher_version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$ROOT/pyproject.toml" 2>/dev/null || echo 0.0.0)
vcs_ref=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
build_args=(
    "BASE_IMAGE=${line[base_image]}"
    "VLLM_VERSION=${line[vllm]}"
    "TORCH_VERSION=${line[torch]}"
    "CUDA_VERSION=${line[cuda]}"
    "PYTHON_VERSION=${line[python]}"
    "MATRIX_LINE=$name"
    "LAUNCHER_VERSION=$launcher_version"
    "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    "VCS_REF=$vcs_ref"
)

context=$(mktemp -d "${TMPDIR:-/tmp}/launcher-build.XXXXXX")
trap 'rm -rf "$context"' EXIT
cmd=()
case $runtime in
    docker | podman)
        cmd=("$runtime" build -f "$HERE/Dockerfile" -t "${TAG:-localhost/launcher:$name}")
        for arg in "${build_args[@]}"; do cmd+=(--build-arg "$arg"); done
        cmd+=("$context") ;;
    apptainer | singularity)
        out=${OUT:-$HERE/build}
        cmd=("$runtime" build --force)
        for arg in "${build_args[@]}" "CONTEXT=$context"; do cmd+=(--build-arg "$arg"); done
        cmd+=("$out/launcher-$name.sif" "$HERE/launcher.def") ;;
esac

if [[ $dry_run -eq 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi

stage_project "$ROOT" "$context/src"
[[ ${runtime} == apptainer || ${runtime} == singularity ]] && mkdir -p "${OUT:-$HERE/build}"
echo "+ ${cmd[*]}" >&2
"${cmd[@]}"
echo "built $name with $runtime in $(( $(date +%s) - t0 )) s" >&2
