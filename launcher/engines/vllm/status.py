"""engines/vllm/status.py: can vLLM run here, and this checkpoint? The `usable` hook of the vLLM backend, which
`backend: auto` asks first (engines/registry.py select), and a named `backend: vllm` must pass."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def vllm_importable() -> bool:
    """Cheap: is a vLLM installed (no import, which costs ~15 s)? The job's guess of what its workers choose."""
    return importlib.util.find_spec("vllm") is not None


def vllm_status(model_path: str | None = None) -> tuple[bool, str]:
    """Can vLLM serve this model here? (ok, reason)."""
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as exc:  # ImportError, or a broken CUDA build raising something else
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        return False, f"vLLM does not import ({type(exc).__name__}: {first_line})"
    device = getattr(current_platform, "device_type", "") or ""
    if not device or device == "empty":
        return False, f"vLLM {vllm.__version__} imports but finds no device it can run on"
    if model_path is not None:
        archs = _architectures(model_path)
        try:
            from vllm import ModelRegistry

            supported = set(ModelRegistry.get_supported_archs())
            if archs and not any(a in supported for a in archs):
                return False, f"vLLM {vllm.__version__} does not support the architecture {', '.join(archs)}"
        except Exception:  # the registry moved between versions: let the engine try
            pass
    return True, f"vLLM {vllm.__version__} imports and runs on {device}"


def _architectures(model_path: str) -> list[str]:
    try:
        return list(json.loads((Path(model_path) / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return []


__all__ = ["vllm_importable", "vllm_status"]
