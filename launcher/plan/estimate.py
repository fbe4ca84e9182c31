"""plan/estimate.py: gathered runs -> a small local record of measured rates -> `plan`'s estimate of wall time and
GPU-hours, so that a user sees what a run will cost before submitting it.

Each gathered run adds one entry (keyed by run id, so gathering again changes nothing): the model's shape, the GPU,
the backend, the output tokens per GPU-second over the generation window (wall clock) and the engine start-up. A
plan for the same model shape uses the median of those entries. Kept in ~/.cache/launcher/history.json
($LAUNCHER_HISTORY to move it); nothing leaves the machine.

The history is a cache: whatever it holds (not JSON, nested without end, a folder, 1 GB, entries of the wrong
shape) is a warning in `plan` and in every gather, never a failure. A file that is not a history at all is left
alone; damaged entries are dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.plan import Plan
from launcher.store import WorkerReport, write_json_atomic

HISTORY_ENV = "LAUNCHER_HISTORY"
MAX_ENTRIES = 500
MAX_HISTORY_BYTES = 8 << 20  # 500 entries take ~200 KB
log = logging.getLogger("launcher.plan")


def history_path() -> Path:
    value = os.environ.get(HISTORY_ENV)
    if value:
        return Path(value).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "launcher" / "history.json"


def shape_key(plan: Plan) -> str:
    """What the rate depends on besides the GPU: the model's shape, its quantization, the sampling length."""
    from launcher.inputs.model import model_shape

    spec = plan.spec.for_model(plan.spec.model_names()[0])  # a models: sweep: its first model's shape
    try:
        s = model_shape(spec.model.path)
        shape = f"{'/'.join(s.architectures) or '?'} h{s.hidden} l{s.layers} a{s.heads}/{s.kv_heads} {s.dtype}"
    except (OSError, ValueError):
        shape = "unknown"
    return f"{shape} q={spec.model.quantization or 'none'}"


def _usable(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("shape"), str):
        return False
    rate, startup = entry.get("tokens_per_gpu_s"), entry.get("startup_s")
    number = (int, float)
    return (
        isinstance(rate, number)
        and not isinstance(rate, bool)
        and math.isfinite(rate)
        and rate > 0
        and (startup is None or (isinstance(startup, number) and math.isfinite(startup) and startup >= 0))
    )


def read_history(path: Path) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """(run id -> entry, only the usable ones; None when the file is not a history to add to), and a warning."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return None, f"{path}: cannot read the run history ({exc.strerror}); estimates are off"
    if not path.is_file():
        return None, f"{path} is not a file; the run history is ignored (remove it, or set ${HISTORY_ENV})"
    if st.st_size > MAX_HISTORY_BYTES:
        return None, (
            f"{path} is {st.st_size / 2**20:.0f} MiB, more than a run history ever holds "
            f"({MAX_HISTORY_BYTES >> 20} MiB): ignored; remove it, or set ${HISTORY_ENV}"
        )
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        return None, f"{path} is not a run history ({why}): ignored and left as it is; remove it to start a new one"
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, dict):
        return None, f"{path} holds no 'runs' mapping: ignored and left as it is; remove it to start a new one"
    usable = {str(k): v for k, v in runs.items() if _usable(v)}
    dropped = len(runs) - len(usable)
    return usable, (f"{path}: {dropped} damaged entr{'y' if dropped == 1 else 'ies'} ignored" if dropped else None)


def record_run(plan: Plan, headline: dict[str, Any], worker: WorkerReport) -> None:
    """Add this run's measured rate (best effort: a history that cannot be read or written never fails a gather)."""
    try:
        _record_run(plan, headline, worker)
    except Exception as exc:  # a cache: whatever goes wrong, the gather's outputs are what matter
        log.warning("run history not updated: %s: %s", type(exc).__name__, exc)


def _record_run(plan: Plan, headline: dict[str, Any], worker: WorkerReport) -> None:
    gen_s, tokens = headline.get("generation_wall_s"), headline.get("output_tokens")
    gpus = headline.get("gpus") or headline.get("workers_generating")  # a CPU run: per worker (one engine each)
    if not gen_s or not tokens or not gpus:
        return
    engine = worker.get("engine") or {}
    entry = {
        "shape": shape_key(plan),
        "gpu": engine.get("gpu_name") or "cpu",
        "backend": worker.get("backend"),
        "tokens_per_gpu_s": round(tokens / gen_s / gpus, 2),
        "startup_s": headline.get("startup_s_max"),
        "max_tokens": plan.spec.sampling.max_tokens,
        "n": plan.spec.data.num_samples,
        "gpus": gpus,
        "samples": headline.get("samples"),
        "when": time.strftime("%Y-%m-%d"),
    }
    path = history_path()
    runs, warning = read_history(path)
    if warning:
        log.warning("%s", warning)
    if runs is None:
        return
    with contextlib.suppress(OSError):
        runs[plan.run.run_id] = entry
        if len(runs) > MAX_ENTRIES:
            runs = dict(list(runs.items())[-MAX_ENTRIES:])
        # wait_s=0: a read-only home (apptainer --contain runs the gather job) must not hold the gather up for the
        # 300 s that job outputs wait out full or read-only storage
        write_json_atomic(path, {"runs": runs}, wait_s=0)


