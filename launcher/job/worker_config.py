"""job/worker_config.py: what one worker is (its job, its replica, its GPUs and layout, its model, the units it may
take), handed down to the worker's parts: its live report (job/live_report.py), its claims (job/unit_claims.py).

Its own module so that those parts need not import job/worker.py, which builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.plan.layout import ParallelLayout


@dataclass(frozen=True)
class WorkerConfig:
    run_dir: Path
    job_index: int
    replica: int
    layout: ParallelLayout  # this worker's TP group, numbered as its own process sees it
    gpu_ids: tuple[str, ...] = ()  # the same GPUs, as the job sees them (for status)
    only_units: tuple[str, ...] | None = None  # `launcher run --unit`: one unit per engine (the old way)
    model: str = ""  # which of the spec's `models:` this engine loads ("" for its one model.path)

    @property
    def slot(self) -> str:
        return f"{self.job_index}.{self.replica}"


__all__ = ["WorkerConfig"]
