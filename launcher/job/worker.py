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
from launcher.job.claim_cursor import ClaimCursor, worker_position
from launcher.job.gpu_monitor import GpuSampler
from launcher.job.prepare import Preparer, load_tokenizer, prompt_stats, workload_of
from launcher.job.writer import ActiveUnit, ChunkWriter
from launcher.plan import Plan, Unit
from launcher.plan.layout import ParallelLayout
from launcher.plan.persist import load_plan
from launcher.plan.units import workers_per_job
from launcher.store import ChunkScan, ClaimBook, OutputRow, Owner, RunDir, UnitDir, WorkerReport, write_json_atomic
from launcher.store.claims import HEARTBEAT_S

log = logging.getLogger("launcher.job")
PROGRESS_EVERY_S = 10.0
PREEMPTED_EXIT = 75  # a worker process stopped by USR2/TERM: it flushed and released its units


class Stopped(Exception):
    """Raised in the generating thread when the worker was told to stop (preemption, time limit)."""


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
        position = worker_position(cfg.job_index, cfg.replica, self.plan.jobs, workers_per_job(self.plan.spec))
        self.cursor = ClaimCursor(self.rundir.unit_view(), self.owner, *position)
        self.stop_requested = False
        self.keys: dict[int, tuple[ActiveUnit, int]] = {}
        self.active: list[ActiveUnit] = []
        self.writer: ChunkWriter | None = None
        self.engine: Engine | None = None
        self.claimed = 0
        self._next_key = 0
        self._skip: set[str] = set()  # units known done in this worker's view
        self._held_by_others: dict[str, float] = {}  # unit -> when we last saw a live owner
        self._report_lock = threading.Lock()
        self.gpus = GpuSampler(cfg.gpu_ids)  # started with the first request: figures cover generation only
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
            "startup_phases": {},
            "error": None,
            "warnings": list(cfg.layout.notes),  # requests not honoured here: status and the console show them
        }

    # -- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> WorkerReport:
        spec = self.spec
        phases = self.report["startup_phases"]
        t0 = time.perf_counter()
        heartbeat = threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True)
        tokenizer = load_tokenizer(spec)
        preparer = Preparer(spec, tokenizer)
        phases["tokenizer_s"] = round(time.perf_counter() - t0, 3)
        self.writer = ChunkWriter(spec.output.chunk_records, self.cfg.slot)
        first = self._first_unit(preparer)
        if first is None:
            self.writer.close()
            self._set(state="idle", ended=time.time())
            self._write_report()
            log.info("worker %s: no unit left to claim; not starting an engine", self.cfg.slot)
            return self.report
        heartbeat.start()
        try:
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
            workload = workload_of(stats, todo or [first.prepared.unit], spec)
            self._set(backend=backend, backend_reason=why, state="loading")
            engine = self.engine = create_engine(backend, spec.model, spec.sampling, spec.data.num_samples)
            if self.cfg.layout.nnodes > 1:
                engine.rendezvous = self._rendezvous()
            t1 = time.perf_counter()
            report = engine.load(workload, tokenizer, self.cfg.layout)
            phases["engine_load_s"] = round(time.perf_counter() - t1, 3)
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

    def _first_unit(self, preparer: Preparer) -> ActiveUnit | None:
        """Claim before starting an engine: a worker that finds nothing to do exits in seconds. A unit with nothing
        left to generate (its rows were all written earlier) is marked done on the way."""
        assert self.writer is not None
        while (active := self._claim_next(preparer)) is not None:
            if active.prepared.todo():
                return active
            self.writer.finish_empty(active)
        return None

    def _generate(self, engine: Engine, first: ActiveUnit, preparer: Preparer) -> None:
        pending: ActiveUnit | None = first
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

    def _feed(self, first: ActiveUnit | None, preparer: Preparer) -> Iterator[GenerationRequest]:
        """Requests, unit after unit; the next unit is claimed only when the engine asks for more."""
        active = first
        while True:
            if self.stop_requested:
                return
            if active is None:
                active = self._claim_next(preparer)
                if active is None:
                    return
            rows = active.prepared.todo()
            if not rows:
                assert self.writer is not None
                self.writer.finish_empty(active)
            else:
                active.first_at = time.time()
                if self.report["first_request_at"] is None:
                    self._set(first_request_at=active.first_at)
                    self.gpus.start()
            for row in rows:
                if self.stop_requested:
                    return
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
            active = None

    def _on_completion(self, comp: Completion) -> None:
        active, row_no = self.keys.pop(comp.key)
        p = active.prepared
        rec = p.records[row_no]
        unit = p.unit
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
        assert self.writer is not None
        self.writer.add(active, row)
        self.report["records"] += 1
        self.report["samples"] += len(comp.samples)
        self.report["output_tokens"] += sum(s.num_tokens for s in comp.samples)
        self.report["prompt_tokens"] += comp.prompt_tokens
        active.completed += 1
        faults.after_record(unit.unit_id, active.dir.root, self.cfg.replica, active.completed)  # test-only, inert

    # -- claims ---------------------------------------------------------------------------------------------------

    def _candidates(self) -> list[Unit]:
        units = tuple(u for u in self.plan.units if u.model == self.cfg.model)
        if self.cfg.only_units is not None:
            units = tuple(u for u in units if u.unit_id in self.cfg.only_units)
        return list(units)

    def _claim_next(self, preparer: Preparer) -> ActiveUnit | None:
        """The next unit the cursor offers (this worker's stride of the candidates first) that is not done, not failed
        too often, and free (or its owner dead)."""
        # The cursor orders the tries and knows, from units.log, what is done or held; a unit the run's log never
        # named was never claimed, so it has no done marker, failures, chunks or quarantine to read (claim_cursor.py).
        for unit in self.cursor.walk(self._candidates()):
            if unit.unit_id in self._skip:
                continue
            udir = self.rundir.unit(unit.unit_id)
            named = self.cursor.worth_checking(unit.unit_id)
            if named and (udir.is_done() or self._failed_out(udir)):
                self._skip.add(unit.unit_id)
                continue
            claim = udir.claim(self.owner)
            if claim is None:
                self.cursor.taken(unit.unit_id)
                continue
            # finished between our check and our claim, or failed out while the log missed its claims
            if claim.generation > 0 and (udir.is_done() or (not named and self._failed_out(udir))):
                udir.release(claim)
                self._skip.add(unit.unit_id)
                continue
            scan = udir.scan(keep_rows=False) if claim.generation > 0 else ChunkScan()
            if scan.damaged:
                log.warning(
                    "unit %s: %d chunk(s) fail their checksum; their rows are generated again: %s",
                    unit.unit_id,
                    len(scan.damaged),
                    ", ".join(p.name for p in scan.damaged),
                )
                udir.set_damaged_aside(scan.damaged)
            prepared = preparer.prepare(unit, set(scan.rows))
            if prepared.quarantined or claim.generation > 0:
                udir.write_quarantine([{"row": q.row, "reason": q.reason, "raw": q.raw} for q in prepared.quarantined])
            active = ActiveUnit(prepared, udir, claim, remaining=len(prepared.token_ids))
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
        return None

    def _failed_out(self, udir: UnitDir) -> bool:
        """The unit failed max_retries + 1 times in this submission: no worker takes it again."""
        max_failures = self.plan.spec.slurm.max_retries + 1
        submission = os.environ.get("LAUNCHER_SUBMISSION")
        if len([f for f in udir.read_failures() if f.get("submission") == submission]) < max_failures:
            return False
        log.error("unit %s failed %d time(s) in this submission; no worker takes it again", udir.unit_id, max_failures)
        return True

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
                active.dir.release(active.claim)

    def _fail(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.writer is not None:
            self.writer.flush(timeout_s=30)  # first: a unit whose last rows were still queued finishes, unblamed
        for active in self.active:
            # Only units whose records went into the engine. A crash before that (the engine's start on a bad node)
            # is not the claimed unit's: counted against it, every worker would skip it after max_retries + 1.
            if not active.finished and active.first_at is not None:
                active.dir.record_failure(
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
        self._release_unfinished()
        self._set(state="failed", error=error[:2000])

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
        if (gpu := self.gpus.figures()) is not None and (gpu["samples"] or gpu["error"]):
            report["gpu_monitor"] = gpu
        return report

    def _write_report(self) -> None:
        report = self._snapshot()
        with self._report_lock:
            self.report["units_done"], self.report["current_units"] = report["units_done"], report["current_units"]
            self.report["unit_windows"], self.report["last_write_at"] = report["unit_windows"], report["last_write_at"]
        write_json_atomic(  # not fsynced: rewritten every HEARTBEAT_S by every worker (docs/scale.md)
            self.rundir.worker_report(self.cfg.slot, self.owner.restart, os.getpid(), self.cfg.model),
            report,
            durable=self.report.get("ended") is not None,
        )

    def _heartbeat(self) -> None:
        while self.report.get("ended") is None:
            for active in list(self.active):
                if not active.finished:
                    ClaimBook.heartbeat(active.claim)
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
