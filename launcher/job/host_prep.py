"""job/host_prep.py: a worker's host-side start-up on a thread beside the engine's start: tokenizer -> preparer ->
the feed order (plan or prefix order: job/order.py measures the first rows with the preparer) -> the first group's
records and token ids -> prompt statistics (which refine admission once the engine is up).

Why this can overlap at all: on a GPU, vLLM forks its engine core out of the worker's process and then waits for it
(20-70 s) with the GIL released, so the tokenizer (10 s on the GPU host for the bench's vocabulary), the statistics
and the first unit fit in that wait. When the thread may start is the engine's to say (Engine.host_ok): vLLM forks
after its front end is set up, and a thread that runs through a fork can leave the child holding a lock that no
thread there will ever release (an import, a logging handler). On the CPU (CI) the engine runs in the worker's own
process and shares the GIL with this thread: the two interleave, about as long as one after the other.

Every phase keeps its start and end by the wall clock (`timeline`), so a report shows what ran beside what.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from launcher.job.prepare import Preparer
from launcher.job.writer import ActiveUnit


@dataclass
class HostResult:
    tokenizer: Any
    preparer: Preparer
    first: list[ActiveUnit]  # the first group (a unit, or a prefix group) with rows to generate; empty: none left
    stats: dict[str, list[float]]  # unit id -> [records, prompt tokens, longest prompt] (job/prepare.py)


class HostPrep:
    """The five steps, each a callable of the worker: run on a thread (start) or here (run_here)."""

    def __init__(
        self,
        load_tokenizer: Callable[[], Any],
        make_preparer: Callable[[Any], Preparer],
        feed_order: Callable[[Preparer], None],
        first_group: Callable[[Preparer], list[ActiveUnit]],
        prompt_stats: Callable[[Preparer], dict[str, list[float]]],
    ) -> None:
        self._steps = (load_tokenizer, make_preparer, feed_order, first_group, prompt_stats)
        self.timeline: dict[str, list[float]] = {}  # phase -> [start, end], wall clock
        self._tokenizer_ready = threading.Event()
        self._done = threading.Event()
        self._tokenizer: Any = None
        self._result: HostResult | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, gate: threading.Event | None = None) -> None:
        """Run on a thread once `gate` is set (at once without one)."""
        self._thread = threading.Thread(target=self._run, args=(gate,), name="worker-host-prep", daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None or self._done.is_set()

    def run_here(self) -> HostResult:
        """Run in the caller's thread (overlap switched off: the old order, everything before the engine)."""
        self._run(None)
        return self.result()

    def tokenizer(self) -> Any:
        """The tokenizer, once loaded (waits for it); raises what the thread raised."""
        self._tokenizer_ready.wait()
        if self._tokenizer is None:
            raise RuntimeError("the tokenizer did not load") from self._error
        return self._tokenizer

    def result(self) -> HostResult:
        """Wait for every step; raises what the thread raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def finished(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    def _run(self, gate: threading.Event | None) -> None:
        load_tokenizer, make_preparer, feed_order, first_group, prompt_stats = self._steps
        try:
            if gate is not None:
                with self._phase("wait_for_engine_fork"):
                    gate.wait()
            with self._phase("tokenizer"):
                self._tokenizer = load_tokenizer()
            self._tokenizer_ready.set()
            preparer = make_preparer(self._tokenizer)
            with self._phase("prefix_order"):
                feed_order(preparer)
            with self._phase("first_unit"):
                first = first_group(preparer)
            with self._phase("prompt_stats"):
                stats = prompt_stats(preparer)
            self._result = HostResult(self._tokenizer, preparer, first, stats)
        except BaseException as exc:  # handed to whoever waits: result() and tokenizer() raise it
            self._error = exc
        finally:
            self._tokenizer_ready.set()
            self._done.set()

    def _phase(self, name: str) -> _Phase:
        return _Phase(self.timeline, name)


class _Phase:
    def __init__(self, timeline: dict[str, list[float]], name: str) -> None:
        self.timeline, self.name = timeline, name

    def __enter__(self) -> None:
        self.timeline[self.name] = [time.time(), time.time()]

    def __exit__(self, *exc: object) -> None:
        self.timeline[self.name][1] = time.time()


class LazyTokenizer:
    """Stands for the tokenizer the host thread is loading; any use waits for it. The engine keeps it for decoding
    samples, which happens only after the first results, long after the tokenizer is there."""

    def __init__(self, prep: HostPrep) -> None:
        self._prep = prep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._prep.tokenizer(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._prep.tokenizer()(*args, **kwargs)

    def resolve(self) -> Any:
        """The tokenizer itself (waits for it): for code that checks its class (engines/decode.py)."""
        return self._prep.tokenizer()


def phase_seconds(timeline: dict[str, list[float]]) -> dict[str, float]:
    return {f"{name}_s": round(end - start, 3) for name, (start, end) in timeline.items()}


__all__ = ["HostPrep", "HostResult", "LazyTokenizer", "phase_seconds"]
