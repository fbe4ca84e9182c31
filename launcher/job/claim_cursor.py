"""job/claim_cursor.py: a worker's candidate units (in its preferred order) + the run's units.log -> the units worth
trying next, so that finding a unit to claim costs a bounded number of file operations at any size of run.

- Workers spread out: worker k of n tries positions k, k + n, k + 2n, ... of its order first (its stride), so two
  workers seldom race for one unit, and the run still goes through the order roughly front to back (largest units
  first). When its stride is used up it tries any position, starting from its own: it helps the slower ones.
- What is done, held or given back is read from units.log (store/unit_log.py), only the lines appended since the
  last read: a done unit's folder is never visited, a unit another worker holds is never tried.
- Units held by others come last, and only those whose owner may be dead: on this host by its process (/proc, no
  shared storage touched); a requeued run of this same worker slot at once; on other hosts at most TAKEOVER_PROBES
  per pass. ClaimBook decides every takeover by its own rules (store/claims.py), unchanged.

Which units count and in what order is the worker's business (UnitClaims.candidates, job/unit_claims.py); claiming
is ClaimBook's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar

from launcher.store.claims import Owner, process_start
from launcher.store.unit_log import UnitEvent, UnitView

REFRESH_S = 1.0  # read units.log again at most this often, unless a try just lost a race
TAKEOVER_PROBES = 8  # units held on other hosts probed per pass (each: one ClaimBook.try_claim)


class HasUnitId(Protocol):
    @property
    def unit_id(self) -> str: ...


U = TypeVar("U", bound=HasUnitId)


class ClaimCursor:
    def __init__(self, view: UnitView, me: Owner, position: int, workers: int) -> None:
        self.view, self.me = view, me
        self.workers = max(1, workers)
        self.position = position % self.workers
        self._read_at = float("-inf")  # the first walk reads the log
        self._stale = False
        # Units this worker was offered and did not lose: it claimed them, or found them done or failed out. Never
        # offered again (its own claims reach its view of the log only at the next read).
        self._settled: set[str] = set()
        self._offered: str | None = None

    def walk(self, units: Sequence[U]) -> Iterator[U]:
        """The units to try, best first: this worker's stride, then every other position from its own, then units
        whose owner may be dead. Each at most once per walk; what is known done or held by a live owner never."""
        self._settle()
        self._refresh(force=False)
        n = len(units)
        if not n:
            return
        tried: set[str] = set()
        own = range(self.position, n, self.workers) if self.position < n else range(0)
        for i in itertools.chain(own, self._stolen(n)):
            unit = units[i]
            uid = unit.unit_id
            if uid in tried or not self._free(uid):
                continue
            tried.add(uid)
            yield from self._offer(unit)
            if self._stale:
                self._refresh(force=True)
        probes = 0
        start = self.position * n // self.workers if self.workers > n else self.position
        for i in ((start + i) % n for i in range(n)):
            unit = units[i]
            held = self.view.holder.get(unit.unit_id)
            if held is None or unit.unit_id in tried or unit.unit_id in self.view.done or unit.unit_id in self._settled:
                continue
            verdict = self._owner_may_be_dead(held)
            if verdict is False:
                continue
            if verdict is None:  # another host: only the lease can tell (a try_claim)
                if probes >= TAKEOVER_PROBES:
                    continue
                probes += 1
            tried.add(unit.unit_id)
            yield from self._offer(unit)

    def _stolen(self, n: int) -> Iterator[int]:
        """The other workers' strides, each from its end (its owner works from the front: they meet once), the
        workers taken in an order of this worker's own (a stride of a prime coprime to their number): two workers
        that run out at once go to different ones first."""
        step = _coprime_step(self.workers)
        for j in range(1, self.workers + 1):
            victim = (self.position + j * step) % self.workers
            if victim < n:
                yield from reversed(range(victim, n, self.workers))

    def taken(self, unit_id: str) -> None:
        """A try lost: another worker holds the unit. Read the log before the next try (it says who holds what)."""
        self._stale = True
        if self._offered == unit_id:
            self._offered = None

    def _offer(self, unit: U) -> Iterator[U]:
        self._offered = unit.unit_id
        yield unit
        self._settle()  # asked for the next one without taken(): this one was done, failed out, or claimed

    def _settle(self) -> None:
        if self._offered is not None:
            self._settled.add(self._offered)
            self._offered = None

    def worth_a_try(self, unit_id: str) -> bool:
        """A unit asked for outside the walk (a prefix group's member): not known done, nor held by a live worker,
        nor settled here."""
        return self._free(unit_id)

    def claimed(self, unit_id: str) -> None:
        """A unit claimed outside the walk (a prefix group's member): never offered again."""
        self._settled.add(unit_id)

    def worth_checking(self, unit_id: str) -> bool:
        """Could the unit's folder hold a done marker or failures (so they must be read before claiming)?"""
        return self.view.maybe_done(unit_id)

    def _refresh(self, force: bool) -> None:
        now = time.monotonic()
        if force or self._stale or now - self._read_at >= REFRESH_S:
            self.view.refresh()
            self._read_at, self._stale = now, False

    def _free(self, uid: str) -> bool:
        if uid in self.view.done or uid in self._settled:
            return False
        held = self.view.holder.get(uid)
        if held is None:
            return True
        return held.slot == self.me.worker and not self._is_me(held)  # an earlier run of this slot: dead at once

    def _is_me(self, held: UnitEvent) -> bool:
        return held.host == self.me.host and held.pid == self.me.pid and held.pid_ns == self.me.pid_ns

    def _owner_may_be_dead(self, held: UnitEvent) -> bool | None:
        """False: alive (or us); True: dead by its process or an earlier run of this slot; None: cannot tell here."""
        if self._is_me(held):
            return False
        if held.slot == self.me.worker:
            return True
        if held.host == self.me.host and held.pid_ns == self.me.pid_ns and held.pid_ns not in ("-", "unknown"):
            start = process_start(held.pid)
            return start is None or (held.pid_start is not None and start != held.pid_start)
        return None


def _coprime_step(workers: int) -> int:
    """A step that visits every one of `workers` positions before coming back, spreading neighbours apart: the
    largest prime below workers / 2 + 1 that does not divide it (1 for small numbers)."""
    for p in range(max(1, workers // 2), 1, -1):
        if all(p % d for d in range(2, int(p**0.5) + 1)) and workers % p:
            return p
    return 1


def worker_position(job_index: int, replica: int, jobs: int, workers_per_job: int) -> tuple[int, int]:
    """(this worker's number, how many workers the run has): its stride in the candidates."""
    per_job = max(1, workers_per_job)
    return job_index * per_job + min(replica, per_job - 1), max(1, jobs) * per_job


__all__ = ["ClaimCursor", "worker_position"]
