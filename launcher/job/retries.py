"""job/retries.py: a failed job attempt -> a record on disk -> requeue (retries left) or give up, with its log tail.

An attempt fails in one of two ways. Its Python raises: JobRunner catches it and `on_exception` records it. Its
process dies (SIGKILL, the OOM killer, a segfault in the engine): nothing in it can react, so the batch script's
teardown sees srun's exit status and runs `python -m launcher.job.retries RUN_DIR STATUS`, which calls `on_death`.
Both write the same record (store/failure_records.py: JobFailure), one file per (Slurm job, restart), so one failure
is never counted twice, and retries are counted per submission: resubmitting a run starts the count again. Units
keep their own failure count (store/unit_dir.py), so a unit that crashes every engine that takes it stops being
taken instead of failing every job in turn.

Requeues for preemption and time limits are not failures: submitit's checkpoint path handles them, and leaves a
marker (`mark_requeued`) so that the teardown knows the attempt did not die.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import LauncherError, SpecError, UntrustedFile
from launcher.slurm_env import SlurmEnv
from launcher.store import JobDir, JobFailure, RunDir, of_submission, plain_folder

log = logging.getLogger("launcher.job")
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class Attempt:
    """Which Slurm attempt this process is, from the job's environment."""

    job_id: str  # "123_4" for an array element, "123" for a single job: submitit's id, names its log files
    raw_job_id: str  # SLURM_JOB_ID. Not for scontrol: the array element started last keeps the array's own id,
    # which scontrol takes as the whole array (`scontrol requeue 76` requeues 76_0 too). job_id names this job alone.
    submission: str  # the array job id (or the job id): retries are counted per submission
    restart: int  # SLURM_RESTART_COUNT: 0 on the first run, +1 per requeue

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Attempt | None:
        # Only inside a job submitit's sbatch started: in some other allocation (salloc, the local executor under
        # a job), requeueing that job would be wrong.
        slurm = SlurmEnv.current(env)
        if not slurm.submitted_by_submitit or slurm.job_id is None:
            return None
        return cls(str(slurm.element_id), slurm.job_id, str(slurm.submission), slurm.restart)

    @property
    def key(self) -> str:
        return f"{self.job_id}-r{self.restart}"


def _job(job_dir: JobDir | Path) -> JobDir:
    return job_dir if isinstance(job_dir, JobDir) else JobDir(Path(job_dir))


def read_failures(job_dir: JobDir | Path) -> list[JobFailure]:
    """Every failed attempt of the job, oldest first."""
    return _job(job_dir).read_failures()


def mark_requeued(job_dir: JobDir | Path, attempt: Attempt | None, why: str) -> None:
    """Called from the checkpoint path (USR2: preemption or time limit) before submitit requeues the job."""
    job_dir = _job(job_dir)
    if attempt is not None:
        job_dir.write(
            job_dir.requeue_file(attempt.key),
            {"job_id": attempt.job_id, "restart": attempt.restart, "time": time.time(), "why": why},
        )


def already_handled(job_dir: JobDir, attempt: Attempt) -> bool:
    return job_dir.has(job_dir.failure_file(attempt.key)) or job_dir.has(job_dir.requeue_file(attempt.key))


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log; [] when it is missing or not a plain file (a link is not followed)."""
    if path is None:
        return []
    try:
        with plain_folder(path.parent) as folder, folder.open_read(path.name) as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            text = f.read().decode(errors="replace")
    except (OSError, LauncherError):
        return []
    # tqdm's progress bars are one long line of \r updates: keep what the terminal would show
    shown = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.split("\n")]  # not splitlines(): it splits at \r too
    return [ln for ln in shown if ln][-lines:]


def record_failure(
    job_dir: JobDir | Path,
    attempt: Attempt,
    max_retries: int,
    kind: str,
    error: str,
    log: Path | None,
    retryable: bool = True,
    requeue_by: str = "task",
) -> JobFailure:
    """Write this attempt's failure; decide whether the job gets another attempt (`retry` in the record)."""
    job_dir = _job(job_dir)
    failures = len(of_submission(read_failures(job_dir), attempt.submission)) + 1
    record = JobFailure.new(
        job_id=attempt.job_id,
        submission=attempt.submission,
        restart=attempt.restart,
        host=socket.gethostname(),
        time=time.time(),
        kind=kind,
        error=error,
        failures=failures,
        max_retries=max_retries,
        retry=retryable and failures <= max_retries,
        requeue_by=requeue_by,
        log=str(log) if log else None,
        log_tail=log_tail(log),
    )
    job_dir.write(job_dir.failure_file(attempt.key), record.to_json())
    return record


