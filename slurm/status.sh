#!/usr/bin/env bash
# Show whether each daemon of the local test cluster runs (both slurmds), the second node's network, and sinfo.
# Exit 0 if all daemons run and both nodes are usable, 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"

ok=0
for d in munged mariadbd slurmdbd slurmctld slurmd slurmd-n2; do
  if pid=$(daemon_pid "$d"); then
    printf '%-10s running (pid %s)\n' "$d" "$pid"
  elif [ -e "$(pidfile_of "$d")" ] && [ ! -r "$(pidfile_of "$d")" ]; then
    printf '%-10s unknown (pid file not readable: run as root)\n' "$d"
  else
    printf '%-10s not running\n' "$d"
    ok=1
  fi
done
if net_up; then
  echo "network:   netns $NETNS, $NET_IF: host $HOST_ADDR <-> $NODE2_NAME $NODE2_ADDR"
else
  echo "network:   netns $NETNS / $NET_IF ($HOST_ADDR) missing"
  ok=1
fi
echo "state dir: $SLURM_DIR"

if daemon_pid slurmctld >/dev/null; then
  timeout 5 sinfo -o '%P %a %D %T %N %G %c %m' || ok=1
  timeout 5 sinfo -N -o '%N %o %T %G %c %m' | awk '!seen[$1]++' || ok=1 # one line per node (sinfo -N repeats per partition)
  for n in "$NODE_NAME" "$NODE2_NAME"; do
    case "$(node_state "$n")" in idle | mixed | allocated | completing) ;; *) ok=1 ;; esac
  done
fi
exit $ok
