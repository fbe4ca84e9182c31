"""engines/vllm/sizing.py: workload + model shape + GPU -> vLLM engine settings, each with its reason. Spec values
always win. vLLM's own: no other backend reads these settings (plan/layout.py keeps what any backend needs: GPUs,
TP x DP).

What vLLM's defaults get wrong for batch sampling (vLLM 0.26, H100, Llama-3-8B shape; benchmarks/results/):
- they admit up to max_num_seqs=1024 sequences but capture CUDA graphs only up to 512 (min(2 x max_num_seqs,
  512)), so a bigger decode batch runs without graphs: measured ~15% at 4000 samples x 512 tokens, ~0 at
  1000 x 256 (an 8B model's batch of 1000 is compute-bound; the launch gaps hide behind async scheduling);
- they admit more sequences than the KV cache holds for prompt + max_tokens, so vLLM preempts and recomputes.
Here concurrency is sized to what the KV cache holds for this workload (the n samples of a prompt share its
blocks), the CUDA-graph sizes cover the admitted batch, and the values that enter vLLM's compile-cache hash
(max_model_len, max_num_batched_tokens, capture sizes) are bucketed, so the shards of one job share a cache.
(The 1.77x of max_num_seqs=512 over the defaults measured earlier was mostly start-up, not steady state: the
first generate() after an engine starts pays ~10 s of Triton compiles for the sampler's top-k/top-p kernel.)

Two stages: `size_vllm` runs before the engine starts and sees only an estimate of the KV cache;
`plan_admission` runs after, with the KV capacity vLLM measured, and decides how many requests are in flight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from launcher.engines.base import Workload
from launcher.inputs.model import DTYPE_BYTES, ModelShape
from launcher.plan.layout import RUNTIME_RESERVE_BYTES, GiB, GpuInfo, ParallelLayout
from launcher.spec import ModelSpec

BLOCK = 16  # vLLM's KV block size in tokens (its default for the attention backends used here)
# vLLM's own default on big GPUs. Past it the batch is compute-bound (an 8B model's ridge point on an H100 is
# ~300 tokens), so more sequences add graph-capture time and sampler memory for a few percent at most.
MAX_SEQS_CAP = 1024
MIN_BATCHED_TOKENS = 8192  # below this, prefill steps get short and their fixed cost shows
KV_FILL = 0.95  # admit up to this share of the KV cache: a little room for block rounding
MODEL_LEN_BUCKET = 1024  # max_model_len is rounded up to a power of two times this (shards share a compile cache)


@dataclass
class EngineSettings:
    kwargs: dict[str, Any] = field(default_factory=dict)  # what goes to vllm.LLM(...)
    reasons: dict[str, str] = field(default_factory=dict)
    kv_tokens_estimate: int | None = None
    per_request_tokens: int = 0  # KV tokens of a mean request at its longest


def round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def request_tokens(prompt: int, max_tokens: int, n: int, block: int = BLOCK) -> int:
    """KV tokens a request of n samples reaches at its longest. The prompt's full blocks are shared by the n
    samples (prefix caching), except the block holding its last token: vLLM recomputes that token for each sample
    (it needs its logits), so each sample gets its own copy of that block, then its own new tokens."""
    shared = max(0, prompt - 1) // block * block
    return shared + n * round_up(prompt - shared + max_tokens, block)


def auto_max_model_len(workload: Workload, shape: ModelShape | None) -> tuple[int, str]:
    longest = max(1, workload.prompt_tokens_max)
    need = longest + workload.max_tokens
    bucket = MODEL_LEN_BUCKET * 2 ** max(0, math.ceil(math.log2(max(1, need) / MODEL_LEN_BUCKET)))
    limit = shape.max_position if shape else bucket
    if need > limit:
        return limit, (
            f"longest prompt {longest} + max_tokens {workload.max_tokens} exceeds the model's "
            f"{limit}; capped (longer records are quarantined)"
        )
    chosen = min(bucket, limit)
    return chosen, (
        f"longest prompt {longest} + max_tokens {workload.max_tokens} = {need}, rounded up to {chosen} "
        "(a power-of-two bucket, so the shards of a job share one compile cache)"
    )


def graph_sizes(largest: int) -> list[int]:
    """CUDA-graph batch sizes up to `largest`: fine steps where padding would cost much, 32 apart above 256
    (at most ~12% padding there, ~3% near 1024) — about half of what vLLM's own ladder captures, so start-up
    stays short."""
    ladder = [s for s in (1, 2, 4, 8) if s < largest]
    ladder += list(range(16, min(largest, 256) + 1, 16))
    ladder += list(range(288, largest + 1, 32))
    if not ladder or ladder[-1] != largest:
        ladder.append(largest)
    return sorted(set(ladder))


def _ladder_bucket(x: int) -> int:
    """The smallest graph size >= x, so a shard's own count does not change the capture list much."""
    return next((s for s in graph_sizes(MAX_SEQS_CAP) if s >= x), MAX_SEQS_CAP)


