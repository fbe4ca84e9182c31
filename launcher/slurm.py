"""slurm.py: Plan -> submitit array (Slurm, or local processes for the demo) + a gather job; run.json.

The whole array is one map_array call: one sbatch, however many tasks. Tasks are submitit Checkpointables: on
USR2 (preemption, time limit) they flush finished records and requeue; on restart they resume from disk. A task
that raises or dies is requeued while slurm.max_retries allows (retries.py keeps the count on disk).
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths, UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from . import __version__
from .outputs import TaskStore, sha256_file, write_json_atomic
from .plan import Plan, RunPaths
from .retries import Attempt, mark_requeued, teardown_lines
from .run_state import load_run, read_run_json, save_plan
from .spec import JobSpec
from .submit_lock import local_processes, refuse_if_local_run_lives, submit_lock

# submitit writes --array=0-N%min(N+1, array_parallelism), 256 unless told: a spec without a limit means none.
MAX_ARRAY_SIZE = 100_000
SECRET_HINTS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")


class TaskRunner(Checkpointable):
    """What each array element runs: `run_task(run_dir, index)`, checkpointable, retried when it fails.

    USR2 (preemption, time limit): flush finished records, requeue (submitit). An exception: record it in the task's
    failures/ and requeue the job while retries remain (slurm.max_retries), else fail with the record and log tail.
    """

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._live: Any = None
        self._task_dir: Path | None = None

    def __call__(self, index: int) -> dict[str, Any]:
        import logging

        from .runner import TaskRun

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
        attempt = Attempt.from_env()
        spec, tasks = load_run(Path(self.run_dir))
        task_dir = self._task_dir = RunPaths(Path(spec.output.dir), spec.run_id).task_dir(tasks[index])
        write_json_atomic(task_dir / "live.json", {  # status: which process, where, which restart
            "pid": os.getpid(), "host": os.uname().nodename, "started": time.time(),
            "job_id": attempt.job_id if attempt else None, "restart": attempt.restart if attempt else 0})
        self._live = TaskRun(Path(self.run_dir), index)
        try:
            result: dict[str, Any] = self._live.run()
            return result
        except UncompletedJobError:
            raise  # submitit's own verdict (timed out too many times): not a crash to retry
        except Exception as exc:
            if attempt is None:  # not a Slurm job (local executor): nothing to requeue
                raise
            self._record_failure(exc, attempt, task_dir, spec, tasks[index].task_id)
            raise

    def _record_failure(self, exc: Exception, attempt: Attempt, task_dir: Path, spec: JobSpec, task_id: str) -> None:
        import logging
        import traceback

        from .errors import SpecError
        from .retries import record_failure, requeue, stopped_by_slurm

        log = logging.getLogger("launcher.slurm")
        state = stopped_by_slurm(attempt)
        if state:  # scancel, time limit: Slurm is stopping the job, and its processes die of that
            log.warning("task %s: %s while Slurm stops job %s (%s): not a failure, not retried", task_id,
                        type(exc).__name__, attempt.job_id, state)
            return
        traceback.print_exc()  # submitit logs only what escapes; this one may not
        stderr = JobPaths(Path(self.run_dir) / "logs", job_id=attempt.job_id, task_id=0).stderr
        # Inside an image without scontrol the host-side teardown does the requeue, reading this record.
        by_host = shutil.which("scontrol") is None
        record = record_failure(task_dir, attempt, spec.slurm.max_retries, "exception", f"{type(exc).__name__}: {exc}",
                                stderr, retryable=not isinstance(exc, SpecError),  # a bad spec fails the same way again
                                requeue_by="teardown" if by_host else "task")
        if not record["retry"]:
            log.error("task %s failed (%d failure(s), max_retries %d): giving up", task_id, record["failures"],
                      spec.slurm.max_retries)
            return
        log.warning("task %s failed (%d of %d retries): requeueing job %s", task_id, record["failures"],
                    spec.slurm.max_retries, attempt.job_id)
        if by_host:
            sys.exit(1)  # non-zero: the teardown sees the failure record and requeues from the host
        requeue(attempt)
        # No result file: submitit's client keeps waiting, and the requeued job runs the same pickle again.
        sys.exit(-1)

    def checkpoint(self, index: int) -> DelayedSubmission:
        if self._live is not None:
            self._live.checkpoint()  # finished records reach the disk before the requeue
        if self._task_dir is not None:  # tells the teardown this attempt was requeued, not killed
            mark_requeued(self._task_dir, Attempt.from_env(), "USR2: preemption or time limit")
        return DelayedSubmission(TaskRunner(self.run_dir), index)

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir, self._live, self._task_dir = state["run_dir"], None, None


def gather_job(run_dir: str) -> dict[str, Any]:
    """The job that runs after the array (afterany): merge, verify, summarize."""
    from .gather import gather
    from .run_state import load_plan

    reports = gather(load_plan(Path(run_dir)))
    return {f"{r.dataset}/{r.ablation}": {"records": r.records, "samples": r.samples, "quarantined": r.quarantined}
            for r in reports}


@dataclass
class Submission:
    run_dir: Path
    job_ids: list[str]
    gather_job_id: str | None
    jobs: list[Any]
    gather_job: Any
    skipped_done: int


def executor_params(spec: JobSpec) -> dict[str, Any]:
    """submitit's parameters for the array, from the spec's slurm section (also what `launcher plan` shows)."""
    s = spec.slurm
    params: dict[str, Any] = {
        "name": spec.name,
        "timeout_min": s.time_min,
        "nodes": s.nodes,
        "tasks_per_node": 1,
        "cpus_per_task": s.cpus_per_gpu * max(1, s.gpus_per_node),
        "slurm_signal_delay_s": s.signal_delay_s,
        # submitit caps arrays at %256 unless told; unset in the spec means no cap of ours
        "slurm_array_parallelism": s.array_parallelism or MAX_ARRAY_SIZE,
        # a task whose process dies (SIGKILL, OOM killer) cannot report it: the batch script does, after srun
        "slurm_teardown": teardown_lines(task_python(spec), RunPaths.of(spec).run_dir),
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    optional = {"slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
                "slurm_constraint": s.constraint, "slurm_mem": s.mem}
    params.update({k: v for k, v in optional.items() if v is not None})
    if s.extra_args:
        params["slurm_additional_parameters"] = {k.replace("-", "_"): v for k, v in s.extra_args.items()}
    return params


def python_command(spec: JobSpec, run_dir: Path) -> str | None:
    """What Slurm runs as 'python': the plain interpreter, or a shim that enters the container at run time."""
    if spec.container.runtime == "none":
        return None
    from .container_exec import container_python_argv

    return shlex.join(container_python_argv(spec, run_dir))


def task_python(spec: JobSpec) -> str:
    """The shell text that starts this run's Python on a compute node (inside the image if there is one)."""
    return python_command(spec, RunPaths.of(spec).run_dir) or shlex.quote(sys.executable)


