#!/usr/bin/env bash
# up-all.sh: everything `make test` needs for the container tests, on a fresh machine, as root:
# Docker's daemon (own data root, pid file), Podman (its conf), Apptainer (sid rootfs + wrapper), and the
# small CPU test image (toolkit + HF backend) in all three. Idempotent: a second run takes seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
bash "$here/docker-up.sh"
bash "$here/podman-setup.sh"
bash "$here/apptainer-setup.sh"
bash "$here/../test-image/build.sh"
echo "[up-all] container runtimes and test image ready in $(( $(date +%s) - t0 )) s"