def size_vllm(
    spec: ModelSpec, shape: ModelShape | None, layout: ParallelLayout, gpu: GpuInfo | None, workload: Workload
) -> EngineSettings:
    s = EngineSettings()
    kw = s.kwargs
    user = dict(spec.engine_args)
    kw["tensor_parallel_size"] = layout.tensor_parallel
    s.reasons["tensor_parallel_size"] = layout.reason
    if layout.pipeline_parallel > 1:
        kw["pipeline_parallel_size"] = layout.pipeline_parallel
        s.reasons["pipeline_parallel_size"] = layout.reason
    if spec.max_model_len is not None:
        kw["max_model_len"], s.reasons["max_model_len"] = spec.max_model_len, "set in the spec"
    elif not workload.prompts_known and workload.token_limit:
        kw["max_model_len"] = workload.token_limit
        s.reasons["max_model_len"] = (
            f"the most tokens a record may have ({workload.token_limit}: prompt + max_tokens; longer records are "
            "quarantined), known before any prompt is tokenized, so the engine starts first; one value for every "
            "worker and run of the spec, so they share one compile cache"
        )
    else:
        kw["max_model_len"], s.reasons["max_model_len"] = auto_max_model_len(workload, shape)
    kw["gpu_memory_utilization"] = spec.gpu_memory_utilization
    s.reasons["gpu_memory_utilization"] = "model.gpu_memory_utilization"
    kw["enable_prefix_caching"] = True
    s.reasons["enable_prefix_caching"] = (
        "the n samples of a prompt share its KV blocks, and in prefix order (scheduling.prefix_order) one user's "
        "prompts of the ablation configs that share a prefix share its blocks too"
    )
    mean_prompt = int(workload.prompt_tokens_mean)
    # Prompt lengths not measured yet (the engine starts beside the tokenizer): size for the new tokens alone, so the
    # batch is never made smaller than the workload allows; admission (after the start, with the measured prompts
    # and the KV cache vLLM allocated) decides how many requests are in flight.
    longest = workload.prompt_tokens_max if workload.prompts_known else 0
    per_request = request_tokens(mean_prompt, workload.max_tokens, workload.n)
    s.per_request_tokens = per_request
    total_seqs = workload.prompts * workload.n
    if gpu is not None and shape is not None:
        kv = kv_tokens_estimate(spec, shape, layout, gpu, user)
        s.kv_tokens_estimate = kv
        if "max_num_seqs" in user:
            seqs = int(user["max_num_seqs"])
        else:
            fit_requests = max(1, int(kv * KV_FILL) // per_request)
            seqs = min(MAX_SEQS_CAP, fit_requests * workload.n, _ladder_bucket(max(workload.n, total_seqs)))
            seqs = max(workload.n, seqs // 8 * 8 or workload.n)
            kw["max_num_seqs"] = seqs
            s.reasons["max_num_seqs"] = (
                f"KV cache ~{kv:,} tokens (estimated from {gpu.name}'s {gpu.memory_bytes / GiB:.0f} GiB) holds "
                f"{fit_requests} requests of {per_request} tokens (prompt {mean_prompt} shared by the {workload.n} "
                f"samples + {workload.n} x {workload.max_tokens} new); at most {MAX_SEQS_CAP} (the batch is "
                f"compute-bound well before) and at most the {total_seqs} sequences this worker may run (bucketed)"
                + (
                    "; prompt lengths not measured before the start (they are beside it): sized for the new tokens, "
                    "admission keeps the KV cache within bounds once they are"
                    if not workload.prompts_known
                    else ""
                )
            )
        if "max_num_batched_tokens" not in user:
            budget = max(MIN_BATCHED_TOKENS, 2 ** math.ceil(math.log2(max(1, seqs + (longest or seqs)))))
            kw["max_num_batched_tokens"] = budget
            s.reasons["max_num_batched_tokens"] = (
                f"a full decode step ({seqs}) plus the longest prompt ({longest}) fit one step"
                if longest
                else f"a full decode step ({seqs}) plus as many prompt tokens fit one step (longer prompts are "
                "prefilled in chunks)"
            ) + f"; at least {MIN_BATCHED_TOKENS}, a power of two"
        if not user.get("enforce_eager"):
            sizes = graph_sizes(seqs)
            # Decode-only full graphs: a batch job's steps are large prefills (where a graph saves nothing) or
            # decode steps of the admitted batch; capturing the piecewise set as well doubles capture time at
            # every task start (measured 6 s -> 3 s for 44 sizes on an H100) for steps that gain nothing from it.
            auto = {"cudagraph_capture_sizes": sizes, "cudagraph_mode": "FULL_DECODE_ONLY"}
            given = user.get("compilation_config") or {}
            kw["compilation_config"] = {**auto, **given}  # a key the spec sets wins; auto fills in the rest
            s.reasons["compilation_config"] = (
                f"CUDA graphs for {len(sizes)} batch sizes up to {seqs} = max_num_seqs, so every decode step of the "
                "admitted batch replays a graph (vLLM's default stops at 512); decode-only full graphs "
                "(FULL_DECODE_ONLY), the piecewise set would double capture time for prefill steps"
                + (f"; {', '.join(sorted(given))} set in the spec" if given else "")
            )
    else:
        s.reasons["max_num_seqs"] = "no GPU: vLLM's CPU defaults"
    for key, value in user.items():
        if key == "compilation_config" and key in kw:
            continue  # merged above, key by key
        kw[key] = value
        s.reasons[key] = "set in the spec (model.engine_args)"
    return s


def kv_tokens_estimate(
    spec: ModelSpec,
    shape: ModelShape,
    layout: ParallelLayout,
    gpu: GpuInfo,
    engine_args: Mapping[str, Any] | None = None,
) -> int:
    """KV-cache tokens per replica before the engine has measured it: memory budget minus weights and a reserve
    for activations and graphs, over the bytes a token takes on one GPU."""
    weight_dtype = 1 if (spec.quantization or "").startswith("fp8") else DTYPE_BYTES.get(shape.dtype, 2)
    weights = shape.weight_bytes_as(weight_dtype)
    shards = layout.tensor_parallel * layout.pipeline_parallel  # each GPU holds this share of the weights
    budget = gpu.memory_bytes * spec.gpu_memory_utilization - weights / shards - RUNTIME_RESERVE_BYTES
    kv_dtype = str((engine_args or {}).get("kv_cache_dtype", "auto"))
    kv_split = min(layout.tensor_parallel, shape.kv_heads)  # KV heads replicate once TP exceeds them
    # Each pipeline stage holds its own layers' KV only.
    per_token = shape.kv_bytes_per_token(1 if kv_dtype.startswith("fp8") else 2) / kv_split / layout.pipeline_parallel
    return max(0, int(budget / per_token))


def fit_token_limit(
    limit: int | None, spec: ModelSpec, shape: ModelShape | None, layout: ParallelLayout, gpu: GpuInfo | None
) -> tuple[int | None, str | None]:
    """The most tokens a record may have, capped on a GPU at what the KV cache holds for one sequence (estimated)
    when the spec leaves max_model_len unset: vLLM refuses to start with a max_model_len its KV cache cannot hold,
    and the engine now starts at the record limit (the prompts are measured beside its start). Returns the limit
    and, when capped, why."""
    if limit is None or spec.max_model_len is not None or gpu is None or shape is None:
        return limit, None
    fits = int(kv_tokens_estimate(spec, shape, layout, gpu, spec.engine_args) * KV_FILL)
    if fits >= limit:
        return limit, None
    capped = max(MODEL_LEN_BUCKET, 2 ** int(math.log2(max(1, fits))))
    return min(capped, limit), (
        f"the model allows {limit} tokens, the KV cache of {gpu.name} holds ~{fits:,} (estimated): records are "
        f"limited to {min(capped, limit)} tokens (prompt + max_tokens); set model.max_model_len to choose"
    )


@dataclass(frozen=True)
class Admission:
    """How many requests the engine keeps in flight (runtime only: nothing here enters a compiled graph)."""

    max_requests: int
    max_kv_tokens: int | None  # KV tokens the in-flight requests may reach together; None: unknown
    reason: str


def plan_admission(mean_need: int, n: int, max_num_seqs: int | None, kv_tokens: int | None) -> Admission:
    """Requests in flight, from the KV capacity vLLM measured. A request is admitted only while the KV cache holds
    every admitted request at its longest (no preemption, no recompute); requests keep streaming in as others
    finish, across unit boundaries, so the batch stays full until the worker runs out of units."""
    by_seqs = max(1, (max_num_seqs or 1 << 30) // max(1, n))
    budget = int(kv_tokens * KV_FILL) if kv_tokens else None
    by_kv = max(1, budget // max(1, mean_need)) if budget else 1 << 30
    limit = min(by_seqs, by_kv)
    why_kv = (
        f"the KV cache holds {kv_tokens:,} tokens (measured at start-up), {by_kv} requests of ~{mean_need} "
        "tokens at their longest"
        if kv_tokens
        else "KV capacity unknown"
    )
    return Admission(
        limit,
        budget,
        f"up to {limit} requests ({limit * n} sequences) in flight: {why_kv}; "
        f"max_num_seqs {max_num_seqs or 'unset'} allows {by_seqs}",
    )


__all__ = [
    "Admission",
    "EngineSettings",
    "GiB",
    "Workload",
    "auto_max_model_len",
    "fit_token_limit",
    "graph_sizes",
    "kv_tokens_estimate",
    "plan_admission",
    "request_tokens",
    "size_vllm",
]
