#!/usr/bin/env bash
# Install the Debian packages for a local single-node Slurm cluster with accounting.
# Idempotent and fast (a few dpkg queries) when everything is already installed.
set -euo pipefail

# slurm-wlm pulls slurmctld, slurmd and slurm-client; slurmdbd + mariadb-server give
# accounting (submitit needs sacct to see job states).
PKGS=(slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2) # iproute2: the second node's netns

missing=()
for p in "${PKGS[@]}"; do
  # dpkg -s exits 0 also for removed-but-configured packages: check the status line.
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: must run as root to install: ${missing[*]}" >&2
  exit 1
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Wait for a concurrent apt/dpkg rather than failing at once on its lock.
APT=(apt-get -q -o DPkg::Lock::Timeout=300)
install() {
  "${APT[@]}" install -y --no-install-recommends "${PKGS[@]}"
}

# Only run 'apt-get update' when needed: no package lists at all, or the
# install fails (e.g. stale lists pointing at versions no longer on the mirror).
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
  "${APT[@]}" update
  install
elif ! install; then
  echo "install.sh: install failed with current package lists; running apt-get update and retrying" >&2
  "${APT[@]}" update
  install
fi
