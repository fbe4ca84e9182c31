"""job/live_report.py: a worker's report while it runs (workers/<slot>-r<restart>-<pid>.json): what `launcher status`,
the gather and the bench read. The heartbeat thread renews the worker's claims and rewrites the report every
HEARTBEAT_S; the worker writes it once more at the end. Every figure is by the wall clock.

Its own class, built from the worker's parts (its config, its claims, its GPU sampler, its chunk writer) rather than
from the worker, so that the report's fields and how each is counted stay in one place, below job/worker.py.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.store import Owner, RunDir, WorkerReport
from launcher.store.claims import HEARTBEAT_S

if TYPE_CHECKING:
    from launcher.engines.base import Completion, EngineReport
    from launcher.job.gpu_monitor import GpuSampler
    from launcher.job.unit_claims import UnitClaims
    from launcher.job.worker_config import WorkerConfig
    from launcher.job.writer import ChunkWriter

log = logging.getLogger("launcher.job")


class LiveReport:
    """The report of one worker, guarded by a lock (the heartbeat thread, the host-side start-up thread and a signal
    handler write it beside the generating thread). It reads the worker's units, writer and GPU sampler when it
    takes a snapshot."""

    def __init__(self, cfg: WorkerConfig, owner: Owner, rundir: RunDir, claims: UnitClaims, gpus: GpuSampler) -> None:
        self.cfg, self.owner, self.rundir, self.claims, self.gpus = cfg, owner, rundir, claims, gpus
        self.writer: ChunkWriter | None = None  # the worker's, once it made it
        self.lock = threading.Lock()
        self._cpu_s0 = _cpu_seconds()  # a job that runs several models' workers in turn counts each its own
        self.report: WorkerReport = {
            "slot": cfg.slot,
            "job_index": cfg.job_index,
            "replica": cfg.replica,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": owner.job_id,
            "restart": owner.restart,
            "gpus": list(cfg.gpu_ids),
            "tensor_parallel_size": cfg.layout.tensor_parallel,
            "model": cfg.model,
            "state": "starting",
            "started": _worker_start_wall(),
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

    def warn(self, message: str) -> None:
        log.warning("worker %s: %s", self.cfg.slot, message)
        with self.lock:
            self.report["warnings"] = [*self.report["warnings"], message]

    def set(self, **values: Any) -> None:
        with self.lock:
            self.report.update(values)  # type: ignore[typeddict-item]

    def engine_ready(self, engine: EngineReport, ready_at: float, workload: dict[str, Any]) -> None:
        """The engine is up and sized: the report says what it is, its settings and why, and the workload."""
        self.set(
            state="running",
            engine={
                "version": engine.version,
                "device": engine.device,
                "gpu_name": engine.gpu_name,
                "settings": engine.settings,
                "reasons": engine.reasons,
                "startup": engine.startup,
            },
            engine_ready_at=ready_at,
            workload=workload,
        )

    def count(self, comp: Completion) -> None:
        """A record generated and handed to the writer (the generating thread alone counts)."""
        r = self.report
        r["records"] += 1
        r["samples"] += len(comp.samples)
        r["output_tokens"] += sum(s.num_tokens for s in comp.samples)
        r["prompt_tokens"] += comp.prompt_tokens

    def count_quarantined(self) -> None:
        self.report["quarantined"] += 1

    def snapshot(self) -> WorkerReport:
        with self.lock:
            report = WorkerReport(**self.report)
        active = list(self.claims.active)
        report["units_done"] = [a.unit_id for a in active if a.finished]
        report["current_units"] = [a.unit_id for a in active if not a.finished and not a.lost]
        report["unit_windows"] = {a.unit_id: a.window() for a in active if a.first_at is not None}
        report["last_write_at"] = self.writer.last_write_at if self.writer is not None else None
        report["heartbeat_at"] = time.time()
        report["cpu_seconds"] = round(_cpu_seconds() - self._cpu_s0, 3)
        if (gpu := self.gpus.figures()) is not None and (gpu["samples"] or gpu["error"]):
            report["gpu_monitor"] = gpu
        return report

    def write(self) -> None:
        report = self.snapshot()
        with self.lock:
            self.report["units_done"], self.report["current_units"] = report["units_done"], report["current_units"]
            self.report["unit_windows"], self.report["last_write_at"] = report["unit_windows"], report["last_write_at"]
        # not fsynced while running: rewritten every HEARTBEAT_S by every worker (docs/scale.md); fsynced at the end
        self.rundir.write_json(
            self.rundir.worker_report(self.cfg.slot, self.owner.restart, os.getpid(), self.cfg.model),
            report,
            durable=report.get("ended") is not None,
        )

    def heartbeat(self) -> None:
        """The heartbeat thread: renew the claims held (a unit claimed before the engine started too), rewrite the
        report, until the worker ends."""
        while self.report.get("ended") is None:
            for active in list(self.claims.active):
                if not active.finished:
                    active.dir.claims.heartbeat(active.claim)
            if (pending := self.claims.pending) is not None:
                pending.dir.claims.heartbeat(pending.claim)
            try:
                self.write()
            except OSError as exc:  # storage trouble is waited out by the writes that matter; status can lag
                log.warning("worker report not written: %s", exc)
            time.sleep(HEARTBEAT_S)

    def log_progress(self) -> None:
        r = self.report
        since = r["first_request_at"] or time.time()
        rate = r["samples"] / max(1e-9, time.time() - since)
        log.info(
            "worker %s: %d records, %d samples (%.1f samples/s); units %s",
            self.cfg.slot,
            r["records"],
            r["samples"],
            rate,
            ", ".join(a.unit_id for a in self.claims.active if not a.finished) or "-",
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


_STARTED_IN_PROCESS: list[float] = []


def _worker_start_wall() -> float:
    """The process's start for its first worker (imports count as start-up); for a later model of a sweep run in the
    same process, now: its start-up is its own, not the previous model's generation."""
    now = time.time()
    first = not _STARTED_IN_PROCESS
    _STARTED_IN_PROCESS.append(now)
    return _process_start_wall() if first else now


def _process_start_wall() -> float:
    """When this process started, by the wall clock (Linux /proc; now elsewhere): imports count as start-up."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


__all__ = ["LiveReport"]
