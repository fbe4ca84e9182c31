"""bench/report_plots.py: results.json -> throughput.png, apart from the tables so that report.py stays readable and
matplotlib (an optional extra) is imported only when a plot is drawn.

plot: samples/min of each system per shape (issue 9's runs); plot_workers: issue 16's layouts, the many-cell sweep and
each worker's timeline (process start -> engine start -> engine ready -> last write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.bench.measurements import measurement_of, shape_order


def plot(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = results["measurements"]
    shapes = sorted({m["shape"] for m in ms}, key=shape_order)
    systems = [
        s
        for s in (
            "toolkit",
            "toolkit-warm",
            "toolkit-fp8",
            "raw-defaults",
            "hf-batched",
            "hf-loop",
            "layout:auto",
            "layout:tp2",
            "layout:gpu1",
            "layout:auto+wait",
            "cells",
            "cells-task-per-cell",
            "cells-seed-loop",
        )
        if any(m["system"] == s for m in ms)
    ]
    sweeps = sorted({m["system"] for m in ms if m["system"].startswith("sweep:")})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    names = systems + sweeps
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ys = [(measurement_of(ms, name, s) or {}).get("samples_per_min") or 0 for s in shapes]
        bars = ax.bar(
            [x + i * width for x in range(len(shapes))],
            ys,
            width,
            label=name,
            hatch="//" if name.startswith("sweep:") else None,
        )
        for b, y in zip(bars, ys, strict=True):
            if y:
                ax.annotate(
                    f"{y:,.0f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=6, rotation=90
                )
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(shapes))], shapes)
    ax.set_yscale("log")
    ax.set_ylabel("samples / min (generation phase, log scale)")
    ax.set_title(f"Throughput, {results['host'].get('gpu', '')}")
    ax.legend(fontsize=7, ncol=2)
    starters = [m for m in ms if m.get("startup") and m["system"] in ("toolkit", "toolkit-warm", "raw-defaults")]
    parts = [("load_s", "load"), ("compile_s", "compile"), ("graph_capture_s", "CUDA graphs"), ("other_s", "other")]
    labels = [f"{m['system']}\n{m['shape']}" for m in starters]
    bottom = [0.0] * len(starters)
    for key, label in parts:
        vals = [float(m["startup"].get(key) or 0) for m in starters]
        ax2.bar(range(len(starters)), vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_xticks(range(len(starters)), labels, fontsize=7, rotation=30, ha="right")
    ax2.set_ylabel("start-up seconds")
    ax2.set_title("Start-up split (cold first task vs warm compile cache)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_workers(results: dict[str, Any], path: Path) -> Path:
    """Issue 16's rows: layouts by the wall clock, the sweep end to end, and each worker's timeline (process start ->
    engine start -> engine ready -> last write), which shows start skew and tails."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = results["measurements"]
    lay = [m for m in ms if m["system"].startswith("layout:")]
    cells = [m for m in ms if m["system"].startswith("cells")]
    timed = [m for m in lay + cells if m.get("workers")]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [2, 1.3, 3]})
    ax, ax2, ax3 = axes
    shapes = sorted({m["shape"] for m in lay}, key=shape_order)
    names = sorted({m["system"] for m in lay})
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        ys = [(measurement_of(ms, name, sh) or {}).get("samples_per_min") or 0 for sh in shapes]
        bars = ax.bar([x + i * width for x in range(len(shapes))], ys, width, label=name)
        for b, y in zip(bars, ys, strict=True):
            if y:
                ax.annotate(f"{y:,.0f}", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(shapes))], shapes)
    ax.set_ylabel("samples / min over the generation window, all workers")
    ax.set_title("Layouts on 2 GPUs (wall clock)")
    ax.legend(fontsize=7)
    labels = [m["system"] + (" *" if m.get("extrapolated") else "") for m in cells]
    ax2.bar(range(len(cells)), [m.get("wall_s") or 0 for m in cells], color=["C3", "C4", "C5"][: len(cells)])
    for i, m in enumerate(cells):
        ax2.annotate(f"{m.get('wall_s') or 0:.0f} s", (i, m.get("wall_s") or 0), ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(cells)), labels, rotation=20, ha="right", fontsize=8)
    ax2.set_ylabel("seconds, end to end")
    ax2.set_title("Sweep of 12 cells, one GPU\n(* extrapolated from measured cells)", fontsize=10)
    row = 0.0
    yt: list[float] = []
    yl: list[str] = []
    for m in timed:
        for w in m["workers"]:
            t0 = w.get("started")
            if not t0:
                continue
            parts = [
                (t0, w.get("engine_start_at"), "0.8"),
                (w.get("engine_start_at"), w.get("engine_ready_at"), "C1"),
                (w.get("engine_ready_at"), w.get("ended"), "C0"),
            ]
            base = min(x.get("started") or t0 for x in m["workers"])
            for a, b, color in parts:
                if a and b:
                    ax3.barh(row, b - a, left=a - base, color=color, height=0.7)
            yt.append(row)
            yl.append(f"{m['system']} {m['shape']} w{w['worker']}")
            row += 1
        row += 0.5
    ax3.set_yticks(yt, yl, fontsize=7)
    ax3.invert_yaxis()
    ax3.set_xlabel("seconds from the job's first worker start")
    ax3.set_title(
        "Each worker: imports+prepare (grey), engine start (orange), generating until exit (blue)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
