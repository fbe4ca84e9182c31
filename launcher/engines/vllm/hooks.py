"""engines/vllm/hooks.py: what the job asks of the vLLM backend through the registry before an engine starts: the
record limit on this GPU (vLLM refuses a max_model_len its KV cache cannot hold) and whether a sweep's next
checkpoint may swap its weights into the running engine. Light: each hook imports what it needs when called."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launcher.plan.layout import ParallelLayout
    from launcher.spec import JobSpec, ModelSpec


def record_limit(spec: JobSpec, layout: ParallelLayout, base: int | None) -> tuple[int | None, str | None]:
    """The spec's or the model's limit, capped on a GPU at what one sequence may hold in the KV cache (estimated)."""
    if not layout.gpus:
        return base, None
    from launcher.engines.vllm.sizing import fit_token_limit
    from launcher.inputs.model import model_shape
    from launcher.plan.layout import gpu_info

    shape = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        shape = model_shape(spec.model.path)
    return fit_token_limit(base, spec.model, shape, layout, gpu_info())


def swap_decision(current: ModelSpec, nxt: ModelSpec, nnodes: int) -> tuple[bool, str]:
    """engines/vllm/weight_swap.py swap_decision, as (ok, why)."""
    from launcher.engines.vllm.weight_swap import swap_decision as decide

    decision = decide(current, nxt, nnodes)
    return decision.ok, decision.reason


__all__ = ["record_limit", "swap_decision"]
