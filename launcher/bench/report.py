"""report.py: measurements -> ratios, targets, a markdown table and a PNG plot (results.json, results.md, *.png).

The plot is drawn from results.json alone, so it can be redrawn anywhere: `launcher bench --report DIR`.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from launcher.bench.prefix_order import SYSTEMS as ORDER_SYSTEMS
from launcher.bench.prefix_order import order_ratios

TARGETS = {"1000x256": 1.5, "4000x512": 1.25}  # toolkit / raw defaults, issue 9
# issue 16: two GPUs (auto = one worker per GPU) against TP=2 and one GPU, generation window by the wall clock
AUTO_VS_TP2, AUTO_VS_ONE_GPU = 1.25, 1.85
# issue 16: the many-cell sweep against the old seed loop and one engine per cell, end to end; GPU-busy fraction
SWEEP_VS_SEED_LOOP, SWEEP_VS_TASK_PER_CELL, GPU_BUSY = 4.0, 2.0, 0.75
# issue 28: engines ready in seconds (worker process start -> first request), the warm sweep, the weights swap
ENGINE_READY_WARM_S, ENGINE_READY_COLD_S, SWEEP_WARM_VS_SEED_LOOP, GPU_BUSY_WARM, MODEL_SWAP_S = 20, 60, 5.0, 0.85, 15
SWEEP_TOLERANCE = 0.95  # auto must reach 95% of the best hand-picked setting
WARM_STARTUP_MAX = 0.35  # a later task's start-up / a cold first task's


def _by(ms: list[dict[str, Any]], system: str, shape: str) -> dict[str, Any] | None:
    return next((m for m in ms if m["system"] == system and m["shape"] == shape), None)


def shape_order(shape: str) -> list[int]:
    """1000x256 < 4000x512 < cells-4x3x200x256 < cells-1x3x216x256-p2048+128: by the numbers in the name."""
    return [int(x) for x in re.findall(r"\d+", shape)]


def analyse(ms: list[dict[str, Any]]) -> dict[str, Any]:
    from launcher.bench.scale_report import scale_analysis

    ratios, targets = scale_analysis([m for m in ms if m["system"] == "scale"])
    ms = [m for m in ms if m["system"] != "scale"]
    shapes = sorted({m["shape"] for m in ms}, key=shape_order)
    for shape in shapes:
        # Steady state: the toolkit with a warm compile cache (a later array task) when it was measured; raw vLLM
        # runs its warm-up pass first. The cold first task pays Triton's first-use compiles during generation.
        cold, warm, raw = _by(ms, "toolkit", shape), _by(ms, "toolkit-warm", shape), _by(ms, "raw-defaults", shape)
        tk = warm or cold
        r: dict[str, Any] = {}
        if tk and raw:
            r["toolkit_measured"] = tk["system"]
            r["toolkit_vs_raw"] = round(tk["samples_per_min"] / raw["samples_per_min"], 3)
            if cold and warm:
                r["toolkit_cold_vs_raw"] = round(cold["samples_per_min"] / raw["samples_per_min"], 3)
            first = cold or tk  # e2e: both start cold (raw's start-up has no cache either)
            r["toolkit_vs_raw_e2e"] = round(raw["wall_s"] / first["wall_s"], 3)
            if shape in TARGETS:
                met = r["toolkit_vs_raw"] >= TARGETS[shape]
                targets[f"toolkit >= {TARGETS[shape]}x raw at {shape}"] = {
                    "measured": r["toolkit_vs_raw"],
                    "toolkit": tk["system"],
                    "met": met,
                }
        for hf in ("hf-loop", "hf-batched"):
            h = _by(ms, hf, shape)
            if tk and h:
                r[f"toolkit_vs_{hf}"] = round(tk["samples_per_min"] / h["samples_per_min"], 1)
        sweep = [m for m in ms if m["shape"] == shape and m["system"].startswith("sweep:")]
        if tk and sweep:
            best = max(sweep, key=lambda m: m["samples_per_min"])
            r["sweep_best"] = best["system"]
            r["toolkit_vs_sweep_best"] = round(tk["samples_per_min"] / best["samples_per_min"], 3)
            targets[f"toolkit within 5% of the sweep's best at {shape}"] = {
                "measured": r["toolkit_vs_sweep_best"],
                "best": best["system"],
                "toolkit": tk["system"],
                "met": r["toolkit_vs_sweep_best"] >= SWEEP_TOLERANCE,
            }
        if cold and warm:
            r["warm_vs_cold_startup"] = round(warm["startup"]["total_s"] / cold["startup"]["total_s"], 3)
            targets[f"warm start-up <= 35% of cold at {shape}"] = {
                "measured": r["warm_vs_cold_startup"],
                "met": r["warm_vs_cold_startup"] <= WARM_STARTUP_MAX,
            }
        fp8 = _by(ms, "toolkit-fp8", shape)
        # fp8 runs cold (its own compile key); "toolkit-bf16-pair" is a bf16 cold run taken right beside it, when
        # the bench was split, so the ratio compares two runs of the same minutes on the same GPU.
        bf16 = _by(ms, "toolkit-bf16-pair", shape) or cold
        if bf16 and fp8:
            r["fp8_vs_bf16"] = round(fp8["samples_per_min"] / bf16["samples_per_min"], 3)
            r["fp8_compared_with"] = bf16["system"]
        layouts = {m["system"]: m for m in ms if m["shape"] == shape and m["system"].startswith("layout:")}
        _layout_ratios(shape, layouts, r, targets)
        _cells_ratios(shape, {m["system"]: m for m in ms if m["shape"] == shape}, r, targets)
        order_ratios(shape, {m["system"]: m for m in ms if m["shape"] == shape}, r, targets)
        if r:
            ratios[shape] = r
    return {"ratios": ratios, "targets": targets}


def _layout_ratios(shape: str, layouts: dict[str, dict[str, Any]], r: dict[str, Any], targets: dict[str, Any]) -> None:
    auto = layouts.get("layout:auto") or layouts.get("layout:tpauto")
    tp4, tp2, one, wait = (layouts.get(k) for k in ("layout:tp4", "layout:tp2", "layout:gpu1", "layout:auto+wait"))
    if auto and tp4:  # issue 7: the old production TP=4 against the toolkit's own choice on the same GPUs
        r["layout_auto_vs_tp4"] = round(auto["samples_per_min"] / tp4["samples_per_min"], 3)
        targets[f"layout auto >= 1.3x TP=4 at {shape}"] = {
            "measured": r["layout_auto_vs_tp4"],
            "met": r["layout_auto_vs_tp4"] >= 1.3,
        }
    if auto and tp2:  # issue 16: the generation window of all workers together, and the whole job
        r["auto_vs_tp2_wall"] = round(auto["samples_per_min"] / tp2["samples_per_min"], 3)
        r["auto_e2e_s"], r["tp2_e2e_s"] = auto.get("wall_s"), tp2.get("wall_s")
        targets[f"auto >= {AUTO_VS_TP2}x TP=2 (wall clock) at {shape}"] = {
            "measured": r["auto_vs_tp2_wall"],
            "met": r["auto_vs_tp2_wall"] >= AUTO_VS_TP2,
        }
        if auto.get("wall_s") and tp2.get("wall_s"):
            targets[f"auto e2e wall <= TP=2's at {shape}"] = {
                "measured": f"{auto['wall_s']} s vs {tp2['wall_s']} s",
                "met": auto["wall_s"] <= tp2["wall_s"],
            }
    if auto and one:
        r["auto_vs_one_gpu_wall"] = round(auto["samples_per_min"] / one["samples_per_min"], 3)
        targets[f"auto >= {AUTO_VS_ONE_GPU}x one GPU (wall clock) at {shape}"] = {
            "measured": r["auto_vs_one_gpu_wall"],
            "met": r["auto_vs_one_gpu_wall"] >= AUTO_VS_ONE_GPU,
        }
    if auto and wait:  # a compile-cache miss: every worker compiles privately (auto) or one compiles, others wait
        r["miss_private_startup_s"] = (auto.get("startup") or {}).get("total_s")
        r["miss_wait_startup_s"] = (wait.get("startup") or {}).get("total_s")
        r["miss_private_vs_wait_e2e"] = round(wait["wall_s"] / auto["wall_s"], 3) if auto.get("wall_s") else None


def _cells_ratios(shape: str, by: dict[str, dict[str, Any]], r: dict[str, Any], targets: dict[str, Any]) -> None:
    sweep, seed, per_cell = by.get("cells"), by.get("cells-seed-loop"), by.get("cells-task-per-cell")
    _startup_ratios(shape, by, r, targets)
    if not sweep:
        return
    if seed:
        r["sweep_vs_seed_loop"] = round(seed["wall_s"] / sweep["wall_s"], 3)
        targets[f"sweep >= {SWEEP_VS_SEED_LOOP}x the seed loop (end to end) at {shape}"] = {
            "measured": r["sweep_vs_seed_loop"],
            "met": r["sweep_vs_seed_loop"] >= SWEEP_VS_SEED_LOOP,
            "extrapolated": seed.get("extrapolated"),
        }
    if per_cell:
        r["sweep_vs_task_per_cell"] = round(per_cell["wall_s"] / sweep["wall_s"], 3)
        targets[f"sweep >= {SWEEP_VS_TASK_PER_CELL}x one task per cell (end to end) at {shape}"] = {
            "measured": r["sweep_vs_task_per_cell"],
            "met": r["sweep_vs_task_per_cell"] >= SWEEP_VS_TASK_PER_CELL,
            "extrapolated": per_cell.get("extrapolated"),
        }
    if sweep.get("gpu_busy_fraction") is not None:
        r["gpu_busy_fraction"] = sweep["gpu_busy_fraction"]
        targets[f"GPU busy >= {GPU_BUSY} of the sweep's worker time at {shape}"] = {
            "measured": r["gpu_busy_fraction"],
            "met": r["gpu_busy_fraction"] >= GPU_BUSY,
        }


def _target(targets: dict[str, Any], name: str, measured: Any, met: bool, **extra: Any) -> None:
    targets[name] = {"measured": measured, "met": met, **extra}


def _startup_ratios(shape: str, by: dict[str, dict[str, Any]], r: dict[str, Any], targets: dict[str, Any]) -> None:
    """Issue 28's keys: the warm sweep, engine ready cold and warm, the swap, each loader, each start-up switch."""
    sweep, warm, seed = by.get("cells"), by.get("cells-warm"), by.get("cells-seed-loop")
    if sweep and sweep.get("engine_ready_s") is not None:
        r["engine_ready_cold_s"] = sweep["engine_ready_s"]
        _target(
            targets,
            f"engine ready cold <= {ENGINE_READY_COLD_S} s at {shape}",
            r["engine_ready_cold_s"],
            r["engine_ready_cold_s"] <= ENGINE_READY_COLD_S,
        )
    if warm:
        if warm.get("engine_ready_s") is not None:
            r["engine_ready_warm_s"] = warm["engine_ready_s"]
            _target(
                targets,
                f"engine ready warm <= {ENGINE_READY_WARM_S} s at {shape}",
                r["engine_ready_warm_s"],
                r["engine_ready_warm_s"] <= ENGINE_READY_WARM_S,
            )
        if seed:
            r["sweep_warm_vs_seed_loop"] = round(seed["wall_s"] / warm["wall_s"], 3)
            _target(
                targets,
                f"warm sweep >= {SWEEP_WARM_VS_SEED_LOOP}x the seed loop at {shape}",
                r["sweep_warm_vs_seed_loop"],
                r["sweep_warm_vs_seed_loop"] >= SWEEP_WARM_VS_SEED_LOOP,
                extrapolated=seed.get("extrapolated"),
            )
        if warm.get("gpu_busy_fraction") is not None:
            r["gpu_busy_fraction_warm"] = warm["gpu_busy_fraction"]
            _target(
                targets,
                f"GPU busy >= {GPU_BUSY_WARM} of the warm sweep's worker time at {shape}",
                r["gpu_busy_fraction_warm"],
                r["gpu_busy_fraction_warm"] >= GPU_BUSY_WARM,
            )
    if (fresh := by.get("models-fresh")) and fresh.get("swap_matches_fresh") is not None:
        r["swap_matches_fresh"] = fresh["swap_matches_fresh"]  # 1.0: the swapped engine made a new engine's samples
    swap = by.get("models-swap")
    if swap and swap.get("model_swap_s") is not None:
        r["model_swap_s"] = swap["model_swap_s"]
        r["model_swap_swapped"] = swap.get("swapped")
        _target(
            targets,
            f"model swap <= {MODEL_SWAP_S} s at {shape}",
            r["model_swap_s"],
            bool(swap.get("swapped")) and r["model_swap_s"] <= MODEL_SWAP_S,
            swapped=swap.get("swapped"),
        )
    loads = {k.split(":", 1)[1]: m.get("weights_load_s") for k, m in sorted(by.items()) if k.startswith("weights:")}
    if loads:
        r["weights_load_s"] = loads
    switches = {
        k.split(":", 1)[1]: {
            "engine_ready_s": m.get("engine_ready_s"),
            "wall_s": m.get("wall_s"),
            "generation_s": m.get("generation_s"),
            "graph_capture_s": (m.get("startup") or {}).get("graph_capture_s"),
            "kv_cache_tokens": (m.get("startup_log") or {}).get("kv_cache_tokens"),
            "startup_plan_applied": (m.get("startup_log") or {}).get("startup_plan_applied"),
        }
        for k, m in sorted(by.items())
        if k.startswith("startup:")
    }
    if switches:
        r["startup_switches"] = switches


