"""gather/throughput.py: the workers' reports -> a run's figures by the wall clock, so that throughput is never a sum of
per-worker times.

A run's samples/s is all its samples over (first request in -> last sample written), across every worker that ran
at once: two data-parallel replicas that each make 100 samples/s over the same minute make 200, and two that ran
one after the other make 100. Per-worker figures go beside it, never instead. The GPU-busy fraction is how much of
the workers' GPU time was spent generating: sum(generation window x GPUs) / sum(process life x GPUs); engine
start-up, reading data and the tail after the last unit count against it.

GPU-hours are what the workers held: process life x GPUs (a CPU worker holds none). SM utilization (mean, p10), peak
memory and power come from each worker's NVML samples over its generation window (job/gpu_monitor.py); cost per
1,000 samples from GPU-hours x the spec's cost.gpu_hour. A run that held no GPU is a CPU run: its figures are the
cores its workers could use, the CPU time they used (core-hours) and samples per core-hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.plan import Plan
from launcher.store import GpuFigures, WorkerReport


@dataclass
class RunFigures:
    workers: list[WorkerReport]  # every worker process's last report (idle ones too), oldest first
    layout: dict[str, Any] | None  # the last job attempt's TP x DP
    gpu_hour_cost: float | None = None  # spec cost.gpu_hour
    currency: str = "USD"
    _by_unit: dict[str, list[list[Any]]] | None = field(default=None, init=False, repr=False)

    def windows_by_unit(self) -> dict[str, list[list[Any]]]:
        """unit -> its windows in every worker's report (indexed once: a run may have 10,000 units x 256 workers)."""
        if self._by_unit is None:
            self._by_unit = {}
            for w in self.workers:
                for u, window in (w.get("unit_windows") or {}).items():
                    self._by_unit.setdefault(u, []).append(window)
        return self._by_unit

    def generating(self) -> list[WorkerReport]:
        return [w for w in self.workers if w.get("first_request_at") and w.get("last_write_at")]

    def window(self) -> tuple[float, float] | None:
        busy = self.generating()
        if not busy:
            return None
        return min(_t(w, "first_request_at") for w in busy), max(_t(w, "last_write_at") for w in busy)

    def main_worker(self) -> WorkerReport:
        return next((w for w in reversed(self.workers) if w.get("engine")), WorkerReport())

    def startup_max_s(self) -> float:
        ready = [_t(w, "engine_ready_at") - _t(w, "started") for w in self.workers if w.get("engine_ready_at")]
        return round(max(ready, default=0.0), 3)

    def headline(self) -> dict[str, Any]:
        busy = self.generating()
        win = self.window()
        samples = sum(int(w.get("samples") or 0) for w in busy)
        tokens = sum(int(w.get("output_tokens") or 0) for w in busy)
        gen_s = round(win[1] - win[0], 3) if win else 0.0
        lives = [w for w in self.workers if w.get("ended") and w.get("started")]
        e2e = round(max(_t(w, "ended") for w in lives) - min(_t(w, "started") for w in lives), 3) if lives else None
        life_s = sum(_t(w, "ended") - _t(w, "started") for w in lives)
        busy_s = sum(_t(w, "last_write_at") - _t(w, "first_request_at") for w in busy)
        gpu_s = sum((_t(w, "ended") - _t(w, "started")) * _gpus(w) for w in lives)
        busy_gpu_s = sum((_t(w, "last_write_at") - _t(w, "first_request_at")) * _gpus(w) for w in busy)
        gpu_hours = gpu_s / 3600
        gpus = sum(_gpus(w) for w in {w.get("slot"): w for w in self.workers}.values())
        return {
            "device": "gpu" if gpus else "cpu",
            "samples": samples,
            "output_tokens": tokens,
            "generation_wall_s": gen_s,
            "samples_per_sec": round(samples / gen_s, 4) if gen_s else None,
            "output_tokens_per_sec": round(tokens / gen_s, 2) if gen_s else None,
            "e2e_wall_s": e2e,
            # generating / alive, whatever the device; the GPU-weighted one only where GPUs were held
            "busy_fraction": round(busy_s / life_s, 4) if life_s else None,
            "gpu_busy_fraction": round(busy_gpu_s / gpu_s, 4) if gpu_s else None,
            "gpu_hours": round(gpu_hours, 4),
            "samples_per_gpu_hour": round(samples / gpu_hours, 1) if gpu_hours and samples else None,
            **self.gpu_figures(),
            **self.cost(gpu_hours, samples),
            **self.cpu_figures(samples, e2e),
            "workers": len(self.workers),
            "workers_generating": len(busy),
            "gpus": gpus,
            "startup_s_max": self.startup_max_s(),
            **self.prefix_cache(),
        }

    def cpu_figures(self, samples: int, e2e: float | None) -> dict[str, Any]:
        """Cores the workers could use (per host: its workers share them), the CPU time they used (measured, so a
        worker limited to one math thread counts one core), and samples per core-hour of it."""
        cores: dict[str, int] = {}
        for w in self.workers:
            if w.get("cpu_cores"):
                cores[str(w.get("host"))] = max(cores.get(str(w.get("host")), 0), int(w["cpu_cores"]))
        cpu_s = sum(float(w.get("cpu_seconds") or 0.0) for w in self.workers)
        if not cores and not cpu_s:
            return {}  # reports from before these were recorded
        cpu_hours = cpu_s / 3600
        return {
            "cpu_cores": sum(cores.values()),
            "cpu_hosts": len(cores),
            "cpu_hours": round(cpu_hours, 6),
            "cpu_cores_busy": round(cpu_s / e2e, 2) if e2e else None,
            "samples_per_cpu_hour": round(samples / cpu_hours, 1) if cpu_hours and samples else None,
        }

    def prefix_cache(self) -> dict[str, Any]:
        """vLLM's prefix-cache hit rate over every engine of the run: prompt tokens served from the cache / prompt
        tokens looked up (the n samples of a prompt hit it; in prefix order, so do a user's other configs)."""
        hits = queries = 0.0
        for w in self.workers:
            counters = ((w.get("engine") or {}).get("settings") or {}).get("vllm_counters") or {}
            hits += float(counters.get("prefix_cache_hits") or 0)
            queries += float(counters.get("prefix_cache_queries") or 0)
        return {"prefix_cache_hit_rate": round(hits / queries, 4)} if queries else {}

    def gpu_figures(self) -> dict[str, Any]:
        """SM utilization (mean, p10 over every GPU-second sampled), peak memory, mean power; or why none."""
        return summarize_gpu_samples([w["gpu_monitor"] for w in self.workers if w.get("gpu_monitor")])

    def cost(self, gpu_hours: float, samples: int) -> dict[str, Any]:
        if self.gpu_hour_cost is None or not gpu_hours:
            return {}
        total = gpu_hours * self.gpu_hour_cost
        return {
            "cost": round(total, 4),
            "cost_per_1000_samples": round(1000 * total / samples, 4) if samples else None,
            "currency": self.currency,
        }

    def per_worker(self) -> list[dict[str, Any]]:
        out = []
        for w in self.workers:
            first, last = w.get("first_request_at"), w.get("last_write_at")
            gen = round(last - first, 3) if first and last else None
            samples = int(w.get("samples") or 0)
            ready = w.get("engine_ready_at")
            out.append(
                {
                    "worker": w.get("slot"),
                    "host": w.get("host"),
                    "gpus": w.get("gpus"),
                    "restart": w.get("restart"),
                    "state": w.get("state"),
                    "samples": samples,
                    "generation_s": gen,
                    "samples_per_sec": round(samples / gen, 4) if gen and samples else None,
                    "startup_s": round(ready - _t(w, "started"), 3) if ready else None,
                    "engine_start_at": (w.get("engine") or {}).get("startup", {}).get("engine_start_at"),
                    "engine_ready_at": ready,
                    "started": w.get("started"),
                    "ended": w.get("ended"),
                    "units": w.get("units_done"),
                }
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "timing": "wall clock across all workers at once",
            "run": self.headline(),
            "workers": self.per_worker(),
            "layout": self.layout,
        }


