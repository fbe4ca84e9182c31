"""throughput.py: the workers' reports -> a run's figures by the wall clock.

A run's samples/s is all its samples over (first request in -> last sample written), across every worker that ran
at once: two data-parallel replicas that each make 100 samples/s over the same minute make 200, and two that ran
one after the other make 100. Per-worker figures go beside it, never instead. The GPU-busy fraction is how much of
the workers' GPU time was spent generating: sum(generation window x GPUs) / sum(process life x GPUs); engine
start-up, reading data and the tail after the last unit count against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.plan import Plan
from launcher.store import WorkerReport, read_json


@dataclass
class RunFigures:
    workers: list[WorkerReport]  # every worker process's last report (idle ones too), oldest first
    layout: dict[str, Any] | None  # the last job attempt's TP x DP

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
        gpu_s = sum((_t(w, "ended") - _t(w, "started")) * _gpus(w) for w in lives)
        busy_gpu_s = sum((_t(w, "last_write_at") - _t(w, "first_request_at")) * _gpus(w) for w in busy)
        return {
            "samples": samples,
            "output_tokens": tokens,
            "generation_wall_s": gen_s,
            "samples_per_sec": round(samples / gen_s, 4) if gen_s else None,
            "output_tokens_per_sec": round(tokens / gen_s, 2) if gen_s else None,
            "e2e_wall_s": e2e,
            "gpu_busy_fraction": round(busy_gpu_s / gpu_s, 4) if gpu_s else None,
            "gpu_hours": round(gpu_s / 3600, 4),
            "workers": len(self.workers),
            "workers_generating": len(busy),
            "gpus": sum(_gpus(w) for w in {w.get("slot"): w for w in self.workers}.values()),
            "startup_s_max": self.startup_max_s(),
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
    return max(1, len(w.get("gpus") or []))


def run_figures(plan: Plan) -> RunFigures:
    attempts = []
    jobs_root = plan.run.root / "jobs"
    if jobs_root.is_dir():
        for d in jobs_root.iterdir():
            attempts += [read_json(p) for p in sorted((d / "attempts").glob("*.json"))]
    attempts = sorted((a for a in attempts if a.get("layout")), key=lambda a: a.get("started") or 0.0)
    return RunFigures(plan.run.worker_reports(), attempts[-1]["layout"] if attempts else None)


def cell_figures(figures: RunFigures, unit_ids: list[str]) -> dict[str, Any]:
    """One dataset x ablation: its units' windows over every worker that ran them, first request -> last write."""
    windows = [
        w["unit_windows"][u]
        for w in figures.workers
        for u in unit_ids
        if u in (w.get("unit_windows") or {}) and w["unit_windows"][u][0] and w["unit_windows"][u][1]
    ]
    if not windows:
        return {"generation_wall_s": 0.0}
    return {"generation_wall_s": round(max(x[1] for x in windows) - min(x[0] for x in windows), 3)}


__all__ = ["RunFigures", "cell_figures", "run_figures"]
