"""submit/executors.py: Plan -> submitit array(s) of worker jobs (Slurm, or local processes for the demo) + a gather
job; run.json.

The array is one map_array call: one sbatch, however many jobs, unless the jobs outnumber the cluster's MaxArraySize:
then one array per MaxArraySize jobs (slurm_query.py), each job keeping its own index, and the gather job waits for
them all. Each element is a worker job
(job/entry.py: JobRunner) that claims units of work from the run directory until none is left, so the array's size
follows the GPUs the spec allows (slurm.max_gpus, slurm.jobs), not the number of units. Jobs are submitit
Checkpointables: on USR2 (preemption, time limit) their workers flush and give their units back, and the job
requeues; a job that raises or dies is requeued while slurm.max_retries allows (job/retries.py).
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from launcher.errors import Refused
from launcher.inputs.guard import write_record
from launcher.job.entry import JobRunner
from launcher.job.retries import teardown_lines
from launcher.plan import Plan
from launcher.plan.persist import ResolvedRun, save_plan
from launcher.spec import JobSpec
from launcher.store import OutputDir
from launcher.store.guard import guarded_argv
from launcher.store.modes import private_umask
from launcher.submit.lock import local_processes, refuse_if_local_run_lives, submit_lock
from launcher.submit.provenance import write_run_json
from launcher.submit.slurm_query import active_jobs, array_slices, max_array_size

# submitit writes --array=0-N%min(N+1, array_parallelism), 256 unless told: a spec without a limit means none.
MAX_ARRAY_SIZE = 100_000


def gather_job(run_dir: str) -> dict[str, Any]:
    """The job that runs after the array (afterany): merge, verify, summarize."""
    from launcher.gather import gather
    from launcher.plan.persist import load_plan

    reports = gather(load_plan(Path(run_dir)))
    return {r.label: {"records": r.records, "samples": r.samples, "quarantined": r.quarantined} for r in reports}


@dataclass
class Submission:
    run_dir: Path
    job_ids: list[str]
    gather_job_id: str | None
    jobs: list[Any]
    gather_job: Any
    units_done: int  # units already done before this submission
    units_todo: int


def executor_params(spec: JobSpec, run_dir: Path) -> dict[str, Any]:
    """submitit's parameters for the array, from the spec's slurm section (also what `launcher plan` shows)."""
    from launcher.plan.nodes import choose_nodes

    s = spec.slurm
    nodes = choose_nodes(spec).nodes
    params: dict[str, Any] = {
        "name": spec.name,
        "timeout_min": s.time_min,
        "nodes": nodes,
        "tasks_per_node": 1,
        "cpus_per_task": s.cpus_per_gpu * max(1, s.gpus_per_node),
        "slurm_signal_delay_s": s.signal_delay_s,
        # submitit caps arrays at %256 unless told; unset in the spec means no cap of ours
        "slurm_array_parallelism": s.array_parallelism or MAX_ARRAY_SIZE,
        # a task whose process dies (SIGKILL, OOM killer) cannot report it: the batch script does, after srun
        "slurm_teardown": teardown_lines(task_python(spec, run_dir), run_dir),
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if nodes > 1:
        # One task per node in one step: the loss of any rank (node failure, one node preempted) ends the whole step
        # at once, and the teardown requeues it (engines/multinode.py), instead of the other ranks waiting forever.
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
    optional = {
        "slurm_partition": s.partition,
        "slurm_account": s.account,
        "slurm_qos": s.qos,
        "slurm_constraint": s.constraint,
        "slurm_mem": s.mem,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if s.extra_args:
        params["slurm_additional_parameters"] = {k.replace("-", "_"): v for k, v in s.extra_args.items()}
    return params


def python_command(spec: JobSpec, run_dir: Path) -> str:
    """What Slurm (or the local executor) runs as 'python': the interpreter behind store/guard.py, which checks the
    run folder before submitit loads the job's pickle from it, or a shim that checks it and enters the container."""
    if spec.container.runtime == "none":
        return shlex.join(guarded_argv(run_dir, sys.executable))
    from launcher.containers.shim import container_python_argv

    return shlex.join(container_python_argv(spec, run_dir))


def task_python(spec: JobSpec, run_dir: Path) -> str:
    """The shell text that starts this run's Python on a compute node (inside the image if there is one)."""
    if spec.container.runtime == "none":
        return shlex.quote(sys.executable)
    return python_command(spec, run_dir)


def make_executor(spec: JobSpec, folder: Path, kind: str | None = None) -> submitit.Executor:
    kind = kind or spec.executor
    if kind == "local":
        # All array elements start at once as local processes: one math thread each, or they spin-wait on
        # each other's cores (measured: 8 tasks on 2 cores went from ~20 s to 96 s).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        local = submitit.LocalExecutor(folder=folder, python=python_command(spec, folder.parent))
        # submitit sets each local job's CUDA_VISIBLE_DEVICES to range(gpus_per_node) unless told which: pass the
        # GPUs this process sees (numbered as the machine numbers them), or a job would see none, or the wrong ones.
        from launcher.plan.layout import allocated_gpus

        ids = [int(x) for x in allocated_gpus().ids if x.isdigit()]
        local.update_parameters(timeout_min=spec.slurm.time_min, gpus_per_node=len(ids), visible_gpus=ids)
        return local
    ex = submitit.AutoExecutor(
        folder=folder,
        cluster="slurm",
        slurm_max_num_timeout=spec.slurm.max_requeues,
        slurm_python=python_command(spec, folder.parent),
    )
    ex.update_parameters(**executor_params(spec, folder.parent))
    return ex