def gpus_per_job(plan: Plan) -> int:
    """GPUs a worker job will hold: what sbatch asks for on Slurm; a local job holds this machine's (none on a CPU
    machine, whatever slurm.gpus_per_node says: that is a request to Slurm)."""
    if plan.spec.executor == "local":
        from launcher.plan.units import local_gpu_count

        return local_gpu_count()
    return plan.spec.slurm.gpus_per_node


@dataclass(frozen=True)
class Estimate:
    generation_s: float
    startup_s: float
    gpu_hours: float
    tokens: int
    basis: str  # which measurements, on which GPU
    cost: float | None = None  # gpu_hours x cost.gpu_hour, when the spec prices a GPU-hour


def _same_device(entries: list[dict[str, Any]], plan: Plan) -> tuple[list[dict[str, Any]], str]:
    """The entries measured on the kind of device this plan will get, and how they were picked.

    A GPU plan never borrows a CPU rate (or the reverse). Among GPU kinds, the one `slurm.constraint` names wins
    (h100 -> "NVIDIA H100 80GB HBM3"); without one, the kind measured most often, and the others are named so a
    user on another partition knows the estimate is not theirs."""
    on_gpu = gpus_per_job(plan) > 0
    pool = [e for e in entries if (str(e.get("gpu") or "cpu") != "cpu") == on_gpu]
    if not pool:
        return [], f"no earlier run of this model shape on {'GPUs' if on_gpu else 'CPU'}"
    kinds = Counter(str(e.get("gpu")) for e in pool)
    if len(kinds) == 1:
        return pool, ""
    wanted = [t.strip().lower() for t in re.split(r"[|&,\[\]]", plan.spec.slurm.constraint or "") if t.strip()]
    named = [k for k in kinds if any(t in k.lower() for t in wanted)]
    if named:
        return [
            e for e in pool if e.get("gpu") in named
        ], f"the GPU kind slurm.constraint names ({plan.spec.slurm.constraint})"
    kind = kinds.most_common(1)[0][0]
    others = ", ".join(k for k in sorted(kinds) if k != kind)
    return [
        e for e in pool if e.get("gpu") == kind
    ], f"the GPU kind measured most (also measured: {others}; set slurm.constraint to pick)"


def estimate(plan: Plan) -> tuple[Estimate | None, str]:
    """(estimate, why) for this plan from earlier runs of the same model shape and device kind; (None, why not).
    Never raises: a plan is never refused for what a cache holds."""
    try:
        return _estimate(plan)
    except Exception as exc:
        log.warning("no estimate: %s: %s", type(exc).__name__, exc)
        return None, f"no estimate ({type(exc).__name__}: {str(exc)[:200]})"


def _estimate(plan: Plan) -> tuple[Estimate | None, str]:
    key = shape_key(plan)
    path = history_path()
    runs, warning = read_history(path)
    if warning:
        log.warning("%s", warning)
    entries = [e for e in (runs or {}).values() if e.get("shape") == key]
    if not entries:
        return None, f"no earlier run of this model shape ({key}) in {path}: an estimate comes after the first"
    entries, picked = _same_device(entries, plan)
    if not entries:
        return None, f"{picked} ({key}) in {path}: an estimate comes after the first"
    rate = statistics.median(e["tokens_per_gpu_s"] for e in entries)
    startup = statistics.median(float(e.get("startup_s") or 0.0) for e in entries)
    per_job = gpus_per_job(plan)
    gpus = max(1, plan.jobs * per_job) if per_job else max(1, plan.jobs)
    tokens = plan.total_samples * plan.spec.sampling.max_tokens
    gen_s = tokens / (rate * gpus)
    gpu_names = sorted({str(e.get("gpu")) for e in entries})
    basis = (
        f"median of {len(entries)} earlier run(s) on {', '.join(gpu_names)}: {rate:,.0f} output tok/s per "
        f"{'GPU' if per_job else 'worker'}, "
        f"start-up {startup:.0f} s; at most {tokens:,} tokens (every sample at max_tokens)"
    ) + (f"; {picked}" if picked else "")
    # CPU runs hold no GPU: their "GPU-hours" are worker-hours, and a GPU price does not apply to them
    gpu_hours = (gen_s + startup) * gpus / 3600 if per_job else 0.0
    price = plan.spec.cost.gpu_hour
    cost = gpu_hours * price if price is not None and per_job else None
    return Estimate(gen_s, startup, gpu_hours, tokens, basis, cost), basis


__all__ = ["Estimate", "estimate", "history_path", "read_history", "record_run", "shape_key"]
