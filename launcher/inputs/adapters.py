"""inputs/adapters.py: a LoRA adapter folder as peft writes it (adapter_config.json + adapter weights), read once.

What the engine needs from it (the rank, to size vLLM's LoRA buffers) and what `launcher plan` checks before anything
is submitted: the folder is there, it is a LoRA adapter with a rank in range, and its weights hold tensors (an empty
or truncated adapter_model.safetensors would load as nothing, or fail only on the GPU).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MAX_RANK = 1024  # real LoRA ranks are 4-256; vLLM's --max-lora-rank allows up to 512
MAX_HEADER_BYTES = 100 << 20


class AdapterError(ValueError):
    """What is wrong with an adapter folder, and how to fix it."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message, self.fix = message, fix


@dataclass(frozen=True)
class AdapterInfo:
    folder: Path
    rank: int  # peft's r
    base_model: str | None  # base_model_name_or_path, as peft recorded it (informative: paths move)
    target_modules: tuple[str, ...]


def read_adapter(folder: str | Path) -> AdapterInfo:
    path = Path(folder)
    config_path = path / "adapter_config.json"
    if not path.is_dir():
        raise AdapterError(f"not a folder: {path} does not exist", "check the path (relative: from the spec's folder)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(
            f"no adapter_config.json in {path}: not a peft adapter",
            "point at the folder peft's save_pretrained wrote (adapter_config.json + adapter_model.safetensors)",
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(f"cannot read {config_path}: {exc}", "adapter_config.json must be peft's JSON") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path} is not a JSON object", "adapter_config.json must be peft's JSON")
    kind = str(config.get("peft_type") or "LORA").upper()
    if kind != "LORA":
        raise AdapterError(
            f"{config_path}: peft_type {kind}, and vLLM serves LoRA adapters only",
            "merge the adapter into the base model and list the result under models:",
        )
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
        raise AdapterError(
            f"{config_path}: r is {rank!r}, not a LoRA rank in [1, {MAX_RANK}]",
            "use the adapter_config.json peft wrote",
        )
    weights = [path / name for name in ADAPTER_WEIGHTS if (path / name).is_file()]
    if not weights:
        raise AdapterError(
            f"no adapter weights in {path} (none of {', '.join(ADAPTER_WEIGHTS)})",
            "copy the adapter's weights next to adapter_config.json",
        )
    _check_weights(weights[0])
    targets = config.get("target_modules") or ()
    return AdapterInfo(
        path,
        rank,
        config.get("base_model_name_or_path"),
        tuple(targets) if isinstance(targets, list) else (str(targets),),
    )


def _check_weights(path: Path) -> None:
    """The weights file holds at least one tensor (safetensors: read from its header alone)."""
    fix = "copy the adapter's weights again from where it was trained (peft's save_pretrained writes them)"
    size = path.stat().st_size
    if size == 0:
        raise AdapterError(f"{path} is empty (0 bytes)", fix)
    if path.suffix != ".safetensors":
        return
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
            raise AdapterError(f"{path} is not a complete safetensors file (header of {n} bytes in {size})", fix)
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise AdapterError(f"{path}: its safetensors header is not JSON", fix) from None
    tensors = [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []
    if not tensors:
        raise AdapterError(f"{path} holds no tensors: the adapter would change nothing", fix)


def adapter_rank(folder: str | Path) -> int:
    return read_adapter(folder).rank


__all__ = ["ADAPTER_WEIGHTS", "AdapterError", "AdapterInfo", "adapter_rank", "read_adapter"]
