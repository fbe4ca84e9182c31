#!/usr/bin/env bash
# Quick end-to-end check of the running test cluster (~10 s; ~40 s with --preempt):
# fake GPUs, array throttling, accounting, a non-root submission, and optionally preemption.
# Usage: slurm/smoke.sh [--preempt]      (run as root after slurm/up.sh)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"

WORK=$(mktemp -d /tmp/launcher-slurm-smoke.XXXXXX)
chmod 777 "$WORK" # the non-root job writes here too
cd "$WORK"
trap 'rm -rf "$WORK"' EXIT

ok() { echo "ok   - $*"; }
die() { echo "FAIL - $*" >&2; exit 1; }

# sacct's row for a job lags squeue by up to a few seconds (slurmctld syncs new jobs to slurmdbd
# every 5 s), so poll it.
wait_sacct() { # job-id state [seconds]
  local i s
  for ((i = 0; i < ${3:-20} * 10; i++)); do
    s=$(sacct -n -X -j "$1" -o State 2>/dev/null | awk '{print $1}' | sort -u | tr '\n' ' ')
    [ "$s" = "$2 " ] && return 0
    sleep 0.1
  done
  die "job $1: sacct says '${s:-nothing}', expected $2"
}

# 1. Two fake GPUs -> CUDA_VISIBLE_DEVICES has 2 ids.
j=$(sbatch --parsable -W --gres=gpu:2 -o gpu.out --wrap 'env | grep -E "^(CUDA_VISIBLE_DEVICES|SLURM_JOB_GPUS)="')
n=$(sed -n 's/^CUDA_VISIBLE_DEVICES=//p' gpu.out | tr ',' '\n' | grep -c .)
[ "$n" = 2 ] || die "--gres=gpu:2 gave CUDA_VISIBLE_DEVICES with $n ids: $(cat gpu.out)"
wait_sacct "$j" COMPLETED
ok "--gres=gpu:2: $(tr '\n' ' ' <gpu.out)"

# 2. Array with a %2 throttle (2 tasks at a time): all 4 tasks run.
# shellcheck disable=SC2016  # expanded in the job
j=$(sbatch --parsable -W --array=0-3%2 -o 'arr-%a.out' --wrap 'echo $SLURM_ARRAY_TASK_ID; sleep 1')
[ "$(cat arr-*.out | sort | tr -d '\n')" = 0123 ] || die "array outputs: $(cat arr-*.out)"
wait_sacct "$j" COMPLETED
ok "--array=0-3%2 ran 4 tasks"

# 3. Non-root submission.
j=$(runuser -u "$TEST_USER" -- sbatch --parsable -W -D "$WORK" -o user.out --wrap 'id -un')
[ "$(cat user.out)" = "$TEST_USER" ] || die "job ran as '$(cat user.out)'"
wait_sacct "$j" COMPLETED
ok "sbatch as $TEST_USER"

# 4. Preemption: a debug job holding all 8 CPUs is requeued when a 'high' job arrives.
if [ "${1:-}" = --preempt ]; then
  lo=$(sbatch --parsable -p debug -c 8 -o lo.out --wrap 'sleep 300')
  until [ "$(squeue -h -j "$lo" -o %T)" = RUNNING ]; do sleep 0.2; done
  hi=$(sbatch --parsable -p high -c 1 -o hi.out --wrap 'true')
  t0=$(now)
  until [ "$(sacct -n -X -D -j "$lo" -o State | awk '{print $1}' | head -n1)" = PREEMPTED ]; do
    [ $(($(now) - t0)) -lt 40000000 ] || die "job $lo not preempted within 40 s"
    sleep 0.2
  done
  wait_sacct "$hi" COMPLETED
  ok "debug job $lo PREEMPTED and requeued after $(elapsed "$t0") s; high job $hi COMPLETED"
  scancel "$lo"
fi
echo "smoke: all ok"
