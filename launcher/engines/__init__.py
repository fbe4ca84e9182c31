"""engines: the backend registry. `backend: auto` picks vLLM when it imports and supports the model, else HF."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.engines.base import Completion, Engine, EngineReport, GenerationRequest, Sample, Workload
from launcher.errors import SpecError
from launcher.spec import ModelSpec

ENGINES: dict[str, type[Engine]] = {}


def register(cls: type[Engine]) -> type[Engine]:
    ENGINES[cls.name] = cls
    return cls


def _load_plugins() -> None:
    # Importing the modules registers them; they import torch/vllm lazily, so this stays cheap.
    from launcher.engines import hf, vllm  # noqa: F401


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


def select_backend(model: ModelSpec) -> tuple[str, str]:
    """(backend name, why)."""
    if model.backend == "hf":
        return "hf", "backend: hf set in the spec"
    # backend: vllm skips the model-registry scan (seconds of each start); an unsupported architecture then fails
    # in vLLM's own start with its own message.
    ok, reason = vllm_status(None if model.backend == "vllm" else model.path)
    if model.backend == "vllm":
        if not ok:
            raise SpecError.one(
                "<spec>",
                "model.backend",
                f"backend vllm asked for, but {reason}",
                fix="install vllm (pip install 'launcher[vllm]', or use the container image), or set backend: hf",
            )
        return "vllm", "backend: vllm set in the spec"
    if ok:
        return "vllm", f"auto: {reason}"
    return "hf", f"auto: {reason}; using HF transformers"


def create_engine(name: str, model: ModelSpec, sampling: object, n: int) -> Engine:
    _load_plugins()
    if name not in ENGINES:
        raise SpecError.one("<spec>", "model.backend", f"unknown backend {name!r}", allowed=", ".join(sorted(ENGINES)))
    return ENGINES[name](model, sampling, n)  # type: ignore[arg-type]


__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineReport",
    "GenerationRequest",
    "Sample",
    "Workload",
    "create_engine",
    "register",
    "select_backend",
    "vllm_status",
]
