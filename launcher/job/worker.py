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

`python -m launcher.job.worker RUN_DIR --job J --replica R --layout JSON` runs one in its own process (a job with
several data-parallel workers starts one per TP group; job/worker_cli.py).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from launcher import faults
from launcher.engines import Completion, Engine, GenerationRequest, Workload, select_backend
from launcher.engines.multinode import NodeGroup, Rendezvous
from launcher.inputs.encodable import first_unencodable
from launcher.inputs.guard import InputChanged, InputGuard, read_record, run_clock
from launcher.inputs.records import Quarantined, Record
from launcher.job import start
from launcher.job.claim_cursor import ClaimCursor, worker_position
from launcher.job.gpu_monitor import GpuSampler
from launcher.job.host_prep import HostPrep, phase_seconds
from launcher.job.live_report import LiveReport
from launcher.job.order import FeedOrder, feed_order, interleave
from launcher.job.prepare import Preparer, load_tokenizer
from launcher.job.prompt_stats import cached_stats, prompt_stats, workload_of
from launcher.job.writer import ActiveUnit, ChunkWriter
from launcher.plan import Plan, Unit
from launcher.plan.layout import ParallelLayout
from launcher.plan.persist import load_plan
from launcher.plan.units import workers_per_job
from launcher.store import ChunkScan, Claim, OutputRow, Owner, RunDir, UnitDir, UnitFailure, WorkerReport, of_submission

log = logging.getLogger("launcher.job")
PROGRESS_EVERY_S = 10.0
PREEMPTED_EXIT = 75  # a worker process stopped by USR2/TERM: it flushed and released its units
RUN_STATS_EVERY_S = 30.0  # how often a worker sized from its first group looks for the run's prompt statistics


class Stopped(BaseException):
    """Raised in the generating thread when the worker was told to stop (preemption, time limit). A BaseException,
    like KeyboardInterrupt: code that isolates one record's failure (`except Exception`: a template, the tokenizer,
    an engine call) must never take a stop for that record's fault."""


@dataclass(frozen=True)
class WorkerConfig:
    run_dir: Path
    job_index: int
    replica: int
    layout: ParallelLayout  # this worker's TP group, numbered as its own process sees it
    gpu_ids: tuple[str, ...] = ()  # the same GPUs, as the job sees them (for status)
    only_units: tuple[str, ...] | None = None  # `launcher run --unit`: one unit per engine (the old way)
    model: str = ""  # which of the spec's `models:` this engine loads ("" for its one model.path)

    @property
    def slot(self) -> str:
        return f"{self.job_index}.{self.replica}"


class FreeUnit(NamedTuple):
    """A unit this worker has just claimed, before its records are read."""

    unit: Unit
    dir: UnitDir
    claim: Claim
    done_rows: frozenset[int]  # rows already in checked chunks


