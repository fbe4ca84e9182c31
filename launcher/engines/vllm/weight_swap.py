"""engines/vllm/weight_swap.py: may the next checkpoint of a `models:` sweep swap its weights into the running vLLM
engine, and the swap itself.

A swap keeps everything the engine built at its start (compiled graphs, CUDA graphs, the KV cache, its processes)
and only reads the new weights into the same tensors: vLLM's in-place `reload_weights` (gpu_worker.py), which
copies into the existing storage, so captured CUDA graphs stay valid. The prefix cache is reset after it: its
blocks hold keys and values the old weights computed.

Only where that is provably the same engine (`swap_decision`): the same config.json (architecture, every size, dtype,
rope), the same tokenizer and generation files (prompts are tokenized once per worker; EOS comes from them), no
quantization (a quantized checkpoint's scales and repacking are not all redone by an in-place reload), no adapters,
no remote code, one node. Anything else starts a new engine, and the worker's warnings say why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.spec import ModelSpec

log = logging.getLogger("launcher.engines.vllm")

# Keys of config.json that never change the model: where it came from, the transformers version that saved it.
CONFIG_IGNORED = frozenset({"_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation_autoset"})
# Files that decide how text becomes tokens and when generation stops: the two checkpoints must agree on each.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class SwapDecision:
    ok: bool
    reason: str


def swap_decision(current: ModelSpec, nxt: ModelSpec, nnodes: int = 1) -> SwapDecision:
    """Can an engine started for `current` serve `nxt` after an in-place weight reload? Reads the two checkpoints'
    config and tokenizer files only."""
    a, b = Path(current.path), Path(nxt.path)
    if nnodes > 1:
        return SwapDecision(False, "an engine over several nodes is started afresh for each checkpoint")
    if current.load_format == "dummy" or nxt.load_format == "dummy":
        return SwapDecision(False, "load_format dummy: there are no weights on disk to swap in")
    if current.quantization or nxt.quantization:
        return SwapDecision(False, "model.quantization: an in-place reload does not redo every quantization step")
    if current.adapters or nxt.adapters:
        return SwapDecision(False, "LoRA adapters are loaded per engine")
    if current.trust_remote_code or nxt.trust_remote_code:
        return SwapDecision(False, "trust_remote_code: each checkpoint may bring its own model code")
    try:
        ca, cb = _config(a), _config(b)
    except (OSError, ValueError) as exc:
        return SwapDecision(False, f"config.json unreadable ({exc})")
    if "quantization_config" in ca or "quantization_config" in cb:
        return SwapDecision(False, "a quantized checkpoint (quantization_config in config.json)")
    differ = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
    if differ:
        return SwapDecision(False, f"config.json differs ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})")
    files = [f for f in TOKENIZER_FILES if (a / f).exists() or (b / f).exists()]
    other = [f for f in files if _digest(a / f) != _digest(b / f)]
    if other:
        return SwapDecision(False, f"tokenizer or generation files differ ({', '.join(other)})")
    if _weight_format(a) != _weight_format(b):
        return SwapDecision(False, f"weights in {_weight_format(a)} against {_weight_format(b)}")
    return SwapDecision(
        True,
        f"same architecture, sizes, dtype and tokenizer as {a.name}: weights read into the running engine in place "
        "(vLLM reload_weights), prefix cache reset; no new engine",
    )


def swap_weights(llm: Any, path: str) -> dict[str, Any]:
    """Read the checkpoint at `path` into the running engine's weights, then drop its prefix cache. vLLM names the
    new path in `reload_weights(weights_path=...)` (0.32); a vLLM whose worker does not take that argument gets its
    model config pointed at the path first (update_config), then a plain reload_weights()."""
    t0 = time.perf_counter()
    method = "reload_weights(weights_path)"
    try:
        llm.collective_rpc("reload_weights", kwargs={"weights_path": path, "is_checkpoint_format": True})
    except Exception as exc:  # the RPC wraps the worker's TypeError: match on what it says
        if "weights_path" not in str(exc) and "unexpected keyword" not in str(exc):
            raise
        log.info("reload_weights takes no weights_path here (%s); update_config + reload_weights", exc)
        method = "update_config + reload_weights"
        llm.collective_rpc("update_config", args=({"model_config": {"model": path}},))
        llm.collective_rpc("reload_weights")
    reload_s = time.perf_counter() - t0
    llm.reset_prefix_cache()
    return {
        "model_swap_s": round(time.perf_counter() - t0, 3),
        "weights_reload_s": round(reload_s, 3),
        "swap_method": method,
    }


def _config(folder: Path) -> dict[str, Any]:
    raw = json.loads((folder / "config.json").read_text())
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    return {k: v for k, v in raw.items() if k not in CONFIG_IGNORED}


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weight_format(folder: Path) -> str:
    if any(folder.glob("*.safetensors")):
        return "safetensors"
    return "pytorch .bin" if any(folder.glob("*.bin")) else "none found"


__all__ = ["CONFIG_IGNORED", "TOKENIZER_FILES", "SwapDecision", "swap_decision", "swap_weights"]
