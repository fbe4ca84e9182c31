"""engines/loaders.py: which vLLM loader reads a checkpoint's weights (vLLM's `load_format`), and why.

vLLM's default reads safetensors through memory maps, one file after another. Two loaders read them faster where
they are installed: the Run:ai model streamer (`runai_streamer`: many concurrent reads into a CPU buffer, then to
the GPU) and `fastsafetensors` (files straight into GPU memory, GPUDirect Storage where the node has it). Neither is
a vLLM dependency; both ship manylinux wheels (runai-model-streamer 0.8 MB, fastsafetensors 2.7 MB). The bench
measures each (`launcher bench --systems weights`): FAST_LOADERS lists them fastest first, as measured.

The spec's `model.load_format` always wins. Otherwise the first of FAST_LOADERS that imports here is used for a
checkpoint of safetensors files; LAUNCHER_WEIGHTS_LOADER=vllm|fastsafetensors|runai_streamer picks one (benchmarks),
and LAUNCHER_STARTUP_OFF=fast_loader keeps vLLM's own.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.engines.startup import StartupSwitches
from launcher.spec import ModelSpec

LOADER_ENV = "LAUNCHER_WEIGHTS_LOADER"
# load_format -> the module it needs. Fastest first, from benchmarks/results/ (issue 28); until measured on the GPU
# host, the order of the loaders' own published figures (local NVMe, 8B bf16).
FAST_LOADERS: dict[str, str] = {"runai_streamer": "runai_model_streamer", "fastsafetensors": "fastsafetensors"}


@dataclass(frozen=True)
class LoaderChoice:
    load_format: str | None  # None: vLLM's default
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)  # model_loader_extra_config


def installed(load_format: str) -> bool:
    module = FAST_LOADERS.get(load_format)
    return module is not None and importlib.util.find_spec(module) is not None


def choose_loader(model: ModelSpec, switches: StartupSwitches, env: dict[str, str] | None = None) -> LoaderChoice:
    """For a spec whose model.load_format is auto (any other value is the spec's choice and wins)."""
    environ = os.environ if env is None else env
    if not any(Path(model.path).glob("*.safetensors")):
        return LoaderChoice(None, "no safetensors files: vLLM's own loader")
    forced = environ.get(LOADER_ENV, "").strip()
    if forced:
        if forced == "vllm":
            return LoaderChoice(None, f"{LOADER_ENV}=vllm: vLLM's own safetensors loader")
        if forced not in FAST_LOADERS:
            raise ValueError(f"{LOADER_ENV}={forced!r}: one of vllm, {', '.join(FAST_LOADERS)}")
        if not installed(forced):
            raise ValueError(
                f"{LOADER_ENV}={forced}, but {FAST_LOADERS[forced]} does not import here: "
                f"pip install {FAST_LOADERS[forced].replace('_', '-')}"
            )
        return LoaderChoice(forced, f"{LOADER_ENV}={forced}")
    if not switches.on("fast_loader"):
        return LoaderChoice(None, f"{StartupSwitches.how_to_turn_off('fast_loader')} is set: vLLM's own loader")
    for load_format in FAST_LOADERS:
        if installed(load_format):
            return LoaderChoice(
                load_format,
                f"{load_format} reads safetensors faster than vLLM's default (benchmarks, issue 28) and is installed "
                f"here; {StartupSwitches.how_to_turn_off('fast_loader')}",
            )
    return LoaderChoice(None, f"vLLM's own loader (none of {', '.join(FAST_LOADERS)} is installed here)")


__all__ = ["FAST_LOADERS", "LOADER_ENV", "LoaderChoice", "choose_loader", "installed"]
