"""bench/options.py: the flags of `launcher bench` and the systems it knows, kept apart from the dispatcher
(bench/cli.py) and the systems' runs so that a new system adds its name and flags here and its run in a module of
its family."""

from __future__ import annotations

import argparse
from typing import Any

from launcher.bench.steps import MIN_STEP_S

DESCRIPTION = """`launcher bench` -> the toolkit, raw vLLM and HF measured on one host -> a results folder.

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
SWEEP: dict[str, dict[str, Any]] = {
    # Hand-picked engine settings of plain vLLM. "graphs<=512" keeps vLLM's own capture limit (min(2 x seqs, 512)).
    "max_num_seqs=256": {"max_num_seqs": 256},
    "max_num_seqs=512": {"max_num_seqs": 512},
    "max_num_seqs=768,graphs<=512": {"max_num_seqs": 768},
    "max_num_seqs=768": {"max_num_seqs": 768, "compilation_config": {"max_cudagraph_capture_size": 768}},
    "max_num_seqs=1024": {"max_num_seqs": 1024, "compilation_config": {"max_cudagraph_capture_size": 1024}},
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `bench` on the CLI's subparsers; the command's function is bench/cli.py's `run(args)`."""
    c = sub.add_parser(
        "bench",
        help="Benchmark the toolkit against raw vLLM and HF on this GPU; write results.",
        description=DESCRIPTION,
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
