"""engines/batch_trace.py: how full the engine's batch was, step by step, and how long it drained at the end.

The feed (job/worker.py) hands the engine unit after unit; admission keeps as many requests in flight as the KV
cache holds. A step is full when admission could add nothing more (the request limit, or the KV cache), starved when
it could have but the feed gave nothing (a feed that blocks, or claims too late: should never happen), and part of
the drain once the feed has run out: the last requests finishing, which no feed can fill.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class BatchTrace:
    steps: int = 0
    full: int = 0
    starved: int = 0
    drain: int = 0
    fill_sum: float = 0.0  # in-flight requests / the limit, summed over steps before the drain
    first_at: float | None = None
    drain_at: float | None = None
    last_at: float | None = None
    _limit: int = field(default=1, repr=False)

    def step(self, inflight: int, limit: int, blocked: bool, exhausted: bool) -> None:
        """Before each engine step: `blocked`, admission held a request back (KV cache full)."""
        now = time.time()
        self.first_at = self.first_at or now
        self.last_at = now
        self.steps += 1
        self._limit = max(1, limit)
        if exhausted:
            self.drain += 1
            self.drain_at = self.drain_at or now
            return
        self.fill_sum += min(1.0, inflight / self._limit)
        if inflight >= limit or blocked:
            self.full += 1
        else:
            self.starved += 1

    def summary(self) -> dict[str, float | int | None]:
        fed = self.steps - self.drain
        end = time.time()
        return {
            "steps": self.steps,
            "full_steps": self.full,
            "starved_steps": self.starved,
            "drain_steps": self.drain,
            "mean_fill_before_drain": round(self.fill_sum / fed, 3) if fed else None,
            "drain_s": round(end - self.drain_at, 3) if self.drain_at else None,
            "generate_s": round(end - self.first_at, 3) if self.first_at else None,
        }


__all__ = ["BatchTrace"]
