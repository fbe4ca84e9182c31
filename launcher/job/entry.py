"""job/entry.py: one job (a Slurm array element, a local process, or `launcher run`) -> its GPUs -> one worker per
GPU group, all started at once -> their reports. A sweep over several models (`models:`) runs them one after the
other: each model's workers (its own layout: a bigger model may need more GPUs per engine) run its units, then stop.

The job counts the GPUs it was given and picks TP x DP (layout.py); with DP = 1 the worker runs in this process,
with DP > 1 each worker is a process of its own with its own CUDA_VISIBLE_DEVICES. Nothing serializes their engine
starts (compile_cache.py says how they share compiled graphs). A job that finds no unit left ends in seconds.

JobRunner is what submitit pickles: USR2 (preemption, time limit) makes every worker write what it finished and
give its units back, then submitit requeues; an exception is recorded in jobs/<index>/failures and the job is
requeued while slurm.max_retries allows (job/retries.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from submitit.core.utils import UncompletedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from launcher.engines import registry
from launcher.engines.multinode import NodeGroup, Rendezvous, serve_headless
from launcher.errors import UntrustedFile
from launcher.inputs.model import model_shape
from launcher.job.retries import Attempt, mark_requeued, on_exception, record_local_failure
from launcher.job.worker import PREEMPTED_EXIT, Worker, WorkerConfig
from launcher.plan import Plan
from launcher.plan.layout import ParallelLayout, allocated_gpus, choose_layout, choose_multinode_layout, gpu_info
from launcher.plan.persist import load_plan
from launcher.slurm_env import SlurmEnv
from launcher.store import AttemptRecord, JobDir, RunDir, WorkerReport
from launcher.store.claims import process_start

log = logging.getLogger("launcher.job")
STOP_GRACE_S = 60.0  # how long a preempted job waits for its worker processes to flush


def backend_guess(plan: Plan) -> str:
    """The backend the workers will pick, without importing it here (vLLM's import costs ~15 s, and the workers
    import it anyway): only its TP request depends on it. Each worker makes the real choice and reports it."""
    return registry.guess(plan.spec.model.backend).name


def job_layout(plan: Plan, model: str = "") -> ParallelLayout:
    spec = plan.spec.for_model(model)
    gpus = allocated_gpus()
    group = NodeGroup.current()
    if group is not None:  # one engine over every node of the step (engines/multinode.py)
        return choose_multinode_layout(
            model_shape(spec.model.path), gpus, group.nnodes, spec.model.tensor_parallel_size
        )
    tensor_parallel = registry.get(backend_guess(plan)).capabilities.tensor_parallel
    tp_request = spec.model.tensor_parallel_size if tensor_parallel else 1
    return choose_layout(
        model_shape(spec.model.path),
        gpus,
        gpu_info() if gpus.count else None,
        spec.model.gpu_memory_utilization,
        tp_request,
    )


class WorkerGroup:
    """One attempt of one job: its workers, in this process (DP = 1) or as child processes (DP > 1)."""

    def __init__(self, run_dir: Path, index: int, only_units: tuple[str, ...] | None = None) -> None:
        self.run_dir, self.index, self.only_units = Path(run_dir), index, only_units
        self.worker: Worker | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False  # preempted: no next model is started

    def run(self) -> dict[str, Any]:
        plan = load_plan(self.run_dir)
        started = time.time()
        units = [u for u in plan.units if self.only_units is None or u.unit_id in self.only_units]
        # models with units to run, from units.log (one read, not one stat per unit and job); a unit it missed
        # costs a worker that finds nothing and ends in seconds
        view = plan.run.unit_view()
        left = {
            u.model
            for u in units
            if u.unit_id not in view.done and (view.complete or not plan.run.unit(u.unit_id).is_done())
        }
        if not left:
            log.info("job %d: every unit is done; nothing to run", self.index)
            return {"job": self.index, "workers": [], "layout": None, "started": started, "ended": time.time()}
        results = []
        for chain in swap_chains(plan, [m for m in plan.spec.model_names() if m in left]):
            if self.stopping:
                break
            results.extend(self._run_chain(plan, chain))
        if len(results) == 1:
            return results[0]
        return {
            "job": self.index,
            "started": started,
            "ended": time.time(),
            "models": results,
            "workers": [w for r in results for w in r["workers"]],
        }

    def _run_chain(self, plan: Plan, chain: list[str]) -> list[dict[str, Any]]:
        """This job's workers for one model, or for several whose checkpoints swap into one running engine (same
        architecture, shape and tokenizer: swap_chains): they run each model's units until none is left."""
        started = time.time()
        layout = job_layout(plan, chain[0])
        named = f" ({', '.join(chain)})" if chain != [""] else ""
        log.info("job %d%s: %s", self.index, named, layout.reason)
        for note in layout.notes:
            log.warning("job %d: %s", self.index, note)
        if layout.data_parallel > 1:
            by_model = self._run_children(layout, chain)
            return [self._attempt(plan, model, layout, started, by_model[model]) for model in chain]
        out = []
        carry = None
        for i, model in enumerate(chain):
            if self.stopping:
                break
            cfg = WorkerConfig(
                self.run_dir, self.index, 0, layout.for_replica(0), layout.replica_gpus(0), self.only_units, model
            )
            self.worker = Worker(cfg, carry, keep_engine=i + 1 < len(chain))
            if self.stopping:  # stopped while the layout was chosen: stop() found no worker to tell
                self.worker.stop_now()
            t0 = time.time()
            report = self.worker.run()
            carry = self.worker.carry_out
            out.append(self._attempt(plan, model, layout, t0, [report]))
        if carry is not None:  # preempted between two models: nothing takes it over
            carry.engine.close()
        return out

    def _attempt(
        self, plan: Plan, model: str, layout: ParallelLayout, started: float, reports: list[WorkerReport]
    ) -> dict[str, Any]:
        attempt = AttemptRecord.new(
            job=self.index,
            started=started,
            ended=time.time(),
            layout=layout.as_dict(),
            model=model,
            workers=[r.get("slot") for r in reports],
            job_id=SlurmEnv.current().job_id,
            restart=SlurmEnv.current().restart,
        )
        job = plan.run.job(self.index)
        job.write(job.attempt_file(started, os.getpid(), model), attempt.to_json())
        return {**attempt.to_json(), "workers": reports}

    def _run_children(self, layout: ParallelLayout, models: list[str]) -> dict[str, list[WorkerReport]]:
        spec_json = json.dumps(layout.as_dict())
        self.children = []
        for r in range(layout.data_parallel):
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(layout.replica_gpus(r)))
            cmd = [
                sys.executable,
                "-m",
                "launcher.job.worker",
                str(self.run_dir),
                "--job",
                str(self.index),
                "--replica",
                str(r),
                "--layout",
                spec_json,
                *[arg for model in models if model for arg in ("--model", model)],
            ]
            for unit in self.only_units or ():
                cmd += ["--unit", unit]
            self.children.append(subprocess.Popen(cmd, env=env))  # all at once: their engine starts overlap
        codes = [p.wait() for p in self.children]
        reports = {model: self._child_reports([p.pid for p in self.children], model) for model in models}
        failed = [
            f"worker {self.index}.{r} exited with {c}" for r, c in enumerate(codes) if c not in (0, PREEMPTED_EXIT)
        ]
        if failed:
            raise RuntimeError(
                f"job {self.index}: {'; '.join(failed)}; finished records are kept, their units are "
                "taken by the other workers or a resubmit"
            )
        return reports

    def _child_reports(self, pids: list[int], model: str) -> list[WorkerReport]:
        plan_run = load_plan(self.run_dir).run
        restart = SlurmEnv.current().restart
        found = [
            plan_run.read_json(plan_run.worker_report(f"{self.index}.{r}", restart, pid, model))
            for r, pid in enumerate(pids)
        ]
        return [WorkerReport(**r) for r in found if r]  # type: ignore[typeddict-item]  # none: stopped before it

    def stop(self) -> None:
        """Preemption or time limit: every worker writes what it finished and gives its units back.

        Runs in submitit's USR2 handler, on the main thread, which is usually blocked in `_run_children`'s
        Popen.wait() on a child: that frame holds the child's waitpid lock, so a Popen.wait() here could never reap
        it and would spin for the whole grace time (past Slurm's GraceTime or signal delay: the job is then killed
        without its checkpoint). So it never waits through Popen: it watches /proc, where an exited child is a
        zombie until that outer wait reaps it."""
        self.stopping = True
        if self.worker is not None:
            self.worker.stop_now()
        for p in self.children:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGUSR2)
        deadline = time.time() + STOP_GRACE_S
        running = list(self.children)
        while running and time.time() < deadline:
            running = [p for p in running if p.returncode is None and process_start(p.pid) is not None]
            time.sleep(0.05)
        for p in running:
            log.warning("worker process %d did not stop in %.0f s", p.pid, STOP_GRACE_S)


