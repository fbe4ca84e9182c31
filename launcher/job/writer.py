"""job/writer.py: finished records -> checked chunk files, then the unit's done marker. On a thread of its own, so
disk I/O on shared storage overlaps generation.

Before each chunk it checks that the worker still owns the unit (claims.py): an owner that was taken over while cut
off stops writing at once. A unit is marked done only when every valid row is in a chunk that passes its checksum.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from launcher.inputs.records import Quarantined
from launcher.job.prepare import PreparedUnit
from launcher.store import Claim, OutputRow, UnitDir, UnitDone
from launcher.store.unit_dir import chunk_listing

log = logging.getLogger("launcher.job")


@dataclass
class ActiveUnit:
    """A unit this worker holds: what is in flight, what is written, when."""

    prepared: PreparedUnit
    dir: UnitDir
    claim: Claim
    remaining: int  # records of this attempt not written yet (the writer's count)
    completed: int = 0  # records the engine returned (the generating thread's count)
    seq: int = 0
    buffer: list[OutputRow] = field(default_factory=list)
    records: int = 0
    samples: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    first_at: float | None = None  # wall clock: its first request went to the engine
    last_at: float | None = None  # wall clock: its last chunk reached the disk
    lost: bool = False  # another worker took it over: nothing more is written
    finished: bool = False
    failed_rows: list[Quarantined] = field(default_factory=list)  # refused by the engine (or unencodable) this time

    def quarantine_rows(self) -> list[dict[str, Any]]:
        """What quarantine.jsonl holds for this attempt: the rows prepare() set aside, then the ones that failed in
        the engine. A resumed unit tries the latter again (they are not in any chunk), and they come back here only
        if they fail again."""
        rows: list[dict[str, Any]] = [
            {"row": q.row, "reason": q.reason, "raw": q.raw} for q in self.prepared.quarantined
        ]
        rows += [{"row": q.row, "reason": q.reason, "raw": q.raw, "stage": "generate"} for q in self.failed_rows]
        return sorted(rows, key=lambda q: q["row"])

    @property
    def unit_id(self) -> str:
        return self.prepared.unit.unit_id

    def window(self) -> list[Any]:
        return [self.first_at, self.last_at, self.samples, self.output_tokens]


class ChunkWriter:
    """add() from the generating thread; chunks and done markers are written on the writer's own thread."""

    def __init__(self, chunk_records: int, worker: str) -> None:
        self.chunk_records = chunk_records
        self.worker = worker
        # SimpleQueue: put() is safe from a signal handler (a preemption flush may interrupt add() mid-put).
        self.queue: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.finished: list[ActiveUnit] = []
        self.last_write_at: float | None = None
        self._open: list[ActiveUnit] = []  # units with rows in their buffer: flush() writes them
        self.thread = threading.Thread(target=self._drain, name="chunk-writer", daemon=True)
        self.thread.start()

    def add(self, active: ActiveUnit, row: OutputRow) -> None:
        self.queue.put(("row", active, row))

    def quarantine(self, active: ActiveUnit, failed: Quarantined) -> None:
        """A record the engine could not generate (or whose text cannot be written): quarantined alone, with why."""
        self.queue.put(("quarantine", active, failed))

    def finish_empty(self, active: ActiveUnit) -> None:
        """A unit with nothing left to generate (all done earlier, or all quarantined): just mark it done."""
        self.queue.put(("finish", active, None))

    def flush(self, timeout_s: float = 60.0) -> None:
        """Write every finished record now (preemption): whole chunks, then return."""
        done = threading.Event()
        self.queue.put(("flush", done, None))
        done.wait(timeout_s)

    def close(self) -> None:
        self.queue.put(("stop", None, None))
        self.thread.join()
        if self.error is not None:
            raise self.error

    def _drain(self) -> None:
        while True:
            kind, a, b = self.queue.get()
            try:
                if kind == "stop":
                    return
                if kind == "flush":
                    for active in self._open:
                        self._write(active)
                    a.set()
                elif kind == "finish":
                    self._finish(a)
                elif kind == "quarantine":
                    self._quarantine(a, b)
                else:
                    self._row(a, b)
            except BaseException as exc:  # surfaced by close(); the generating thread checks `error` too
                log.error("writer: %s: %s", type(exc).__name__, exc)
                self.error = exc
                if kind == "flush":
                    a.set()

    def _row(self, active: ActiveUnit, row: OutputRow) -> None:
        if active.lost:
            return
        if active not in self._open:
            self._open = [*self._open, active]
        active.buffer.append(row)
        active.remaining -= 1
        active.records += 1
        active.samples += len(row["generated_samples"])
        active.output_tokens += sum(row["sample_tokens"])
        active.prompt_tokens += row["prompt_tokens"]
        if len(active.buffer) >= self.chunk_records or active.remaining == 0:
            self._write(active)
        if active.remaining == 0 and not active.lost:
            self._finish(active)

    def _quarantine(self, active: ActiveUnit, failed: Quarantined) -> None:
        if active.lost:
            return
        if not active.dir.claims.still_mine(active.claim):
            active.lost = True
            return
        active.failed_rows.append(failed)
        active.remaining -= 1
        active.dir.write_quarantine(active.quarantine_rows())
        if active.remaining == 0:
            self._write(active)
            if not active.lost:
                self._finish(active)

    def _write(self, active: ActiveUnit) -> None:
        if not active.buffer or active.lost:
            return
        if not active.dir.claims.still_mine(active.claim):
            active.lost = True
            log.warning(
                "unit %s was taken over by another worker; %d finished record(s) of ours are dropped "
                "(the new owner generates them, with the same seeds)",
                active.unit_id,
                len(active.buffer),
            )
            active.buffer = []
            return
        rows, active.buffer = active.buffer, []
        active.dir.write_chunk(active.claim.generation, active.seq, rows)
        active.seq += 1
        active.last_at = self.last_write_at = time.time()

    def _finish(self, active: ActiveUnit) -> None:
        """Every row written: check the unit on disk, then mark it done."""
        self._write(active)
        if active.lost:
            return
        scan = active.dir.scan(keep_rows=False)
        if scan.damaged:
            active.dir.set_damaged_aside(scan.damaged)
        failed = {q.row for q in active.failed_rows}
        missing = sorted(set(active.prepared.records) - set(scan.rows) - failed)
        if missing:
            raise RuntimeError(
                f"unit {active.unit_id}: {len(missing)} row(s) not in any good chunk after the run "
                f"(first: {missing[:5]}); a rerun generates them"
            )
        done = UnitDone(
            unit_id=active.unit_id,
            rows=active.prepared.unit.rows,
            records=len(active.prepared.records) - len(failed),
            quarantined=len(active.prepared.quarantined) + len(failed),
            chunks=chunk_listing(scan),
            worker=self.worker,
            generation=active.claim.generation,
            finished_at=time.time(),
        )
        active.dir.mark_done(done)
        if active.last_at is None:
            active.last_at = time.time()
        active.finished = True
        active.dir.claims.release(active.claim)
        self._open = [a for a in self._open if a is not active]
        self.finished.append(active)


__all__ = ["ActiveUnit", "ChunkWriter"]
