"""job/feed.py: a running engine's two streams: requests out (the claimed units' rows, group after group, the next
group claimed only when the engine asks for more, so the batch never drains between units) and completions in (each
one a row for the chunk writer, or a record quarantined alone with why).

Kept out of job/worker.py so that the worker holds the engine's life (start, hand over, stop, fail) and this module
what happens to one unit's rows while the engine runs: key -> (unit, row) -> request -> completion -> output row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from launcher import faults
from launcher.engines.base import Completion, Engine, GenerationRequest
from launcher.inputs.encodable import first_unencodable
from launcher.inputs.records import Quarantined, Record
from launcher.job.gpu_monitor import GpuSampler
from launcher.job.live_report import LiveReport
from launcher.job.order import interleave
from launcher.job.prepare import Preparer
from launcher.job.unit_claims import UnitClaims
from launcher.job.writer import ActiveUnit, ChunkWriter
from launcher.store import OutputRow

log = logging.getLogger("launcher.job")
PROGRESS_EVERY_S = 10.0


class Stopped(BaseException):
    """Raised in the generating thread when the worker was told to stop (preemption, time limit). A BaseException,
    like KeyboardInterrupt: code that isolates one record's failure (`except Exception`: a template, the tokenizer,
    an engine call) must never take a stop for that record's fault."""


class Feed:
    """What one engine generates, from the first group to the last unit its worker can claim."""

    def __init__(
        self,
        claims: UnitClaims,
        writer: ChunkWriter,
        live: LiveReport,
        gpus: GpuSampler,
        next_group: Callable[[Preparer], list[ActiveUnit]],
        token_ids: bool,
        replica: int,
    ) -> None:
        """`next_group`: the worker's claim of its next group (its feed order decided first); `token_ids`: the
        spec's output.token_ids; `replica`: which worker of the job (the test-only fault hooks name it)."""
        self.claims, self.writer, self.live, self.gpus = claims, writer, live, gpus
        self.next_group, self.token_ids, self.replica = next_group, token_ids, replica
        self.keys: dict[int, tuple[ActiveUnit, int]] = {}  # request key -> its unit and row
        self._next_key = 0

    def run(self, engine: Engine, first: list[ActiveUnit], preparer: Preparer) -> None:
        """Generate until a whole pass finds nothing more to claim; Stopped when the worker was told to stop."""
        pending: list[ActiveUnit] | None = first
        last_log = time.perf_counter()
        while True:
            before = self.claims.claimed
            for comp in engine.generate(self.requests(pending, preparer)):
                self.on_completion(comp)
                if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                    last_log = time.perf_counter()
                    self.live.log_progress()
            pending = None
            if self.writer.error is not None:
                raise self.writer.error
            if self.claims.stopping:
                raise Stopped()
            if self.claims.claimed == before:  # a whole pass found nothing more to claim
                return

    def requests(self, first: list[ActiveUnit] | None, preparer: Preparer) -> Iterator[GenerationRequest]:
        """Requests, unit after unit (or group after group, job/order.py); the next is claimed only when the engine
        asks for more."""
        group = first
        while True:
            if self.claims.stopping:
                return
            if not group:
                group = self.next_group(preparer)
                if not group:
                    return
            for active in group:
                if not active.prepared.todo():
                    self.writer.finish_empty(active)
                    continue
                active.first_at = time.time()
                if self.live.report["first_request_at"] is None:
                    self.live.set(first_request_at=active.first_at)
                    self.gpus.start()
            for member, row in interleave([a.prepared for a in group]):
                if self.claims.stopping:
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

    def on_completion(self, comp: Completion) -> None:
        active, row_no = self.keys.pop(comp.key)
        p = active.prepared
        rec = p.records[row_no]
        unit = p.unit
        active.completed += 1
        if comp.error is not None:  # the engine could not generate this record alone: it, not its unit, fails
            self.quarantine(active, rec, comp.error)
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
        if self.token_ids:
            row["sample_token_ids"] = [list(s.token_ids) for s in comp.samples]
        if (why := first_unencodable(row)) is not None:  # no chunk could hold it: this record alone is set aside
            self.quarantine(active, rec, f"the generated row cannot be written as UTF-8: {why}")
            return
        self.writer.add(active, row)
        self.live.count(comp)
        faults.after_record(unit.unit_id, active.dir, self.replica, active.completed)  # test-only, inert

    def quarantine(self, active: ActiveUnit, rec: Record, why: str) -> None:
        log.warning("worker %s: row %d of unit %s quarantined: %s", self.claims.slot, rec.row, active.unit_id, why)
        self.writer.quarantine(active, Quarantined(rec.row, why[:500], rec.record_id))
        self.live.count_quarantined()
        faults.after_record(active.unit_id, active.dir, self.replica, active.completed)  # test-only, inert


__all__ = ["PROGRESS_EVERY_S", "Feed", "Stopped"]
