"""bench/startup_runs.py: issue 28's start-up measurements beside the cells sweep (their rows carry the sweep's shape,
so results.json has them under analysis.ratios.<cells shape>).

  startup:<switch>  one cell through `launcher run`, with the sweep's (warm) compile cache and LAUNCHER_STARTUP_OFF=
                    <switch> ("all-on": nothing off): worker start -> first request with and without each setting.
                    The sizing does not depend on the number of cells (the bound: 1000 sequences bucket like 12000),
                    so one cell finds the sweep's cache; `graphs` changes the CUDA-graph key and starts cold: its
                    row's graph-capture seconds are what to compare.
  weights:<loader>  a Llama-shaped checkpoint with real safetensors files (bench/weights.py), read from disk (page
                    cache dropped) by vLLM's default loader, runai_streamer, fastsafetensors: weights_load_s each
  models-swap       a `models:` sweep of two same-shape checkpoints over one cell: model_swap_s = the GPU's gap
                    between the first model's last write and the second's first request (weights swapped in place)
  models-fresh      the second checkpoint alone in a new engine: are its samples those the swapped engine made?
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from launcher.bench.cells import CellsShape, _toolkit_env, cells_cache, cells_spec, write_cells
from launcher.bench.runners import RunFailed, Workdir, _env, _run, toolkit_measurement
from launcher.bench.startup_log import parse_startup
from launcher.bench.workload import ModelPreset

LOADERS = {"vllm": "auto", "runai_streamer": "runai_streamer", "fastsafetensors": "fastsafetensors"}
LOADER_MODULES = {"runai_streamer": "runai_model_streamer", "fastsafetensors": "fastsafetensors"}


def one_cell(shape: CellsShape) -> CellsShape:
    return CellsShape(1, 1, shape.records, shape.max_tokens, shape.prompt_tokens, shape.n)


def _spec_file(
    wd: Workdir, shape: CellsShape, preset: ModelPreset, system: str, models: dict[str, str] | None = None
) -> tuple[Path, Path]:
    """One cell of the sweep; with `models`, a sweep of those checkpoints (real weights) instead of the bench model."""
    import yaml

    cell = one_cell(shape)
    folder = write_cells(cell, preset, wd.assets)
    out_dir = wd.root / "toolkit-out" / system.replace(":", "_")
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    spec = cells_spec(cell, wd.model, folder, out_dir)
    if models:
        spec["models"] = models
        del spec["model"]["path"]
        spec["model"]["load_format"] = "auto"
    path = out_dir / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, out_dir


def run_startup_variant(
    wd: Workdir, shape: CellsShape, preset: ModelPreset, off: str, timeout_s: float
) -> dict[str, Any]:
    """One cell with LAUNCHER_STARTUP_OFF=`off` ("all-on": nothing), the sweep's compile cache, no node copy."""
    system = f"startup:{off}"
    spec_path, out_dir = _spec_file(wd, shape, preset, system)
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    env = _toolkit_env(wd, cells_cache(wd))
    env["LAUNCHER_STARTUP_OFF"] = "" if off == "all-on" else off
    wall, log = _run(
        [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path)],
        wd.logs / f"{system.replace(':', '_')}.log",
        env,
        timeout_s,
    )
    m = toolkit_measurement(system, one_cell(shape).as_shape(), out_dir, wall, log)
    m.update(shape=shape.name, switched_off=None if off == "all-on" else off)
    return m


def write_checkpoints(
    wd: Workdir, timeout_s: float, full_copy: bool = False, with_b: bool = True
) -> tuple[Path, Path, dict[str, Any]]:
    """Checkpoint A (real weights, seed 1) and B (seed 2): its own files with `full_copy`, else A's shards hard-linked
    but the last (a quarter of the disk; B's shared shards are then in the page cache once A is loaded)."""
    a, b = wd.assets / "ckpt-a", wd.assets / ("ckpt-b-full" if full_copy else "ckpt-b")
    info = {}
    share = [] if full_copy else ["--share-from", str(a)]
    for folder, extra in ((a, ["--seed", "1"]), (b, ["--seed", "2", *share]))[: 2 if with_b else 1]:
        _run(
            [
                sys.executable,
                "-m",
                "launcher.bench.weights",
                "write",
                "--model-dir",
                str(folder),
                "--config-from",
                str(wd.model),
                *extra,
            ],
            wd.logs / f"write-{folder.name}.log",
            _env({}),
            timeout_s,
        )
        info[folder.name[:6]] = json.loads((folder / "WRITTEN.json").read_text())
    return a, b, info


def run_weights(wd: Workdir, shape: CellsShape, loader: str, timeout_s: float) -> dict[str, Any]:
    """One vLLM start reading checkpoint A with `loader`, page cache dropped first."""
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; one of {', '.join(LOADERS)}")
    module = LOADER_MODULES.get(loader)
    if module and importlib.util.find_spec(module) is None:
        raise RunFailed(f"{module} is not installed here (carry its wheel: benchmarks/gpu_issue28.sh)")
    a, _, written = write_checkpoints(wd, timeout_s, with_b=False)
    out = wd.runs / f".weights-{loader}.raw.json"
    wall, log = _run(
        [
            sys.executable,
            "-m",
            "launcher.bench.weights",
            "load",
            "--model-dir",
            str(a),
            "--load-format",
            LOADERS[loader],
            "--out",
            str(out),
        ],
        wd.logs / f"weights-{loader}.log",
        _env({}),
        timeout_s,
    )
    raw = json.loads(out.read_text())
    parsed = parse_startup(log)
    return {
        "system": f"weights:{loader}",
        "shape": shape.name,
        "samples": 0,
        "output_tokens": 0,
        "generation_s": 0.0,
        "samples_per_min": None,
        "output_tok_per_s": None,
        "wall_s": round(wall, 2),
        "weights_load_s": parsed.get("weights_s") or parsed.get("load_s"),
        "model_load_s": parsed.get("load_s"),
        "engine_init_s": raw["engine_init_s"],
        "checkpoint_bytes": written["ckpt-a"]["bytes"],
        "page_cache_dropped_bytes": raw["page_cache_dropped_bytes"],
        "engine_version": f"vllm {raw['vllm']}",
        "load_format": raw["load_format"],
        "startup_log": parsed,
    }


