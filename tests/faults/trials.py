"""trials.py: the campaign's workload (what every trial runs) and its seeded trials (a fault kind, and where it lands).

The workload is two small datasets cut into units of `per_shard` records, run by `jobs` worker jobs (array
elements) of one worker each, so a fault hits one worker job while the other keeps claiming units. Only slurm
settings differ between trials: they never change the samples (they are not in the run's fingerprint), so every
trial must reproduce the reference run byte for byte.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "configs" / "slurm-local.yaml"

# name -> what it does (the report's and docs/reliability.md's words)
KIND_LABELS = {
    "sigkill": "SIGKILL of the worker job's process",
    "preempt": "preemption (the `high` partition)",
    "resubmit": "scancel + resubmit",
    "node": "node failure (slurmd killed, restarted)",
    "timeout": "time limit",
    "readonly": "storage read-only",
    "diskfull": "disk full",
    "workerkill": "kill -9 of one worker (DP=2) mid-unit",
    "touch": "input touched mid-run (then submitted again)",
    "corrupt": "chunk corrupted after the run",
    "changed": "input rewritten mid-run (same size and mtime), then put back",
    "clock": "a claim stamped a year ahead by a node that died",
    "hostile": "hostile text in the data (tests/faults/hostile.py)",
}
KINDS = tuple(KIND_LABELS)


@dataclass(frozen=True)
class Workload:
    """What every trial runs: the same datasets, model and sampling, so all outputs must equal the reference's."""

    root: Path
    model: Path
    datasets: tuple[tuple[str, Path, int], ...]  # name, path, records
    per_shard: int
    jobs: int = 2  # worker jobs (array elements) per trial

    @property
    def units(self) -> list[tuple[str, int]]:
        """(unit id, records) of every unit: dataset x ablation (`full`) x shard."""
        out = []
        for name, _, n in self.datasets:
            for shard in range(-(-n // self.per_shard)):
                out.append((f"{name}.full.{shard:04d}", min(self.per_shard, n - shard * self.per_shard)))
        return out

    @property
    def records(self) -> int:
        return sum(n for _, _, n in self.datasets)

    def dataset_of(self, unit_id: str) -> Path:
        name = unit_id.split(".")[0]
        return next(p for n, p, _ in self.datasets if n == name)

    def with_data_copy(self, folder: Path) -> Workload:
        """The same workload reading its own copy of the data (same bytes, same dataset names): for a trial that
        touches its input, which would change every other trial's run id."""
        folder.mkdir(parents=True, exist_ok=True)
        copies = []
        for name, path, n in self.datasets:
            copy = folder / path.name
            shutil.copyfile(path, copy)
            copies.append((name, copy, n))
        return replace(self, datasets=tuple(copies))


def make_workload(
    root: Path,
    model: Path | None = None,
    shape: Sequence[tuple[str, int]] = (("ds_a", 4), ("ds_b", 4)),
    per_shard: int = 4,
    jobs: int = 2,
) -> Workload:
    root.mkdir(parents=True, exist_ok=True)
    if model is None:
        from launcher.demo_model import make_demo_model

        model = root / "model"
        if not (model / "config.json").exists():
            make_demo_model(model)
    datasets = []
    for name, n in shape:
        path = root / "data" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [
            {
                "user_id": f"{name}-u{i:02d}",
                "profile": {"age": 20 + i, "likes": ["films", "music"][i % 2]},
                "history": [f"review {i}.{j}: fine" for j in range(1 + i % 3)],
                "context": f"Write about item {i}.",
            }
            for i in range(n)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        datasets.append((name, path, n))
    return Workload(root, model, tuple(datasets), per_shard, jobs)


def write_spec(
    wl: Workload, name: str, out_dir: Path, slurm: dict[str, Any] | None = None, model: dict[str, Any] | None = None
) -> Path:
    """A job spec on the local cluster's profile: `wl.jobs` worker jobs of one worker each (no GPU: DP=1) unless
    `slurm` says otherwise; one chunk per record, so a resume loses nothing that was written. `model` may set what
    does not change the samples (hf_batch_size)."""
    spec = {
        "extends": str(PROFILE),
        "name": name,
        "model": {"path": str(wl.model), **(model or {})},
        "data": {
            "datasets": [{"name": n, "path": str(p)} for n, p, _ in wl.datasets],
            "ablation_configs": ["full"],
            "num_samples": 2,
            "records_per_shard": wl.per_shard,
        },
        "sampling": {"max_tokens": 8, "seed": 7},
        "slurm": {"gpus_per_node": 0, "mem": "512M", "time": 5, "jobs": wl.jobs, **(slurm or {})},
        "output": {"dir": str(out_dir), "chunk_records": 1},
    }
    path = wl.root / "specs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass(frozen=True)
class Trial:
    index: int
    kind: str
    seed: int  # this trial's own seed, drawn from the campaign's: Random(seed) chose `point`
    point: dict[str, Any]  # where and how the fault lands: target unit, after how many records, for how long...

    @property
    def name(self) -> str:
        return f"f{self.index:03d}-{self.kind}"


def plan_trials(n: int, seed: int, wl: Workload, kinds: Sequence[str] = KINDS) -> list[Trial]:
    """Kinds cycle (each block of len(kinds) trials is a shuffled permutation, so any n >= len(kinds) has them all);
    each trial's injection point comes from its own seed."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < n:
        block = list(kinds)
        rng.shuffle(block)
        order += block
    trials = []
    for i, kind in enumerate(order[:n]):
        trial_seed = rng.getrandbits(32)
        trials.append(Trial(i, kind, trial_seed, draw_point(kind, random.Random(trial_seed), wl)))
    return trials


def draw_point(kind: str, rng: random.Random, wl: Workload) -> dict[str, Any]:
    unit_id, rows = rng.choice(wl.units)
    if kind == "changed":  # one worker job runs the units in plan order: the change lands in the first one, and the
        unit_id, rows = wl.units[0]  # second dataset, read after it, is what the workers must refuse
    if kind == "clock":
        # a node whose clock runs a year ahead takes the unit over after 1..rows-1 records and dies; the lease the
        # workers judge it by is short here (lease_s), so the resubmit after it can take the unit back
        after, slow = rng.randint(1, max(1, rows - 1)), round(rng.uniform(1.5, 2.5), 2)
        return {"unit": unit_id, "after_records": after, "slow_s": slow, "ahead_s": 365 * 86400, "lease_s": 8}
    if kind == "hostile":  # the unit's dataset gets the hostile rows, in an order of this seed
        return {"unit": unit_id, "order_seed": rng.getrandbits(32)}
    if kind == "corrupt":
        # after a clean run: one byte of one of the unit's chunks (one record each), one bit of it flipped
        return {"unit": unit_id, "chunk": rng.randrange(rows), "byte": round(rng.random(), 4), "bit": rng.randrange(8)}
    if kind == "timeout":
        # A 2-minute limit, enforced on a ~30 s cycle: USR2 85-145 s into the attempt (with 1 minute it came 25 s in,
        # before a worker that starts in 30-60 s on the loaded 2 cores had claimed a unit: the fault missed). The
        # first attempt is slowed so that it cannot finish in time (every record sleeps slow_s: 4 records take
        # longer than 145 s); later ones run at full speed.
        slow_s = round(rng.uniform(36, 44), 1)
        return {
            "unit": unit_id,
            "time_min": 2,
            "slow_s": slow_s,
            "records_by_limit": f"{int(85 // slow_s)}..{int(145 // slow_s)}",
        }
    # After 1..rows-1 records: the unit has started writing and has more to do. 1.5-2.5 s per record (slowed) gives
    # the injector time to act before the unit could finish. scancel and preemption need longer: submitit ignores
    # scancel's SIGTERM (a job was seen finishing its work 4.5 s after it), and Slurm holds back scheduling, the
    # preemptor's included, while any job on the node is completing (7 s seen). So 2 records or more are left then,
    # 3-4 s each.
    last, slow = (rows - 2, (3.0, 4.0)) if kind in ("resubmit", "preempt") else (rows - 1, (1.5, 2.5))
    point: dict[str, Any] = {
        "unit": unit_id,
        "after_records": rng.randint(1, max(1, last)),
        "slow_s": round(rng.uniform(*slow), 2),
    }
    if kind == "node":
        # at_submit: slurmd is down when the array is launched; the launch fails after MessageTimeout (10 s), so
        # Slurm marks the job NODE_FAIL and requeues it. mid_run: it dies while the workers run.
        point["when"] = rng.choice(["at_submit", "mid_run"])
        point["down_s"] = round(rng.uniform(11, 15) if point["when"] == "at_submit" else rng.uniform(3, 10), 1)
    elif kind in ("readonly", "diskfull"):
        point["hold_s"] = round(rng.uniform(2, 20), 1)
        if kind == "diskfull":
            point["slack_pages"] = rng.randint(0, 2)
    return point


__all__ = [
    "KINDS",
    "KIND_LABELS",
    "PROFILE",
    "ROOT",
    "Trial",
    "Workload",
    "draw_point",
    "make_workload",
    "plan_trials",
    "write_spec",
]