def _f(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else str(x)


def markdown(results: dict[str, Any]) -> str:
    from launcher.bench.scale_report import scale_markdown

    if all(m["system"] == "scale" for m in results["measurements"]):
        return scale_markdown(results)
    host, wl = results["host"], results["workload"]
    ms = [m for m in results["measurements"] if m["system"] != "scale"]
    lines = [
        f"# launcher bench — {host.get('gpu', '?')}, {results.get('date', '')}",
        "",
        f"Host `{host.get('hostname')}`: {host.get('gpu')} ({host.get('gpu_memory_gib', '?')} GiB, driver "
        f"{host.get('driver', '?')}), {host.get('cpus', '?')} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in sorted((host.get("versions") or {}).items()))
        + ".",
        f"Model: {wl['model']}, load_format dummy; prompts of {wl['prompt_tokens']} tokens, n={wl['n']}, "
        "temperature 1.0, top_p 0.9, top_k 50, ignore_eos, per-request seeds.",
        "",
        "samples/min and tok/s are over the generation phase (start-up excluded); e2e wall includes start-up.",
        "HF rows ran on a subset (the records column). raw-defaults and sweep rows ran a warm-up pass first (the "
        "same requests with other prompt ids, 32 tokens), so Triton's first-use compiles are not timed; `toolkit` "
        "is a cold first task (those compiles happen during its generation), `toolkit-warm` a later task that "
        "found the shared compile cache. Ratios use toolkit-warm where it was measured.",
        "",
        "| system | shape | records | samples/min | output tok/s | vs raw | gen s | e2e wall s | start-up s "
        "(load / compile / graphs / other) | compile cache | SM util mean / p10 % | peak mem GiB | GPU-h "
        "| samples/GPU-h |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    order = {
        "toolkit": 0,
        "toolkit-warm": 1,
        "toolkit-fp8": 2,
        "toolkit-bf16-pair": 2.5,
        "raw-defaults": 3,
        "hf-loop": 5,
        "hf-batched": 6,
    }
    for m in sorted(ms, key=lambda m: (shape_order(m["shape"]), order.get(m["system"], 4), m["system"])):
        raw = _by(ms, "raw-defaults", m["shape"])
        vs = m["samples_per_min"] / raw["samples_per_min"] if raw and m.get("samples_per_min") else None
        st = m.get("startup") or {}
        split = " / ".join(_f(st.get(k), 1) for k in ("load_s", "compile_s", "graph_capture_s", "other_s"))
        lines.append(
            f"| {m['system']} | {m['shape']} | {_f(m.get('records'))} | {_f(m['samples_per_min'])} | "
            f"{_f(m['output_tok_per_s'])} | {_f(vs, 2)} | {_f(m['generation_s'], 1)} | "
            f"{_f(m.get('wall_s'), 1)} | {_f(st.get('total_s'), 1)} ({split}) | "
            f"{m.get('compile_cache') or '–'} | {_f(m.get('gpu_util_mean_pct'))} / {_f(m.get('gpu_util_p10_pct'))} | "
            f"{_f(m.get('gpu_memory_peak_gib'), 1)} | {_f(m.get('gpu_hours'), 3)} | "
            f"{_f(m.get('samples_per_gpu_hour'))} |"
        )
    lines += ["", "## Ratios and targets", ""]
    for shape, r in results["analysis"]["ratios"].items():
        lines.append(f"- **{shape}**: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    lines.append("")
    for name, t in results["analysis"]["targets"].items():
        lines.append(
            f"- {'MET' if t['met'] else 'NOT MET'}: {name} (measured {t['measured']}"
            + (f", {t['toolkit']}" if "toolkit" in t else "")
            + (f" vs {t['best']}" if "best" in t else "")
            + (f"; {t['basis']}" if "basis" in t else "")
            + ")"
        )
    ordered = [m for m in ms if m["system"] in ORDER_SYSTEMS]
    if ordered:
        lines += ["", "## Prefix order (issue 31)", ""]
        lines.append("| system | shape | gen s | e2e wall s | compile cache | prefix-cache hit rate | order |")
        lines.append("|---|---|---:|---:|---|---:|---|")
        for m in ordered:
            decision = m.get("prefix_order") or {}
            lines.append(
                f"| {m['system']} | {m['shape']} | {_f(m['generation_s'], 1)} | {_f(m.get('wall_s'), 1)} | "
                f"{m.get('compile_cache') or '–'} | {_f(m.get('prefix_cache_hit_rate'), 3)} | "
                f"{'on' if decision.get('active') else 'off'}: {decision.get('reason', '–')} |"
            )
    tk = [m for m in ms if m["system"] == "toolkit"]
    if tk:
        lines += ["", "## What auto sizing chose (toolkit)", ""]
        for m in tk:
            lines.append(f"**{m['shape']}**")
            lines.append("")
            for k, v in (m.get("settings") or {}).items():
                lines.append(
                    f"- `{k}` = `{json.dumps(v) if not isinstance(v, str) else v}`: "
                    f"{(m.get('reasons') or {}).get(k, '')}"
                )
            lines.append("")
    if len(ms) < len(results["measurements"]):
        lines += ["", scale_markdown(results).replace("# launcher bench: scale", "## Scale", 1)]
    return "\n".join(lines) + "\n"


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
        ys = [(_by(ms, name, s) or {}).get("samples_per_min") or 0 for s in shapes]
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
        ys = [(_by(ms, name, sh) or {}).get("samples_per_min") or 0 for sh in shapes]
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


def write_report(results: dict[str, Any], out_dir: Path, draw: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["analysis"] = analyse(results["measurements"])
    written = [out_dir / "results.json", out_dir / "results.md"]
    written[0].write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    written[1].write_text(markdown(results))
    if draw:
        # matplotlib missing: `launcher bench --report DIR` draws it where it is installed
        with contextlib.suppress(ImportError):
            if any(m["system"].startswith(("layout:", "cells")) for m in results["measurements"]):
                written.append(plot_workers(results, out_dir / "throughput.png"))
            else:
                written.append(plot(results, out_dir / "throughput.png"))
    return written
