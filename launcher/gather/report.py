"""gather/report.py: `launcher report RUN [RUN ...]` — one table over a sweep (every run given x dataset x ablation):
records, samples, mean length, distinct-n, finish reasons, structured-output conformance, throughput; as
report.json, report.md and report.png.

Several runs side by side are how checkpoints are compared today (one spec per checkpoint, one `report` over their
output dirs); the model column says which is which.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.gather.compare import distinct_n
from launcher.gather.samples import read_samples
from launcher.plan import Plan
from launcher.store import plain_folder, read_json, write_atomic
from launcher.store.fs import Opener
from launcher.store.outputs import ReportDir
from launcher.terminal import printable


@dataclass(frozen=True)
class CellRow:
    run_id: str
    run: str  # the name shown: the run id, told apart from another run given with the same id (run_labels)
    model: str
    dataset: str
    ablation: str
    records: int
    samples: int
    quarantined: int
    mean_tokens: float
    distinct_1: float
    distinct_2: float
    stop_fraction: float  # finish reason "stop" (EOS or a stop string) over all samples; the rest hit max_tokens
    conforming_fraction: float | None  # structured outputs only
    samples_per_sec: float | None  # this cell, by the wall clock
    output_tokens_per_sec: float | None


def run_labels(plans: list[Plan]) -> list[str]:
    """A distinct name per run given. A reproduction has its original's run id (the id hashes what changes the
    samples, and a reproduction changes none): it is named so; runs still alike get their output folder."""
    labels = [p.run.run_id + (" (reproduction)" if p.run.read_run().reproduces else "") for p in plans]
    seen = Counter(zip(labels, (p.run.root for p in plans), strict=True))
    alike = Counter(label for label, _ in seen)
    return [
        f"{label} @ {p.run.output_dir}" if alike[label] > 1 else label for label, p in zip(labels, plans, strict=True)
    ]


def cell_rows(plan: Plan, skipped: list[str] | None = None, label: str | None = None) -> list[CellRow]:
    """One row per gathered cell (model or adapter x dataset x ablation) of the run. Left out (and named in
    `skipped`): cells not gathered yet, and cells whose folder another run (same output.dir, other run id)
    gathered into last. label: the run's name in the report (default its run id)."""
    out = []
    for key in plan.cells():
        # The sweep's model or adapter name; a one-model run shows its checkpoint folder's name.
        model = key.variant or Path(plan.spec.model.path).name
        dataset, ablation = key.dataset, key.ablation
        cell = plan.run.cell(key.rel_dir)
        summary = read_json(cell.summary)
        if not summary:
            if skipped is not None:
                skipped.append(f"{cell.root}: not gathered")
            continue
        if summary.get("run_id") != plan.run.run_id:
            if skipped is not None:
                skipped.append(f"{cell.root}: holds run {summary.get('run_id')}, not {plan.run.run_id}")
            continue
        rows = list(read_samples(cell.root))
        texts = [t for r in rows for t in r["generated_samples"]]
        lengths = [n for r in rows for n in r["sample_tokens"]]
        reasons = Counter(x for r in rows for x in r["finish_reasons"])
        structured = summary.get("structured") or {}
        out.append(
            CellRow(
                run_id=plan.run.run_id,
                run=label or plan.run.run_id,
                model=model,
                dataset=dataset,
                ablation=ablation,
                records=len(rows),
                samples=len(texts),
                quarantined=int(summary.get("quarantined") or 0),
                mean_tokens=round(statistics.fmean(lengths), 1) if lengths else 0.0,
                distinct_1=round(distinct_n(texts, 1), 4),
                distinct_2=round(distinct_n(texts, 2), 4),
                stop_fraction=round(reasons["stop"] / len(texts), 4) if texts else 0.0,
                conforming_fraction=structured.get("conforming_fraction"),
                samples_per_sec=summary.get("throughput_samples_per_sec"),
                output_tokens_per_sec=summary.get("output_tokens_per_sec"),
            )
        )
    return out


COLUMNS = (
    ("model", "model"),
    ("run", "run"),
    ("dataset", "dataset"),
    ("ablation", "ablation"),
    ("records", "records"),
    ("samples", "samples"),
    ("quarantined", "quarantined"),
    ("mean_tokens", "mean tokens"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("stop_fraction", "stopped (not cut)"),
    ("conforming_fraction", "conforming"),
    ("samples_per_sec", "samples/s"),
    ("output_tokens_per_sec", "output tok/s"),
)


def markdown(rows: list[CellRow]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        # names come from specs and folders: no control character reaches a terminal, no '|' splits the row
        return f"{value:,.4g}" if isinstance(value, float) else printable(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if key in ("model", "run", "dataset", "ablation") else "---:" for key, _ in COLUMNS)
        + "|",
    ]  # fmt: skip
    for r in rows:
        d = asdict(r)
        lines.append("| " + " | ".join(cell(d[key]) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[CellRow], path: Path, opener: Opener = plain_folder) -> Path:
    """Mean length and distinct-2 per cell, one bar per run: how the runs differ at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(r.dataset, r.ablation) for r in rows})
    runs = sorted({(r.model, r.run) for r in rows})
    by = {(r.model, r.run, r.dataset, r.ablation): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(cells) + 4), 4.5))
    width = 0.8 / max(1, len(runs))
    for ax, field, title in (
        (axes[0], "mean_tokens", "mean sample length (tokens)"),
        (axes[1], "distinct_2", "distinct-2"),
    ):
        for i, (model, run) in enumerate(runs):
            ys = [getattr(by.get((model, run, d, a)), field, 0) or 0 for d, a in cells]
            ax.bar([x + i * width for x in range(len(cells))], ys, width, label=printable(f"{model} ({run})"))
        ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(cells))])
        ax.set_xticklabels([f"{d}\n{a}" for d, a in cells], fontsize=8)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue(), opener=opener)
    return path


def write_report(rows: list[CellRow], folder: Path, draw: bool = True, opener: Opener = plain_folder) -> list[Path]:
    """report.json, report.md and report.png in `folder`, each written whole. `opener`: how the folder is reached
    (the output folder's own report/ goes through OutputDir.opener: checked, with the share's modes)."""
    report = ReportDir(folder)
    data = {"columns": [k for k, _ in COLUMNS], "rows": [asdict(r) for r in rows]}
    write_atomic(report.table_json, (json.dumps(data, indent=2) + "\n").encode(), opener=opener)
    write_atomic(report.table_md, markdown(rows).encode(), opener=opener)
    written = [report.table_json, report.table_md]
    if draw and rows:
        # the login node's launcher without the plot extra: the table is what matters
        with contextlib.suppress(ImportError):
            written.append(plot(rows, report.plot_png, opener))
    return written


__all__ = ["CellRow", "cell_rows", "markdown", "run_labels", "write_report"]
