#!/usr/bin/env bash
# Show whether each daemon of the local test cluster runs, and sinfo.
# Exit 0 if all daemons run and the node is usable, 1 otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"

ok=0
for d in munged mariadbd slurmdbd slurmctld slurmd; do
  if pid=$(daemon_pid "$d"); then
    printf '%-10s running (pid %s)\n' "$d" "$pid"
  elif [ -e "$(pidfile_of "$d")" ] && [ ! -r "$(pidfile_of "$d")" ]; then
    printf '%-10s unknown (pid file not readable: run as root)\n' "$d"
  else
    printf '%-10s not running\n' "$d"
    ok=1
  fi
done
echo "state dir: $SLURM_DIR"

if daemon_pid slurmctld >/dev/null; then
  timeout 5 sinfo -o '%P %a %D %T %N %G %c %m' || ok=1
  case "$(node_state)" in idle | mixed | allocated | completing) ;; *) ok=1 ;; esac
fi
exit $ok
