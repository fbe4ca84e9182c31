"""job/worker.py: one engine (one TP group) that starts once and runs unit after unit until none is left.

    claim a unit (file operations) -> start the engine, the tokenizer and the first group's records on a thread
    beside it (job/start.py, job/host_prep.py) -> feed it the group's requests; when they are all in, claim the next
    unit, or the next group in prefix order (job/order.py), and keep feeding (the batch never drains between units)
    -> each finished record goes to the chunk writer -> a unit whose rows are all written is marked done -> no unit
    left: stop.

Claims (store/claims.py) make each unit run by one worker at a time and let a dead worker's unit be taken over;
which unit to try next is the claim cursor's choice (job/claim_cursor.py: this worker's stride of the candidates
first, what units.log says is done or held skipped), so a claim costs a bounded number of file operations;
chunks make a kill lose at most the records not yet written. A record the engine cannot generate is quarantined
alone (Completion.error); a unit whose input as a whole fails is blamed, and anything else that raises is recorded
as the worker's failure. Every figure in the worker's report (job/live_report.py) is wall clock: `first_request_at`
-> `last_write_at` is its generation window, `started` -> `ended` its whole life.

This module holds the engine's life (start beside the host-side start-up, hand over to the sweep's next model,
stop, fail); the claims are job/unit_claims.py's, the requests and completions job/feed.py's, the report
job/live_report.py's.

`python -m launcher.job.worker RUN_DIR --job J --replica R --layout JSON` runs one in its own process (a job with
several data-parallel workers starts one per TP group; job/worker_cli.py).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from launcher.engines import registry
from launcher.engines.base import Engine, Workload
from launcher.engines.multinode import NodeGroup, Rendezvous
from launcher.engines.registry import select as select_backend
from launcher.inputs.guard import InputGuard, read_record, run_clock
from launcher.job import start
from launcher.job.claim_cursor import ClaimCursor, worker_position
from launcher.job.feed import Feed, Stopped
from launcher.job.gpu_monitor import GpuSampler
from launcher.job.host_prep import HostPrep, phase_seconds
from launcher.job.live_report import LiveReport
from launcher.job.order import FeedOrder, feed_order
from launcher.job.prepare import Preparer, load_tokenizer
from launcher.job.prompt_stats import cached_stats, prompt_stats, workload_of
from launcher.job.unit_claims import FreeUnit, UnitClaims
from launcher.job.worker_config import WorkerConfig
from launcher.job.writer import ActiveUnit, ChunkWriter
from launcher.plan import Plan
from launcher.plan.persist import load_plan
from launcher.plan.units import workers_per_job
from launcher.store import Owner, RunDir, WorkerReport

log = logging.getLogger("launcher.job")
PREEMPTED_EXIT = 75  # a worker process stopped by USR2/TERM: it flushed and released its units
RUN_STATS_EVERY_S = 30.0  # how often a worker sized from its first group looks for the run's prompt statistics


class Worker:
    def __init__(self, cfg: WorkerConfig, carry: start.Carry | None = None, keep_engine: bool = False) -> None:
        """`carry`: the running engine of the sweep's previous model, whose weights this worker swaps (start.py);
        `keep_engine`: the next model will swap into this worker's engine, so a worker that finishes leaves it
        running (in `carry_out`)."""
        self.cfg = cfg
        self.carry, self.keep_engine = carry, keep_engine
        self.carry_out: start.Carry | None = None
        self.plan: Plan = load_plan(cfg.run_dir)
        self.spec = self.plan.spec.for_model(cfg.model)  # model.path: this engine's checkpoint
        self.rundir: RunDir = self.plan.run
        self.rundir.keep_open()  # claims, heartbeats, chunks: reached from its descriptor (store/kept.py)
        self.owner = Owner.me(cfg.slot)
        position = worker_position(cfg.job_index, cfg.replica, self.plan.jobs, workers_per_job(self.plan.spec))
        cursor = ClaimCursor(self.rundir.unit_view(), self.owner, *position)
        self.claims = UnitClaims(self.plan, self.owner, cursor, cfg.model, cfg.only_units, self._warn)
        self.writer: ChunkWriter | None = None
        self.engine: Engine | None = None
        self._stats_partial_at: float | None = None  # sized without the run's prompt statistics: when last looked
        self._token_limit: int | None = None
        self.gpus = GpuSampler(cfg.gpu_ids)  # started with the first request: figures cover generation only
        self.live = LiveReport(cfg, self.owner, self.rundir, self.claims, self.gpus)
        self.report: WorkerReport = self.live.report

    @property
    def stop_requested(self) -> bool:
        return self.claims.stopping

    @property
    def order(self) -> FeedOrder | None:
        return self.claims.order

    def _warn(self, message: str) -> None:
        self.live.warn(message)

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> WorkerReport:
        """Claim a unit -> start the engine (or swap the carried engine's weights) with the host-side start-up on a
        thread beside it (job/host_prep.py: tokenizer, prefix order, the first group, prompt statistics) -> refine
        admission from the measured prompts -> generate."""
        if self.stop_requested:  # told to stop before it started (a local job's SIGTERM): claims nothing
            self._hand_over_or_close()
            self.live.set(ended=time.time())
            self.live.write()
            return self.report
        spec = self.spec
        phases = self.report["startup_phases"]
        heartbeat = threading.Thread(target=self.live.heartbeat, name="worker-heartbeat", daemon=True)
        prep: HostPrep | None = None
        try:  # everything, the first claim and the host-side thread's work included: whatever raises is recorded
            self.writer = self.live.writer = ChunkWriter(spec.output.chunk_records, self.cfg.slot)
            # Claim before starting an engine (a few file operations): a worker with nothing to do exits in seconds.
            # The unit's records are read and tokenized beside the engine's start.
            claimed = self.claims.pending = self._claim_free()
            if claimed is None:
                return self._idle(heartbeat_started=False)
            heartbeat.start()
            walls: dict[str, list[float]] = {"backend_import": [time.time(), 0.0]}
            backend, why = select_backend(spec.model)  # imports the backend (vLLM: ~3-20 s)
            walls["backend_import"][1] = time.time()
            phases["backend_import_s"] = round(walls["backend_import"][1] - walls["backend_import"][0], 3)
            self._warn_backend(backend, why)
            limit = start.record_limit(spec, self.cfg.layout, backend)
            prep = self._host_prep(claimed, limit.tokens)
            bound = Workload.bound(
                sum(u.rows for u in self.claims.candidates()),
                spec.sampling.max_tokens,
                spec.data.num_samples,
                limit.tokens,
            )
            self.live.set(backend=backend, backend_reason=why, state="loading")
            walls["engine"] = [time.time(), 0.0]
            report = start.open_engine(self, backend, bound, prep)
            engine = self.engine
            assert engine is not None
            ready_at = walls["engine"][1] = time.time()
            t1 = time.perf_counter()
            host = prep.result()  # ran beside the engine's start: the wait here is what stayed on the critical path
            phases["host_wait_s"] = round(time.perf_counter() - t1, 3)
            phases.update(phase_seconds(prep.timeline))
            self.live.set(startup_timeline=start.timeline(self.report["started"], walls, prep.timeline))
            if limit.why:
                report.reasons["record_token_limit"] = limit.why
            if self.order is not None:  # a scheduling choice, shown with the engine's settings and why
                report.settings["prefix_order"] = "on" if self.order.active else "off"
                report.reasons["prefix_order"] = self.order.decision.reason
            self.carry_out = start.Carry(engine, backend, why, host.tokenizer, host.preparer)
            if self.stop_requested:
                raise Stopped()
            if not host.first:
                return self._idle(heartbeat_started=True)
            todo = self.claims.todo()
            stats = host.stats
            if any(u.unit_id not in stats for u in todo):
                # another worker measures the run's prompts (job/prompt_stats.py): sized from this worker's first
                # group for now, refined once they are in (_refine_from_run_stats)
                stats = {**_group_stats(host.first), **stats}
                self._stats_partial_at = time.monotonic()
            self._token_limit = limit.tokens
            workload = workload_of(stats, todo or [a.prepared.unit for a in host.first], spec, limit.tokens)
            engine.refine(workload)
            self.live.engine_ready(report, ready_at, workload.__dict__)
            log.info(
                "worker %s: %s %s on %s, ready %.1f s after the worker started",
                self.cfg.slot,
                report.backend,
                report.version,
                report.gpu_name or report.device,
                ready_at - self.report["started"],
            )
            feed = Feed(
                self.claims,
                self.writer,
                self.live,
                self.gpus,
                self._next_group,
                spec.output.token_ids,
                self.cfg.replica,
            )
            feed.run(engine, host.first, host.preparer)
            self.writer.close()
            self.live.set(state="done")
        except Stopped:
            self.live.set(state="preempted")
        except KeyboardInterrupt:
            # Ctrl-C on `launcher submit --wait` or `launcher run` reaches the whole process group: the user stopped
            # the run. Not a failure: no unit is blamed, and status says INTERRUPTED, not FAILED.
            self.live.set(state="interrupted")
            raise
        except BaseException as exc:
            if self.stop_requested:
                # Preempted or timed out while the worker runs in the job's own process (DP = 1): submitit's USR2
                # handler ran the checkpoint (stop_now: chunks flushed, units given back), then exits from the
                # handler (SystemExit). Not a failure of the units this worker held.
                self.live.set(state="preempted")
                raise
            if prep is not None and prep.started:
                prep.finished(60)  # its first group must be among the claims before the units are given back
            self._fail(exc)
            raise
        finally:
            self.gpus.stop()
            self._hand_over_or_close()
            self.live.set(ended=time.time())
            self.live.write()
        return self.report

    def _idle(self, heartbeat_started: bool) -> WorkerReport:
        assert self.writer is not None
        self.writer.close()
        self.live.set(state="idle")
        log.info(
            "worker %s: no unit left to claim%s", self.cfg.slot, "" if heartbeat_started else "; no engine started"
        )
        return self.report  # run()'s finally hands the engine on or closes it and writes the report

    def _hand_over_or_close(self) -> None:
        """A finished worker whose engine the next model of the sweep will use keeps it running; else it is closed."""
        if self.keep_engine and self.report.get("state") in ("done", "idle"):
            if self.carry_out is None and self.carry is not None:
                self.carry_out = self.carry  # nothing ran here: the carried engine goes on as it came
            if self.carry_out is not None:
                self.engine = None
                return
        self.carry_out = None
        if self.carry is not None and self.carry.engine is not self.engine:
            self.carry.engine.close()
        self.carry = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def _warn_backend(self, backend: str, why: str) -> None:
        for warning in registry.get(backend).worker_warnings(self.spec, self.cfg.layout, why):
            self.live.warn(warning)

    def _host_prep(self, claimed: FreeUnit, limit: int | None) -> HostPrep:
        """The host-side start-up, as steps for HostPrep. A carried engine brings its tokenizer and preparer
        (the checkpoints of a swap share one tokenizer: engines/vllm/weight_swap.py checks it)."""
        spec, carry = self.spec, self.carry
        # Token counts are the model's own (its tokenizer): with several models each counts its units only.
        whole_run = self.cfg.only_units is None and not self.plan.spec.models

        def preparer_for(tokenizer: Any) -> Preparer:
            if carry is not None:
                return carry.preparer
            guard = InputGuard(self.plan.spec, read_record(self.rundir))
            return Preparer(spec, tokenizer, guard, run_clock(self.rundir), limit)

        def stats(preparer: Preparer) -> dict[str, list[float]]:
            return prompt_stats(self.plan, preparer, None if whole_run else self.claims.todo())

        return HostPrep(
            (lambda: carry.tokenizer) if carry is not None else (lambda: load_tokenizer(spec)),
            preparer_for,
            self._decide_order,
            lambda preparer: self._first_group(preparer, claimed),
            stats,
        )

    def _refine_from_run_stats(self) -> None:
        """Sized from its first group while another worker measured the run's prompts: once they are in (looked for
        every RUN_STATS_EVERY_S, between groups), the engine's admission is refined from them."""
        at, engine = self._stats_partial_at, self.engine
        if at is None or engine is None or time.monotonic() - at < RUN_STATS_EVERY_S:
            return
        self._stats_partial_at = time.monotonic()
        stats = cached_stats(self.rundir)
        todo = self.claims.todo()
        if not todo or any(u.unit_id not in stats for u in todo):
            return
        self._stats_partial_at = None
        workload = workload_of(stats, todo, self.spec, self._token_limit)
        engine.refine(workload)
        self.live.set(workload=workload.__dict__)
        log.info("worker %s: admission refined from the run's prompt statistics", self.cfg.slot)

    def _rendezvous(self) -> Rendezvous:
        group = NodeGroup.current()
        if group is None:
            raise RuntimeError("a multi-node layout outside a multi-node Slurm step (SLURM_NNODES/SLURM_PROCID unset)")
        rdv = Rendezvous(self.cfg.run_dir, group)
        rdv.announce(role="engine", gpus=list(self.cfg.gpu_ids))
        self.live.set(node_group=group.tag)  # its rendezvous folder: multinode/<tag>/
        return rdv

    def _first_group(self, preparer: Preparer, claimed: FreeUnit | None) -> list[ActiveUnit]:
        """On the host-side thread, once the feed order is decided: the unit claimed before the engine started,
        prepared, with the rest of its prefix group; or the next group with rows to generate. A unit with nothing
        left to generate (its rows were all written earlier) is marked done on the way."""
        assert self.writer is not None
        while not self.stop_requested:
            if claimed is not None:
                found, claimed = claimed, None
                group = self.claims.with_partners(self.claims.activate(found, preparer), preparer)
                if not group:  # refused (its input changed since submit): the next one
                    continue
            elif not (group := self._claim_next(preparer)):
                return []
            if any(a.prepared.todo() for a in group):
                return group
            for active in group:
                self.writer.finish_empty(active)
        return []

    def _decide_order(self, preparer: Preparer) -> None:
        """Plan or prefix order, measured once on the first rows with this worker's tokenizer (job/order.py)."""
        if self.claims.order is None:
            order = self.claims.order = feed_order(self.spec, preparer, self.plan.rows_per_dataset)
            self.live.set(prefix_order=order.decision.as_json())
            log.info("worker %s: prefix order %s", self.cfg.slot, order.decision.reason)

    # -- claims (job/unit_claims.py; the scale benchmark times these two) ---------------------------------------

    def _claim_free(self) -> FreeUnit | None:
        """The first claim, before the engine starts: file operations alone (no tokenizer)."""
        return self.claims.claim_free()

    def _claim_next(self, preparer: Preparer) -> list[ActiveUnit]:
        """The next group this worker can claim, prepared, in the feed order (decided first, once)."""
        self._decide_order(preparer)
        return self.claims.next_group(preparer)

    def _next_group(self, preparer: Preparer) -> list[ActiveUnit]:
        """Between two groups: the engine's admission refined once the run's prompt statistics are in, then the
        next claim."""
        self._refine_from_run_stats()
        return self._claim_next(preparer)

    # -- stopping, failing ----------------------------------------------------------------------------------------

    def stop_now(self) -> None:
        """Preemption or time limit (USR2 from Slurm, or TERM): write every finished record, give the units back
        at once (the requeued job or another worker takes them), stop feeding. Safe in a signal handler."""
        if self.stop_requested:
            return
        self.claims.stopping = True
        if self.writer is not None:
            self.writer.flush()
        self.claims.release_unfinished()
        self.live.set(state="preempted")
        self.live.write()

    def _fail(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.writer is not None:
            self.writer.flush(timeout_s=30)  # first: a unit whose last rows were still queued finishes, unblamed
        self.claims.blame_unfinished(error)
        self.claims.release_unfinished()
        self.live.set(state="failed", error=error[:2000])


def _group_stats(group: list[ActiveUnit]) -> dict[str, list[float]]:
    """[records, prompt tokens, longest prompt] of each unit of a prepared group (its rows still to generate)."""
    out: dict[str, list[float]] = {}
    for active in group:
        lengths = [len(t) for t in active.prepared.token_ids.values()]
        out[active.unit_id] = [len(lengths), sum(lengths), max(lengths, default=0)]
    return out


def main(argv: list[str] | None = None) -> int:
    from launcher.job.worker_cli import main as cli_main

    return cli_main(argv)


__all__ = [
    "PREEMPTED_EXIT",
    "Stopped",
    "Worker",
    "WorkerConfig",
    "main",
]  # imported from here, as always


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    sys.exit(main())
