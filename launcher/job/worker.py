"""job/worker.py: one engine (one TP group) that starts once and runs unit after unit until none is left.

    claim a unit -> start the engine (sized for every unit still to do) -> feed it the unit's requests; when they
    are all in, claim the next unit and keep feeding (the batch never drains between units) -> each finished record
    goes to the chunk writer -> a unit whose rows are all written is marked done -> no unit left: stop.

Claims (store/claims.py) make each unit run by one worker at a time and let a dead worker's unit be taken over;
chunks make a kill lose at most the records not yet written. Every figure in the worker's report is wall clock:
`first_request_at` -> `last_write_at` is its generation window, `started` -> `ended` its whole life.

`python -m launcher.job.worker RUN_DIR --job J --replica R --layout JSON` runs one in its own process (a job with
several data-parallel workers starts one per TP group).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import faults
from launcher.engines import Completion, Engine, GenerationRequest, create_engine, select_backend
from launcher.engines.multinode import NodeGroup, Rendezvous
from launcher.inputs.encodable import first_unencodable
from launcher.inputs.guard import InputChanged, InputGuard, read_record, run_clock
from launcher.inputs.records import Quarantined, Record
from launcher.job.gpu_monitor import GpuSampler
from launcher.job.order import FeedOrder, feed_order, interleave
from launcher.job.prepare import Preparer, load_tokenizer, prompt_stats, workload_of
from launcher.job.writer import ActiveUnit, ChunkWriter
from launcher.plan import Plan, Unit
from launcher.plan.layout import ParallelLayout
from launcher.plan.persist import load_plan
from launcher.store import OutputRow, Owner, RunDir, UnitDir, WorkerReport
from launcher.store.claims import HEARTBEAT_S

log = logging.getLogger("launcher.job")
PROGRESS_EVERY_S = 10.0
PREEMPTED_EXIT = 75  # a worker process stopped by USR2/TERM: it flushed and released its units


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


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.plan: Plan = load_plan(cfg.run_dir)
        self.spec = self.plan.spec.for_model(cfg.model)  # model.path: this engine's checkpoint
        self.rundir: RunDir = self.plan.run
        self.owner = Owner.me(cfg.slot)
        self.stop_requested = False
        self.keys: dict[int, tuple[ActiveUnit, int]] = {}
        self.active: list[ActiveUnit] = []
        self.writer: ChunkWriter | None = None
        self.engine: Engine | None = None
        self.claimed = 0
        self.order: FeedOrder | None = None  # decided with the first claim (it needs the tokenizer)
        self._next_key = 0
        self._skip: set[str] = set()  # units known done in this worker's view
        self._held_by_others: dict[str, float] = {}  # unit -> when we last saw a live owner
        self._report_lock = threading.Lock()
        self.gpus = GpuSampler(cfg.gpu_ids)  # started with the first request: figures cover generation only
        self._cpu_s0 = _cpu_seconds()  # a job that runs several models' workers in turn counts each its own
        self.report: WorkerReport = {
            "slot": cfg.slot,
            "job_index": cfg.job_index,
            "replica": cfg.replica,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": self.owner.job_id,
            "restart": self.owner.restart,
            "gpus": list(cfg.gpu_ids),
            "tensor_parallel_size": cfg.layout.tensor_parallel,
            "model": cfg.model,
            "state": "starting",
            "started": _process_start_wall(),
            "first_request_at": None,
            "last_write_at": None,
            "ended": None,
            "units_done": [],
            "current_units": [],
            "unit_windows": {},
            "records": 0,
            "samples": 0,
            "output_tokens": 0,
            "prompt_tokens": 0,
            "quarantined": 0,
            "startup_phases": {},
            "error": None,
            "warnings": list(cfg.layout.notes),  # requests not honoured here: status and the console show them
            "cpu_cores": _cpu_cores(),
            "cpu_seconds": 0.0,
        }

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> WorkerReport:
        if self.stop_requested:  # told to stop before it started (a local job's SIGTERM): claims nothing
            self._set(ended=time.time())
            self._write_report()
            return self.report
        spec = self.spec
        phases = self.report["startup_phases"]
        heartbeat = threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True)
        try:  # everything, the tokenizer and the first claim included: whatever raises is recorded (_fail)
            t0 = time.perf_counter()
            tokenizer = load_tokenizer(spec)
            guard = InputGuard(self.plan.spec, read_record(self.rundir))
            preparer = Preparer(spec, tokenizer, guard, run_clock(self.rundir))
            phases["tokenizer_s"] = round(time.perf_counter() - t0, 3)
            self.writer = ChunkWriter(spec.output.chunk_records, self.cfg.slot)
            first = self._first_group(preparer)
            if not first:
                self.writer.close()
                self._set(state="idle")
                log.info("worker %s: no unit left to claim; not starting an engine", self.cfg.slot)
                return self.report
            heartbeat.start()
            t1 = time.perf_counter()
            backend, why = select_backend(spec.model)  # imports the backend (vLLM: ~12-20 s)
            phases["backend_import_s"] = round(time.perf_counter() - t1, 3)
            if backend == "hf" and self.cfg.layout.gpus:
                self._warn(
                    f"running HF transformers on the GPU, many times slower than vLLM ({why})"
                    if spec.model.backend == "auto"
                    else f"backend hf set in the spec ({why})"
                )
                if self.cfg.layout.tensor_parallel > 1:
                    self._warn(
                        f"HF uses one GPU per worker: {self.cfg.layout.tensor_parallel - 1} GPU(s) of this "
                        "worker's group stay idle"
                    )
            t1 = time.perf_counter()
            todo = [u for u in self._candidates() if u.unit_id not in self._skip]
            # Token counts are the model's own (its tokenizer): with several models each counts its units only.
            whole_run = self.cfg.only_units is None and not self.plan.spec.models
            stats = prompt_stats(self.plan, preparer, None if whole_run else todo)
            phases["prompt_stats_s"] = round(time.perf_counter() - t1, 3)
            workload = workload_of(stats, todo or [a.prepared.unit for a in first], spec)
            self._set(backend=backend, backend_reason=why, state="loading")
            engine = self.engine = create_engine(backend, spec.model, spec.sampling, spec.data.num_samples)
            if self.cfg.layout.nnodes > 1:
                engine.rendezvous = self._rendezvous()
            t1 = time.perf_counter()
            report = engine.load(workload, tokenizer, self.cfg.layout)
            phases["engine_load_s"] = round(time.perf_counter() - t1, 3)
            if self.order is not None:  # a scheduling choice, shown with the engine's settings and why
                report.settings["prefix_order"] = "on" if self.order.active else "off"
                report.reasons["prefix_order"] = self.order.decision.reason
            self._set(
                state="running",
                engine={
                    "version": report.version,
                    "device": report.device,
                    "gpu_name": report.gpu_name,
                    "settings": report.settings,
                    "reasons": report.reasons,
                    "startup": report.startup,
                },
                engine_ready_at=time.time(),
                workload=workload.__dict__,
            )
            log.info(
                "worker %s: %s %s on %s, ready %.1f s after its process started",
                self.cfg.slot,
                report.backend,
                report.version,
                report.gpu_name or report.device,
                time.time() - self.report["started"],
            )
            self._generate(engine, first, preparer)
            self.writer.close()
            self._set(state="done")
        except Stopped:
            self._set(state="preempted")
        except KeyboardInterrupt:
            # Ctrl-C on `launcher submit --wait` or `launcher run` reaches the whole process group: the user stopped
            # the run. Not a failure: no unit is blamed, and status says INTERRUPTED, not FAILED.
            self._set(state="interrupted")
            raise
        except BaseException as exc:
            if self.stop_requested:
                # Preempted or timed out while the worker runs in the job's own process (DP = 1): submitit's USR2
                # handler ran the checkpoint (stop_now: chunks flushed, units given back), then exits from the
                # handler (SystemExit). Not a failure of the units this worker held.
                self._set(state="preempted")
                raise
            self._fail(exc)
            raise
        finally:
            self.gpus.stop()
            if self.engine is not None:
                self.engine.close()
            self._set(ended=time.time())
            self._write_report()
        return self.report

    def _rendezvous(self) -> Rendezvous:
        group = NodeGroup.current()
        if group is None:
            raise RuntimeError("a multi-node layout outside a multi-node Slurm step (SLURM_NNODES/SLURM_PROCID unset)")
        rdv = Rendezvous(self.cfg.run_dir, group)
        rdv.announce(role="engine", gpus=list(self.cfg.gpu_ids))
        self._set(node_group=group.tag)  # its rendezvous folder: multinode/<tag>/
        return rdv

    def _first_group(self, preparer: Preparer) -> list[ActiveUnit]:
        """Claim before starting an engine: a worker that finds nothing to do exits in seconds. A unit with nothing
        left to generate (its rows were all written earlier) is marked done on the way."""
        assert self.writer is not None
        while group := self._claim_next(preparer):
            if any(a.prepared.todo() for a in group):
                return group
            for active in group:
                self.writer.finish_empty(active)
        return []

    def _generate(self, engine: Engine, first: list[ActiveUnit], preparer: Preparer) -> None:
        pending: list[ActiveUnit] | None = first
        last_log = time.perf_counter()
        while True:
            before = self.claimed
            for comp in engine.generate(self._feed(pending, preparer)):
                self._on_completion(comp)
                if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                    last_log = time.perf_counter()
                    self._log_progress()
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
                    self._set(first_request_at=active.first_at)
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
        """The first candidate that is not done, not failed too often, and free (or its owner dead); with prefix order
        also the members of its group that are (each claimed on its own: one another worker holds, or that is done,
        stays out of this group). Empty when nothing is left."""
        if self.order is None:  # measured once, on the first rows, with this worker's tokenizer
            self.order = feed_order(self.spec, preparer, self.plan.rows_per_dataset)
            self._set(prefix_order=self.order.decision.as_json())
            log.info("worker %s: prefix order %s", self.cfg.slot, self.order.decision.reason)
        order = self.order
        candidates = self._candidates()
        for unit in candidates:
            active = self._claim(unit, preparer)
            if active is None:
                continue
            group = [active]
            for partner in order.partners(unit, candidates):
                if (other := self._claim(partner, preparer)) is not None:
                    group.append(other)
            return sorted(group, key=lambda a: order.position(a.prepared.unit))
        return []

    def _claim(self, unit: Unit, preparer: Preparer) -> ActiveUnit | None:
        """Claim one unit (store/claims.py) and prepare its rows; None when it is done, failed too often, or held."""
        if unit.unit_id in self._skip:
            return None
        max_failures = self.plan.spec.slurm.max_retries + 1
        submission = os.environ.get("LAUNCHER_SUBMISSION")
        udir = self.rundir.unit(unit.unit_id)
        if udir.is_done():
            self._skip.add(unit.unit_id)
            return None
        if len([f for f in udir.read_failures() if f.get("submission") == submission]) >= max_failures:
            self._skip.add(unit.unit_id)
            log.error(
                "unit %s failed %d time(s) in this submission; no worker takes it again", unit.unit_id, max_failures
            )
            return None
        claim = udir.claims.try_claim(self.owner)
        if claim is None:
            return None
        if udir.is_done():  # finished between our check and our claim
            udir.claims.release(claim)
            self._skip.add(unit.unit_id)
            return None
        scan = udir.scan(keep_rows=False)
        if scan.damaged:
            log.warning(
                "unit %s: %d chunk(s) fail their checksum; their rows are generated again: %s",
                unit.unit_id,
                len(scan.damaged),
                ", ".join(p.name for p in scan.damaged),
            )
            udir.set_damaged_aside(scan.damaged)
        try:
            prepared = preparer.prepare(unit, set(scan.rows))
        except InputChanged as exc:
            self._refuse(unit, udir, claim, exc)
            return None
        except BaseException as exc:
            # Not one record's fault (those are quarantined inside prepare): the unit's input as a whole (its file
            # gone, unreadable). Blamed on the unit, so that status names the cause and workers stop taking it after
            # max_retries + 1; its claim goes back at once.
            if isinstance(exc, Exception) and not self.stop_requested:
                self._record_unit_failure(udir, f"reading and tokenizing its records: {type(exc).__name__}: {exc}")
            udir.claims.release(claim)
            raise
        active = ActiveUnit(prepared, udir, claim, remaining=len(prepared.token_ids))
        udir.write_quarantine(active.quarantine_rows())
        self.active.append(active)
        self.claimed += 1
        log.info(
            "worker %s: claimed unit %s (generation %d): %d record(s) to generate, %d already done",
            self.cfg.slot,
            unit.unit_id,
            claim.generation,
            len(prepared.token_ids),
            len(scan.rows),
        )
        return active

    def _refuse(self, unit: Unit, udir: Any, claim: Any, exc: InputChanged) -> None:
        """An input of the unit changed since submit: the unit's failure says which and what to do; this worker
        goes on with its other units (each worker refuses a unit once: the check costs a stat())."""
        log.error("worker %s: unit %s refused: %s", self.cfg.slot, unit.unit_id, exc)
        udir.record_failure(
            self.cfg.slot,
            {
                "worker": self.cfg.slot,
                "host": socket.gethostname(),
                "time": time.time(),
                "error": f"InputChanged: {exc}"[:2000],
                "submission": os.environ.get("LAUNCHER_SUBMISSION"),
                "job_id": self.owner.job_id,
            },
        )
        udir.claims.release(claim)
        self._skip.add(unit.unit_id)
        self._warn(f"unit {unit.unit_id} refused: {exc}"[:500])

    # -- stopping, failing, reporting ----------------------------------------------------------------------------

    def stop_now(self) -> None:
        """Preemption or time limit (USR2 from Slurm, or TERM): write every finished record, give the units back
        at once (the requeued job or another worker takes them), stop feeding. Safe in a signal handler."""
        if self.stop_requested:
            return
        self.stop_requested = True
        if self.writer is not None:
            self.writer.flush()
        self._release_unfinished()
        self._set(state="preempted")
        self._write_report()

    def _release_unfinished(self) -> None:
        for active in self.active:
            if not active.finished:
                active.dir.claims.release(active.claim)

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
        self._set(state="failed", error=error[:2000])

    def _record_unit_failure(self, udir: UnitDir, error: str) -> None:
        udir.record_failure(
            self.cfg.slot,
            {
                "worker": self.cfg.slot,
                "host": socket.gethostname(),
                "time": time.time(),
                "error": error[:2000],
                "submission": os.environ.get("LAUNCHER_SUBMISSION"),
                "job_id": self.owner.job_id,
            },
        )

    def _warn(self, message: str) -> None:
        log.warning("worker %s: %s", self.cfg.slot, message)
        with self._report_lock:
            self.report["warnings"] = [*self.report["warnings"], message]

    def _set(self, **values: Any) -> None:
        with self._report_lock:
            self.report.update(values)  # type: ignore[typeddict-item]

    def _snapshot(self) -> WorkerReport:
        with self._report_lock:
            report = WorkerReport(**self.report)
        report["units_done"] = [a.unit_id for a in self.active if a.finished]
        report["current_units"] = [a.unit_id for a in self.active if not a.finished and not a.lost]
        report["unit_windows"] = {a.unit_id: a.window() for a in self.active if a.first_at is not None}
        report["last_write_at"] = self.writer.last_write_at if self.writer is not None else None
        report["heartbeat_at"] = time.time()
        report["cpu_seconds"] = round(_cpu_seconds() - self._cpu_s0, 3)
        if (gpu := self.gpus.figures()) is not None and (gpu["samples"] or gpu["error"]):
            report["gpu_monitor"] = gpu
        return report

    def _write_report(self) -> None:
        report = self._snapshot()
        with self._report_lock:
            self.report["units_done"], self.report["current_units"] = report["units_done"], report["current_units"]
            self.report["unit_windows"], self.report["last_write_at"] = report["unit_windows"], report["last_write_at"]
        self.rundir.write_json(
            self.rundir.worker_report(self.cfg.slot, self.owner.restart, os.getpid(), self.cfg.model), report
        )

    def _heartbeat(self) -> None:
        while self.report.get("ended") is None:
            for active in list(self.active):
                if not active.finished:
                    active.dir.claims.heartbeat(active.claim)
            try:
                self._write_report()
            except OSError as exc:  # storage trouble is waited out by the writes that matter; status can lag
                log.warning("worker report not written: %s", exc)
            time.sleep(HEARTBEAT_S)

    def _log_progress(self) -> None:
        r = self.report
        since = r["first_request_at"] or time.time()
        rate = r["samples"] / max(1e-9, time.time() - since)
        log.info(
            "worker %s: %d records, %d samples (%.1f samples/s); units %s",
            self.cfg.slot,
            r["records"],
            r["samples"],
            rate,
            ", ".join(a.unit_id for a in self.active if not a.finished) or "-",
        )


def _cpu_cores() -> int:
    """The cores this process may run on (Slurm's or taskset's affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (an engine's helper processes), user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _process_start_wall() -> float:
    """When this process started, by the wall clock (Linux /proc; now elsewhere): imports count as start-up."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m launcher.job.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--job", type=int, required=True)
    p.add_argument("--replica", type=int, required=True)
    p.add_argument("--layout", required=True, help="the job's ParallelLayout as JSON")
    p.add_argument("--unit", action="append", default=None, help="only these units")
    p.add_argument("--model", default="", help="which of the spec's models: to load (default: its one model.path)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    job_layout = ParallelLayout.from_dict(json.loads(args.layout))
    cfg = WorkerConfig(
        Path(args.run_dir),
        args.job,
        args.replica,
        job_layout.for_replica(args.replica),
        job_layout.replica_gpus(args.replica),
        tuple(args.unit) if args.unit else None,
        args.model,
    )
    worker = Worker(cfg)

    def on_signal(signum: int, frame: Any) -> None:
        if worker.stop_requested:
            # USR2 comes twice: Slurm signals every process of the job step, and the job forwards it. Raising here
            # again would abort the first handler mid-flush, before it gave the units back.
            return
        log.warning("worker %s: %s: flushing and giving its units back", cfg.slot, signal.Signals(signum).name)
        worker.stop_now()
        raise Stopped()

    signal.signal(signal.SIGUSR2, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    report = worker.run()
    return PREEMPTED_EXIT if report.get("state") == "preempted" else 0


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    sys.exit(main())