def make_executor(spec: JobSpec, folder: Path, kind: str | None = None) -> submitit.Executor:
    kind = kind or spec.executor
    if kind == "local":
        # All array elements start at once as local processes: one math thread each, or they spin-wait on
        # each other's cores (measured: 8 tasks on 2 cores went from ~20 s to 96 s).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        local = submitit.LocalExecutor(folder=folder)
        local.update_parameters(timeout_min=spec.slurm.time_min, gpus_per_node=0)
        return local
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=spec.slurm.max_requeues,
                               slurm_python=python_command(spec, folder.parent))
    ex.update_parameters(**executor_params(spec))
    return ex


def pending_tasks(plan: Plan) -> list[int]:
    return [t.index for t in plan.tasks if not TaskStore(plan.paths.task_dir(t)).is_done()]


def submit(plan: Plan, kind: str | None = None, indices: Sequence[int] | None = None) -> Submission:
    """Every unfinished task as one array (+ the gather job after it). Refused while the run still has tasks in
    Slurm: two arrays of one run would generate the same records twice."""
    spec = plan.spec
    paths = plan.paths
    kind = kind or spec.executor
    with submit_lock(paths.lock) as lock:
        # A local run's processes outlive the submit that started them: refused while one works on a task that is
        # not done (submit_lock.py says why the lock file records them rather than holding the flock).
        refuse_if_local_run_lives(lock, paths.run_dir, set(pending_tasks(plan)))
        if kind == "slurm":
            busy = active_jobs(read_run_json(paths.run_dir))
            if busy:
                raise RuntimeError(f"run {spec.run_id} still has {len(busy)} task job(s) in Slurm "
                                   f"({', '.join(busy[:4])}{', ...' if len(busy) > 4 else ''}); wait for them, or "
                                   f"`launcher cancel {paths.run_dir}` first (finished records are kept)")
        save_plan(plan)
        if spec.container.runtime != "none":
            from .container_exec import write_spec_request

            write_spec_request(spec, paths.run_dir)
        todo = list(indices) if indices is not None else pending_tasks(plan)
        skipped = len(plan.tasks) - len(todo)
        ex = make_executor(spec, paths.logs, kind)
        jobs = ex.map_array(TaskRunner(str(paths.run_dir)), todo) if todo else []
        job_ids = [j.job_id for j in jobs]
        # local: the job id is the pid of submitit's controller process, one per task, in the order of todo
        lock.record(local_processes(map(int, job_ids), todo) if kind == "local" else [])
        gather = submit_gather(plan, job_ids) if kind == "slurm" and spec.slurm.gather else None
        write_run_json(plan, job_ids, gather.job_id if gather else None, kind, todo)
    return Submission(paths.run_dir, job_ids, gather.job_id if gather else None, jobs, gather, skipped)


