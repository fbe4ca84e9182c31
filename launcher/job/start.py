"""job/start.py: how a worker gets its engine. A new engine starts first, with the host-side start-up on a thread beside
it (job/host_prep.py), sized from what is known before any prompt is tokenized (the record limit, the number of
records); or, in a `models:` sweep, the previous model's running engine gets this model's weights swapped in.

Also the worker's start-up timeline: each phase's start and end, in seconds from the worker's start, so a report
shows what ran beside what (the engine's start and the tokenizer overlap; the wait for the host work after the
engine is ready is what stayed on the critical path).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from launcher.engines import registry
from launcher.engines.base import Engine, EngineReport, Workload
from launcher.engines.registry import create_engine
from launcher.engines.startup import StartupSwitches
from launcher.job.host_prep import HostPrep, LazyTokenizer
from launcher.job.prepare import Preparer, may_carry_request_settings, token_limit
from launcher.plan.layout import ParallelLayout
from launcher.spec import JobSpec

if TYPE_CHECKING:
    from launcher.job.worker import Worker


@dataclass
class Carry:
    """A running engine handed from one model of a sweep to the next (same architecture, shape and tokenizer), with
    the tokenizer and preparer its worker made: the next worker needs neither a new engine nor a new tokenizer."""

    engine: Engine
    backend: str
    backend_reason: str
    tokenizer: Any
    preparer: Preparer


@dataclass(frozen=True)
class RecordLimit:
    tokens: int | None  # prompt + max_tokens a record may have; the engine's max_model_len when the spec has none
    why: str | None  # set when the KV cache made it lower than the model's context length


def record_limit(spec: JobSpec, layout: ParallelLayout, backend: str) -> RecordLimit:
    """The spec's max_model_len, else the model's context length, capped on a GPU at what one sequence may hold in
    the KV cache (vLLM does not start otherwise). Known before the tokenizer runs; the preparer quarantines what
    exceeds it and the engine starts with it as max_model_len, so the two agree by construction."""
    tokens, why = registry.get(backend).record_limit(spec, layout, token_limit(spec))  # vLLM: engines/vllm/hooks.py
    return RecordLimit(tokens, why)


def open_engine(worker: Worker, backend: str, workload: Workload, prep: HostPrep) -> EngineReport:
    """Swap the carried engine's weights, or start a new engine; either way `prep` runs beside it."""
    phases = worker.report["startup_phases"]
    carry = worker.carry
    if carry is not None:
        ok, why = carry.engine.swap_check(worker.spec.model)
        if ok:
            worker.engine = carry.engine
            prep.start()  # nothing forks during a swap: this model's first unit is prepared beside the reload
            t0 = time.perf_counter()
            try:
                report = carry.engine.swap(worker.spec.model)
                phases["model_swap_s"] = round(time.perf_counter() - t0, 3)
                report.reasons["model_swap"] = why
                return report
            except Exception as exc:  # never lose the model over it: a new engine loads it the usual way
                worker.live.warn(f"swapping in the weights of {worker.spec.model.path} failed ({exc}); a new engine")
                prep.finished()  # its thread must not run through the new engine's fork
        else:
            worker.live.warn(f"new engine for {worker.spec.model.path}: {why}")
        worker.engine = worker.carry = None
        carry.engine.close()
    spec = worker.spec
    engine = worker.engine = create_engine(backend, spec.model, spec.sampling, spec.data.num_samples)
    if worker.cfg.layout.nnodes > 1:
        engine.rendezvous = worker._rendezvous()
    engine.own_request_settings = may_carry_request_settings(worker.spec)
    gate = threading.Event()
    engine.host_ok = gate
    switches = StartupSwitches.from_env()
    if prep.started:
        pass  # a failed swap's: it is done already
    elif switches.on("overlap"):
        prep.start(gate)
        if not engine.holds_host_work:
            gate.set()
    else:
        prep.run_here()  # the old order: everything host-side before the engine
    # An engine that needs the tokenizer to start (HF) waits for it, while the thread goes on with the first unit;
    # vLLM keeps a stand-in and decodes its first samples long after the tokenizer is there.
    tokenizer = LazyTokenizer(prep) if engine.holds_host_work else prep.tokenizer()
    t0 = time.perf_counter()
    report = engine.load(workload, tokenizer, worker.cfg.layout)
    phases["engine_load_s"] = round(time.perf_counter() - t0, 3)
    report.reasons["startup_overlap"] = (
        "the tokenizer, the first unit and the prompt statistics ran beside the engine's start"
        + (" (after vLLM forked its engine core)" if engine.holds_host_work else "")
        + f"; {StartupSwitches.how_to_turn_off('overlap')}"
        if switches.on("overlap")
        else f"{StartupSwitches.how_to_turn_off('overlap')} is set: host-side start-up ran before the engine"
    )
    return report


def timeline(started: float, *parts: dict[str, list[float]]) -> dict[str, list[float]]:
    """phase -> [start, end] in seconds from the worker's start, earliest first."""
    out = {name: [round(a - started, 3), round(b - started, 3)] for part in parts for name, (a, b) in part.items()}
    return dict(sorted(out.items(), key=lambda kv: kv[1][0]))


__all__ = ["Carry", "RecordLimit", "open_engine", "record_limit", "timeline"]
