"""plan.py: JobSpec -> Plan (tasks = dataset x ablation config x shard). Pure but for reading the inputs (preflight).

Task ids are stable (`<dataset>.<ablation>.<shard>`) and every path a task writes is computed here, in RunPaths,
so the runner, gather and status agree on the layout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .seeds import record_seed
from .spec import JobSpec


@dataclass(frozen=True, slots=True)
class Task:
    index: int  # SLURM_ARRAY_TASK_ID
    task_id: str  # "<dataset>.<ablation>.<shard:04d>": stable across resubmits
    dataset: str
    ablation: str
    data_path: str
    shard: int
    start: int  # first row (inclusive)
    stop: int  # last row (exclusive)
    seed: int  # informational: per-record seeds come from (run seed, record id)

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RunPaths:
    """Every path on shared storage, computed in one place."""

    output_dir: Path
    run_id: str

    @property
    def run_dir(self) -> Path:
        return self.output_dir / "runs" / self.run_id

    @property
    def spec_json(self) -> Path:
        return self.run_dir / "spec.json"

    @property
    def plan_json(self) -> Path:
        return self.run_dir / "plan.json"

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def lock(self) -> Path:
        return self.run_dir / "submit.lock"

    def task_dir(self, task: Task) -> Path:
        return self.run_dir / "tasks" / task.task_id

    def final_dir(self, dataset: str, ablation: str) -> Path:
        return self.output_dir / dataset / ablation

    @classmethod
    def of(cls, spec: JobSpec) -> RunPaths:
        return cls(Path(spec.output.dir), spec.run_id)


@dataclass(frozen=True)
class Plan:
    spec: JobSpec
    tasks: tuple[Task, ...]
    rows_per_dataset: dict[str, int]

    @property
    def paths(self) -> RunPaths:
        return RunPaths.of(self.spec)

    @property
    def total_records(self) -> int:
        return sum(t.rows for t in self.tasks)

    @property
    def total_samples(self) -> int:
        return self.total_records * self.spec.data.num_samples

    def to_json(self) -> dict[str, Any]:
        cols = list(Task.__dataclass_fields__)
        return {"run_id": self.spec.run_id, "columns": cols, "tasks": [list(asdict(t).values()) for t in self.tasks],
                "rows_per_dataset": self.rows_per_dataset}

    @staticmethod
    def tasks_from_json(obj: dict[str, Any]) -> tuple[Task, ...]:
        cols = obj["columns"]
        return tuple(Task(**dict(zip(cols, row, strict=True))) for row in obj["tasks"])


def check_inputs(spec: JobSpec) -> dict[str, int]:
    """Everything a task will read must be there before anything is submitted. Returns rows per dataset.

    The model (config, weights, tokenizer; its heads against the TP size and GPUs asked), the data (readable,
    not empty, some usable rows), templates and scenario, the output folder, the container argv: see preflight.py.
    """
    from .preflight import check_all

    return check_all(spec)


def expand(spec: JobSpec, rows_per_dataset: dict[str, int] | None = None) -> Plan:
    rows = rows_per_dataset if rows_per_dataset is not None else check_inputs(spec)
    tasks: list[Task] = []
    for ds in spec.data.datasets:
        n = rows[ds.name]
        per = spec.data.records_per_shard or n
        shards = max(1, math.ceil(n / per))
        for ablation in spec.data.ablation_configs:
            for shard in range(shards):
                task_id = f"{ds.name}.{ablation}.{shard:04d}"
                tasks.append(Task(len(tasks), task_id, ds.name, ablation, ds.path, shard, shard * per,
                                  min(n, (shard + 1) * per), record_seed(spec.sampling.seed, task_id)))
    return Plan(spec, tuple(tasks), rows)
