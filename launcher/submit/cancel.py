"""submit/cancel.py: run dir -> its jobs stopped. Slurm runs: scancel of every job Slurm still holds (the task arrays,
all of them when the run was split at the cluster's MaxArraySize, and the gather jobs). Local runs: SIGTERM to each
job process the submit recorded (its workers write what they finished, give their units back and exit:
job/entry.py), then wait for them to end.

Finished records are kept either way; the hint names what resumes the run (plan/persist.resume_hint).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from rich.console import Console

from launcher.errors import UntrustedFile
from launcher.plan.persist import resume_hint
from launcher.store import RunDir
from launcher.submit.lock import LocalProcess, read_local_processes
from launcher.submit.slurm_query import run_slurm
from launcher.terminal import safe

STOP_WAIT_S = 90.0  # a worker flushes in seconds; an engine still loading finishes loading first
RESIGNAL_S = 5.0


def cancel_run(run_dir: Path, console: Console) -> int:
    """Stop every job of the run that still runs: Slurm's (scancel) and local ones (SIGTERM)."""
    run = RunDir(Path(run_dir))
    record = run.read_run()
    if record.latest.executor == "local":
        return _cancel_local(run, console)
    ids = sorted(set(record.task_job_ids()) | set(record.gather_job_ids()), key=int)
    if not ids:
        console.print("no Slurm jobs recorded for this run")
        return 0
    live = _in_queue(ids)
    if not live:
        console.print(f"nothing to cancel: every job of this run ({', '.join(ids)}) has ended")
        return 0
    proc = subprocess.run(["scancel", *live], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        console.print(f"scancel {' '.join(live)} failed: {safe(proc.stderr.strip())}")
        return 1
    console.print(f"cancelled {', '.join(live)}; finished records are kept: {safe(resume_hint(run))} again resumes")
    return 0


def _in_queue(ids: list[str]) -> list[str]:
    """The job ids (array ids for arrays: every array of a run split at MaxArraySize) of those Slurm still holds, in
    one squeue call; none when squeue cannot answer."""
    return sorted(set(run_slurm(["squeue", "-h", "-j", ",".join(ids), "-o", "%F"]).split()), key=int)


def _cancel_local(run: RunDir, console: Console) -> int:
    here = os.uname().nodename
    procs = [p for p in read_local_processes(run.submit_lock) if p.alive() is not False]
    elsewhere = sorted({p.host for p in procs if p.host != here})
    if elsewhere:
        console.print(
            f"the local run's jobs ran on {safe(', '.join(elsewhere))}, not here ({safe(here)}): run "
            f"`launcher cancel {safe(run.root)}` there"
        )
        return 1
    if not procs:
        console.print("nothing to cancel: no local job of this run is running")
        return 0
    left = stop_local_jobs(procs)
    # after the jobs' own note (SIGTERM to the job): status names who stopped it
    with contextlib.suppress(OSError, UntrustedFile):  # a run folder not ours any more: nothing written into it
        run.write_json(run.interrupted, {"time": time.time(), "executor": "local", "by": "`launcher cancel`"})
    pids = " ".join(str(p.pid) for p in procs)
    if left:
        console.print(
            f"sent SIGTERM to the local job(s) (pids {pids}); {len(left)} still running after {STOP_WAIT_S:.0f} s "
            f"(`kill -KILL {' '.join(str(p.pid) for p in left)}` ends them without their last flush)"
        )
        return 1
    console.print(
        f"stopped {len(procs)} local job(s) (pids {pids}); finished records are kept: "
        f"{safe(resume_hint(run))} again resumes"
    )
    return 0


def stop_local_jobs(procs: list[LocalProcess], wait_s: float = STOP_WAIT_S) -> list[LocalProcess]:
    """SIGTERM to each local job's process (submitit's controller: it passes the signal to the job, which stops its
    workers), then wait; the processes still running after wait_s. Sent again every few seconds: a job still
    starting (the first second, before it sets its handler) has submitit's, which only logs the signal."""
    deadline = time.monotonic() + wait_s
    running = list(procs)
    next_signal = 0.0
    while running and time.monotonic() < deadline:
        if time.monotonic() >= next_signal:
            for p in running:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
            next_signal = time.monotonic() + RESIGNAL_S
        time.sleep(0.2)
        running = [p for p in running if p.alive() is not False]
    return running


__all__ = ["cancel_run", "stop_local_jobs"]
