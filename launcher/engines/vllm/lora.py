"""engines/vllm/lora.py: model.adapters -> vLLM's LoRA settings (enable_lora, max_loras, max_lora_rank, each with
its reason) and one LoRARequest per adapter. One engine serves every adapter of a sweep."""

from __future__ import annotations

from typing import Any

LORA_REASONS = {
    "enable_lora": "model.adapters: one engine serves every adapter of the sweep",
    "max_loras": "model.adapters: every adapter of the sweep fits in one batch at once",
    "max_lora_rank": "the largest rank (r) in the adapters' adapter_config.json, rounded up to a size vLLM supports",
}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_settings(adapters: dict[str, str | None]) -> dict[str, Any]:
    """enable_lora, max_loras (every adapter in one batch: units of all adapters mix) and max_lora_rank (the
    largest r among the adapters' configs: a rank vLLM sizes its LoRA buffers for, so no larger than needed)."""
    from launcher.inputs.adapters import adapter_rank

    folders = [f for f in adapters.values() if f]
    rank = max(adapter_rank(f) for f in folders)
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    return {"enable_lora": True, "max_loras": len(folders), "max_lora_rank": fitting[0] if fitting else rank}


def lora_requests(adapters: dict[str, str | None]) -> dict[str, Any]:
    """name -> vLLM LoRARequest, for the adapters with a folder (null: the base model, no request)."""
    if not any(adapters.values()):
        return {}
    from vllm.lora.request import LoRARequest

    named = [(name, folder) for name, folder in adapters.items() if folder]
    return {name: LoRARequest(name, i, folder) for i, (name, folder) in enumerate(named, start=1)}


__all__ = ["LORA_REASONS", "VLLM_LORA_RANKS", "lora_requests", "lora_settings"]