def submit_gather(plan: Plan, job_ids: list[str]) -> Any:
    """`launcher gather` as a job that starts when every task has ended, whatever the outcome (afterany): it
    writes the outputs, or fails listing what is missing."""
    spec = plan.spec
    gex = submitit.AutoExecutor(folder=plan.paths.logs, cluster="slurm",
                                slurm_python=python_command(spec, plan.paths.run_dir))
    # The tasks' own limit, within 10..60 min: a long limit would keep the backfill scheduler from starting the
    # gather job next to a higher-priority job that waits for resources (it reserves the whole node ahead).
    params: dict[str, Any] = {"name": f"{spec.name}-gather", "timeout_min": min(60, max(10, spec.slurm.time_min)),
                              "cpus_per_task": 1, "nodes": 1, "tasks_per_node": 1}
    for key, value in (("slurm_partition", spec.slurm.partition), ("slurm_account", spec.slurm.account),
                       ("slurm_qos", spec.slurm.qos)):
        if value:
            params[key] = value
    if job_ids:
        params["slurm_additional_parameters"] = {"dependency": f"afterany:{job_ids[0].split('_')[0]}"}
    gex.update_parameters(**params)
    return gex.submit(gather_job, str(plan.paths.run_dir))


def task_job_ids(run: dict[str, Any]) -> list[str]:
    """The Slurm job ids (array ids, or single job ids) of every submission of a run."""
    return sorted({j.split("_")[0] for s in run.get("submissions", []) if s.get("executor", "slurm") == "slurm"
                   for j in s.get("job_ids", [])}, key=int)


def active_jobs(run: dict[str, Any]) -> list[str]:
    """Task jobs of the run that Slurm still holds (pending, running, requeued, completing)."""
    ids = task_job_ids(run)
    if not ids or not shutil.which("squeue"):
        return []
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.split() if out.returncode == 0 else []  # 1: none of the ids is known any more


def write_run_json(plan: Plan, job_ids: list[str], gather_id: str | None, executor: str, indices: list[int]) -> None:
    spec = plan.spec
    previous = read_run_json(plan.paths.run_dir)
    submissions = [*previous.get("submissions", []), {
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "executor": executor, "job_ids": job_ids,
        "array_job_id": job_ids[0].split("_")[0] if job_ids else None, "gather_job_id": gather_id,
        "task_indices": indices,
        "user": getpass.getuser(), "host": os.uname().nodename}]
    write_json_atomic(plan.paths.run_json, {
        "run_id": spec.run_id, "name": spec.name, "spec": redact(spec.model_dump(mode="json")),
        "fingerprint": spec.fingerprint(), "tasks": len(plan.tasks), "records": plan.total_records,
        "launcher_version": __version__, "git_sha": git_sha(), "python": sys.version.split()[0],
        "image": image_record(spec), "submissions": submissions,
    })


def redact(obj: Any) -> Any:
    """Values of env-like keys that look secret never reach run.json."""
    if isinstance(obj, dict):
        return {k: "<redacted>" if any(h in str(k).upper() for h in SECRET_HINTS) and isinstance(v, str) else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def image_record(spec: JobSpec) -> dict[str, Any]:
    c = spec.container
    if c.runtime == "none" or not c.image:
        return {"runtime": "none", "python": sys.executable}
    record: dict[str, Any] = {"runtime": c.runtime, "image": c.image}
    path = Path(c.image)
    if c.runtime in {"apptainer", "singularity"} and path.is_file():
        record["sha256"] = sha256_file(path)
    elif c.runtime in {"docker", "podman"}:
        try:
            out = subprocess.run([c.runtime, "image", "inspect", "--format", "{{.Id}}", c.image], capture_output=True,
                                 text=True, timeout=30)
            if out.returncode == 0:
                record["id"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return record

