"""sizing.py: workload + model shape + GPU -> vLLM engine settings, each with its reason. Spec values always win.

Why this beats vLLM's defaults: the defaults admit up to max_num_seqs=1024 sequences but capture CUDA graphs only
up to 512, so a big batch decodes without graphs; and when the KV cache cannot hold every admitted sequence for
prompt + max_tokens, vLLM preempts and recomputes. We size concurrency to what the KV cache holds for this
workload, and make the CUDA-graph sizes cover it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .engines.base import Workload
from .layout import GiB, RUNTIME_RESERVE_BYTES, GpuInfo, ParallelLayout
from .modelinfo import DTYPE_BYTES, ModelShape
from .spec import ModelSpec

BLOCK = 16  # vLLM's KV block size in tokens
MAX_SEQS_CAP = 1024  # beyond this the sampler and the scheduler's per-step work stop paying back (vLLM's own default)
MIN_BATCHED_TOKENS = 8192
MAX_GRAPH_SIZE = 1024
KV_FILL = 0.92  # leave headroom for prompts longer than the mean


@dataclass
class EngineSettings:
    kwargs: dict[str, Any] = field(default_factory=dict)  # what goes to vllm.LLM(...)
    reasons: dict[str, str] = field(default_factory=dict)
    kv_tokens_estimate: int | None = None
    per_request_tokens: int = 0


def round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def request_tokens(prompt: int, max_tokens: int, n: int) -> int:
    """KV tokens a request of n samples can reach: the prompt's blocks are shared (prefix caching), each
    sample's own tokens are not."""
    return round_up(prompt, BLOCK) + n * round_up(max_tokens, BLOCK)


def auto_max_model_len(workload: Workload, shape: ModelShape | None) -> tuple[int, str]:
    longest = max(workload.prompt_lengths, default=1)
    need = round_up(longest + workload.max_tokens, 256)
    limit = shape.max_position if shape else need
    if need > limit:
        return limit, (f"longest prompt {longest} + max_tokens {workload.max_tokens} exceeds the model's "
                       f"{limit}; capped (longer records are quarantined)")
    return need, f"longest prompt {longest} + max_tokens {workload.max_tokens}, rounded up to 256"


def size_vllm(spec: ModelSpec, shape: ModelShape | None, layout: ParallelLayout, gpu: GpuInfo | None,
              workload: Workload) -> EngineSettings:
    s = EngineSettings()
    kw = s.kwargs
    kw["tensor_parallel_size"] = layout.tensor_parallel
    s.reasons["tensor_parallel_size"] = layout.reason
    if spec.max_model_len is not None:
        kw["max_model_len"], s.reasons["max_model_len"] = spec.max_model_len, "set in the spec"
    else:
        kw["max_model_len"], s.reasons["max_model_len"] = auto_max_model_len(workload, shape)
    kw["gpu_memory_utilization"] = spec.gpu_memory_utilization
    kw["enable_prefix_caching"] = True
    s.reasons["enable_prefix_caching"] = "the n samples of a prompt share its KV blocks"
    mean_prompt = int(sum(workload.prompt_lengths) / max(1, len(workload.prompt_lengths)))
    per_request = request_tokens(mean_prompt, workload.max_tokens, workload.n)
    s.per_request_tokens = per_request
    total_seqs = len(workload.prompt_lengths) * workload.n
    if gpu is not None and shape is not None:
        kv = _kv_tokens(spec, shape, layout, gpu)
        s.kv_tokens_estimate = kv
        fit_requests = max(1, int(kv * KV_FILL) // per_request)
        seqs = min(MAX_SEQS_CAP, fit_requests * workload.n, max(workload.n, total_seqs))
        seqs = max(workload.n, seqs // 8 * 8 or workload.n)
        kw["max_num_seqs"] = seqs
        s.reasons["max_num_seqs"] = (
            f"KV cache ~{kv:,} tokens (estimated) holds {fit_requests} requests of {per_request} tokens "
            f"(prompt {mean_prompt} shared + {workload.n} x {workload.max_tokens}); capped at {MAX_SEQS_CAP} and at "
            f"the {total_seqs} sequences of this task")
        kw["max_num_batched_tokens"] = max(MIN_BATCHED_TOKENS, round_up(seqs + max(workload.prompt_lengths, default=0), 256))
        s.reasons["max_num_batched_tokens"] = "room for a full decode step plus a prompt's prefill in one step"
        graph = min(MAX_GRAPH_SIZE, seqs)
        kw["compilation_config"] = {"max_cudagraph_capture_size": graph}
        s.reasons["compilation_config"] = (f"CUDA graphs up to {graph} sequences, so every decode step of the "
                                           "admitted batch replays a graph (vLLM's default stops at 512)")
    else:
        s.reasons["max_num_seqs"] = "no GPU: vLLM's CPU defaults"
    for key, value in spec.engine_args.items():
        kw[key] = value
        s.reasons[key] = "set in the spec (model.engine_args)"
    return s


def _kv_tokens(spec: ModelSpec, shape: ModelShape, layout: ParallelLayout, gpu: GpuInfo) -> int:
    weight_dtype = 1 if (spec.quantization or "").startswith("fp8") else DTYPE_BYTES.get(shape.dtype, 2)
    weights = shape.weight_bytes_as(weight_dtype)
    budget = gpu.memory_bytes * spec.gpu_memory_utilization - weights / layout.tensor_parallel - RUNTIME_RESERVE_BYTES
    kv_split = min(layout.tensor_parallel, shape.kv_heads)  # KV heads replicate once TP exceeds them
    per_token = shape.kv_bytes_per_token(2) / kv_split
    return max(0, int(budget / per_token))


def describe(settings: EngineSettings) -> str:
    return "; ".join(f"{k}={v} ({settings.reasons.get(k, '')})" for k, v in settings.kwargs.items())


__all__ = ["EngineSettings", "GiB", "auto_max_model_len", "request_tokens", "size_vllm"]
