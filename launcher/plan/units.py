"""plan/units.py: JobSpec -> Plan: units of work (dataset x ablation config x shard) and how many worker jobs run them,
cut once so that a resubmit sees the same units.

A unit has a stable id (`<dataset>.<ablation>.<shard>`) and a range of rows; per-record seeds come from (run seed,
record id), so outputs never depend on how rows are cut into units. The units are not what Slurm runs: Slurm runs
`jobs` worker jobs (array elements), each holding `gpus_per_node` GPUs and one worker per GPU group, and the
workers claim units from the run directory until none is left (job/worker.py). An engine then starts once per
worker, not once per unit: on an H100 a start costs 40-100 s against ~12 s to generate 1,000 samples.

Pure but for reading the inputs (preflight).
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from launcher.spec import JobSpec
from launcher.store import RunDir

# Auto unit size: at least this many units per worker, so the last units of a run are small next to the whole and
# workers finish close together; at most MAX_AUTO_UNIT_RECORDS records in one (a killed worker's unit is resumed
# from its chunks anyway, so this only bounds what one claim holds).
UNITS_PER_WORKER = 4
MIN_AUTO_UNIT_RECORDS = 16  # smaller units buy no balance, only claims and chunk files
MAX_AUTO_UNIT_RECORDS = 2000
# Jobs when the spec says nothing: enough for UNITS_PER_WORKER units per worker, at most this many.
MAX_AUTO_JOBS = 8


@dataclass(frozen=True, slots=True)
class Unit:
    index: int  # position in the plan: the order workers claim in (largest units first)
    unit_id: str  # "<dataset>.<ablation>.<shard:04d>": stable across resubmits
    dataset: str
    ablation: str
    data_path: str
    shard: int
    start: int  # first row (inclusive)
    stop: int  # last row (exclusive)
    model: str = ""  # one of the spec's `models:` ("" for its one model.path)
    adapter: str = ""  # one of model.adapters ("" without adapters)

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def cell(self) -> Cell:
        return Cell(self.dataset, self.ablation, self.model, self.adapter)


UNIT_COLUMNS = list(Unit.__dataclass_fields__)
_unit_row = operator.attrgetter(*UNIT_COLUMNS)  # a unit's fields, in order (asdict deep-copies: 20x slower)


class Cell(NamedTuple):
    """One output group of a sweep: model or adapter x dataset x ablation config."""

    dataset: str
    ablation: str
    model: str = ""
    adapter: str = ""

    @property
    def variant(self) -> str:
        """The model and/or adapter name ("" for a sweep over one model without adapters)."""
        return "+".join(p for p in (self.model, self.adapter) if p)

    @property
    def rel_dir(self) -> PurePosixPath:
        """Where the cell's files go under the output dir: <model>/<adapter>/<dataset>/<ablation>."""
        return PurePosixPath(*[p for p in (self.model, self.adapter) if p], self.dataset, self.ablation)

    @property
    def label(self) -> str:
        return str(self.rel_dir)


def unit_id_of(cell: Cell, shard: int) -> str:
    """Stable across resubmits; a sweep over one model without adapters keeps the ids it always had."""
    return ".".join(p for p in (cell.model, cell.adapter, cell.dataset, cell.ablation, f"{shard:04d}") if p)


@dataclass(frozen=True)
class Plan:
    spec: JobSpec
    run: RunDir
    units: tuple[Unit, ...]
    rows_per_dataset: dict[str, int]
    jobs: int
    jobs_reason: str

    @property
    def total_records(self) -> int:
        return sum(u.rows for u in self.units)

    @property
    def total_samples(self) -> int:
        return self.total_records * self.spec.data.num_samples

    @property
    def gpus(self) -> int:
        return self.jobs * self.spec.slurm.gpus_per_node

    def cells(self) -> dict[Cell, list[Unit]]:
        """Each output group (model or adapter x dataset x ablation) -> its units, in plan order."""
        out: dict[Cell, list[Unit]] = {}
        for u in self.units:
            out.setdefault(u.cell, []).append(u)
        return out

    def to_json(self) -> dict[str, Any]:
        cols = list(Unit.__dataclass_fields__)
        return {
            "run_id": self.run.run_id,
            "columns": cols,
            "units": [list(_unit_row(u)) for u in self.units],
            "rows_per_dataset": self.rows_per_dataset,
            "jobs": self.jobs,
            "jobs_reason": self.jobs_reason,
        }

    @staticmethod
    def units_from_json(obj: dict[str, Any]) -> tuple[Unit, ...]:
        cols = obj["columns"]
        if cols == UNIT_COLUMNS:  # written by this version: by position (3x faster; a plan may hold 100,000)
            return tuple(Unit(*row) for row in obj["units"])
        return tuple(Unit(**dict(zip(cols, row, strict=True))) for row in obj["units"])


def check_inputs(spec: JobSpec) -> dict[str, int]:
    """Everything a job will read must be there before anything is submitted. Returns rows per dataset.

    The model (config, weights, tokenizer; its heads against the TP size and GPUs asked), the data (readable,
    not empty, some usable rows), templates and preamble, the output folder, the container argv: see preflight.py.
    """
    from launcher.plan.preflight import check_all

    return check_all(spec)


def workers_per_job(spec: JobSpec) -> int:
    """An upper bound before the job runs (the GPUs' memory decides TP there): one worker per GPU, or one on CPU."""
    return max(1, spec.slurm.gpus_per_node)


def auto_unit_records(spec: JobSpec, rows: dict[str, int], workers: int) -> int:
    cells = len(spec.data.ablation_configs) * len(spec.model_names()) * len(spec.adapter_names())
    total = sum(rows.values()) * cells
    per = math.ceil(total / (workers * UNITS_PER_WORKER))
    return max(MIN_AUTO_UNIT_RECORDS, min(MAX_AUTO_UNIT_RECORDS, per))


