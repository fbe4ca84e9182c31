"""spec/engine_values.py: the values vLLM accepts for its enumerated settings, so a typo fails at plan time (exit 2)
instead of an hour into the queue. Read from vLLM's own Literal types (vllm/model_executor/layers/quantization,
vllm/config/cache.py) in the versions this toolkit runs: 0.26 on GPUs, 0.32 on the CPU.
"""

from __future__ import annotations

QUANTIZATION = (
    "awq",
    "auto_awq",
    "awq_marlin",
    "gptq",
    "auto_gptq",
    "gptq_marlin",
    "fp8",
    "fbgemm_fp8",
    "fp_quant",
    "modelopt",
    "modelopt_fp4",
    "modelopt_mxfp8",
    "modelopt_mixed",
    "humming",
    "compressed-tensors",
    "bitsandbytes",
    "experts_int8",
    "quark",
    "moe_wna16",
    "torchao",
    "inc",
    "mxfp4",
    "gpt_oss_mxfp4",
    "deepseek_v4_fp8",
    "online",
    "fp8_per_tensor",
    "fp8_per_block",
    "fp8_per_channel",
    "int8_per_channel_weight_only",
    "nvfp4_per_token",
    "mxfp8",
    "gguf",
    "marlin",
)
KV_CACHE_DTYPE = (
    "auto",
    "float16",
    "bfloat16",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_inc",
    "fp8_ds_mla",
    "turboquant_k8v4",
    "turboquant_4bit_nc",
    "turboquant_k3v4_nc",
    "turboquant_3bit_nc",
    "int4_per_token_head",
    "int8_per_token_head",
    "fp8_per_token_head",
    "nvfp4",
)
DTYPE = ("auto", "half", "float16", "bfloat16", "float", "float32")
# engine_args keys whose values are enumerated (the spec's own fields are checked by their types)
ENUMERATED_ENGINE_ARGS = {"kv_cache_dtype": KV_CACHE_DTYPE, "quantization": QUANTIZATION, "dtype": DTYPE}


def did_you_mean(value: str, allowed: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
