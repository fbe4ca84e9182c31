"""bench/scale_cli.py: `launcher bench --systems scale` -> its flags, its step, and (alone) its own results folder,
benchmarks/results/<date>-cpu-scale/ (no model to write, no GPU)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.bench.scale import run_scale
from launcher.bench.scale_shape import ScaleShape


def shape_of(args: Any) -> ScaleShape:
    return ScaleShape(
        args.scale_workers,
        args.scale_units,
        args.scale_records_per_unit,
        args.scale_latency_s,
        args.scale_ablations,
    )


def add_arguments(c: Any) -> None:
    c.add_argument("--scale-workers", type=int, default=32, help="scale: worker processes (default 32)")
    c.add_argument("--scale-units", type=int, default=500, help="scale: units of the run (default 500)")
    c.add_argument("--scale-records-per-unit", type=int, default=2, help="scale: records per unit (default 2)")
    c.add_argument(
        "--scale-latency-s", type=float, default=5.0, help="scale: FakeEngine seconds per record (default 5)"
    )
    c.add_argument(
        "--scale-ablations", type=int, default=10, help="scale: ablation configs the units spread over (default 10)"
    )


def scale_step(args: argparse.Namespace, wd: Any) -> tuple[str, Callable[[], list[dict[str, Any]]]]:
    """(the measurement's key in WORKDIR/runs, what measures it)."""
    shape = shape_of(args)
    shape.check()
    return f"{shape.name}-r{shape.records_per_unit}-l{shape.latency_s:g}", lambda: [
        run_scale(wd.root, shape, args.timeout_s)
    ]


def run_scale_only(args: argparse.Namespace, wd: Any) -> int:
    from launcher.bench.report import write_report
    from launcher.bench.runners import Workdir
    from launcher.bench.steps import collect, slug

    key, fn = scale_step(args, wd)
    path = wd.runs / f"{slug(key)}.json"
    if path.exists() and not args.force:
        print(f"[bench] {key}: already measured ({path.name}); --force measures it again", flush=True)
    else:
        print(f"[bench] {key} ...", flush=True)
        rows = fn()
        for r in rows:
            r.setdefault("note", args.note)
        path.write_text(json.dumps(rows, indent=1))
    results = collect(wd, "FakeEngine", 0, 0, [Workdir(Path(d).resolve()) for d in args.collect_from])
    results["measurements"] = [m for m in results["measurements"] if m.get("system") == "scale"]
    default = Path.cwd() / "benchmarks" / "results" / f"{results['date']}-cpu-scale"
    folder = Path(args.results) if args.results else default
    for p in write_report(results, folder, draw=False):
        print(f"[bench] wrote {p}")
    return 1 if any(m.get("errors") for m in results["measurements"]) else 0


__all__ = ["add_arguments", "run_scale_only", "scale_step", "shape_of"]
