"""bench/startup_log.py: a vLLM log -> start-up split (load / compile / CUDA-graph capture) and the KV cache it got, so
that the raw baseline's start-up is reported like the toolkit's.

The lines and their reader are engines/vllm/startup_log.py's (the engine reads the same lines for the run's summary).
"""

from __future__ import annotations

from typing import Any

from launcher.engines.vllm.startup_log import AOT_LOADED, KV_TOKENS, PATTERNS, parse_startup


def split(startup_total_s: float, parsed: dict[str, Any]) -> dict[str, float]:
    """The four parts the report shows; `other` is imports, processes, profiling and tokenizing."""
    load = float(parsed.get("load_s") or parsed.get("weights_s") or 0.0)
    compile_ = float(parsed.get("compile_s") or 0.0)
    graphs = float(parsed.get("graph_capture_s") or 0.0)
    return {
        "total_s": round(startup_total_s, 2),
        "load_s": round(load, 2),
        "compile_s": round(compile_, 2),
        "graph_capture_s": round(graphs, 2),
        "other_s": round(max(0.0, startup_total_s - load - compile_ - graphs), 2),
    }


__all__ = ["AOT_LOADED", "KV_TOKENS", "PATTERNS", "parse_startup", "split"]
