"""bench/cli.py: `launcher bench` -> the toolkit, raw vLLM and HF measured on one host -> a results folder.

Systems (each in its own process, on the same prompt token ids and sampling):
  toolkit       `launcher run --spec S`: one job on the visible GPUs, auto engine sizing, cold compile cache
  toolkit-warm  the same again: its start-up with the compile cache the first one published
  raw-defaults  plain LLM.generate with vLLM's defaults (the old inference_vllm.py)
  hf-loop       transformers, one user at a time (the old loop), on a subset
  hf-batched    transformers, batched, on a subset
  sweep:*       plain LLM.generate with hand-picked settings (--sweep): is auto within 5% of the best?
  toolkit-fp8   the toolkit with model.quantization fp8 (--fp8)
  layout:*      the toolkit with a layout forced (--layouts auto,2,gpu1): TP=t runs G/t data-parallel workers on G
                visible GPUs; gpu1 runs on the first visible GPU alone; auto+wait is auto with
                LAUNCHER_COMPILE_MISS=wait. Each starts with an empty compile cache of its own (--warm-layouts: an
                untimed run fills it first). Throughput is the wall clock across all workers at once.
  cells*        a sweep of many cells (--cells 4x3x200x256: datasets x ablation configs x records x max_tokens):
                the toolkit (`launcher submit --wait`), the toolkit with one engine per cell, and the old seed loop
                (one cold raw-vLLM process per cell); see bench/cells.py. cells-warm: the sweep again, with the
                compile cache the cells run filled
  startup, weights, models-swap  issue 28, beside the cells sweep (bench/startup_runs.py): one cell with each start-up
                setting off (--startup-off), weights loaders on a checkpoint with real safetensors (--loaders), a
                models: sweep of two same-shape checkpoints whose weights swap in one engine
  prefix-order  issue 31: a sweep whose ablation configs share a long prefix (--prefix-cells: each user a 2,048-word
                prefix + a 128-word context per config) in prefix-aware order and in plan order -> prefix_order_gain;
                prefix-order-short: the same on --cells (no shared prefix) -> prefix_order_gain_short; see
                bench/prefix_order.py
  scale         claims, status and gather at scale, no GPU (--scale-workers 256 --scale-units 10000): real worker
                processes on one run directory, each with a FakeEngine (a fixed time per record); see bench/scale.py
                and docs/scale.md. Results go to benchmarks/results/<date>-cpu-scale/ unless --results says.
Two GPUs, one command each (see benchmarks/README.md for the lease plan):
  launcher bench --systems layouts --layouts auto,2,gpu1 --shapes 4000x256,4000x512
  launcher bench --systems cells,cells-task-per-cell,cells-seed-loop --cells 4x3x200x256 --cells-measure 3
Measurements land in WORKDIR/runs/*.json as they finish; a rerun skips those already there (--force redoes them),
so a long bench can be split over several calls, and --collect-from merges workdirs of benches run side by side.
The results folder gets results.json, results.md and a plot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

SYSTEMS = (
    "raw",
    "toolkit",
    "toolkit-warm",
    "hf",
    "sweep",
    "fp8",
    "layouts",
    "cells",
    "cells-warm",
    "cells-task-per-cell",
    "cells-seed-loop",
    "startup",
    "weights",
    "models-swap",
    "models-fresh",
    "prefix-order",
    "prefix-order-short",
    "scale",
)
DEFAULT_SYSTEMS = "raw,toolkit,toolkit-warm,hf"
MIN_STEP_S = 90  # --budget-s: the shortest time a measurement is started with
SWEEP: dict[str, dict[str, Any]] = {
    # Hand-picked engine settings of plain vLLM. "graphs<=512" keeps vLLM's own capture limit (min(2 x seqs, 512)).
    "max_num_seqs=256": {"max_num_seqs": 256},
    "max_num_seqs=512": {"max_num_seqs": 512},
    "max_num_seqs=768,graphs<=512": {"max_num_seqs": 768},
    "max_num_seqs=768": {"max_num_seqs": 768, "compilation_config": {"max_cudagraph_capture_size": 768}},
    "max_num_seqs=1024": {"max_num_seqs": 1024, "compilation_config": {"max_cudagraph_capture_size": 1024}},
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `bench` on the CLI's subparsers; the command's function is `run(args)`."""
    c = sub.add_parser(
        "bench",
        help="Benchmark the toolkit against raw vLLM and HF on this GPU; write results.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(c)
    return c


def configure(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--workdir", default="bench-work", help="scratch: model files, data, logs, caches (default ./bench-work)"
    )
    c.add_argument(
        "--results",
        default=None,
        help="results folder (default benchmarks/results/<date>-<gpu>/ under the current folder)",
    )
    c.add_argument("--preset", default="llama3-8b", help="model shape: llama3-8b (default) or tiny (CPU smoke test)")
    c.add_argument("--shapes", default="1000x256,4000x512", help="SAMPLESxMAX_TOKENS, comma-separated")
    c.add_argument("--prompt-tokens", type=int, default=256)
    c.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated, of {', '.join(SYSTEMS)}")
    c.add_argument("--sweep", action="store_true", help="also run the hand-picked settings (adds 'sweep')")
    c.add_argument("--sweep-points", default=",".join(SWEEP), help="which sweep settings")
    c.add_argument("--sweep-shapes", default=None, help="shapes to sweep (default: the first shape)")
    c.add_argument("--fp8", action="store_true", help="also run the toolkit with fp8 online quantization")
    c.add_argument(
        "--layouts",
        default=None,
        help="also run the toolkit once per layout in this list: auto, all, a tensor_parallel_size (the "
        "visible GPUs then run data-parallel workers), gpu1 (the first GPU alone), auto+wait (auto "
        "with LAUNCHER_COMPILE_MISS=wait): e.g. auto,2,gpu1 on 2 GPUs",
    )
    c.add_argument(
        "--warm-layouts",
        action="store_true",
        help="fill each layout's compile cache with an untimed run first (default: every layout cold)",
    )
    c.add_argument(
        "--keep-caches",
        action="store_true",
        help="start each layout from whatever its compile cache folder holds (WORKDIR/compile-cache/"
        "<shape>-<layout>), instead of emptying it",
    )
    c.add_argument(
        "--cells",
        default="4x3x200x256",
        help="the cells sweep: DATASETSxABLATIONSxRECORDSxMAX_TOKENS (default 4x3x200x256)",
    )
    c.add_argument(
        "--prefix-cells",
        default="1x3x216x256",
        help="the prefix-order sweep: DATASETSxABLATIONSxRECORDSxMAX_TOKENS (default 1x3x216x256); every config of a "
        "user starts with the same --prefix-tokens words, then its own --prefix-context-tokens",
    )
    c.add_argument("--prefix-tokens", type=int, default=2048, help="shared prefix per user (default 2048)")
    c.add_argument("--prefix-context-tokens", type=int, default=128, help="each config's own part (default 128)")
    c.add_argument(
        "--cells-measure",
        type=int,
        default=None,
        help="cells the two baselines run (default all); the rest is extrapolated from them",
    )
    c.add_argument(
        "--startup-off",
        default="all-on,overlap,skip_tokenizer,startup_plan,jit_cache",
        help="system startup: one cell per item, with LAUNCHER_STARTUP_OFF=item (all-on: nothing off; also graphs, "
        "swap, fast_loader)",
    )
    c.add_argument(
        "--loaders",
        default="vllm,runai_streamer,fastsafetensors",
        help="system weights: the loaders to time on a checkpoint with real safetensors files",
    )
    c.add_argument(
        "--swap-checkpoint",
        choices=("shared", "full"),
        default="shared",
        help="system models-swap: the second checkpoint shares the first's shards but the last (shared: 1/4 of "
        "the disk, mostly read from the page cache) or has files of its own (full: 2 x 16 GB for the 8B shape)",
    )
    c.add_argument(
        "--collect-from",
        action="append",
        default=[],
        metavar="WORKDIR",
        help="also report the measurements of another workdir (a bench run beside this one)",
    )
    from launcher.bench.scale_cli import add_arguments as add_scale_arguments

    add_scale_arguments(c)
    c.add_argument("--note", default=None, help="a note stored with every measurement of this call")
    c.add_argument("--hf-loop-users", type=int, default=4, help="users in the HF one-at-a-time loop")
    c.add_argument("--hf-batch-users", type=int, default=32, help="users in the one HF batched call")
    c.add_argument(
        "--raw-warmup-tokens",
        type=int,
        default=32,
        help="raw vLLM first runs the shape's requests (other prompt ids) for this many tokens, so Triton's "
        "first-use compiles are not timed; 0: time the first pass (default 32)",
    )
    c.add_argument("--timeout-s", type=float, default=1800, help="per measured process")
    c.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start a measurement only while this call has time left for one as long as the last (at least "
        f"{MIN_STEP_S} s); the rest is skipped and the report still written (a later call goes on). 0: only "
        "write the report from what WORKDIR holds",
    )
    c.add_argument("--force", action="store_true", help="redo measurements already in WORKDIR/runs")
    c.add_argument("--no-plot", action="store_true", help="write JSON + markdown only (draw later with --report)")
    c.add_argument(
        "--report",
        metavar="RESULTS_DIR",
        default=None,
        help="only redraw results.md and the plot from RESULTS_DIR/results.json",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="launcher bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from launcher.bench.report import write_report

    if args.report:
        folder = Path(args.report)
        results = json.loads((folder / "results.json").read_text())
        for path in write_report(results, folder, draw=True):
            print(path)
        return 0
    from launcher.bench.runners import RunFailed, Workdir
    from launcher.bench.workload import PRESETS, Shape, write_dataset, write_model

    if args.preset not in PRESETS:
        print(f"error: unknown preset {args.preset!r}; one of {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    systems |= {"sweep"} if args.sweep else set()
    systems |= {"fp8"} if args.fp8 else set()
    systems |= {"layouts"} if args.layouts else set()
    layouts = _layouts(args.layouts or "auto") if "layouts" in systems else []
    unknown = systems - set(SYSTEMS)
    if unknown:
        print(
            f"error: unknown system(s) {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}", file=sys.stderr
        )
        return 2
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
    began, last_step_s = time.monotonic(), [0.0]

    def step(key: str, fn: Callable[[], list[dict[str, Any]]]) -> None:
        path = wd.runs / f"{slug(key)}.json"
        if path.exists() and not args.force:
            print(f"[bench] {key}: already measured ({path.name})", flush=True)
            return
        if args.budget_s is not None:  # start a step only when one like the last still fits: the report gets written
            left = args.budget_s - (time.monotonic() - began)
            if left < max(MIN_STEP_S, last_step_s[0]):
                print(f"[bench] {key}: skipped, {max(0.0, left):.0f} s of --budget-s left", flush=True)
                return
        print(f"[bench] {key} ...", flush=True)
        t0 = time.monotonic()
        try:
            rows = fn()
        except (RunFailed, OSError, ValueError, KeyError, StopIteration) as exc:
            failures.append(f"{key}: {exc}")
            print(f"[bench] {key} FAILED: {exc}", flush=True)
            return
        last_step_s[0] = time.monotonic() - t0
        for r in rows:
            r.setdefault("note", args.note)
        path.write_text(json.dumps(rows, indent=1))
        for r in rows:
            print(f"[bench] {r['system']}@{r['shape']}: {_headline(r)}", flush=True)

    _run_systems(args, systems, shapes, wd, step)
    for shape in shapes if layouts else []:
        for tp in layouts:
            step(
                f"layout:{_layout_name(tp)}@{shape.name}",
                partial(_layout, wd, shape, tp, args.timeout_s, args.warm_layouts, args.keep_caches),
            )
    _run_cells(args, systems, preset, wd, step)
    if "scale" in systems:
        from launcher.bench.scale_cli import scale_step

        step(*scale_step(args, wd))
    from launcher.bench.prefix_order import run_steps

    run_steps(args, systems, preset, wd, step)
    results = collect(
        wd, preset.name, shapes[0].prompt_tokens, shapes[0].n, [Workdir(Path(d).resolve()) for d in args.collect_from]
    )
    folder = Path(args.results) if args.results else _default_results(results["host"])
    for path in write_report(results, folder, draw=not args.no_plot):
        print(f"[bench] wrote {path}")
    for f in failures:
        print(f"[bench] FAILED {f.splitlines()[0]}", file=sys.stderr)
    return 1 if failures else 0


def _run_systems(
    args: argparse.Namespace,
    systems: set[str],
    shapes: list[Any],
    wd: Any,
    step: Callable[[str, Callable[[], list[dict[str, Any]]]], None],
) -> None:
    """The order matters for start-up numbers: raw and toolkit each begin with empty caches of their own."""
    from launcher.bench.runners import run_hf, run_raw

    timeout = args.timeout_s
    if "raw" in systems:

        def raw() -> list[dict[str, Any]]:
            shutil.rmtree(wd.root / "raw-cache", ignore_errors=True)  # a cold start, like the toolkit's first task
            return run_raw(wd, shapes, "raw-defaults", timeout, warmup_tokens=args.raw_warmup_tokens)

        step("raw-defaults@" + "+".join(s.name for s in shapes), raw)
    for shape in shapes:
        cache = wd.root / "compile-cache" / shape.name
        if "toolkit" in systems:
            step(f"toolkit@{shape.name}", partial(_toolkit_cold, wd, shape, cache, timeout))
        if "toolkit-warm" in systems:
            step(f"toolkit-warm@{shape.name}", partial(_toolkit_warm, wd, shape, cache, timeout))
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
    if "fp8" in systems:
        for shape in shapes[:1]:
            step(
                f"toolkit-fp8@{shape.name}",
                partial(
                    _toolkit, wd, shape, "toolkit-fp8", wd.root / "compile-cache" / f"{shape.name}-fp8", timeout, "fp8"
                ),
            )


def _toolkit(
    wd: Any, shape: Any, system: str, cache: Path, timeout: float, quantization: str | None = None
) -> list[dict[str, Any]]:
    from launcher.bench.runners import run_toolkit

    return [run_toolkit(wd, shape, system, cache, timeout, quantization=quantization)]


LAYOUT_WORDS = ("auto", "all", "gpu1", "auto+wait")


def _layouts(text: str) -> list[int | str]:
    """'auto,2,gpu1' -> ['auto', 2, 'gpu1']; anything else is refused before a GPU is touched."""
    out: list[int | str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item in LAYOUT_WORDS:
            out.append(item)
        elif item.isdigit() and int(item) >= 1:
            out.append(int(item))
        else:
            raise SystemExit(
                f"launcher bench: --layouts item {item!r} is not one of {', '.join(LAYOUT_WORDS)} or a "
                "tensor-parallel size >= 1 (e.g. --layouts auto,2,gpu1)"
            )
    return out


def _layout_name(tp: int | str) -> str:
    return f"tp{tp}" if isinstance(tp, int) else tp


def _layout(wd: Any, shape: Any, tp: int | str, timeout: float, warm: bool, keep: bool = False) -> list[dict[str, Any]]:
    """One layout. Cold by default (its own empty compile cache: every layout pays its own compile, as a first job
    would); with `warm`, an untimed first run fills that cache, so layouts are compared on generation alone."""
    import os

    from launcher.bench.runners import run_toolkit

    name = _layout_name(tp)
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


def _run_cells(
    args: argparse.Namespace,
    systems: set[str],
    preset: Any,
    wd: Any,
    step: Callable[[str, Callable[[], list[dict[str, Any]]]], None],
) -> None:
    from launcher.bench.cells import (
        CellsShape,
        run_cells_seed_loop,
        run_cells_task_per_cell,
        run_cells_toolkit,
        write_cells,
    )
    from launcher.bench.startup_runs import run_models_fresh, run_models_swap, run_startup_variant, run_weights

    order = ("cells", "cells-warm", "startup", "cells-task-per-cell", "cells-seed-loop", "weights", "models-swap")
    wanted = [s for s in (*order, "models-fresh") if s in systems]
    if not wanted:
        return
    shape = CellsShape.parse(args.cells, args.prompt_tokens)
    folder = write_cells(shape, preset, wd.assets)
    measure = min(shape.cells, args.cells_measure or shape.cells)
    t = args.timeout_s
    if "cells" in wanted:
        step(f"cells@{shape.name}", lambda: [run_cells_toolkit(wd, shape, folder, t)])
    if "cells-warm" in wanted:
        step(f"cells-warm@{shape.name}", lambda: [run_cells_toolkit(wd, shape, folder, t, warm=True)])
    for off in _items(args.startup_off) if "startup" in wanted else []:
        step(f"startup:{off}@{shape.name}", partial(lambda o: [run_startup_variant(wd, shape, preset, o, t)], off))
    if "cells-task-per-cell" in wanted:
        step(f"cells-task-per-cell@{shape.name}", lambda: [run_cells_task_per_cell(wd, shape, folder, t, measure)])
    if "cells-seed-loop" in wanted:
        step(f"cells-seed-loop@{shape.name}", lambda: [run_cells_seed_loop(wd, shape, folder, t, measure)])
    for loader in _items(args.loaders) if "weights" in wanted else []:
        step(f"weights:{loader}@{shape.name}", partial(lambda x: [run_weights(wd, shape, x, t)], loader))
    if "models-swap" in wanted:
        full = args.swap_checkpoint == "full"
        step(f"models-swap@{shape.name}", lambda: [run_models_swap(wd, shape, preset, t, full)])
    if "models-fresh" in wanted:
        step(f"models-fresh@{shape.name}", lambda: [run_models_fresh(wd, shape, preset, t)])


def _headline(r: dict[str, Any]) -> str:
    """One line per measurement: throughput, start-up, and issue 28's figures where the row has them."""
    parts = []
    if r.get("samples_per_min") is not None:
        parts.append(f"{r['samples_per_min']:,.0f} samples/min, {r['output_tok_per_s'] or 0:,.0f} tok/s")
    if (r.get("startup") or {}).get("total_s") is not None:
        parts.append(f"start-up {r['startup']['total_s']} s")
    for key in ("wall_s", "engine_ready_s", "model_swap_s", "weights_load_s", "gpu_busy_fraction"):
        if r.get(key) is not None:
            parts.append(f"{key} {r[key]}")
    return ", ".join(parts) or "measured"


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _toolkit_cold(wd: Any, shape: Any, cache: Path, timeout: float) -> list[dict[str, Any]]:
    shutil.rmtree(cache, ignore_errors=True)  # the first task of a job: nothing compiled yet, anywhere
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)
    return _toolkit(wd, shape, "toolkit", cache, timeout)


def _toolkit_warm(wd: Any, shape: Any, cache: Path, timeout: float) -> list[dict[str, Any]]:
    shutil.rmtree(wd.root / "scratch", ignore_errors=True)  # a later task on another node: only the shared entry
    return _toolkit(wd, shape, "toolkit-warm", cache, timeout)


def collect(wd: Any, model: str, prompt_tokens: int, n: int, others: list[Any] | None = None) -> dict[str, Any]:
    measurements: list[dict[str, Any]] = []
    for w in [wd, *(others or [])]:
        for path in sorted(w.runs.glob("*.json")):
            if not path.name.startswith("."):
                measurements.extend(json.loads(path.read_text()))
    return {
        "date": dt.date.today().isoformat(),
        "host": host_info(measurements),
        "workload": {"model": model, "prompt_tokens": prompt_tokens, "n": n},
        "measurements": measurements,
    }


def host_info(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    import os
    import subprocess

    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
        name, mem, driver = (x.strip() for x in out.split(","))
        info.update(gpu=name, gpu_memory_gib=round(float(mem) / 1024, 1), driver=driver)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        info["gpu"] = "cpu"
    versions: dict[str, str] = {}
    for m in measurements:
        ver = str(m.get("engine_version") or "")
        if " " in ver:
            name, _, value = ver.partition(" ")
            versions[name] = value
    try:
        import torch

        versions["torch"] = str(torch.__version__)
    except ImportError:
        pass
    info["versions"] = versions
    return info


def _default_results(host: dict[str, Any]) -> Path:
    gpu = str(host.get("gpu", "cpu")).lower().replace("nvidia ", "")
    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return Path.cwd() / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{slug}"


def slug(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "@+-_." else "_" for ch in key)


if __name__ == "__main__":
    raise SystemExit(main())
