"""startup_log.py: a vLLM log -> start-up split (load / compile / CUDA-graph capture) and the KV cache it got.

The wording is vLLM's (checked in 0.26 and 0.32): "Model loading took X GiB [memory] and Y seconds", "Loading
weights took Y seconds", "Dynamo bytecode transform time: Y s", "Compiling a graph for compile range R takes Y s",
"torch.compile took Y s in total", "Directly load the compiled graph(s) ... took Y s", "Graph capturing finished
in Y secs", "init engine (profile, create kv cache, warmup model) took Y s", "GPU KV cache size: N tokens".
"""

from __future__ import annotations

import re
from typing import Any

NUM = r"([0-9]+(?:\.[0-9]+)?)"
PATTERNS: dict[str, re.Pattern[str]] = {
    "load_s": re.compile(rf"Model loading took [0-9.]+ GiB(?: memory)? and {NUM} seconds"),
    "weights_s": re.compile(rf"Loading weights took {NUM} seconds"),
    "dynamo_s": re.compile(rf"Dynamo bytecode transform time: {NUM} s"),
    "inductor_s": re.compile(rf"Compiling a graph for compile range .* takes {NUM} s"),
    "compile_s": re.compile(rf"torch\.compile took {NUM} s in total"),
    "cache_load_s": re.compile(rf"Directly load the compiled graph\(s\) for compile range .* took {NUM} s"),
    "graph_capture_s": re.compile(rf"Graph capturing finished in {NUM} secs"),
    "engine_init_s": re.compile(rf"init engine \(profile, create kv cache, warmup model\) took {NUM} s"),
}
KV_TOKENS = re.compile(r"KV cache size: ([0-9,]+) tokens")
AOT_LOADED = re.compile(r"Directly load AOT compilation from path")


def parse_startup(log: str) -> dict[str, Any]:
    """Sum each kind of line (several compile ranges, several workers); absent kinds are left out."""
    out: dict[str, Any] = {}
    for key, pattern in PATTERNS.items():
        values = [float(m.group(1)) for m in pattern.finditer(log)]
        if values:
            out[key] = round(sum(values), 3) if key in ("inductor_s", "cache_load_s") else round(max(values), 3)
    if "compile_s" not in out:  # vLLM's summary line missing: rebuild it from its parts
        parts = [out.get(k, 0.0) for k in ("dynamo_s", "inductor_s", "cache_load_s")]
        if any(parts):
            out["compile_s"] = round(sum(parts), 3)
    kv = [int(m.group(1).replace(",", "")) for m in KV_TOKENS.finditer(log)]
    if kv:
        out["kv_cache_tokens"] = kv[-1]
    out["compiled_from_cache"] = bool(AOT_LOADED.search(log) or "cache_load_s" in out)
    out["startup_plan_applied"] = "Applying persisted startup plan" in log  # memory profiling skipped (issue 28)
    return out


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
