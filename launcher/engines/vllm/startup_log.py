"""engines/vllm/startup_log.py: vLLM's own start-up lines -> seconds (weights, model load, compile, CUDA graphs),
from the worker's process and from the engine core vLLM forks out of it, so a run's summary says how long loading took.

The wording is vLLM's (checked in 0.26 and 0.32): "Model loading took X GiB [memory] and Y seconds", "Loading
weights took Y seconds", "Dynamo bytecode transform time: Y s", "Compiling a graph for compile range R takes Y s",
"torch.compile took Y s in total", "Directly load the compiled graph(s) ... took Y s", "Graph capturing finished
in Y secs", "init engine (profile, create kv cache, warmup model) took Y s", "GPU KV cache size: N tokens",
"Applying persisted startup plan" (memory profiling skipped). bench/startup_log.py reads whole logs with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
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
STARTUP_PLAN_APPLIED = "Applying persisted startup plan"
SUMMED = ("inductor_s", "cache_load_s")  # one line per compile range: their sum is the phase


def parse_startup(log: str) -> dict[str, Any]:
    """Sum each kind of line (several compile ranges, several workers); absent kinds are left out."""
    out: dict[str, Any] = {}
    for key, pattern in PATTERNS.items():
        values = [float(m.group(1)) for m in pattern.finditer(log)]
        if values:
            out[key] = round(sum(values), 3) if key in SUMMED else round(max(values), 3)
    if "compile_s" not in out:  # vLLM's summary line missing: rebuild it from its parts
        parts = [out.get(k, 0.0) for k in ("dynamo_s", "inductor_s", "cache_load_s")]
        if any(parts):
            out["compile_s"] = round(sum(parts), 3)
    kv = [int(m.group(1).replace(",", "")) for m in KV_TOKENS.finditer(log)]
    if kv:
        out["kv_cache_tokens"] = kv[-1]
    out["compiled_from_cache"] = bool(AOT_LOADED.search(log) or "cache_load_s" in out)
    out["startup_plan_applied"] = STARTUP_PLAN_APPLIED in log
    return out


class StartupLines:
    """Keeps vLLM's start-up lines in a file opened for appending, whatever logging configuration vLLM applies (it
    replaces the handlers of its loggers when the engine starts, in this process and in the engine core): the lines
    are taken where every log record is made, logging's record factory. An engine core forked from this process
    inherits the factory and the open file, so its lines (weights, compile, graphs) land there too; small O_APPEND
    writes from both processes do not interleave. After the start the factory stays installed (vLLM wraps it) but
    does nothing more in this process."""

    KEYS = ("took", "takes", "Graph capturing", "time:", "KV cache size", STARTUP_PLAN_APPLIED)

    def __init__(self) -> None:
        # mkstemp's own descriptor (O_EXCL, 0600), set to append: never reopened by its name, which another user of
        # the node could have replaced in between (a shared /tmp)
        self.fd, self.path = tempfile.mkstemp(prefix="launcher-vllm-startup-", suffix=".log")
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_APPEND)
        self.active = False

    def __enter__(self) -> StartupLines:
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if self.active and record.levelno >= logging.INFO and record.name.startswith("vllm"):
                self._keep(record)
            return record

        self.active = True
        logging.setLogRecordFactory(factory)
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False

    def _keep(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a log line must never fail the engine's start
            message = record.getMessage()
            if any(key in message for key in self.KEYS):
                os.write(self.fd, (message.replace("\n", " ") + "\n").encode(errors="replace"))

    def figures(self) -> dict[str, Any]:
        """What the lines say, then the file is gone (a forked engine core keeps its own descriptor)."""
        try:
            size = os.fstat(self.fd).st_size
            return parse_startup(os.pread(self.fd, size, 0).decode(errors="replace"))
        except OSError:
            return {}
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def startup_seconds(parsed: dict[str, Any]) -> dict[str, Any]:
    """The engine's own figures as the run's summary shows them (engine_startup)."""
    names = {
        "weights_s": "weights_load_s",
        "load_s": "model_load_s",
        "compile_s": "compile_s",
        "graph_capture_s": "graph_capture_s",
        "startup_plan_applied": "startup_plan_applied",
        "compiled_from_cache": "compiled_from_cache",
    }
    out = {new: parsed[old] for old, new in names.items() if old in parsed}
    if "weights_load_s" not in out and "model_load_s" in out:
        out["weights_load_s"] = out["model_load_s"]  # a loader that logs only the model's whole load
    return out


__all__ = ["AOT_LOADED", "KV_TOKENS", "PATTERNS", "StartupLines", "parse_startup", "startup_seconds"]