def _t(w: WorkerReport, key: str) -> float:
    """A wall-clock field of a report (0.0 when absent: callers check presence first)."""
    value = w.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _gpus(w: WorkerReport) -> int:
    """GPUs a worker held: none for a CPU worker (whose time then counts in cpu_figures, never as a GPU's)."""
    return len(w.get("gpus") or [])


def summarize_gpu_samples(sampled: Sequence[GpuFigures]) -> dict[str, Any]:
    """Workers' (or a bench process's) NVML figures -> the run's: utilization mean and p10 over every GPU-second,
    peak memory, mean power, and why some are missing. Empty when nothing was sampled."""
    if not sampled:
        return {}
    util_mean, util_p10 = merge_histograms([g["util_hist"] for g in sampled if g.get("samples")])
    powers = [float(p) for g in sampled if (p := g.get("power_mean_w")) is not None]
    peak = max((g.get("memory_used_peak_mib") or 0 for g in sampled), default=0)
    total = max((g.get("memory_total_mib") or 0 for g in sampled), default=0)
    errors = sorted({str(g["error"]) for g in sampled if g.get("error")})
    return {
        "gpu_util_mean_pct": util_mean,
        "gpu_util_p10_pct": util_p10,
        "gpu_memory_peak_gib": round(peak / 1024, 2) if peak else None,
        "gpu_memory_total_gib": round(total / 1024, 2) if total else None,
        "gpu_power_mean_w": round(sum(powers) / len(powers), 1) if powers else None,
        "gpu_samples": sum(int(g.get("samples") or 0) for g in sampled),
        "gpu_figures_source": sorted({g.get("source") or "?" for g in sampled if g.get("samples")}) or None,
        **({"gpu_figures_missing": errors} if errors else {}),
    }