def swap_chains(plan: Plan, models: list[str]) -> list[list[str]]:
    """The sweep's models in order, grouped: a model joins the group before it when its checkpoint can swap its
    weights into that group's running engine (engines/vllm/weight_swap.py: same architecture, shape and tokenizer) and
    gets the same layout. One engine starts per group."""
    from launcher.engines.startup import StartupSwitches

    chains: list[list[str]] = []
    swap_decision = registry.get(backend_guess(plan)).swap_decision  # None: the backend never swaps
    swap_on = StartupSwitches.from_env().on("swap") and swap_decision is not None
    group = NodeGroup.current()
    for model in models:
        if chains and swap_on and model and chains[-1][-1]:
            prev = chains[-1][-1]
            a, b = plan.spec.for_model(prev).model, plan.spec.for_model(model).model
            assert swap_decision is not None
            ok, why = swap_decision(a, b, group.nnodes if group is not None else 1)
            if ok and job_layout(plan, prev).as_dict() == job_layout(plan, model).as_dict():
                chains[-1].append(model)
                continue
            log.info("models %s -> %s: a new engine (%s)", prev, model, why)
        chains.append([model])
    return chains


def gather_if_done(run_dir: Path) -> None:
    """Gather once every unit is done (two local jobs finishing together take turns on the gather lock; the second
    finds the files written and writes nothing)."""
    plan = load_plan(run_dir)
    view = plan.run.unit_view()  # the units its log says are done need no stat each
    if not all(u.unit_id in view.done or plan.run.unit(u.unit_id).is_done() for u in plan.units):
        return
    from launcher.gather import GatherError, gather

    try:
        reports = gather(plan)
        log.info("gathered: %s", ", ".join(f"{r.label} -> {r.out_dir}" for r in reports))
    except GatherError as exc:
        log.error("gather failed: %s", exc)


