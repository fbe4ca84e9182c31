"""bench/baseline_systems.py: the systems the toolkit is measured against (raw-defaults, hf-loop/hf-batched, sweep:*),
as steps of `launcher bench`, so that the dispatcher (bench/cli.py) only orders the families. Each runs in its own
process (bench/runners.py, raw_vllm.py, hf_baseline.py) on the same prompt token ids and sampling as the toolkit."""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from typing import Any

from launcher.bench.options import SWEEP
from launcher.bench.steps import Rows, Step


def raw_steps(args: argparse.Namespace, systems: set[str], shapes: list[Any], wd: Any, step: Step) -> None:
    """raw-defaults, first: plain LLM.generate with vLLM's defaults, from an empty cache of its own."""
    from launcher.bench.runners import run_raw

    if "raw" not in systems:
        return

    def raw() -> Rows:
        shutil.rmtree(wd.root / "raw-cache", ignore_errors=True)  # a cold start, like the toolkit's first task
        return run_raw(wd, shapes, "raw-defaults", args.timeout_s, warmup_tokens=args.raw_warmup_tokens)

    step("raw-defaults@" + "+".join(s.name for s in shapes), raw)


def hf_and_sweep_steps(args: argparse.Namespace, systems: set[str], shapes: list[Any], wd: Any, step: Step) -> None:
    """hf (the old one-user loop and one batched call, on a subset), then the hand-picked vLLM settings (--sweep)."""
    from launcher.bench.runners import run_hf, run_raw

    timeout = args.timeout_s
    if "hf" in systems:
        step(
            "hf@" + "+".join(s.name for s in shapes),
            partial(run_hf, wd, shapes, args.hf_loop_users, args.hf_batch_users, timeout),
        )
    if "sweep" in systems:
        sweep_shapes = (
            [s for s in shapes if s.name in args.sweep_shapes.split(",")] if args.sweep_shapes else shapes[:1]
        )
        for point in [p.strip() for p in args.sweep_points.split(",") if p.strip()]:
            step(
                f"sweep:{point}@" + "+".join(s.name for s in sweep_shapes),
                partial(run_raw, wd, sweep_shapes, f"sweep:{point}", timeout, SWEEP[point], args.raw_warmup_tokens),
            )
