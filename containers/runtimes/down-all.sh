#!/usr/bin/env bash
# down-all.sh: stop what up-all.sh started (Docker's daemon, by its pid file). Podman and Apptainer run no daemon.
set -euo pipefail
bash "$(cd "$(dirname "$0")" && pwd)/docker-down.sh"
