"""engines/__init__.py: the backends behind one interface (base.py), one package each (vllm/, hf/),
found by registry.py.

Shared by every backend: base.py (the interface and the values that cross it), decode.py (token ids -> text, vLLM's
rule), startup.py (the start-up switches), batch_trace.py, loaders.py, compile_cache.py, multinode.py. This package
file imports only the registry, so spec/ can ask it for the allowed backends without loading an engine.
"""

from __future__ import annotations

from launcher.engines.registry import Backend, Capabilities, create_engine, register
from launcher.engines.registry import select as select_backend

__all__ = ["Backend", "Capabilities", "create_engine", "register", "select_backend"]