def run_models_swap(
    wd: Workdir, shape: CellsShape, preset: ModelPreset, timeout_s: float, full_copy: bool = False
) -> dict[str, Any]:
    """A `models:` sweep of A then B over one cell, real weights (page cache dropped, compile cache of its own)."""
    from launcher.bench.weights import drop_page_cache

    a, b, written = write_checkpoints(wd, timeout_s, full_copy)
    system = "models-swap"
    spec_path, out_dir = _spec_file(wd, shape, preset, system, models={"a": str(a), "b": str(b)})
    for folder in (a, b):
        drop_page_cache(folder)
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    env = _toolkit_env(wd, wd.root / "compile-cache" / "models")
    env["LAUNCHER_WEIGHTS_LOADER"] = "vllm"  # the swap alone: vLLM's own loader, the one every vLLM reloads with
    wall, log = _run(
        [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path)], wd.logs / f"{system}.log", env, timeout_s
    )
    m = toolkit_measurement(system, one_cell(shape).as_shape(), out_dir, wall, log)
    run_dir = next((out_dir / "runs").iterdir())
    reports = {r["model"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "workers").glob("*.json"))}
    first, second = reports.get("a") or {}, reports.get("b") or {}
    swap = ((second.get("engine") or {}).get("startup")) or {}
    gap = (
        round(second["first_request_at"] - first["last_write_at"], 2)
        if second.get("first_request_at") and first.get("last_write_at")
        else None
    )
    m.update(
        shape=shape.name,
        swapped=bool(swap.get("swap_method")),
        model_swap_s=gap,
        weights_reload_s=swap.get("weights_reload_s"),
        swap_method=swap.get("swap_method"),
        swap_reason=((second.get("engine") or {}).get("reasons") or {}).get("model_swap"),
        worker_warnings=second.get("warnings"),
        first_model_engine_ready_s=m.get("engine_ready_s"),
        second_checkpoint=(
            "its own files, read from disk"
            if full_copy
            else "A's shards hard-linked but the last: 3/4 of its bytes were in the page cache after A's load"
        ),
        checkpoint_bytes=written["ckpt-b"]["bytes"],
        loader="vllm",
        samples_differ=_samples_differ(out_dir),
    )
    return m


def run_models_fresh(wd: Workdir, shape: CellsShape, preset: ModelPreset, timeout_s: float) -> dict[str, Any]:
    """Checkpoint B alone in a new engine, over the cell models-swap ran (same records, same seeds): the share of
    records whose samples are those the swapped engine generated is the proof that the swap loaded B's weights."""
    swap_out = wd.root / "toolkit-out" / "models-swap" / "b" / "d0" / "a" / "samples.jsonl"
    if not swap_out.exists():
        raise RunFailed("models-fresh compares with models-swap: run that first")
    b = next(p for p in (wd.assets / "ckpt-b-full", wd.assets / "ckpt-b") if p.exists())
    system = "models-fresh"
    spec_path, out_dir = _spec_file(wd, shape, preset, system, models={"b": str(b)})
    env = _toolkit_env(wd, wd.root / "compile-cache" / "models")
    env["LAUNCHER_WEIGHTS_LOADER"] = "vllm"
    wall, log = _run(
        [sys.executable, "-m", "launcher", "run", "--spec", str(spec_path)], wd.logs / f"{system}.log", env, timeout_s
    )
    m = toolkit_measurement(system, one_cell(shape).as_shape(), out_dir, wall, log)

    def by_record(path: Path) -> dict[str, Any]:
        return {r["record_id"]: r["generated_samples"] for r in map(json.loads, path.open())}

    swapped, fresh = by_record(swap_out), by_record(out_dir / "b" / "d0" / "a" / "samples.jsonl")
    same = sum(1 for k, v in fresh.items() if swapped.get(k) == v)
    m.update(shape=shape.name, swap_matches_fresh=round(same / max(1, len(fresh)), 4), records_compared=len(fresh))
    return m


def _samples_differ(out_dir: Path) -> bool | None:
    """Did model B's samples come out different from A's (same records and seeds)? Equal: B never got its weights."""
    try:
        texts = [
            [json.loads(line)["generated_samples"] for line in (out_dir / m / "d0" / "a" / "samples.jsonl").open()]
            for m in ("a", "b")
        ]
    except (OSError, ValueError, KeyError):
        return None
    return texts[0] != texts[1]


__all__ = [
    "LOADERS",
    "one_cell",
    "run_models_fresh",
    "run_models_swap",
    "run_startup_variant",
    "run_weights",
    "write_checkpoints",
]