def busy_words(run: dict[str, Any]) -> str:
    """How much of the workers' time went to generating, named for the device: 'GPU busy 61%' on GPUs; on a CPU
    run, which held no GPU, 'CPU run (no GPU): generating 18%'."""
    if run.get("device", "gpu") == "cpu" or not run.get("gpus"):
        busy = run.get("busy_fraction")
        return "CPU run (no GPU): generating " + (f"{100 * busy:.0f}%" if busy is not None else "n/a")
    gpu_busy = run.get("gpu_busy_fraction")
    return "GPU busy " + (f"{100 * gpu_busy:.0f}%" if gpu_busy is not None else "n/a")


def describe_cpus(run: dict[str, Any]) -> str | None:
    """The CPU line for a run that held no GPU (and so has no "GPUs:" line): cores, core-hours used, samples per
    core-hour. None for a GPU run, or one whose workers did not record their CPU time."""
    if run.get("gpus") or "cpu_hours" not in run:
        return None
    parts = [f"{run['cpu_cores']} core(s) on {run['cpu_hosts']} host(s)"]
    if run.get("cpu_cores_busy") is not None:
        parts.append(f"{run['cpu_cores_busy']} busy on average")
    parts.append(f"{run['cpu_hours']:.4f} core-hours of CPU time")
    if run.get("samples_per_cpu_hour"):
        parts.append(f"{run['samples_per_cpu_hour']:,.0f} samples/core-hour")
    return "CPU: " + "; ".join(parts) + " (no GPU held: no GPU-hours, utilization or cost to show)"


def describe_gpus(run: dict[str, Any]) -> str | None:
    """One line for the console and status: the guide's figures, as measured. None for a run that held no GPU."""
    if not run.get("gpu_hours"):
        return None
    parts = []
    if run.get("gpu_util_mean_pct") is not None:
        parts.append(f"SM utilization {run['gpu_util_mean_pct']:.0f}% mean, {run['gpu_util_p10_pct']:.0f}% p10")
    if run.get("gpu_memory_peak_gib"):
        parts.append(f"peak memory {run['gpu_memory_peak_gib']} of {run['gpu_memory_total_gib']} GiB")
    if run.get("gpu_power_mean_w"):
        parts.append(f"{run['gpu_power_mean_w']:.0f} W mean")
    parts.append(f"{run['gpu_hours']} GPU-hours")
    if run.get("samples_per_gpu_hour"):
        parts.append(f"{run['samples_per_gpu_hour']:,.0f} samples/GPU-hour")
    if run.get("cost_per_1000_samples") is not None:
        parts.append(f"{run['cost_per_1000_samples']} {run['currency']} per 1,000 samples")
    line = "GPUs: " + "; ".join(parts)
    if run.get("gpu_figures_missing"):
        line += " (no utilization/memory figures: " + "; ".join(run["gpu_figures_missing"]) + ")"
    return line


def merge_histograms(hists: Sequence[Sequence[int]]) -> tuple[float | None, float | None]:
    """(mean, p10) of SM utilization in percent over every (GPU, instant) sample of every worker."""
    total = [sum(col) for col in zip(*hists, strict=True)] if hists else []
    n = sum(total)
    if not n:
        return None, None
    mean = sum(pct * c for pct, c in enumerate(total)) / n
    target, seen = 0.10 * n, 0
    for pct, c in enumerate(total):
        seen += c
        if seen >= target:
            return round(mean, 1), float(pct)
    return round(mean, 1), 100.0


def run_figures(plan: Plan) -> RunFigures:
    attempts = [a for job in plan.run.job_dirs() for a in job.read_attempts() if a.layout]
    attempts = sorted(attempts, key=lambda a: a.started)
    return RunFigures(
        plan.run.worker_reports(),
        attempts[-1].layout if attempts else None,
        plan.spec.cost.gpu_hour,
        plan.spec.cost.currency,
    )


def cell_figures(figures: RunFigures, unit_ids: list[str]) -> dict[str, Any]:
    """One dataset x ablation: its units' windows over every worker that ran them, first request -> last write."""
    by_unit = figures.windows_by_unit()
    windows = [x for u in unit_ids for x in by_unit.get(u, ()) if x[0] and x[1]]
    if not windows:
        return {"generation_wall_s": 0.0}
    return {"generation_wall_s": round(max(x[1] for x in windows) - min(x[0] for x in windows), 3)}


__all__ = [
    "RunFigures",
    "busy_words",
    "cell_figures",
    "describe_cpus",
    "describe_gpus",
    "merge_histograms",
    "run_figures",
    "summarize_gpu_samples",
]
