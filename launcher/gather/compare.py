"""gather/compare.py: two output dirs, record by record. Greedy runs: token agreement and the first divergence
(character agreement where the samples hold no token ids: output.token_ids records them).
Sampled runs: lengths and distinct-n side by side (samples differ by design; their statistics should not)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import NoSamples
from launcher.gather.samples import read_samples, samples_file


def load_samples(target: Path) -> dict[str, dict[str, Any]]:
    """A folder with samples.jsonl or samples.parquet (a gathered <dataset>/<ablation>/ or a flat `launcher run`
    output), or the file itself."""
    path = samples_file(target)
    if path is None:
        raise NoSamples.one(
            str(target),
            "",
            "no samples.jsonl or samples.parquet here" if target.exists() else "no such file or folder",
            "a gathered folder <output dir>/<dataset>/<ablation>, or its samples file",
            "`launcher status <output dir>` says whether the run is gathered; `launcher gather` gathers it",
        )
    return {r["record_id"]: r for r in read_samples(path)}


@dataclass
class Divergence:
    record_id: str
    sample: int
    position: int


@dataclass
class Comparison:
    records_a: int
    records_b: int
    common: int
    token_level: bool
    tokens_compared: int = 0
    tokens_agreeing: int = 0
    identical_samples: int = 0
    samples_compared: int = 0
    first_divergence: Divergence | None = None
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        return self.tokens_agreeing / self.tokens_compared if self.tokens_compared else 0.0


def _common_prefix(a: list[Any], b: list[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def distinct_n(texts: list[str], n: int) -> float:
    grams = [tuple(t.split()[i : i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


def _stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    texts = [s for r in rows for s in r["generated_samples"]]
    lengths = [n for r in rows for n in r["sample_tokens"]]
    return {
        "samples": len(texts),
        "mean_tokens": statistics.fmean(lengths) if lengths else 0.0,
        "stdev_tokens": statistics.pstdev(lengths) if lengths else 0.0,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }


def compare(a_dir: Path, b_dir: Path) -> Comparison:
    a, b = load_samples(a_dir), load_samples(b_dir)
    common = sorted(a.keys() & b.keys())
    token_level = all("sample_token_ids" in a[k] and "sample_token_ids" in b[k] for k in common) and bool(common)
    cmp = Comparison(len(a), len(b), len(common), token_level)
    for rid in common:
        ra, rb = a[rid], b[rid]
        seqs_a = ra["sample_token_ids"] if token_level else ra["generated_samples"]
        seqs_b = rb["sample_token_ids"] if token_level else rb["generated_samples"]
        for j, (sa, sb) in enumerate(zip(seqs_a, seqs_b, strict=False)):
            prefix = _common_prefix(list(sa), list(sb))
            cmp.tokens_agreeing += prefix
            cmp.tokens_compared += max(len(sa), len(sb))
            cmp.samples_compared += 1
            cmp.identical_samples += sa == sb
            if sa != sb and cmp.first_divergence is None:
                cmp.first_divergence = Divergence(rid, j, prefix)
    cmp.stats = {"a": _stats([a[k] for k in common]), "b": _stats([b[k] for k in common])}
    return cmp


def render(cmp: Comparison, a: Path, b: Path) -> str:
    """Plain text (the caller makes it safe to print: record ids and paths are data)."""
    unit = "tokens" if cmp.token_level else "characters"
    measure = (
        "token agreement"
        if cmp.token_level
        else "character agreement (no token ids in these samples; `output.token_ids: true` records them, for "
        "token agreement)"
    )
    lines = [
        f"A: {a}  ({cmp.records_a} records)",
        f"B: {b}  ({cmp.records_b} records)",
        f"records in both: {cmp.common}",
        f"{measure}: {cmp.agreement:.4f} of {cmp.tokens_compared} {unit} (common prefix per sample); "
        f"{cmp.identical_samples}/{cmp.samples_compared} samples identical",
    ]
    if cmp.first_divergence:
        d = cmp.first_divergence
        lines.append(f"first divergence: record {d.record_id}, sample {d.sample}, at {unit[:-1]} {d.position}")
    lines.append(f"{'':14}{'A':>12}{'B':>12}")
    for key in ("samples", "mean_tokens", "stdev_tokens", "distinct_1", "distinct_2"):
        lines.append(f"{key:14}{cmp.stats['a'][key]:>12.3f}{cmp.stats['b'][key]:>12.3f}")
    return "\n".join(lines)


def as_json(cmp: Comparison) -> str:
    from dataclasses import asdict

    measure = "tokens" if cmp.token_level else "characters"
    return json.dumps({**asdict(cmp), "agreement": cmp.agreement, "agreement_of": measure}, indent=2)
