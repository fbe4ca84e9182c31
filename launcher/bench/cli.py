"""bench/cli.py: `launcher bench` -> the toolkit, raw vLLM and HF measured on one host -> a results folder. A thin
dispatcher, so that adding a system touches its family's module only: it checks the flags, writes the workload once,
and runs each family's steps in the order start-up numbers need.

Flags and the systems' list: bench/options.py (its DESCRIPTION is `launcher bench --help`). Families: the baselines
(bench/baseline_systems.py), the toolkit's own runs (bench/toolkit_systems.py), the many-cell sweeps
(bench/cells_systems.py), scale (bench/scale_cli.py), prefix order (bench/prefix_order.py). One step, its skip and
budget rules and the results' header: bench/steps.py. The table and plot: bench/report.py, bench/report_plots.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launcher.bench.options import DESCRIPTION, SYSTEMS, add_parser, configure
from launcher.bench.steps import Step, collect, default_results, make_step
from launcher.bench.toolkit_systems import parse_layouts
from launcher.errors import LauncherError, SpecError
from launcher.terminal import report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="launcher bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(p)
    try:
        return run(p.parse_args(argv))
    except LauncherError as exc:  # printed as `launcher bench` prints it
        return report(exc)


def run(args: argparse.Namespace) -> int:
    from launcher.bench.report import write_report

    if args.report:
        folder = Path(args.report)
        results = json.loads((folder / "results.json").read_text())
        for path in write_report(results, folder, draw=True):
            print(path)
        return 0
    from launcher.bench.runners import Workdir
    from launcher.bench.workload import PRESETS, Shape, write_dataset, write_model

    if args.preset not in PRESETS:
        raise SpecError.one("--preset", "", f"unknown preset {args.preset!r}", allowed=", ".join(PRESETS))
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    systems |= {"sweep"} if args.sweep else set()
    systems |= {"fp8"} if args.fp8 else set()
    systems |= {"layouts"} if args.layouts else set()
    layouts = parse_layouts(args.layouts or "auto") if "layouts" in systems else []
    unknown = systems - set(SYSTEMS)
    if unknown:
        raise SpecError.one(
            "--systems", "", f"unknown system(s) {', '.join(sorted(unknown))}", allowed=", ".join(SYSTEMS)
        )
    wd = Workdir(Path(args.workdir).resolve())
    for d in (wd.runs, wd.logs):
        d.mkdir(parents=True, exist_ok=True)
    if systems == {"scale"}:  # no model to write, no GPU: its own results folder
        from launcher.bench.scale_cli import run_scale_only

        return run_scale_only(args, wd)
    preset = PRESETS[args.preset]
    shapes = [Shape.parse(s, args.prompt_tokens) for s in args.shapes.split(",") if s.strip()]
    write_model(preset, wd.model)
    for shape in shapes:
        if not wd.ids(shape).exists():
            write_dataset(shape, preset, wd.assets)
    failures: list[str] = []
    step = make_step(args, wd, failures)
    _run_families(args, systems, shapes, layouts, preset, wd, step)
    results = collect(
        wd, preset.name, shapes[0].prompt_tokens, shapes[0].n, [Workdir(Path(d).resolve()) for d in args.collect_from]
    )
    folder = Path(args.results) if args.results else default_results(results["host"])
    for path in write_report(results, folder, draw=not args.no_plot):
        print(f"[bench] wrote {path}")
    for f in failures:
        print(f"[bench] FAILED {f.splitlines()[0]}", file=sys.stderr)
    return 1 if failures else 0


def _run_families(
    args: argparse.Namespace,
    systems: set[str],
    shapes: list[Any],
    layouts: list[int | str],
    preset: Any,
    wd: Any,
    step: Step,
) -> None:
    """The order matters for start-up numbers: raw and toolkit each begin with empty caches of their own."""
    from launcher.bench.baseline_systems import hf_and_sweep_steps, raw_steps
    from launcher.bench.cells_systems import cells_steps
    from launcher.bench.prefix_order import run_steps as prefix_order_steps
    from launcher.bench.toolkit_systems import fp8_steps, layout_steps, toolkit_steps

    raw_steps(args, systems, shapes, wd, step)
    toolkit_steps(systems, shapes, wd, args.timeout_s, step)
    hf_and_sweep_steps(args, systems, shapes, wd, step)
    fp8_steps(systems, shapes, wd, args.timeout_s, step)
    layout_steps(layouts, shapes, wd, args, step)
    cells_steps(args, systems, preset, wd, step)
    if "scale" in systems:
        from launcher.bench.scale_cli import scale_step

        step(*scale_step(args, wd))
    prefix_order_steps(args, systems, preset, wd, step)


__all__ = ["add_parser", "configure", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
