"""bench/steps.py: one measurement step of `launcher bench` (skip what WORKDIR/runs holds, keep to --budget-s, record
a failure and go on) and the results folder's header (collect, host_info), shared by the dispatcher (bench/cli.py)
and every system family's module, so that each family only says which steps it runs and in what order."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_STEP_S = 90  # --budget-s: the shortest time a measurement is started with (options.py's --budget-s help says it)
Rows = list[dict[str, Any]]
Step = Callable[[str, Callable[[], Rows]], None]
"""step(key, measure): run `measure` once, unless WORKDIR/runs/<key>.json holds it already (--force redoes it)."""


def make_step(args: argparse.Namespace, wd: Any, failures: list[str]) -> Step:
    """The step function of one `launcher bench` call: its failures are appended to `failures`."""
    from launcher.bench.runners import RunFailed

    began, last_step_s = time.monotonic(), [0.0]

    def step(key: str, fn: Callable[[], Rows]) -> None:
        path = wd.runs / f"{slug(key)}.json"
        if path.exists() and not args.force:
            print(f"[bench] {key}: already measured ({path.name})", flush=True)
            return
        if args.budget_s is not None:  # start a step only when one like the last still fits: the report gets written
            left = args.budget_s - (time.monotonic() - began)
            if left < max(MIN_STEP_S, last_step_s[0]):
                print(f"[bench] {key}: skipped, {max(0.0, left):.0f} s of --budget-s left", flush=True)
                return
        print(f"[bench] {key} ...", flush=True)
        t0 = time.monotonic()
        try:
            rows = fn()
        except (RunFailed, OSError, ValueError, KeyError, StopIteration) as exc:
            failures.append(f"{key}: {exc}")
            print(f"[bench] {key} FAILED: {exc}", flush=True)
            return
        last_step_s[0] = time.monotonic() - t0
        for r in rows:
            r.setdefault("note", args.note)
        path.write_text(json.dumps(rows, indent=1))
        for r in rows:
            print(f"[bench] {r['system']}@{r['shape']}: {headline(r)}", flush=True)

    return step


def headline(r: dict[str, Any]) -> str:
    """One line per measurement: throughput, start-up, and issue 28's figures where the row has them."""
    parts = []
    if r.get("samples_per_min") is not None:
        parts.append(f"{r['samples_per_min']:,.0f} samples/min, {r['output_tok_per_s'] or 0:,.0f} tok/s")
    if (r.get("startup") or {}).get("total_s") is not None:
        parts.append(f"start-up {r['startup']['total_s']} s")
    for key in ("wall_s", "engine_ready_s", "model_swap_s", "weights_load_s", "gpu_busy_fraction"):
        if r.get(key) is not None:
            parts.append(f"{key} {r[key]}")
    return ", ".join(parts) or "measured"


def items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def slug(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "@+-_." else "_" for ch in key)


def collect(wd: Any, model: str, prompt_tokens: int, n: int, others: list[Any] | None = None) -> dict[str, Any]:
    measurements: list[dict[str, Any]] = []
    for w in [wd, *(others or [])]:
        for path in sorted(w.runs.glob("*.json")):
            if not path.name.startswith("."):
                measurements.extend(json.loads(path.read_text()))
    return {
        "date": dt.date.today().isoformat(),
        "host": host_info(measurements),
        "workload": {"model": model, "prompt_tokens": prompt_tokens, "n": n},
        "measurements": measurements,
    }


def host_info(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    import os
    import subprocess

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
        name, mem, driver = (x.strip() for x in out.split(","))
        info.update(gpu=name, gpu_memory_gib=round(float(mem) / 1024, 1), driver=driver)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        info["gpu"] = "cpu"
    versions: dict[str, str] = {}
    for m in measurements:
        ver = str(m.get("engine_version") or "")
        if " " in ver:
            name, _, value = ver.partition(" ")
            versions[name] = value
    try:
        import torch

        versions["torch"] = str(torch.__version__)
    except ImportError:
        pass
    info["versions"] = versions
    return info


def default_results(host: dict[str, Any]) -> Path:
    gpu = str(host.get("gpu", "cpu")).lower().replace("nvidia ", "")
    name = "".join(ch if ch.isalnum() else "-" for ch in gpu).strip("-")
    while "--" in name:
        name = name.replace("--", "-")
    return Path.cwd() / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{name}"