def pending_units(plan: Plan) -> list[str]:
    """Units not done. A unit marked done whose chunks are missing or fail their checksum is reopened here: the
    next workers regenerate exactly its missing records."""
    todo = []
    for unit in plan.units:
        udir = plan.run.unit(unit.unit_id)
        if udir.is_done():
            problems = udir.verify()
            if not problems:
                continue
            udir.reopen("; ".join(problems))
        todo.append(unit.unit_id)
    return todo


def submit(
    plan: Plan, kind: str | None = None, resolved: ResolvedRun | None = None, resume_with: str | None = None
) -> Submission:
    """Worker jobs for every unit not done, as one array (+ the gather job after it). Refused while the run still
    has jobs in Slurm or local processes working on it: two sets of workers are safe (claims), but a second
    submit would count retries and record submissions against the wrong array. resume_with: the command that goes
    on with this run, for its hints (default: `launcher submit` of its spec)."""
    spec = plan.spec
    run = plan.run
    kind = kind or spec.executor
    if kind == "slurm":
        from launcher.submit.fit import require_slurm

        require_slurm()  # before the run folder exists: no Slurm here means nothing written
    OutputDir(run.output_dir, spec.output.share).create()  # with the spec's share, before the run folder in it
    with submit_lock(run.submit_lock) as lock:
        todo = pending_units(plan)
        # A local run's processes outlive the submit that started them: refused while one works on the run
        # (submit_lock.py says why the lock file records them rather than holding the flock).
        refuse_if_local_run_lives(lock, run.root, set(range(plan.jobs)) if todo else set())
        if kind == "slurm":
            busy = active_jobs(run.read_run())
            if busy:
                raise Refused.one(
                    str(run.root),
                    "",
                    f"run {run.run_id} still has {len(busy)} job(s) in Slurm "
                    f"({', '.join(busy[:4])}{', ...' if len(busy) > 4 else ''})",
                    fix=f"wait for them, or `launcher cancel {run.root}` first (finished records are kept)",
                )
        save_plan(plan)
        # Before any job starts: what its workers check every unit's inputs against (inputs/guard.py)
        write_record(
            run,
            resolved.inputs if resolved else None,
            resolved.command if resolved else "launcher submit SPEC",
            resolved.new_run if resolved else "launcher submit SPEC --new-run",
            resolved.prompt_clock if resolved else None,
        )
        if spec.container.runtime != "none":
            from launcher.containers.shim import write_spec_request

            write_spec_request(spec, run.root)
        jobs = min(plan.jobs, len(todo))
        # Units count failures per submission (a resubmit gives a failing unit its retries again): the id travels
        # to every job through the environment (sbatch exports it; local processes inherit it).
        os.environ["LAUNCHER_SUBMISSION"] = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        ex = make_executor(spec, run.logs, kind)
        # private_umask: the pickles, the sbatch script, the jobs' logs and files are private run state
        with private_umask(), _children_ignore_sigint(kind == "local"):
            handles = []
            for part in array_slices(jobs, max_array_size() if kind == "slurm" else None):
                handles += ex.map_array(JobRunner(str(run.root)), list(part))
        job_ids = [j.job_id for j in handles]
        # local: the job id is the pid of submitit's controller process, one per job
        lock.record(local_processes(map(int, job_ids), range(jobs)) if kind == "local" else [])
        with private_umask():
            gather = submit_gather(plan, job_ids) if kind == "slurm" and spec.slurm.gather else None
        write_run_json(plan, job_ids, gather.job_id if gather else None, kind, jobs, len(todo), resolved, resume_with)
    return Submission(
        run.root, job_ids, gather.job_id if gather else None, handles, gather, len(plan.units) - len(todo), len(todo)
    )


@contextmanager
def _children_ignore_sigint(local: bool) -> Iterator[None]:
    """Local jobs start with SIGINT ignored (inherited through exec): Ctrl-C in the terminal reaches the whole
    foreground process group, and submitit's controller would die of it with a KeyboardInterrupt traceback on the
    user's terminal and SIGKILL its task a second later, mid-write. `launcher submit --wait` instead stops them
    with SIGTERM (job/entry.py: the job flushes, gives its units back and exits); `launcher cancel` does the same."""
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def submit_gather(plan: Plan, job_ids: list[str]) -> Any:
    """`launcher gather` as a job that starts when every task has ended, whatever the outcome (afterany): it
    writes the outputs, or fails listing what is missing."""
    spec = plan.spec
    gex = submitit.AutoExecutor(folder=plan.run.logs, cluster="slurm", slurm_python=python_command(spec, plan.run.root))
    # The tasks' own limit, within 10..60 min: a long limit would keep the backfill scheduler from starting the
    # gather job next to a higher-priority job that waits for resources (it reserves the whole node ahead).
    params: dict[str, Any] = {
        "name": f"{spec.name}-gather",
        "timeout_min": min(60, max(10, spec.slurm.time_min)),
        "cpus_per_task": 1,
        "nodes": 1,
        "tasks_per_node": 1,
    }
    for key, value in (
        ("slurm_partition", spec.slurm.partition),
        ("slurm_account", spec.slurm.account),
        ("slurm_qos", spec.slurm.qos),
    ):
        if value:
            params[key] = value
    if job_ids:  # every array of the run (one per MaxArraySize jobs)
        arrays = sorted({j.split("_")[0] for j in job_ids}, key=int)
        params["slurm_additional_parameters"] = {"dependency": "afterany:" + ":".join(arrays)}
    gex.update_parameters(**params)
    return gex.submit(gather_job, str(plan.run.root))