def expected_workers(spec: JobSpec) -> int:
    """Workers the run will likely have, before its units are cut: the job count asked for, else one local job
    (it holds every GPU of this machine), else the most auto would give."""
    s = spec.slurm
    if s.jobs is not None:
        jobs = s.jobs
    elif s.max_gpus is not None:
        jobs = max(1, s.max_gpus // max(1, s.gpus_per_node))
    elif spec.executor == "local":
        return max(1, local_gpu_count())  # one local job, one worker per GPU of this machine (upper bound)
    else:
        jobs = MAX_AUTO_JOBS
    return jobs * workers_per_job(spec)


def local_gpu_count() -> int:
    from launcher.plan.layout import allocated_gpus

    return allocated_gpus().count


def count_jobs(spec: JobSpec, units: int) -> tuple[int, str]:
    """Worker jobs (array elements) for `units` units of work, and why."""
    s = spec.slurm
    per_job = workers_per_job(spec)
    if s.jobs is not None:
        jobs, why = s.jobs, f"slurm.jobs: {s.jobs}"
    elif s.max_gpus is not None:
        jobs = max(1, s.max_gpus // max(1, s.gpus_per_node))
        why = f"slurm.max_gpus {s.max_gpus} / gpus_per_node {s.gpus_per_node}"
    elif spec.executor == "local":
        jobs, why = 1, "local: one job holds this machine's GPUs (set slurm.jobs for more processes)"
    else:
        jobs = min(MAX_AUTO_JOBS, max(1, math.ceil(units / (per_job * UNITS_PER_WORKER))))
        why = (
            f"auto: {units} unit(s) at {UNITS_PER_WORKER} per worker, {per_job} worker(s) per job, at most "
            f"{MAX_AUTO_JOBS} jobs (set slurm.max_gpus or slurm.jobs to choose)"
        )
    if jobs > units:
        jobs, why = units, f"{why}; capped at the {units} unit(s) there are"
    if s.array_parallelism and jobs > s.array_parallelism:
        jobs, why = s.array_parallelism, f"{why}; capped at array_parallelism {s.array_parallelism}"
    return max(1, jobs), why


def expand(spec: JobSpec, rows_per_dataset: dict[str, int] | None = None, run: RunDir | None = None) -> Plan:
    """The plan of a spec, in `run` (default: the spec's base run id; a submit resolves it first, run_state.py).
    When that run directory already holds a plan (a resubmit), its units are kept: a unit's rows never change
    within a run, whatever the new job count."""
    rows = rows_per_dataset if rows_per_dataset is not None else check_inputs(spec)
    run = run or RunDir.of(spec.output.dir, spec.run_id)
    existing = _existing_units(run)
    units = existing if existing is not None else cut_units(spec, rows)
    jobs, why = count_jobs(spec, len(units))
    return Plan(spec, run, units, rows, jobs, why)


def cut_units(spec: JobSpec, rows: dict[str, int]) -> tuple[Unit, ...]:
    per_fixed = spec.data.records_per_shard
    cut: list[tuple[Any, ...]] = []  # a Unit's fields but its index (made once, after sorting: a plan may hold 100,000)
    per_auto = auto_unit_records(spec, rows, expected_workers(spec))
    models = spec.model_names()
    for model, adapter in itertools.product(models, spec.adapter_names()):
        for ds in spec.data.datasets:
            n = rows[ds.name]
            path = str(ds.file)
            bounds = _shard_bounds(n, per_fixed or per_auto, split_last=per_fixed is None)
            for ablation in spec.data.ablation_configs:
                cell = Cell(ds.name, ablation, model, adapter)
                prefix = unit_id_of(cell, 0)[:-4]  # the id without its shard number
                for shard, (start, stop) in enumerate(bounds):
                    cut.append((f"{prefix}{shard:04d}", ds.name, ablation, path, shard, start, stop, model, adapter))
    # Model after model (a job starts one engine per model and runs its units before the next), and within a
    # model largest first (stable): workers take the big units early and the small remainders last, so they finish
    # close together instead of one worker running a big unit alone at the end. The adapters of a model mix: one
    # engine serves them all.
    rank = {m: i for i, m in enumerate(models)}
    cut.sort(key=lambda u: (rank[u[7]], u[5] - u[6]))
    return tuple(Unit(i, *u) for i, u in enumerate(cut))


TAIL_PIECES = 4  # the last auto shard of a cell is cut in this many pieces
MIN_TAIL_RECORDS = 8


def _shard_bounds(n: int, per: int, split_last: bool) -> list[tuple[int, int]]:
    """[start, stop) of each shard. With auto sizing the last shard is cut in up to TAIL_PIECES pieces: sorted largest
    first, these small units are what workers take last, so they finish together (on 2 H200s a run's two workers
    ended 9 s apart when its last units were half-size: benchmarks/results/2026-11-27-h200-x2-issue16)."""
    bounds = [(i, min(n, i + per)) for i in range(0, max(n, 1), per)] or [(0, 0)]
    start, stop = bounds[-1]
    pieces = min(TAIL_PIECES, (stop - start) // MIN_TAIL_RECORDS) if split_last else 1
    if pieces > 1:
        edges = [start + (stop - start) * k // pieces for k in range(pieces + 1)]
        bounds[-1:] = list(itertools.pairwise(edges))
    return bounds


def _existing_units(run: RunDir) -> tuple[Unit, ...] | None:
    try:  # a plan another user planted refuses here (UntrustedFile): its units would decide what runs
        return Plan.units_from_json(run.read_trusted(run.plan_json))
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["Cell", "Plan", "Unit", "check_inputs", "count_jobs", "cut_units", "expand", "unit_id_of"]