def needs_host_requeue(job_dir: JobDir, attempt: Attempt) -> bool:
    """The job failed inside an image without scontrol: it recorded the failure and left the requeue to the
    teardown, which runs on the host."""
    return JobFailure.from_json(job_dir.read(job_dir.failure_file(attempt.key))).requeued_by_host


def requeue(attempt: Attempt) -> None:
    subprocess.run(["scontrol", "requeue", attempt.job_id], check=True, timeout=60, capture_output=True)


def job_state(attempt: Attempt) -> str | None:
    """Slurm's state of this job now. RUNNING while only the task failed; COMPLETING, CANCELLED, TIMEOUT... when
    Slurm itself is stopping it (scancel, the time limit, preemption): its processes then die of SIGTERM or
    SIGKILL, and a retry would undo what Slurm or the user asked for. None: scontrol did not answer."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", attempt.job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.removeprefix("JobState=")
    return None


def stopped_by_slurm(attempt: Attempt) -> str | None:
    """The state, when Slurm is stopping the job (then the failure is not the task's), else None."""
    state = job_state(attempt)
    return state if state not in (None, "RUNNING") else None


def record_local_failure(exc: Exception, index: int, job_dir: JobDir) -> None:
    """A local job (no Slurm: nothing to requeue) raised: recorded all the same, so that status says why."""
    submission = os.environ.get("LAUNCHER_SUBMISSION") or "local"
    local = Attempt(f"local{index}-{os.getpid()}", str(os.getpid()), submission, 0)
    try:
        record_failure(job_dir, local, 0, "exception", f"{type(exc).__name__}: {exc}", None, retryable=False)
    except UntrustedFile as refused:  # the run folder itself is not ours any more: nothing is written into it
        log.error("job %s: no failure record written: %s", job_dir.root.name, refused)


def on_exception(exc: Exception, attempt: Attempt, job_dir: JobDir, max_retries: int, stderr: Path) -> None:
    """A Slurm job's Python raised (JobRunner): record it, then requeue it (exits the process) or give up (returns).
    Not a failure while Slurm itself stops the job (scancel, the time limit); a bad spec or a planted file would fail
    the same way again, so they are not retried."""
    import shutil
    import traceback

    state = stopped_by_slurm(attempt)
    if state:  # scancel, time limit: Slurm is stopping the job, and its processes die of that
        log.warning(
            "job %s: %s while Slurm stops job %s (%s): not a failure, not retried",
            job_dir.root.name,
            type(exc).__name__,
            attempt.job_id,
            state,
        )
        return
    traceback.print_exc()  # submitit logs only what escapes; this one may not
    by_host = shutil.which("scontrol") is None  # inside an image without scontrol: the host's teardown requeues
    try:
        record = record_failure(
            job_dir,
            attempt,
            max_retries,
            "exception",
            f"{type(exc).__name__}: {exc}",
            stderr,
            retryable=not isinstance(exc, SpecError | UntrustedFile),  # a bad spec, a planted file: the same again
            requeue_by="teardown" if by_host else "task",
        )
    except UntrustedFile as refused:  # the run folder itself is not ours any more: nothing is written into it
        log.error("job %s: no failure record written: %s", job_dir.root.name, refused)
        return
    if not record.retry:
        log.error(
            "job %s failed (%d failure(s), max_retries %d): giving up", job_dir.root.name, record.failures, max_retries
        )
        return
    log.warning(
        "job %s failed (%d of %d retries): requeueing Slurm job %s",
        job_dir.root.name,
        record.failures,
        max_retries,
        attempt.job_id,
    )
    if by_host:
        sys.exit(1)  # non-zero: the teardown sees the failure record and requeues from the host
    requeue(attempt)
    sys.exit(-1)  # no result file: submitit's client keeps waiting, and the requeued job runs the pickle again


def describe_status(status: int) -> str:
    """srun's exit status -> words. 128+N: its task was killed by signal N."""
    if status > 128 and status - 128 < signal.NSIG:
        try:
            name = signal.Signals(status - 128).name
        except ValueError:
            name = f"signal {status - 128}"
        hint = " (the OOM killer, or someone killed it)" if status - 128 == signal.SIGKILL else ""
        return f"the job's process was killed by {name}{hint}; srun exited with {status}"
    return f"the job's process exited with status {status} without reporting an error"


def on_death(run_dir: Path, status: int, env: Mapping[str, str] | None = None) -> bool:
    """The teardown's decision after srun failed: True means requeue the job (the shell runs scontrol)."""
    from launcher.plan.persist import load_plan

    attempt = Attempt.from_env(env)
    if attempt is None:
        return False
    run = RunDir(run_dir)
    try:  # the pickle says which job this array element runs; a pickle is code: read through the checked run folder
        index = int(pickle.loads(run.read_bytes(run.submitted_pickle(attempt.job_id))).args[0])
        plan = load_plan(run_dir)
    except (OSError, ValueError, IndexError, EOFError, pickle.UnpicklingError, LauncherError) as exc:
        print(f"launcher.job.retries: cannot tell which job {attempt.job_id} ran: {exc}", file=sys.stderr)
        return False
    job_dir = plan.run.job(index)
    if all(plan.run.unit(u.unit_id).is_done() for u in plan.units):
        return False  # nothing left for it to do
    if needs_host_requeue(job_dir, attempt):
        print(f"launcher.job.retries: job {index}: failed inside the image; requeued by the host", file=sys.stderr)
        return True
    if already_handled(job_dir, attempt) or stopped_by_slurm(attempt):
        return False
    if status == 128 + signal.SIGUSR2:
        # USR2 came before submitit had installed its handler (the first second of the process): the job was
        # being preempted or timed out, as submitit would have requeued it. Not the job's fault: no retry used.
        mark_requeued(job_dir, attempt, "USR2 before the job's handler was ready")
        print(f"launcher.job.retries: job {index}: USR2 arrived before the handler; requeued", file=sys.stderr)
        return True
    record = record_failure(
        job_dir, attempt, plan.spec.slurm.max_retries, "died", describe_status(status), run.job_log(attempt.job_id)
    )
    print(
        f"launcher.job.retries: job {index}: {record.error}; failure {record.failures} of "
        f"{record.max_retries} allowed retries: " + ("requeued" if record.retry else "giving up"),
        file=sys.stderr,
    )
    return record.retry


def teardown_lines(python: str, run_dir: Path) -> list[str]:
    """Shell lines after submitit's srun: a task that died unreported gets its retry, and the job keeps srun's status
    (without `exit`, the job's state would be the teardown's). `python` is already quoted for the shell; it may
    run inside the image, where scontrol may be missing, so the host shell asks Slurm whether the job is still
    RUNNING (not being cancelled, timed out or preempted) and does the requeue itself."""
    import shlex

    guard = f'{python} -m launcher.job.retries {shlex.quote(str(run_dir))} "$launcher_rc"'
    # This job alone: an array element as <array>_<index>. Its SLURM_JOB_ID may be the array's own id (the element
    # started last keeps it), which scontrol takes as every element of the array.
    me = '"${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"'
    still_running = 'scontrol show job -o "$launcher_job" | grep -qw JobState=RUNNING'
    return [
        "launcher_rc=$?",
        f'launcher_job={me}; launcher_job="${{launcher_job:-$SLURM_JOB_ID}}"',
        f'if [ "$launcher_rc" -ne 0 ] && {still_running} && {guard}; then scontrol requeue "$launcher_job"; fi',
        'exit "$launcher_rc"',
    ]


def main(argv: list[str]) -> int:
    """`python -m launcher.job.retries RUN_DIR STATUS`: exit 0 when the job should be requeued."""
    run_dir, status = argv
    return 0 if on_death(Path(run_dir), int(status)) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