class Worker:
    def __init__(self, cfg: WorkerConfig, carry: start.Carry | None = None, keep_engine: bool = False) -> None:
        """`carry`: the running engine of the sweep's previous model, whose weights this worker swaps (start.py);
        `keep_engine`: the next model will swap into this worker's engine, so a worker that finishes leaves it
        running (in `carry_out`)."""
        self.cfg = cfg
        self.carry, self.keep_engine = carry, keep_engine
        self.carry_out: start.Carry | None = None
        self.pending: FreeUnit | None = None  # claimed before the engine started, not prepared yet
        self.plan: Plan = load_plan(cfg.run_dir)
        self.spec = self.plan.spec.for_model(cfg.model)  # model.path: this engine's checkpoint
        self.rundir: RunDir = self.plan.run
        self.rundir.keep_open()  # claims, heartbeats, chunks: reached from its descriptor (store/kept.py)
        self.owner = Owner.me(cfg.slot)
        position = worker_position(cfg.job_index, cfg.replica, self.plan.jobs, workers_per_job(self.plan.spec))
        self.cursor = ClaimCursor(self.rundir.unit_view(), self.owner, *position)
        self.stop_requested = False
        self.keys: dict[int, tuple[ActiveUnit, int]] = {}
        self.active: list[ActiveUnit] = []
        self.writer: ChunkWriter | None = None
        self.engine: Engine | None = None
        self.claimed = 0
        self.order: FeedOrder | None = None  # decided on the host-side thread, once the tokenizer is there
        self._next_key = 0
        self._skip: set[str] = set()  # units known done in this worker's view
        self._stats_partial_at: float | None = None  # sized without the run's prompt statistics: when last looked
        self._token_limit: int | None = None
        self.gpus = GpuSampler(cfg.gpu_ids)  # started with the first request: figures cover generation only
        self.live = LiveReport(self)
        self.report: WorkerReport = self.live.report

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
            self.writer = ChunkWriter(spec.output.chunk_records, self.cfg.slot)
            # Claim before starting an engine (a few file operations): a worker with nothing to do exits in seconds.
            # The unit's records are read and tokenized beside the engine's start.
            claimed = self.pending = self._claim_free()
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
                sum(u.rows for u in self._candidates()), spec.sampling.max_tokens, spec.data.num_samples, limit.tokens
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
            todo = [u for u in self._candidates() if u.unit_id not in self._skip]
            stats = host.stats
            if any(u.unit_id not in stats for u in todo):
                # another worker measures the run's prompts (job/prompt_stats.py): sized from this worker's first
                # group for now, refined once they are in (_refine_from_run_stats)
                stats = {**_group_stats(host.first), **stats}
                self._stats_partial_at = time.monotonic()
            self._token_limit = limit.tokens
            workload = workload_of(stats, todo or [a.prepared.unit for a in host.first], spec, limit.tokens)
            engine.refine(workload)
            self.live.set(
                state="running",
                engine={
                    "version": report.version,
                    "device": report.device,
                    "gpu_name": report.gpu_name,
                    "settings": report.settings,
                    "reasons": report.reasons,
                    "startup": report.startup,
                },
                engine_ready_at=ready_at,
                workload=workload.__dict__,
            )
            log.info(
                "worker %s: %s %s on %s, ready %.1f s after the worker started",
                self.cfg.slot,
                report.backend,
                report.version,
                report.gpu_name or report.device,
                ready_at - self.report["started"],
            )
            self._generate(engine, host.first, host.preparer)
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
                prep.finished(60)  # its first group must be in self.active before the units are given back
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
        if backend == "hf" and self.cfg.layout.gpus:
            self.live.warn(
                f"running HF transformers on the GPU, many times slower than vLLM ({why})"
                if self.spec.model.backend == "auto"
                else f"backend hf set in the spec ({why})"
            )
            if self.cfg.layout.tensor_parallel > 1:
                self.live.warn(
                    f"HF uses one GPU per worker: {self.cfg.layout.tensor_parallel - 1} GPU(s) of this "
                    "worker's group stay idle"
                )

    def _host_prep(self, claimed: FreeUnit, limit: int | None) -> HostPrep:
        """The host-side start-up, as steps for HostPrep. A carried engine brings its tokenizer and preparer
        (the checkpoints of a swap share one tokenizer: engines/weight_swap.py checks it)."""
        spec, carry = self.spec, self.carry
        # Token counts are the model's own (its tokenizer): with several models each counts its units only.
        whole_run = self.cfg.only_units is None and not self.plan.spec.models

        def preparer_for(tokenizer: Any) -> Preparer:
            if carry is not None:
                return carry.preparer
            guard = InputGuard(self.plan.spec, read_record(self.rundir))
            return Preparer(spec, tokenizer, guard, run_clock(self.rundir), limit)

        def stats(preparer: Preparer) -> dict[str, list[float]]:
            todo = [u for u in self._candidates() if u.unit_id not in self._skip]
            return prompt_stats(self.plan, preparer, None if whole_run else todo)

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
        todo = [u for u in self._candidates() if u.unit_id not in self._skip]
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
                group = self._with_partners(self._activate(found, preparer), preparer)
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
        if self.order is None:
            self.order = feed_order(self.spec, preparer, self.plan.rows_per_dataset)
            self.live.set(prefix_order=self.order.decision.as_json())
            log.info("worker %s: prefix order %s", self.cfg.slot, self.order.decision.reason)

    def _generate(self, engine: Engine, first: list[ActiveUnit], preparer: Preparer) -> None:
        pending: list[ActiveUnit] | None = first
        last_log = time.perf_counter()
        while True:
            before = self.claimed
            for comp in engine.generate(self._feed(pending, preparer)):
                self._on_completion(comp)
                if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                    last_log = time.perf_counter()
                    self.live.log_progress()
            pending = None
            if self.writer is not None and self.writer.error is not None:
                raise self.writer.error
            if self.stop_requested:
                raise Stopped()
            if self.claimed == before:  # a whole pass found nothing more to claim
                return

    def _feed(self, first: list[ActiveUnit] | None, preparer: Preparer) -> Iterator[GenerationRequest]:
        """Requests, unit after unit (or group after group, job/order.py); the next is claimed only when the engine
        asks for more."""
        group = first
        while True:
            if self.stop_requested:
                return
            if not group:
                self._refine_from_run_stats()
                group = self._claim_next(preparer)
                if not group:
                    return
            for active in group:
                if not active.prepared.todo():
                    assert self.writer is not None
                    self.writer.finish_empty(active)
                    continue
                active.first_at = time.time()
                if self.report["first_request_at"] is None:
                    self.live.set(first_request_at=active.first_at)
                    self.gpus.start()
            for member, row in interleave([a.prepared for a in group]):
                if self.stop_requested:
                    return
                active = group[member]
                key, self._next_key = self._next_key, self._next_key + 1
                self.keys[key] = (active, row)
                own = active.prepared.settings.get(row)
                yield GenerationRequest(
                    key,
                    active.prepared.token_ids[row],
                    active.prepared.seeds[row],
                    own.sampling if own else None,
                    own.n if own else None,
                    active.prepared.unit.adapter or None,
                )
            group = None

    def _on_completion(self, comp: Completion) -> None:
        active, row_no = self.keys.pop(comp.key)
        p = active.prepared
        rec = p.records[row_no]
        unit = p.unit
        active.completed += 1
        if comp.error is not None:  # the engine could not generate this record alone: it, not its unit, fails
            self._quarantine(active, rec, comp.error)
            return
        row: OutputRow = {
            "row": rec.row,
            "record_id": rec.record_id,
            "user_id": rec.user_id,
            "dataset": unit.dataset,
            "ablation": unit.ablation,
            **({"model": unit.model} if unit.model else {}),
            **({"adapter": unit.adapter} if unit.adapter else {}),
            "prompt": p.prompts[row_no],
            "generated_samples": [s.text for s in comp.samples],
            "prompt_tokens": comp.prompt_tokens,
            "sample_tokens": [s.num_tokens for s in comp.samples],
            "finish_reasons": [s.finish_reason for s in comp.samples],
            "seed": p.seeds[row_no],
        }
        own = p.settings.get(row_no)
        if own is not None:  # gather checks each record against its own number of samples
            row["num_samples"] = own.n
        if self.spec.output.token_ids:
            row["sample_token_ids"] = [list(s.token_ids) for s in comp.samples]
        if (why := first_unencodable(row)) is not None:  # no chunk could hold it: this record alone is set aside
            self._quarantine(active, rec, f"the generated row cannot be written as UTF-8: {why}")
            return
        assert self.writer is not None
        self.writer.add(active, row)
        self.report["records"] += 1
        self.report["samples"] += len(comp.samples)
        self.report["output_tokens"] += sum(s.num_tokens for s in comp.samples)
        self.report["prompt_tokens"] += comp.prompt_tokens
        faults.after_record(unit.unit_id, active.dir, self.cfg.replica, active.completed)  # test-only, inert

    def _quarantine(self, active: ActiveUnit, rec: Record, why: str) -> None:
        log.warning("worker %s: row %d of unit %s quarantined: %s", self.cfg.slot, rec.row, active.unit_id, why)
        assert self.writer is not None
        self.writer.quarantine(active, Quarantined(rec.row, why[:500], rec.record_id))
        self.report["quarantined"] += 1
        faults.after_record(active.unit_id, active.dir, self.cfg.replica, active.completed)  # test-only, inert

    # -- claims ---------------------------------------------------------------------------------------------------

    def _candidates(self) -> list[Unit]:
        """This worker's units in claim order: plan order, or with prefix order each group's members together."""
        units = tuple(u for u in self.plan.units if u.model == self.cfg.model)
        if self.cfg.only_units is not None:
            units = tuple(u for u in units if u.unit_id in self.cfg.only_units)
        return self.order.candidates(units) if self.order is not None else list(units)

    def _claim_next(self, preparer: Preparer) -> list[ActiveUnit]:
        """The next candidate the cursor offers (this worker's stride of them first) that is not done, not failed too
        often, and free (or its owner dead), prepared, with prefix order also the members of its group that are
        (each claimed on its own: one another worker holds, or that is done, stays out of this group). Empty when
        nothing is left."""
        self._decide_order(preparer)
        for unit in self.cursor.walk(self._candidates()):
            found = self._take(unit)
            if found is not None and (group := self._with_partners(self._activate(found, preparer), preparer)):
                return group
        return []

    def _with_partners(self, active: ActiveUnit | None, preparer: Preparer) -> list[ActiveUnit]:
        """`active` and the members of its prefix group this worker could claim, in the group's feed order. A member
        units.log says is done or held by a live worker is not tried (no file operation)."""
        if active is None:
            return []
        order = self.order
        assert order is not None
        group = [active]
        for partner in order.partners(active.prepared.unit, self._candidates()):
            if not self.cursor.worth_a_try(partner.unit_id):
                continue
            if (found := self._take(partner)) is not None:
                self.cursor.claimed(partner.unit_id)  # outside its walk: never offered again
                if (other := self._activate(found, preparer)) is not None:
                    group.append(other)
        return sorted(group, key=lambda a: order.position(a.prepared.unit))

    def _claim_free(self) -> FreeUnit | None:
        """The next candidate the cursor offers that is free, claimed with file operations alone (no tokenizer)."""
        for unit in self.cursor.walk(self._candidates()):
            if (found := self._take(unit)) is not None:
                return found
        return None

    def _take(self, unit: Unit) -> FreeUnit | None:
        """Claim one unit (store/claims.py, told to units.log); None when it is done, failed too often, or held. A
        unit the run's complete log never named was never claimed: it has no done marker, failures, chunks or
        quarantine, and none is read (a claim at generation 0 proves the same after the fact)."""
        if unit.unit_id in self._skip:
            return None
        udir = self.rundir.unit(unit.unit_id)
        named = self.cursor.worth_checking(unit.unit_id)
        if named and (udir.is_done() or self._failed_out(udir)):
            self._skip.add(unit.unit_id)
            return None
        claim = udir.claim(self.owner, fresh=not named)
        if claim is None:
            self.cursor.taken(unit.unit_id)
            return None
        # finished between our check and our claim, or failed out while the log missed its claims
        if claim.generation > 0 and (udir.is_done() or (not named and self._failed_out(udir))):
            udir.release(claim)
            self._skip.add(unit.unit_id)
            return None
        scan = udir.scan(keep_rows=False) if claim.generation > 0 else ChunkScan()
        if scan.damaged:
            log.warning(
                "unit %s: %d chunk(s) fail their checksum; their rows are generated again: %s",
                unit.unit_id,
                len(scan.damaged),
                ", ".join(p.name for p in scan.damaged),
            )
            udir.set_damaged_aside(scan.damaged)
        return FreeUnit(unit, udir, claim, frozenset(scan.rows))

    def _failed_out(self, udir: UnitDir) -> bool:
        """The unit failed max_retries + 1 times in this submission: no worker takes it again."""
        max_failures = self.plan.spec.slurm.max_retries + 1
        if len(of_submission(udir.read_failures(), os.environ.get("LAUNCHER_SUBMISSION"))) < max_failures:
            return False
        log.error("unit %s failed %d time(s) in this submission; no worker takes it again", udir.unit_id, max_failures)
        return True

    def _activate(self, found: FreeUnit, preparer: Preparer) -> ActiveUnit | None:
        """A claimed unit -> its records read and tokenized (minus rows already written), quarantine written; None
        when its input changed since submit (refused)."""
        unit, udir, claim = found.unit, found.dir, found.claim
        try:
            prepared = preparer.prepare(unit, set(found.done_rows))
        except InputChanged as exc:
            self._refuse(unit, udir, claim, exc)
            self._forget_pending(found)
            return None
        except BaseException as exc:
            # Not one record's fault (those are quarantined inside prepare): the unit's input as a whole (its file
            # gone, unreadable). Blamed on the unit, so that status names the cause and workers stop taking it after
            # max_retries + 1; its claim goes back at once.
            if isinstance(exc, Exception) and not self.stop_requested:
                self._record_unit_failure(udir, f"reading and tokenizing its records: {type(exc).__name__}: {exc}")
            udir.release(claim)
            self._forget_pending(found)
            raise
        active = ActiveUnit(prepared, udir, claim, remaining=len(prepared.token_ids))
        self.active.append(active)  # first: the heartbeat and stop_now see it as one of this worker's units
        self._forget_pending(found)
        if (quarantined := active.quarantine_rows()) or claim.generation > 0:  # a first claim has no file to replace
            udir.write_quarantine(quarantined)
        self.claimed += 1
        log.info(
            "worker %s: claimed unit %s (generation %d): %d record(s) to generate, %d already done",
            self.cfg.slot,
            unit.unit_id,
            claim.generation,
            len(prepared.token_ids),
            len(found.done_rows),
        )
        return active

    def _forget_pending(self, found: FreeUnit) -> None:
        if self.pending is found:  # the unit claimed before the engine started is prepared (or given back) now
            self.pending = None

    def _refuse(self, unit: Unit, udir: UnitDir, claim: Claim, exc: InputChanged) -> None:
        """An input of the unit changed since submit: the unit's failure says which and what to do; this worker
        goes on with its other units (each worker refuses a unit once: the check costs a stat())."""
        log.error("worker %s: unit %s refused: %s", self.cfg.slot, unit.unit_id, exc)
        self._record_unit_failure(udir, f"InputChanged: {exc}")
        udir.release(claim)
        self._skip.add(unit.unit_id)
        self.live.warn(f"unit {unit.unit_id} refused: {exc}"[:500])

    # -- stopping, failing ----------------------------------------------------------------------------------------

    def stop_now(self) -> None:
        """Preemption or time limit (USR2 from Slurm, or TERM): write every finished record, give the units back
        at once (the requeued job or another worker takes them), stop feeding. Safe in a signal handler."""
        if self.stop_requested:
            return
        self.stop_requested = True
        if self.writer is not None:
            self.writer.flush()
        self._release_unfinished()
        self.live.set(state="preempted")
        self.live.write()

    def _release_unfinished(self) -> None:
        for active in self.active:
            if not active.finished:
                active.dir.release(active.claim)
        if (pending := self.pending) is not None:  # claimed, not prepared yet (the engine was still starting)
            pending.dir.release(pending.claim)

    def _fail(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.writer is not None:
            self.writer.flush(timeout_s=30)  # first: a unit whose last rows were still queued finishes, unblamed
        for active in self.active:
            # Only units whose records went into the engine. A crash before that (the engine's start on a bad node)
            # is not the claimed unit's: counted against it, every worker would skip it after max_retries + 1.
            if not active.finished and active.first_at is not None:
                self._record_unit_failure(active.dir, error)
        self._release_unfinished()
        self.live.set(state="failed", error=error[:2000])

    def _record_unit_failure(self, udir: UnitDir, error: str) -> None:
        failure = UnitFailure.new(
            self.cfg.slot,
            socket.gethostname(),
            time.time(),
            error[:2000],
            os.environ.get("LAUNCHER_SUBMISSION"),
            self.owner.job_id,
        )
        udir.record_failure(self.cfg.slot, failure)


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


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    sys.exit(main())
