"""slurm.py: Plan -> submitit array (Slurm, or local processes for the demo) + a gather job; run.json.

The whole array is one map_array call: one sbatch, however many tasks. Tasks are submitit Checkpointables: on
USR2 (preemption, time limit) they flush finished records and requeue; on restart they resume from disk.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from . import __version__
from .outputs import TaskStore, write_json_atomic
from .plan import Plan
from .run_state import read_run_json, save_plan
from .spec import JobSpec

SECRET_HINTS = ("TOKEN", "SECRET", "PASSWORD", "KEY", "CREDENTIAL")


class TaskRunner(Checkpointable):
    """What each array element runs: `run_task(run_dir, index)`, checkpointable."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._live: Any = None

    def __call__(self, index: int) -> dict[str, Any]:
        import logging

        from .runner import TaskRun

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
        self._live = TaskRun(Path(self.run_dir), index)
        return self._live.run()  # type: ignore[no-any-return]

    def checkpoint(self, index: int) -> DelayedSubmission:
        if self._live is not None:
            self._live.checkpoint()  # finished records reach the disk before the requeue
        return DelayedSubmission(TaskRunner(self.run_dir), index)

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir, self._live = state["run_dir"], None


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
    """submitit's parameters for the array, from the spec's slurm section."""
    s = spec.slurm
    params: dict[str, Any] = {
        "name": spec.name,
        "timeout_min": s.time_min,
        "nodes": s.nodes,
        "tasks_per_node": 1,
        "cpus_per_task": s.cpus_per_gpu * max(1, s.gpus_per_node),
        "slurm_signal_delay_s": s.signal_delay_s,
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    optional = {"slurm_partition": s.partition, "slurm_account": s.account, "slurm_qos": s.qos,
                "slurm_constraint": s.constraint, "slurm_array_parallelism": s.array_parallelism, "slurm_mem": s.mem}
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


def make_executor(spec: JobSpec, folder: Path, kind: str | None = None) -> submitit.Executor:
    kind = kind or spec.executor
    if kind == "local":
        # All array elements start at once as local processes: one math thread each, or they spin-wait on
        # each other's cores (measured: 8 tasks on 2 cores went from ~20 s to 96 s).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=spec.slurm.time_min, gpus_per_node=0)
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=spec.slurm.max_requeues,
                               slurm_python=python_command(spec, folder.parent))
    ex.update_parameters(**executor_params(spec))
    return ex


@contextmanager
def submit_lock(path: Path) -> Iterator[None]:
    """Two submits of one run at once would race on the same task outputs: the second is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(f"another `launcher submit` of this run holds {path} ({f.read().strip() or 'pid unknown'});"
                               " wait for it, or check `launcher status`") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def pending_tasks(plan: Plan) -> list[int]:
    return [t.index for t in plan.tasks if not TaskStore(plan.paths.task_dir(t)).is_done()]


def submit(plan: Plan, kind: str | None = None, indices: Sequence[int] | None = None) -> Submission:
    spec = plan.spec
    paths = plan.paths
    with submit_lock(paths.lock):
        save_plan(plan)
        todo = list(indices) if indices is not None else pending_tasks(plan)
        skipped = len(plan.tasks) - len(todo)
        ex = make_executor(spec, paths.logs, kind)
        jobs = ex.map_array(TaskRunner(str(paths.run_dir)), todo) if todo else []
        job_ids = [j.job_id for j in jobs]
        gather = None
        if (kind or spec.executor) == "slurm" and spec.slurm.gather:
            gex = submitit.AutoExecutor(folder=paths.logs, cluster="slurm")
            gparams: dict[str, Any] = {"name": f"{spec.name}-gather", "timeout_min": 60, "cpus_per_task": 1,
                                       "nodes": 1, "tasks_per_node": 1}
            if spec.slurm.partition:
                gparams["slurm_partition"] = spec.slurm.partition
            if spec.slurm.account:
                gparams["slurm_account"] = spec.slurm.account
            if job_ids:
                array_id = job_ids[0].split("_")[0]
                gparams["slurm_additional_parameters"] = {"dependency": f"afterany:{array_id}"}
            gex.update_parameters(**gparams)
            gather = gex.submit(gather_job, str(paths.run_dir))
        write_run_json(plan, job_ids, gather.job_id if gather else None, kind or spec.executor, todo)
    return Submission(paths.run_dir, job_ids, gather.job_id if gather else None, jobs, gather, skipped)


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
        return {k: ("<redacted>" if any(h in str(k).upper() for h in SECRET_HINTS) and isinstance(v, str) else redact(v))
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


def image_record(spec: JobSpec) -> dict[str, Any] | None:
    c = spec.container
    if c.runtime == "none" or not c.image:
        return None
    record: dict[str, Any] = {"runtime": c.runtime, "image": c.image}
    path = Path(c.image)
    if c.runtime in {"apptainer", "singularity"} and path.is_file():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        record["sha256"] = h.hexdigest()
    elif c.runtime in {"docker", "podman"}:
        try:
            out = subprocess.run([c.runtime, "image", "inspect", "--format", "{{.Id}}", c.image], capture_output=True,
                                 text=True, timeout=30)
            if out.returncode == 0:
                record["id"] = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return record


def current_user() -> str:
    return getpass.getuser()
