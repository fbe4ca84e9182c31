"""bench/cells.py: a sweep of many cells (datasets x ablation configs x records) run three ways, end to end.

  cells                the toolkit: `launcher submit SPEC --wait` (local executor: one job, one worker per GPU group,
                       every cell through one engine start, the batch kept full across cells)
  cells-task-per-cell  the toolkit with one engine per cell: `launcher run --spec RUN --unit ID`, one process per cell,
                       one after another (what the launcher did before workers; the compile cache is shared)
  cells-seed-loop      the old way: one cold process per cell running plain `LLM.generate` with vLLM's defaults and
                       the old script's arguments (bench/raw_vllm.py), one after another

A shape with a shared prefix (`prefix_tokens` > 0, issue 31) gives each user one prefix of that many words (a
profile + history) that every ablation config puts before its own `prompt_tokens`-word context: the workload of
bench/prefix_order.py, which runs it in prefix-aware order and in plan order.

Every cell has the same size (records x n samples x max_tokens, prompts of the same length), so a baseline may run
only its first `measure` cells: its sweep time is then the first cell (the cold one) plus the others' mean for
each remaining cell, and the measurement says so (`extrapolated`, the walls it measured).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.bench.runners import Workdir, _env, _run, measurement, raw_env, toolkit_measurement
from launcher.bench.workload import NUM_SAMPLES, RUN_SEED, ModelPreset, Shape, bench_sampling, word
from launcher.seeds import record_seed
from launcher.store import OutputDir

ABLATIONS = "abcdefgh"


@dataclass(frozen=True)
class CellsShape:
    datasets: int = 4
    ablations: int = 3
    records: int = 200
    max_tokens: int = 256
    prompt_tokens: int = 256  # each config's own words (its context)
    n: int = NUM_SAMPLES
    prefix_tokens: int = 0  # words every config of a user starts with (0: none shared)

    @property
    def name(self) -> str:
        base = f"cells-{self.datasets}x{self.ablations}x{self.records}x{self.max_tokens}"
        return f"{base}-p{self.prefix_tokens}+{self.prompt_tokens}" if self.prefix_tokens else base

    @property
    def cells(self) -> int:
        return self.datasets * self.ablations

    @property
    def samples(self) -> int:
        return self.cells * self.records * self.n

    def as_shape(self) -> Shape:
        """For measurement(): the name and n."""
        return Shape(self.samples, self.max_tokens, self.prefix_tokens + self.prompt_tokens, self.n)

    @classmethod
    def parse(cls, text: str, prompt_tokens: int = 256, prefix_tokens: int = 0) -> CellsShape:
        d, a, r, t = (int(x) for x in text.lower().split("x"))
        if a > len(ABLATIONS):
            raise ValueError(f"at most {len(ABLATIONS)} ablation configs")
        return cls(d, a, r, t, prompt_tokens, NUM_SAMPLES, prefix_tokens)


def cell_names(shape: CellsShape) -> list[tuple[str, str]]:
    return [(f"d{i}", ABLATIONS[j]) for i in range(shape.datasets) for j in range(shape.ablations)]


def write_cells(shape: CellsShape, preset: ModelPreset, out: Path) -> Path:
    """Per dataset a JSONL (one column of `prompt_tokens` words per ablation config), per cell a token-id file for
    the raw baseline (the same prompts and per-record seeds). Idempotent."""
    folder = out / shape.name
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = preset.config()
    specials = {config["bos_token_id"], config["eos_token_id"]}
    rng = random.Random(f"cells-{shape.prompt_tokens}" + (f"-p{shape.prefix_tokens}" if shape.prefix_tokens else ""))

    def words(k: int) -> list[int]:
        ids: list[int] = []
        while len(ids) < k:
            x = rng.randrange(preset.vocab)
            if x not in specials:
                ids.append(x)
        return ids

    for i in range(shape.datasets):
        rows = []
        for r in range(shape.records):
            row: dict[str, Any] = {"user_id": f"d{i}-u{r:05d}"}
            if shape.prefix_tokens:
                row["prefix"] = words(shape.prefix_tokens)
            for a in ABLATIONS[: shape.ablations]:
                row[f"ctx_{a}"] = words(shape.prompt_tokens)
            rows.append(row)
        with (folder / f"d{i}.jsonl").open("w") as f:
            for row in rows:
                text = {k: v if k == "user_id" else " ".join(word(x) for x in v) for k, v in row.items()}
                f.write(json.dumps(text) + "\n")
        for a in ABLATIONS[: shape.ablations]:
            (folder / f"ids-d{i}-{a}.json").write_text(
                json.dumps(
                    {
                        "shape": {"samples": shape.records * shape.n, "max_tokens": shape.max_tokens, "n": shape.n},
                        "run_seed": RUN_SEED,
                        "records": [
                            {
                                "record_id": row["user_id"],
                                "seed": record_seed(RUN_SEED, row["user_id"]),
                                "prompt_token_ids": row.get("prefix", []) + row[f"ctx_{a}"],
                            }
                            for row in rows
                        ],
                    }
                )
            )
    (folder / "done").write_text("")
    return folder


def cells_spec(
    shape: CellsShape, model_dir: Path, folder: Path, out_dir: Path, prefix_order: str | None = None
) -> dict[str, Any]:
    """The researcher's spec: every dataset x every ablation config, one file. With a shared prefix each template is
    the prefix, then its config's context (whitespace-separated words: one token each), and each config of a dataset
    is one unit: plan order runs every user of one config before the next config."""
    prefix = "{{ record['prefix'] }} " if shape.prefix_tokens else ""
    spec: dict[str, Any] = {
        "name": "bench-cells",
        "model": {"path": str(model_dir), "backend": "vllm", "load_format": "dummy"},
        "data": {
            "datasets": [{"name": f"d{i}", "path": str(folder / f"d{i}.jsonl")} for i in range(shape.datasets)],
            "ablation_configs": list(ABLATIONS[: shape.ablations]),
            "templates": {a: {"text": prefix + f"{{{{ record['ctx_{a}'] }}}}"} for a in ABLATIONS[: shape.ablations]},
            "num_samples": shape.n,
            "chat_template": False,
            "fields": {"context": "ctx_a"},
        },
        "sampling": bench_sampling(shape.max_tokens),
        "output": {"dir": str(out_dir), "chunk_records": 64},
        "executor": "local",
    }
    if shape.prefix_tokens:
        spec["data"]["records_per_shard"] = shape.records
    if prefix_order is not None:
        spec["scheduling"] = {"prefix_order": prefix_order}
    return spec


def _fresh_spec(
    wd: Workdir, shape: CellsShape, folder: Path, system: str, prefix_order: str | None = None
) -> tuple[Path, Path]:
    import yaml

    out_dir = wd.root / "toolkit-out" / system
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    spec_path = out_dir / "spec.yaml"
    spec = cells_spec(shape, wd.model, folder, out_dir, prefix_order)
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path, out_dir


def cells_cache(wd: Workdir) -> Path:
    return wd.root / "compile-cache" / "cells"


def _toolkit_env(wd: Workdir, cache: Path) -> dict[str, str]:
    return _env(
        {
            "LAUNCHER_COMPILE_CACHE": str(cache),
            "LAUNCHER_SCRATCH": str(wd.root / "scratch"),
            "LAUNCHER_HISTORY": str(wd.root / "history.json"),
        }
    )


def run_cells_toolkit(
    wd: Workdir, shape: CellsShape, folder: Path, timeout_s: float, warm: bool = False
) -> dict[str, Any]:
    """The whole sweep through `launcher submit --wait`: e2e wall is the sweep's time. Cold: an empty compile cache.
    Warm (`cells-warm`): the shared cache the cold run filled, found from another node (the node copy is gone)."""
    system = "cells-warm" if warm else "cells"
    spec_path, out_dir = _fresh_spec(wd, shape, folder, system)
    cache = cells_cache(wd)
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    wall, log = _run(
        [sys.executable, "-m", "launcher", "submit", str(spec_path), "--wait"],
        wd.logs / f"{system}.log",
        _toolkit_env(wd, cache),
        timeout_s,
    )
    m = toolkit_measurement(system, shape.as_shape(), out_dir, wall, log)
    m.update(shape=shape.name, cells=shape.cells, measured_cells=shape.cells, extrapolated=False)
    return m


def run_cells_task_per_cell(
    wd: Workdir, shape: CellsShape, folder: Path, timeout_s: float, measure: int
) -> dict[str, Any]:
    """One `launcher run --unit` process per cell, in turn, sharing one compile cache (cold at the first)."""
    spec_path, out_dir = _fresh_spec(wd, shape, folder, "cells-task-per-cell")
    cache = wd.root / "compile-cache" / "cells-task-per-cell"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    env = _toolkit_env(wd, cache)
    walls: list[float] = []
    samples = tokens = 0
    for k, (ds, ab) in enumerate(cell_names(shape)[:measure]):
        wall, _ = _run(
            [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path), "--unit", f"{ds}.{ab}.0000"],
            wd.logs / f"cells-task-per-cell-{k}.log",
            env,
            timeout_s,
        )
        walls.append(round(wall, 2))
    for r in (report for run in OutputDir(out_dir).runs() for report in run.worker_reports()):
        samples += int(r.get("samples") or 0)
        tokens += int(r.get("output_tokens") or 0)
    return _extrapolated("cells-task-per-cell", shape, walls, samples, tokens)


def run_cells_seed_loop(wd: Workdir, shape: CellsShape, folder: Path, timeout_s: float, measure: int) -> dict[str, Any]:
    """One cold raw-vLLM process per cell, in turn: the old script run once per (dataset, ablation). vLLM's own
    compile cache is kept between them, as it would be for a user."""
    cache = wd.root / "raw-cache-cells"
    shutil.rmtree(cache, ignore_errors=True)
    env = raw_env(cache)
    walls: list[float] = []
    samples = tokens = 0
    for k, (ds, ab) in enumerate(cell_names(shape)[:measure]):
        out = wd.runs / f".seed-loop-{k}.raw.json"
        t0 = time.perf_counter()
        _run(
            [
                sys.executable,
                "-m",
                "launcher.bench.raw_vllm",
                "--model",
                str(wd.model),
                "--out",
                str(out),
                "--ids",
                str(folder / f"ids-{ds}-{ab}.json"),
            ],
            wd.logs / f"cells-seed-loop-{k}.log",
            env,
            timeout_s,
        )
        walls.append(round(time.perf_counter() - t0, 2))
        raw = json.loads(out.read_text())
        samples += sum(r["samples"] for r in raw["results"])
        tokens += sum(r["output_tokens"] for r in raw["results"])
    return _extrapolated("cells-seed-loop", shape, walls, samples, tokens)


def _extrapolated(system: str, shape: CellsShape, walls: list[float], samples: int, tokens: int) -> dict[str, Any]:
    measured = len(walls)
    rest = walls[1:] or walls
    total = walls[0] + (shape.cells - 1) * (sum(rest) / len(rest))
    per_cell_samples = samples / max(1, measured)
    # samples/min over the whole sweep time (its wall, start-ups included: what the user waits for)
    m = measurement(
        system,
        shape.as_shape(),
        int(per_cell_samples * shape.cells),
        int(tokens / max(1, measured) * shape.cells),
        total,
        wall_s=round(total, 2),
    )
    m.update(
        shape=shape.name,
        cells=shape.cells,
        measured_cells=measured,
        cell_walls=walls,
        extrapolated=measured < shape.cells,
        note=(
            f"measured {measured} of {shape.cells} cells; the sweep's wall is the first (cold) cell + "
            f"{shape.cells - 1} x the mean of the others"
            if measured < shape.cells
            else "every cell measured"
        ),
    )
    return m


__all__ = [
    "CellsShape",
    "cells_cache",
    "cells_spec",
    "run_cells_seed_loop",
    "run_cells_task_per_cell",
    "run_cells_toolkit",
    "write_cells",
]
