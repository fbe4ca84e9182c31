"""job/unit_claims.py: which unit a worker takes next, and the taking of it: claim (store/claims.py, told to
units.log) -> its damaged chunks set aside -> its records read and tokenized, minus the rows already written -> an
ActiveUnit the worker feeds to its engine. A unit that is done, held by a live worker, or failed too often in this
submission is passed over; one whose input changed since submit is refused, with why.

Kept out of job/worker.py so that the worker's module holds the engine's life and the generation loop, and what a
claim costs (a bounded number of file operations, job/claim_cursor.py) can be read in one place.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from launcher.inputs.guard import InputChanged
from launcher.job.claim_cursor import ClaimCursor
from launcher.job.order import FeedOrder
from launcher.job.prepare import Preparer
from launcher.job.writer import ActiveUnit
from launcher.plan import Plan, Unit
from launcher.store import ChunkScan, Claim, Owner, UnitDir, UnitFailure, of_submission

log = logging.getLogger("launcher.job")


class FreeUnit(NamedTuple):
    """A unit this worker has just claimed, before its records are read."""

    unit: Unit
    dir: UnitDir
    claim: Claim
    done_rows: frozenset[int]  # rows already in checked chunks


class UnitClaims:
    """One worker's units: those it may take (its model's, or `launcher run --unit`'s), those it holds (`active`,
    and `pending`: claimed before the engine started, not prepared yet), those it knows are done."""

    def __init__(
        self,
        plan: Plan,
        owner: Owner,
        cursor: ClaimCursor,
        model: str,
        only_units: tuple[str, ...] | None,
        warn: Callable[[str], None],
    ) -> None:
        self.plan, self.owner, self.cursor = plan, owner, cursor
        self.model, self.only_units, self.warn = model, only_units, warn
        self.active: list[ActiveUnit] = []
        self.pending: FreeUnit | None = None
        self.order: FeedOrder | None = None  # decided on the host-side thread, once the tokenizer is there
        self.claimed = 0  # units prepared and handed to the engine
        self.stopping = False  # the worker was told to stop: nothing more is claimed, a failure now is not a unit's
        self.skip: set[str] = set()  # units known done (or refused) in this worker's view

    @property
    def slot(self) -> str:
        return self.owner.worker

    def candidates(self) -> list[Unit]:
        """This worker's units in claim order: plan order, or with prefix order each group's members together."""
        units = tuple(u for u in self.plan.units if u.model == self.model)
        if self.only_units is not None:
            units = tuple(u for u in units if u.unit_id in self.only_units)
        return self.order.candidates(units) if self.order is not None else list(units)

    def todo(self) -> list[Unit]:
        """The candidates not known to be done."""
        return [u for u in self.candidates() if u.unit_id not in self.skip]

    def next_group(self, preparer: Preparer) -> list[ActiveUnit]:
        """The next candidate the cursor offers (this worker's stride of them first) that is not done, not failed too
        often, and free (or its owner dead), prepared, with prefix order also the members of its group that are
        (each claimed on its own: one another worker holds, or that is done, stays out of this group). Empty when
        nothing is left."""
        for unit in self.cursor.walk(self.candidates()):
            found = self.take(unit)
            if found is not None and (group := self.with_partners(self.activate(found, preparer), preparer)):
                return group
        return []

    def with_partners(self, active: ActiveUnit | None, preparer: Preparer) -> list[ActiveUnit]:
        """`active` and the members of its prefix group this worker could claim, in the group's feed order. A member
        units.log says is done or held by a live worker is not tried (no file operation)."""
        if active is None:
            return []
        order = self.order
        assert order is not None
        group = [active]
        for partner in order.partners(active.prepared.unit, self.candidates()):
            if not self.cursor.worth_a_try(partner.unit_id):
                continue
            if (found := self.take(partner)) is not None:
                self.cursor.claimed(partner.unit_id)  # outside its walk: never offered again
                if (other := self.activate(found, preparer)) is not None:
                    group.append(other)
        return sorted(group, key=lambda a: order.position(a.prepared.unit))

    def claim_free(self) -> FreeUnit | None:
        """The next candidate the cursor offers that is free, claimed with file operations alone (no tokenizer)."""
        for unit in self.cursor.walk(self.candidates()):
            if (found := self.take(unit)) is not None:
                return found
        return None

    def take(self, unit: Unit) -> FreeUnit | None:
        """Claim one unit (store/claims.py, told to units.log); None when it is done, failed too often, or held. A
        unit the run's complete log never named was never claimed: it has no done marker, failures, chunks or
        quarantine, and none is read (a claim at generation 0 proves the same after the fact)."""
        if unit.unit_id in self.skip:
            return None
        udir = self.plan.run.unit(unit.unit_id)
        named = self.cursor.worth_checking(unit.unit_id)
        if named and (udir.is_done() or self._failed_out(udir)):
            self.skip.add(unit.unit_id)
            return None
        claim = udir.claim(self.owner, fresh=not named)
        if claim is None:
            self.cursor.taken(unit.unit_id)
            return None
        # finished between our check and our claim, or failed out while the log missed its claims
        if claim.generation > 0 and (udir.is_done() or (not named and self._failed_out(udir))):
            udir.release(claim)
            self.skip.add(unit.unit_id)
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

    def activate(self, found: FreeUnit, preparer: Preparer) -> ActiveUnit | None:
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
            if isinstance(exc, Exception) and not self.stopping:
                self.record_failure(udir, f"reading and tokenizing its records: {type(exc).__name__}: {exc}")
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
            self.slot,
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
        log.error("worker %s: unit %s refused: %s", self.slot, unit.unit_id, exc)
        self.record_failure(udir, f"InputChanged: {exc}")
        udir.release(claim)
        self.skip.add(unit.unit_id)
        self.warn(f"unit {unit.unit_id} refused: {exc}"[:500])

    def record_failure(self, udir: UnitDir, error: str) -> None:
        """A failure of the unit, counted in this submission (LAUNCHER_SUBMISSION)."""
        failure = UnitFailure.new(
            self.slot,
            socket.gethostname(),
            time.time(),
            error[:2000],
            os.environ.get("LAUNCHER_SUBMISSION"),
            self.owner.job_id,
        )
        udir.record_failure(self.slot, failure)

    def blame_unfinished(self, error: str) -> None:
        """The worker failed: each unit whose records went into the engine and did not finish counts a failure. A
        crash before that (the engine's start on a bad node) is not the claimed unit's: counted against it, every
        worker would skip it after max_retries + 1."""
        for active in self.active:
            if not active.finished and active.first_at is not None:
                self.record_failure(active.dir, error)

    def release_unfinished(self) -> None:
        """Give back every unit held and not finished (the requeued job or another worker takes them)."""
        for active in self.active:
            if not active.finished:
                active.dir.release(active.claim)
        if (pending := self.pending) is not None:  # claimed, not prepared yet (the engine was still starting)
            pending.dir.release(pending.claim)


__all__ = ["FreeUnit", "UnitClaims"]
