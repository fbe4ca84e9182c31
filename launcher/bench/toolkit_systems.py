"""bench/toolkit_systems.py: the toolkit's own systems of `launcher bench` (toolkit, toolkit-warm, toolkit-fp8,
layout:*), as steps, so that the dispatcher (bench/cli.py) only orders the families. Each is one `launcher run --spec
S` process (bench/runners.py: run_toolkit), so it enters through the same front door as a user's run."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

from launcher.bench.steps import Rows, Step
from launcher.errors import SpecError

LAYOUT_WORDS = ("auto", "all", "gpu1", "auto+wait")


def toolkit_steps(systems: set[str], shapes: list[Any], wd: Any, timeout: float, step: Step) -> None:
    """Per shape: the first job of a run (empty compile cache), then a later one (the cache the first published)."""
    for shape in shapes:
        cache = wd.root / "compile-cache" / shape.name
        if "toolkit" in systems:
            step(f"toolkit@{shape.name}", partial(_toolkit_cold, wd, shape, cache, timeout))
        if "toolkit-warm" in systems:
            step(f"toolkit-warm@{shape.name}", partial(_toolkit_warm, wd, shape, cache, timeout))


def fp8_steps(systems: set[str], shapes: list[Any], wd: Any, timeout: float, step: Step) -> None:
    """--fp8: the toolkit with model.quantization fp8, on the first shape, with a compile cache of its own."""
    if "fp8" not in systems:
        return
    for shape in shapes[:1]:
        cache = wd.root / "compile-cache" / f"{shape.name}-fp8"
        step(f"toolkit-fp8@{shape.name}", partial(_toolkit, wd, shape, "toolkit-fp8", cache, timeout, "fp8"))


def layout_steps(layouts: list[int | str], shapes: list[Any], wd: Any, args: Any, step: Step) -> None:
    """--layouts: the toolkit once per layout and shape."""
    for shape in shapes if layouts else []:
        for tp in layouts:
            step(
                f"layout:{layout_name(tp)}@{shape.name}",
                partial(_layout, wd, shape, tp, args.timeout_s, args.warm_layouts, args.keep_caches),
            )


def parse_layouts(text: str) -> list[int | str]:
    """'auto,2,gpu1' -> ['auto', 2, 'gpu1']; anything else is refused (SpecError, exit 2) before a GPU is touched."""
    out: list[int | str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item in LAYOUT_WORDS:
            out.append(item)
        elif item.isdigit() and int(item) >= 1:
            out.append(int(item))
        else:
            raise SpecError.one(
                "--layouts",
                "",
                f"item {item!r} is not a layout",
                allowed=f"{', '.join(LAYOUT_WORDS)} or a tensor-parallel size >= 1",
                fix="e.g. --layouts auto,2,gpu1",
            )
    return out


def layout_name(tp: int | str) -> str:
    return f"tp{tp}" if isinstance(tp, int) else tp


def _toolkit(wd: Any, shape: Any, system: str, cache: Path, timeout: float, quantization: str | None = None) -> Rows:
    from launcher.bench.runners import run_toolkit

    return [run_toolkit(wd, shape, system, cache, timeout, quantization=quantization)]


def _toolkit_cold(wd: Any, shape: Any, cache: Path, timeout: float) -> Rows:
    shutil.rmtree(cache, ignore_errors=True)  # the first task of a job: nothing compiled yet, anywhere
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    return _toolkit(wd, shape, "toolkit", cache, timeout)


def _toolkit_warm(wd: Any, shape: Any, cache: Path, timeout: float) -> Rows:
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)  # a later task on another node: only the shared entry
    return _toolkit(wd, shape, "toolkit-warm", cache, timeout)


def _layout(wd: Any, shape: Any, tp: int | str, timeout: float, warm: bool, keep: bool = False) -> Rows:
    """One layout. Cold by default (its own empty compile cache: every layout pays its own compile, as a first job
    would); with `warm`, an untimed first run fills that cache, so layouts are compared on generation alone."""
    import os

    from launcher.bench.runners import run_toolkit

    name = layout_name(tp)
    cache = wd.root / "compile-cache" / f"{shape.name}-{name}"
    env: dict[str, str] = {}
    request: int | str = tp
    if tp == "gpu1":
        visible = [x for x in os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",") if x.strip()]
        env["CUDA_VISIBLE_DEVICES"], request = visible[0] if visible else "0", "auto"
    elif tp == "auto+wait":
        env["LAUNCHER_COMPILE_MISS"], request = "wait", "auto"
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    if not warm and not keep:
        shutil.rmtree(cache, ignore_errors=True)
    elif not (cache.exists() and any(cache.iterdir())):
        run_toolkit(wd, shape, f"layout:{name}:warm-up", cache, timeout, tensor_parallel_size=request, env=env)
        shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    return [run_toolkit(wd, shape, f"layout:{name}", cache, timeout, tensor_parallel_size=request, env=env)]
