"""bench/fake_engine.py: FakeEngine, the stand-in for a GPU engine where none can run (the scale benchmark and its
test): every request takes a fixed `latency_s` and returns n samples of `tokens` tokens each.

It exists so that claims, the chunk writer, status and gather can be measured with hundreds of real workers on a
machine without GPUs. It is registered with the engines' registry (engines/registry.py) only inside the
benchmark's own worker processes (use_fake_engine), where it takes the real engine's place, never by an import: no
spec elsewhere can select it. Every report of such a worker says "FakeEngine".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from launcher.engines import registry
from launcher.engines.base import Completion, Engine, EngineReport, GenerationRequest, Sample, Workload
from launcher.engines.registry import Backend, Capabilities
from launcher.plan.layout import ParallelLayout
from launcher.spec import ModelSpec, SamplingSpec


class FakeEngine(Engine):
    """Requests one after another, each `latency_s` of sleep: a worker's time per record is fixed and known."""

    name = "fake"

    def __init__(self, model: ModelSpec, sampling: SamplingSpec, n: int, latency_s: float, tokens: int) -> None:
        super().__init__(model, sampling, n)
        self.latency_s, self.tokens = latency_s, tokens
        self.generated = 0  # requests answered (the benchmark counts records generated twice)

    def load(self, workload: Workload, tokenizer: Any, layout: ParallelLayout) -> EngineReport:
        return EngineReport(
            "fake",
            "FakeEngine",
            "cpu",
            settings={"latency_s": self.latency_s, "tokens": self.tokens},
            reasons={"latency_s": "FakeEngine: a fixed time per record, no model runs (scale benchmark)"},
        )

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[Completion]:
        for req in requests:
            time.sleep(self.latency_s)
            self.generated += 1
            n = req.n or self.n
            samples = tuple(
                Sample(f"FakeEngine sample {j} of seed {req.seed}", self.tokens, "length") for j in range(n)
            )
            yield Completion(req.key, len(req.prompt_token_ids), samples)


def use_fake_engine(latency_s: float, tokens: int) -> list[FakeEngine]:
    """Make every Worker of this process run a FakeEngine (a benchmark's worker process only). Returns the list the
    engines made here are appended to."""
    import launcher.job.start as start_module
    import launcher.job.worker as worker_module

    made: list[FakeEngine] = []

    def create(name: str, model: ModelSpec, sampling: Any, n: int) -> Engine:
        engine = FakeEngine(model, sampling, n, latency_s, tokens)
        made.append(engine)
        return engine

    # what the worker asks of its backend (warnings, record limit): nothing of a real one's
    registry.register(Backend("fake", "FakeEngine", f"{__name__}:FakeEngine", Capabilities(), auto=False))
    worker_module.select_backend = lambda model: ("fake", "FakeEngine: the scale benchmark's stand-in for a GPU")
    start_module.create_engine = create  # job/start.py starts a worker's engine
    return made


__all__ = ["FakeEngine", "use_fake_engine"]