def run_job(run_dir: Path, index: int = 0, only_units: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run job `index` of a run here, now (`launcher run`, tests): every unit it can claim."""
    return WorkerGroup(run_dir, index, only_units).run()


class JobRunner(Checkpointable):
    """What each array element runs, checkpointable, retried when it fails."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._group: WorkerGroup | None = None
        self._job_dir: JobDir | None = None
        self._stopping = False  # a local job told to stop (SIGTERM)

    def __call__(self, index: int) -> dict[str, Any]:
        if Attempt.from_env() is None:
            # A local job (submitit's local executor): submitit binds SIGTERM to a handler that only logs
            # "Bypassing signal SIGTERM" (on Slurm, USR2 is the stop signal). Here SIGTERM is how a user, `launcher
            # cancel` or Ctrl-C on `submit --wait` stops it: `kill <pid>` of the job's process reaches this one.
            signal.signal(signal.SIGTERM, self._stop_local)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
        group = NodeGroup.current()
        if group is not None and group.node_rank > 0:  # another node of a multi-node step: vLLM's workers only
            code = serve_headless(Path(self.run_dir), group)
            if code:
                sys.exit(code)  # non-zero: srun (--kill-on-bad-exit) ends the step; the teardown requeues it
            return {"job": index, "node_rank": group.node_rank, "headless": True}
        try:
            return self._run(index)
        finally:
            if group is not None:  # the other nodes leave once rank 0 is done, whatever the outcome
                Rendezvous(Path(self.run_dir), group).mark_done("ended")

    def _stop_local(self, signum: int, frame: Any) -> None:
        """SIGTERM to a local job: its workers write what they finished and give their units back, the job ends
        normally (no traceback) and `launcher status` says INTERRUPTED, with what resumes it."""
        if self._stopping:
            return
        self._stopping = True
        name = signal.Signals(signum).name
        log.warning("job: %s: stopping; every record written is kept", name)
        run = RunDir(Path(self.run_dir))
        with contextlib.suppress(OSError, UntrustedFile):  # a run folder not ours any more: nothing written into it
            run.write_json(
                run.interrupted,
                {"time": time.time(), "executor": "local", "by": f"{name} to the local job (pid {os.getpid()})"},
            )
        if self._group is not None:
            self._group.stop()

    def _run(self, index: int) -> dict[str, Any]:
        attempt = Attempt.from_env()
        plan = load_plan(Path(self.run_dir))
        job = plan.run.job(index)
        self._job_dir = job
        job.write(
            job.live,
            {  # status: which process, where, which restart
                "pid": os.getpid(),
                "host": os.uname().nodename,
                "started": time.time(),
                "job_id": attempt.job_id if attempt else None,
                "restart": attempt.restart if attempt else 0,
            },
        )
        self._group = WorkerGroup(Path(self.run_dir), index)
        self._group.stopping = self._stopping  # SIGTERM before the workers existed: none is started
        try:
            result = self._group.run()
            if attempt is None:  # a local job: no gather job follows it, so the last one to finish gathers
                gather_if_done(Path(self.run_dir))
            return result
        except UncompletedJobError:
            raise  # submitit's own verdict (timed out too many times): not a crash to retry
        except Exception as exc:
            if attempt is None:  # not a Slurm job (local executor): nothing to requeue, but status must say why
                record_local_failure(exc, index, job)
                raise
            on_exception(exc, attempt, job, plan.spec.slurm.max_retries, plan.run.job_log(attempt.job_id))
            raise

    def checkpoint(self, index: int) -> DelayedSubmission:
        if self._group is not None:
            self._group.stop()  # finished records reach the disk before the requeue
        if self._job_dir is not None:  # tells the teardown this attempt was requeued, not killed
            mark_requeued(self._job_dir, Attempt.from_env(), "USR2: preemption or time limit")
        return DelayedSubmission(JobRunner(self.run_dir), index)

    def __getstate__(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir, self._group, self._job_dir, self._stopping = state["run_dir"], None, None, False


__all__ = ["JobRunner", "WorkerGroup", "backend_guess", "job_layout", "run_job", "swap_chains"]
