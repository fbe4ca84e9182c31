#!/usr/bin/env bash
# Stop the local test cluster started by up.sh: cancel its jobs, then stop both slurmds, slurmctld,
# slurmdbd, MariaDB and munged by their pid files (never by name: other processes on this machine
# may carry the same names), waiting until each is really gone; then remove the second node's network
# namespace and veth pair. Idempotent.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"
T0=$(now)

if [ "$(id -u)" -ne 0 ]; then
  echo "down.sh: must run as root" >&2
  exit 1
fi

# Job steps run in slurmstepd processes that outlive slurmd; cancel the jobs first so no job
# keeps running after down (up.sh starts from a clean state anyway).
if daemon_pid slurmctld >/dev/null && daemon_pid slurmd >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %F 2>/dev/null | sort -u | tr '\n' ' ' || true)
  if [ -n "${jobs// /}" ]; then
    echo "slurm: cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 100); do # up to 10 s (KillWait=2)
      [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null || true)" ] && break
      sleep 0.1
    done
  fi
fi

# Wait until daemon $1 is gone (exited or zombie), up to $2 tenths of a second.
wait_gone() {
  local i
  for ((i = 0; i < $2; i++)); do
    daemon_pid "$1" >/dev/null || return 0
    sleep 0.1
  done
  return 1
}

stopped=()
for d in "${DAEMONS[@]}"; do
  if pid=$(daemon_pid "$d"); then
    kill -TERM "$pid" 2>/dev/null || true
    # slurmctld saves state and MariaDB flushes on SIGTERM: give them time before SIGKILL.
    if ! wait_gone "$d" 200; then
      echo "slurm: $d (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$d" 50 || { echo "down.sh: ERROR: $d (pid $pid) does not exit" >&2; exit 1; }
    fi
    stopped+=("$d")
  fi
  rm -f "$(pidfile_of "$d")"
done

net=
if [ -e "/run/netns/$NETNS" ] || ip link show "$NET_IF" >/dev/null 2>&1; then
  net_down
  net=" and removed netns $NETNS"
fi

if [ ${#stopped[@]} -eq 0 ]; then
  echo "slurm: already down${net}"
else
  echo "slurm: stopped ${stopped[*]}${net} in $(elapsed "$T0") s"
fi
