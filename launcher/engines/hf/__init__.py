"""engines/hf/__init__.py: the HF transformers backend, registered with engines/registry.py. Slow, but runs anywhere
transformers does: `backend: auto` falls back to it where vLLM does not import.

Its files: engine.py (HFEngine: batched generate()), sampler.py (one seeded generator per sample, so batching never
changes a sample), checks.py (what a spec may not ask of it, and its warnings on a GPU). Importing this package
imports neither torch nor transformers: they load in the engine's load().
"""

from __future__ import annotations

from launcher.engines.hf import checks
from launcher.engines.registry import Backend, Capabilities, register

BACKEND = register(
    Backend(
        name="hf",
        title="HF transformers",
        engine="launcher.engines.hf.engine:HFEngine",
        capabilities=Capabilities(),  # one engine per GPU, no adapters, no structured outputs, no prefix cache
        check_spec=checks.check_spec,
        worker_warnings=checks.worker_warnings,
    )
)

__all__ = ["BACKEND"]
