"""bench/scale_checks.py: a finished scale run -> was any unit held by two workers at once, is every record in the
gathered samples, was any record written twice. Read from the run directory and the workers' own notes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def double_claims(workers: list[dict[str, Any]]) -> int:
    """Pairs of workers that held one unit at the same moment (from the claim won to its done marker or give-back;
    a worker that died holding one holds it until it ended)."""
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for w in workers:
        for unit, _gen, start, end in w["held"]:
            spans[unit].append((start, end if end is not None else float(w.get("ended") or start), int(w["index"])))
    pairs = 0
    for held in spans.values():
        held.sort()
        for i, (_start, end, who) in enumerate(held):
            pairs += sum(1 for s, _e, w in held[i + 1 :] if s < end and w != who)
    return pairs


def rows_in_chunks(run_dir: Path) -> tuple[int, int]:
    """(rows written, rows written more than once) over every unit's chunks."""
    from launcher.plan.persist import load_plan

    plan = load_plan(run_dir)
    rows = dupes = 0
    for unit in plan.units:
        scan = plan.run.unit(unit.unit_id).scan(keep_rows=False)
        rows += len(scan.rows)
        dupes += scan.duplicates
    return rows, dupes


def gathered_rows(run_dir: Path) -> int:
    """Distinct records in the gathered samples of every cell."""
    from launcher.gather.samples import read_samples
    from launcher.plan.persist import load_plan

    plan = load_plan(run_dir)
    total = 0
    for cell in plan.cells():
        total += len({row["row"] for row in read_samples(plan.run.output_dir / cell.rel_dir)})
    return total


__all__ = ["double_claims", "gathered_rows", "rows_in_chunks"]
