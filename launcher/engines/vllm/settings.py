"""engines/vllm/settings.py: the start-up settings of issue 28 applied to vLLM's LLM(...) arguments, each with its
reason and its switch (engines/startup.py): CUDA graphs, vLLM without a tokenizer of its own, the recorded memory
profile (vLLM's startup plan), the weights loader. The JIT caches beside the compile cache: compile_cache.py.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Protocol

from launcher.engines.loaders import choose_loader
from launcher.engines.startup import StartupSwitches
from launcher.engines.vllm.sizing import EngineSettings
from launcher.spec import ModelSpec, SamplingSpec


class StartingEngine(Protocol):
    """What these settings read of the engine they start (engines/vllm/engine.py's VLLMEngine), named here so that
    this module does not import the engine that imports it."""

    switches: StartupSwitches  # set by apply_startup_settings
    loras: dict[str, Any]
    own_request_settings: bool
    tokenizer: Any

    @property
    def model(self) -> ModelSpec: ...

    @property
    def sampling(self) -> SamplingSpec: ...


STARTUP_PLAN_ENV = "VLLM_ENABLE_STARTUP_PLAN"


def apply_startup_settings(
    engine: StartingEngine, kwargs: dict[str, Any], settings: EngineSettings, on_gpu: bool
) -> bool:
    """Edit `kwargs` (what LLM() gets) and the settings' reasons; returns whether vLLM starts without a tokenizer."""
    switches = engine.switches = StartupSwitches.from_env()
    user = engine.model.engine_args
    off = StartupSwitches.how_to_turn_off
    if "compilation_config" in kwargs and "compilation_config" not in user:
        if switches.on("graphs"):
            settings.reasons["compilation_config"] += f"; {off('graphs')}"
        else:
            kwargs.pop("compilation_config")
            settings.kwargs.pop("compilation_config", None)
            settings.reasons["compilation_config"] = (
                "LAUNCHER_STARTUP_OFF=graphs: vLLM's own CUDA-graph sizes (up to min(2 x max_num_seqs, 512)) and mode"
            )
    skip = _skip_tokenizer(engine, kwargs, settings, switches)
    if on_gpu:
        if switches.on("startup_plan"):
            os.environ.setdefault(STARTUP_PLAN_ENV, "1")  # a user's own value wins (as in compile_cache.py)
        else:
            os.environ[STARTUP_PLAN_ENV] = "0"
        have = _has_startup_plan()
        used = have and os.environ[STARTUP_PLAN_ENV] == "1"
        settings.kwargs["startup_plan"] = used
        settings.reasons["startup_plan"] = (
            "vLLM records its memory-profiling result (KV-cache bytes) under the compile cache, keyed by the model, "
            "settings, GPU and versions, and a later start with the same key and as much free memory skips "
            f"profiling; the record travels with the shared compile cache to other nodes; {off('startup_plan')}"
            if used
            else ("this vLLM has no startup plan" if not have else "off: vLLM profiles memory at every start")
        )
    if engine.model.load_format == "auto":
        choice = choose_loader(engine.model, switches)
        if choice.load_format:
            kwargs["load_format"] = choice.load_format
            if choice.extra:
                kwargs["model_loader_extra_config"] = choice.extra
        settings.kwargs["load_format"] = choice.load_format or "auto"
        settings.reasons["load_format"] = choice.reason
    return skip


def _has_startup_plan() -> bool:
    """vLLM >= 0.26 has vllm/v1/worker/startup_plan.py; looked up on disk (find_spec of a submodule imports vLLM)."""
    spec = importlib.util.find_spec("vllm")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(root) / "v1" / "worker" / "startup_plan.py").exists() for root in roots)


def _skip_tokenizer(
    engine: StartingEngine, kwargs: dict[str, Any], settings: EngineSettings, switches: StartupSwitches
) -> bool:
    """vLLM loads its own tokenizer before it forks its engine core, on the critical path (10 s on the GPU host for
    the bench's vocabulary), though it never needs it here: prompts arrive as token ids and samples are decoded by
    the worker, unless stop strings, structured output or per-record settings (which may bring either) are used."""
    if "skip_tokenizer_init" in engine.model.engine_args:
        return bool(engine.model.engine_args["skip_tokenizer_init"])
    s = engine.sampling
    needs = [
        why
        for why, yes in (
            ("stop strings", bool(s.stop)),
            ("structured output", s.structured is not None),
            ("LoRA adapters", bool(engine.loras)),
            ("records with their own sampling settings (OpenAI batch lines)", engine.own_request_settings),
            ("samples decoded as vLLM's own tokenizer class does (not transformers')", _own_tokenizer_class(engine)),
        )
        if yes
    ]
    if needs or not switches.on("skip_tokenizer"):
        settings.reasons["skip_tokenizer_init"] = (
            f"vLLM loads its own tokenizer: {', '.join(needs)} need it"
            if needs
            else f"{StartupSwitches.how_to_turn_off('skip_tokenizer')} is set: vLLM loads its own tokenizer"
        )
        return False
    kwargs["skip_tokenizer_init"] = settings.kwargs["skip_tokenizer_init"] = True
    settings.reasons["skip_tokenizer_init"] = (
        "prompts go in as token ids and samples are decoded by the worker, so vLLM starts without loading a "
        "tokenizer of its own (it did so before forking its engine core, on the critical path); EOS is passed as a "
        f"stop token; {StartupSwitches.how_to_turn_off('skip_tokenizer')}"
    )
    return True


def _own_tokenizer_class(engine: StartingEngine) -> bool:
    """Does vLLM load a tokenizer other than transformers' AutoTokenizer of the model's files (a tokenizer_mode set,
    or a Mistral-format checkpoint, which `auto` gives vLLM's Mistral tokenizer)? Samples are decoded as vLLM's
    tokenizer class decodes (engines/decode.py), so vLLM keeps its own there; the worker's decodes alike otherwise."""
    if engine.model.engine_args.get("tokenizer_mode", "auto") not in ("auto", "hf"):
        return True
    folder = Path(engine.model.path)
    return (folder / "tekken.json").exists() or any(folder.glob("tokenizer.model.v*"))


def eos_stop_ids(engine: StartingEngine, s: SamplingSpec) -> list[int] | None:
    """Without its tokenizer vLLM does not know the tokenizer's EOS: give it as a stop token, as vLLM would."""
    if not getattr(engine, "skip_tokenizer", False):
        return None
    if s.stop or s.structured is not None:
        raise RuntimeError(
            "a record asks for stop strings or structured output, which need vLLM's own tokenizer, and this engine "
            "started without one (the data's first lines were plain records): set LAUNCHER_STARTUP_OFF="
            "skip_tokenizer, or data.datasets[].format: openai-batch for a file of batch lines"
        )
    if s.ignore_eos:
        return None
    eos = engine.tokenizer.eos_token_id
    return [int(eos)] if eos is not None else None


__all__ = ["STARTUP_PLAN_ENV", "StartingEngine", "apply_startup_settings", "eos_stop_ids"]
