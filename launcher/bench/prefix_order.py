"""bench/prefix_order.py: issue 31: one sweep run in prefix-aware order and in plan order -> prefix_order_gain.

  cells-prefix-order   `launcher submit --wait` with scheduling.prefix_order: auto (what users get; the measurement
                       keeps the worker's decision and why)
  cells-plan-order     the same with prefix_order: off

Each starts from an empty compile cache of its own, as a first job would: the two pay the same start-up and the same
first-use Triton compiles inside generation (~10 s on an H100), so both the generation windows (by the wall clock)
and the end-to-end walls compare like with like. The gain is plan order's over prefix order's.

Shapes: `--prefix-cells` (default 1x3x216x256, each user a 2,048-word prefix + a 128-word context per config: the
issue's long shared prefix) -> `prefix_order_gain`; `--cells` (no shared prefix) -> `prefix_order_gain_short`.
Plan order must not find a user's prefix still cached by chance: its configs run one after another (one unit per
config), and vLLM keeps only about the last wave of finished requests cached (requests of equal length run in
waves: on an H100 ~108 of this shape's requests at once), so a config needs at least twice that many users.
vLLM's prefix-cache hit rate (its own counters) is kept with every measurement.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.bench.cells import CellsShape, _fresh_spec, _toolkit_env
from launcher.bench.runners import Workdir, _run, toolkit_measurement

TARGET_GAIN, TARGET_GAIN_SHORT = 1.25, 0.98  # issue 31, one GPU
STEPS = (("cells-prefix-order", "auto"), ("cells-plan-order", "off"))
SYSTEMS = tuple(s for s, _ in STEPS)


def run_order(
    wd: Workdir, shape: CellsShape, folder: Path, timeout_s: float, system: str, prefix_order: str
) -> dict[str, Any]:
    """One `launcher submit --wait` of the sweep in the order asked, from an empty compile cache of its own."""
    spec_path, out_dir = _fresh_spec(wd, shape, folder, system, prefix_order)
    cache = wd.root / "compile-cache" / f"{shape.name}-{system}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    wall, log = _run(
        [sys.executable, "-m", "launcher", "submit", str(spec_path), "--wait"],
        wd.logs / f"{system}@{shape.name}.log",
        _toolkit_env(wd, cache),
        timeout_s,
    )
    m = toolkit_measurement(system, shape.as_shape(), out_dir, wall, log)
    m.update(shape=shape.name, cells=shape.cells, prefix_tokens=shape.prefix_tokens, prefix_order_asked=prefix_order)
    return m


def add_steps(
    wd: Workdir,
    shape: CellsShape,
    folder: Path,
    timeout_s: float,
    step: Callable[[str, Callable[[], list[dict[str, Any]]]], None],
) -> None:
    for system, order in STEPS:

        def one(system: str = system, order: str = order) -> list[dict[str, Any]]:
            return [run_order(wd, shape, folder, timeout_s, system, order)]

        step(f"{system}@{shape.name}", one)


def run_steps(
    args: Any, systems: set[str], preset: Any, wd: Workdir, step: Callable[[str, Callable[[], list[Any]]], None]
) -> None:
    """`launcher bench --systems prefix-order,prefix-order-short`: each asked shape's three runs."""
    from launcher.bench.cells import write_cells

    shapes = []
    if "prefix-order" in systems:
        shapes.append(CellsShape.parse(args.prefix_cells, args.prefix_context_tokens, args.prefix_tokens))
    if "prefix-order-short" in systems:
        shapes.append(CellsShape.parse(args.cells, args.prompt_tokens))
    for shape in shapes:
        add_steps(wd, shape, write_cells(shape, preset, wd.assets), args.timeout_s, step)


def order_ratios(shape: str, by: dict[str, dict[str, Any]], r: dict[str, Any], targets: dict[str, Any]) -> None:
    """prefix_order_gain (a shape with a shared prefix) or prefix_order_gain_short: plan order's generation window
    over prefix order's, by the wall clock; the end-to-end ratio and the hit rates beside it."""
    plan, prefix = by.get("cells-plan-order"), by.get("cells-prefix-order")
    if not plan or not prefix or not prefix.get("generation_s"):
        return
    long = bool(prefix.get("prefix_tokens"))
    key, target = ("prefix_order_gain", TARGET_GAIN) if long else ("prefix_order_gain_short", TARGET_GAIN_SHORT)
    gain = round(plan["generation_s"] / prefix["generation_s"], 3)
    caches = f"compile cache {_cache(prefix)} vs {_cache(plan)}"
    basis = f"{prefix['system']} vs {plan['system']}, {caches}" + (
        "" if _cache(prefix) == _cache(plan) else ": not started alike, compare with care"
    )
    r[key] = gain
    r[f"{key}_e2e"] = round(plan["wall_s"] / prefix["wall_s"], 3) if prefix.get("wall_s") else None
    r[f"{key}_basis"] = basis
    r["prefix_cache_hit_rate_prefix_order"] = prefix.get("prefix_cache_hit_rate")
    r["prefix_cache_hit_rate_plan_order"] = plan.get("prefix_cache_hit_rate")
    r["prefix_order_active"] = (prefix.get("prefix_order") or {}).get("active")
    targets[f"{key} >= {target} (wall clock) at {shape}"] = {"measured": gain, "met": gain >= target, "basis": basis}


def _cache(m: dict[str, Any]) -> str:
    states = m.get("compile_cache") or ["?"]
    return "/".join(s.split(" ")[0] for s in states)


__all__ = ["SYSTEMS", "TARGET_GAIN", "TARGET_GAIN_SHORT", "add_steps", "order_ratios", "run_order", "run_steps"]
