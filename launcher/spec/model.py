"""spec/model.py: the model section: which checkpoint, which backend, how it is loaded and sized."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from launcher.secrets import SECRET_ARG_RE
from launcher.spec.common import Slug, _FieldError, _plain_path, _Section


def _backend_schema(schema: dict[str, Any]) -> None:
    from launcher.engines.registry import spec_choices

    schema["enum"] = spec_choices()


class ModelSpec(_Section):
    """Which checkpoint, which backend (vLLM or HF), and how it is loaded and sized."""

    path: str = ""
    """Folder of an HF-format checkpoint (config.json, weights, tokenizer). Relative: from the spec's folder.
    Required, unless the top-level `models:` names several checkpoints (then the settings here apply to each)."""
    adapters: dict[Slug, str | None] = Field(default_factory=dict)
    """LoRA adapters of this checkpoint, name -> folder (peft's adapter_config.json + weights); null: the base model
    itself. A sweep axis beside datasets and ablation configs: one vLLM engine serves them all (enable_lora, with
    max_loras and max_lora_rank read from the adapters' configs). vLLM only."""
    backend: str = Field(default="auto", json_schema_extra=_backend_schema)
    """auto: vLLM when it imports and supports the architecture, else HF transformers. The summary says which, why.
    The allowed names are the registered backends' (engines/registry.py)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights and activations. auto: the checkpoint's torch_dtype (bf16 on GPU, fp32 on CPU)."""
    quantization: str | None = None
    """Passed to vLLM as is (awq, gptq, fp8, ...). fp8 quantizes a bf16 checkpoint online."""
    max_model_len: int | None = Field(default=None, ge=16, le=1_048_576)
    """Context length for vLLM, and the most tokens (prompt + max_tokens) a record may have: longer records are
    quarantined. Unset: the model's own (max_position_embeddings), lowered on a GPU whose KV cache cannot hold it for
    one sequence. Known before any prompt is tokenized, so the engine starts first."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """Fraction of each GPU's memory vLLM may take (weights + KV cache)."""
    tensor_parallel_size: Literal["auto", "all"] | Annotated[int, Field(ge=1, le=64)] = "auto"
    """auto: smallest TP that fits the weights and divides the heads; the other GPUs run data-parallel replicas.
    all: every GPU of the task in one TP group (the old behaviour). An int is obeyed or refused with a reason."""
    trust_remote_code: bool = False
    """Let transformers/vLLM run Python code shipped with the checkpoint."""
    load_format: Literal["auto", "safetensors", "pt", "dummy"] = "auto"
    """dummy: random weights from config.json only (benchmarks of an architecture without its weights)."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Extra vLLM `LLM(...)` arguments (max_num_seqs, enable_prefix_caching, ...). They always win over auto sizing."""
    hf_batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Records per HF generate() call. Unset: 8 on CPU, 32 on GPU."""

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, value: Any) -> Any:
        from launcher.engines.registry import spec_choices

        choices = spec_choices()  # asked at validation: a backend registered after import counts
        if isinstance(value, str) and value in choices:
            return value
        listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        hint = difflib.get_close_matches(value, choices, n=1, cutoff=0.5) if isinstance(value, str) else []
        raise _FieldError(
            (),
            f"must be {listed}, got {value!r}",
            f"one of {', '.join(choices)}",
            f"did you mean {hint[0]!r}?" if hint else f"use one of: {', '.join(choices)}",
        )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _plain_path(value, "the model path")

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for name, folder in value.items():
            if folder is not None:
                _plain_path(folder, f"adapter {name}'s path")
        if value and all(folder is None for folder in value.values()):
            raise _FieldError(
                (),
                "every adapter is null (the base model): there is no adapter to serve",
                "name -> a peft adapter folder; null for the base model beside them",
                "add an adapter's folder, or remove model.adapters",
            )
        return value

    @field_validator("quantization")
    @classmethod
    def _quantization(cls, value: str | None) -> str | None:
        from launcher.spec.engine_values import QUANTIZATION, did_you_mean

        if value is not None and value not in QUANTIZATION:
            raise _FieldError(
                (),
                f"unknown quantization {value!r}",
                f"one of vLLM's: {', '.join(QUANTIZATION)}",
                did_you_mean(value, QUANTIZATION)
                or "remove it for an unquantized checkpoint; an AWQ checkpoint says awq in its config.json",
            )
        return value

    @field_validator("engine_args")
    @classmethod
    def _enumerated(cls, value: dict[str, Any]) -> dict[str, Any]:
        from launcher.spec.engine_values import ENUMERATED_ENGINE_ARGS, did_you_mean

        for key, allowed in ENUMERATED_ENGINE_ARGS.items():
            if key in value and str(value[key]) not in allowed:
                raise _FieldError(
                    (key,),
                    f"{key} {value[key]!r} is not a value vLLM accepts",
                    ", ".join(allowed),
                    did_you_mean(str(value[key]), allowed) or f"use one of the allowed values, or remove {key} (auto)",
                )
        return value

    @field_validator("engine_args")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        secret = [k for k in value if SECRET_ARG_RE.search(k)]
        if secret:
            raise _FieldError(
                (secret[0],),
                f"{secret[0]!r} looks like a credential; engine_args are "
                "stored in plain text in the run directory (spec.json)",
                "vLLM engine arguments",
                "remove it and pass the secret as container.env (e.g. HF_TOKEN), which is redacted",
            )
        return value
