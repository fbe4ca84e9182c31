"""bench/scale_figures.py: a finished scale run (the workers' own notes, the run directory, the status and gather
commands) -> its row of results.json: claim latencies and operations, was any unit held by two workers at once, is
every record in the gathered samples, was any record written twice."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

from launcher.bench.scale_shape import ScaleShape


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


def measure(
    shape: ScaleShape,
    run_dir: Path,
    workers: list[dict[str, Any]],
    exits: dict[int, tuple[int, float]],
    t0: float,
    wall: float,
    status_mid: tuple[float, float, subprocess.CompletedProcess[str]] | None,
    status_end: tuple[float, float, subprocess.CompletedProcess[str]],
    gather: tuple[float, float, subprocess.CompletedProcess[str]],
    loads: list[float],
) -> dict[str, Any]:
    calls = [c for w in workers for c in w["calls"]]
    won = [c for c in calls if c[1] is not None]
    claim_ops = sum(c[3] for c in calls)
    phases: dict[str, dict[str, int]] = {}
    for w in workers:
        for phase, kinds in w["ops"].items():
            into = phases.setdefault(phase, {})
            for k, v in kinds.items():
                into[k] = into.get(k, 0) + v
    all_ops = {k: sum(p.get(k, 0) for p in phases.values()) for k in {k for p in phases.values() for k in p}}
    records = shape.units * shape.records_per_unit
    rows, chunk_dupes = rows_in_chunks(run_dir)
    gathered = gathered_rows(run_dir) if gather[2].returncode == 0 else 0
    generated = sum(int(w.get("generated") or 0) for w in workers)
    firsts = [min((c[1] for c in w["calls"] if c[1]), default=None) for w in workers]
    errors = [w["error"] for w in workers if w.get("error")] + [
        f"worker {k} exited {code}" for k, (code, _) in exits.items() if code
    ]
    return {
        "system": "scale",
        "shape": shape.name,
        "workers": shape.workers,
        "units": shape.units,
        "records": records,
        "records_per_unit": shape.records_per_unit,
        "fake_latency_s": shape.latency_s,
        "per_unit_s": shape.unit_s,
        "engine": "FakeEngine (fixed latency per record, no model)",
        "claims": len(won),
        **claim_figures(workers),
        "metadata_ops_per_claim": round(claim_ops / max(1, len(won)), 2),
        "claim_ops_by_kind": {k: round(v / max(1, len(won)), 2) for k, v in sorted(phases.get("claim", {}).items())},
        "ops_per_unit_by_kind": {k: round(v / shape.units, 2) for k, v in sorted(all_ops.items())},
        "ops_by_phase": phases,
        "double_claims": double_claims(workers),
        "reclaimed": sum(1 for w in workers for h in w["held"] if h[1] > 0),
        "lost": max(0, records - gathered),
        "duplicated": max(0, generated - records) + chunk_dupes,
        "generated": generated,
        "rows_in_chunks": rows,
        "status_s": round(max(s[0] for s in (status_mid, status_end) if s is not None), 3),
        "status_mid_s": round(status_mid[0], 3) if status_mid else None,
        "status_end_s": round(status_end[0], 3),
        "status_cpu_s": round(max(s[1] for s in (status_mid, status_end) if s is not None), 3),
        "status_ok": status_end[2].returncode == 0 and _status_done(status_end[2].stdout) == shape.units,
        "gather_s": round(gather[0], 3),
        "gather_cpu_s": round(gather[1], 3),
        "gather_ok": gather[2].returncode == 0,
        "gather_error": gather[2].stderr[-2000:] if gather[2].returncode else "",
        "wall_s": round(wall, 2),
        "ideal_s": round(shape.ideal_s, 2),
        "wall_vs_ideal": round(wall / shape.ideal_s, 4) if shape.ideal_s else None,
        # from the first fork: when the last worker started, and when it had its first unit
        "last_first_claim_s": round(max(f for f in firsts if f) - t0, 2) if any(firsts) else None,
        "last_worker_start_s": round(max(float(w.get("started") or t0) for w in workers) - t0, 2),
        "load_avg": {"start": loads[0], "max": max(loads), "end": loads[-1], "samples": loads},
        "errors": errors[:5],
        "machine": machine(run_dir),
    }


def claim_figures(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """Claim latencies (entering the claim loop -> the claim file won), over every claim, after each worker's first,
    and in the steady state (claims won once every worker had its first unit: 256 workers starting at once on 2
    cores is not the claim's cost); and the CPU a claim burns in its own thread: what is left of its latency is
    waiting, for a core (2 shared cores, nice 19) or for the disk (the claim file's fsync)."""
    won = [c for w in workers for c in w["calls"] if c[1] is not None]
    firsts = [min((c[1] for c in w["calls"] if c[1] is not None), default=0.0) for w in workers]
    started = max(firsts, default=0.0)
    ms = sorted((c[1] - c[0]) * 1000 for c in won)
    later = sorted((c[1] - c[0]) * 1000 for w in workers for c in [c for c in w["calls"] if c[1] is not None][1:])
    steady = sorted((c[1] - c[0]) * 1000 for c in won if c[0] > started)
    cpu = sorted(c[5] for c in won)
    return {
        "claim_p50_ms": round(statistics.median(ms), 2) if ms else None,
        "claim_p99_ms": _pct(ms, 0.99),
        "claim_max_ms": round(ms[-1], 2) if ms else None,
        "claim_p99_ms_after_first": _pct(later, 0.99),
        "claim_p50_ms_steady": _pct(steady, 0.5),
        "claim_p99_ms_steady": _pct(steady, 0.99),
        "claims_steady": len(steady),
        "claim_cpu_p50_ms": _pct(cpu, 0.5),
        "claim_cpu_p99_ms": _pct(cpu, 0.99),
    }


def _pct(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else None


def _status_done(stdout: str) -> int | None:
    try:
        return int(json.loads(stdout)["counts"].get("DONE", 0))
    except (ValueError, KeyError, TypeError):
        return None


def machine(folder: Path) -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(ValueError, OSError):
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    fs = subprocess.run(  # findmnt names ext4 (stat -f says "ext2/ext3" for all three)
        ["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--target", str(folder)], capture_output=True, text=True, check=False
    )
    info["file_system"] = fs.stdout.strip() or "?"
    mounts = subprocess.run(["df", "-P", str(folder)], capture_output=True, text=True, check=False).stdout
    info["device"] = mounts.splitlines()[-1].split()[0] if mounts.strip() else "?"
    return info


__all__ = ["claim_figures", "double_claims", "gathered_rows", "machine", "measure", "rows_in_chunks"]
