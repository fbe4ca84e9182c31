"""engines/startup.py: the start-up settings of issue 28, each behind a switch, so a benchmark can measure each with
and without it and keep what helps.

    LAUNCHER_STARTUP_OFF=overlap,graphs   # turns these off (a comma-separated list of the names below)

Every setting is on unless named there; the engine's reasons say, for each, what was done and how to turn it off.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("launcher.engines")

OFF_ENV = "LAUNCHER_STARTUP_OFF"
SWITCHES: dict[str, str] = {
    "overlap": "the tokenizer, prompt statistics and the first unit's preparation run beside the engine's start",
    "skip_tokenizer": "vLLM starts without a tokenizer of its own (the worker tokenizes prompts and decodes samples)",
    "graphs": "CUDA graphs sized to the batch the sizing admits, decode-only (off: vLLM's own sizes and mode)",
    "startup_plan": "vLLM's memory-profiling result is recorded beside the compile cache and reused on later starts",
    "jit_cache": "Triton and FlashInfer JIT caches are kept beside the compile cache, shared with other nodes",
    "swap": "checkpoints of one architecture and shape swap weights inside the running engine (models: sweeps)",
    "fast_loader": "safetensors weights are read by the fastest loader installed here (engines/loaders.py)",
}


@dataclass(frozen=True)
class StartupSwitches:
    off: frozenset[str] = frozenset()

    def on(self, name: str) -> bool:
        if name not in SWITCHES:
            raise KeyError(f"unknown start-up switch {name!r}")
        return name not in self.off

    @staticmethod
    def how_to_turn_off(name: str) -> str:
        return f"{OFF_ENV}={name} turns it off"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StartupSwitches:
        """Read LAUNCHER_STARTUP_OFF. An unknown name is named in a warning with the allowed ones and ignored:
        a job that is already running should not fail over a benchmark switch."""
        value = (env if env is not None else os.environ).get(OFF_ENV, "")
        names = {part.strip().lower() for part in value.split(",") if part.strip()}
        unknown = names - set(SWITCHES)
        if unknown:
            log.warning(
                "%s: unknown name(s) %s ignored; allowed: %s",
                OFF_ENV,
                ", ".join(sorted(unknown)),
                ", ".join(SWITCHES),
            )
        return cls(frozenset(names & set(SWITCHES)))


def release_after_fork(gate: threading.Event, stop: threading.Event, poll_s: float = 0.02) -> threading.Thread:
    """Set `gate` once this process has one more multiprocessing child than now (vLLM's engine core, forked or
    spawned inside LLM()), or once `stop` is set (LLM() returned or failed): host work may then run beside the
    engine's start without running through the fork. Reads multiprocessing's own set of children (a length read is
    atomic); polling it costs nothing measurable."""
    import multiprocessing.process as mp_process

    def children() -> int:
        return len(getattr(mp_process, "_children", ()))

    before = children()

    def watch() -> None:
        while not gate.is_set():
            if children() > before or stop.wait(poll_s):
                gate.set()

    thread = threading.Thread(target=watch, name="host-work-gate", daemon=True)
    thread.start()
    return thread


__all__ = ["OFF_ENV", "SWITCHES", "StartupSwitches", "release_after_fork"]
