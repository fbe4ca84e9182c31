"""bench/scale_report.py: scale measurements (bench/scale.py) -> analysis.ratios["scale-<W>x<U>"], the issue's targets,
and a markdown section."""

from __future__ import annotations

from typing import Any

# issue 30's targets (they hold at 256 workers x 10,000 units; the same are checked at any size)
MAX_OPS_PER_CLAIM = 10
MAX_CLAIM_P99_MS = 50.0
MAX_STATUS_S = 2.0
MAX_GATHER_S = 60.0
MAX_WALL_VS_IDEAL = 1.2
RATIO_KEYS = (
    "claim_p50_ms",
    "claim_p99_ms",
    "metadata_ops_per_claim",
    "double_claims",
    "lost",
    "duplicated",
    "status_s",
    "gather_s",
    "gather_cpu_s",
    "wall_vs_ideal",
    "per_unit_s",
)


def scale_analysis(ms: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    ratios: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for m in ms:
        shape = m["shape"]
        ratios[shape] = {k: m.get(k) for k in RATIO_KEYS}
        checks = {
            "0 double claims, 0 lost, 0 duplicated": (
                f"{m.get('double_claims')}/{m.get('lost')}/{m.get('duplicated')}",
                m.get("double_claims") == 0 and m.get("lost") == 0 and m.get("duplicated") == 0,
            ),
            f"metadata ops per claim <= {MAX_OPS_PER_CLAIM}": (
                m.get("metadata_ops_per_claim"),
                _le(m.get("metadata_ops_per_claim"), MAX_OPS_PER_CLAIM),
            ),
            f"claim p99 < {MAX_CLAIM_P99_MS:g} ms": (
                m.get("claim_p99_ms"),
                _lt(m.get("claim_p99_ms"), MAX_CLAIM_P99_MS),
            ),
            f"status < {MAX_STATUS_S:g} s": (m.get("status_s"), _lt(m.get("status_s"), MAX_STATUS_S)),
            f"gather < {MAX_GATHER_S:g} s": (m.get("gather_s"), _lt(m.get("gather_s"), MAX_GATHER_S)),
            f"wall / ideal <= {MAX_WALL_VS_IDEAL:g}": (
                m.get("wall_vs_ideal"),
                _le(m.get("wall_vs_ideal"), MAX_WALL_VS_IDEAL),
            ),
        }
        for name, (measured, met) in checks.items():
            targets[f"{name} at {shape}"] = {"measured": measured, "met": met}
    return ratios, targets


def _le(x: Any, bound: float) -> bool:
    return isinstance(x, (int, float)) and x <= bound


def _lt(x: Any, bound: float) -> bool:
    return isinstance(x, (int, float)) and x < bound


def scale_markdown(results: dict[str, Any]) -> str:
    ms = [m for m in results["measurements"] if m["system"] == "scale"]
    lines = [f"# launcher bench: scale, {results.get('date', '')}", ""]
    for m in ms:
        mc, load = m.get("machine") or {}, m.get("load_avg") or {}
        lines += [
            f"## {m['shape']}: {m['workers']} workers, {m['units']} units of {m['records_per_unit']} record(s)",
            "",
            f"Machine: {mc.get('cpus')} CPUs, {mc.get('memory_gib')} GiB, {mc.get('platform')}, Python "
            f"{mc.get('python')}; run directory on {mc.get('file_system')} ({mc.get('device')}). Load average "
            f"(1 min) {load.get('start')} at the start, {load.get('max')} at most, {load.get('end')} at the end."
            + (f" Note: {m['note']}" if m.get("note") else ""),
            "",
            f"Engine: {m['engine']}: {m['fake_latency_s']} s per record, so {m['per_unit_s']} s per unit; the ideal "
            f"wall clock is units x per-unit time / workers = {m['ideal_s']} s.",
            "",
            "| figure | value |",
            "|---|---:|",
        ]
        for key in (
            "claims",
            "claim_p50_ms",
            "claim_p99_ms",
            "claim_max_ms",
            "claim_p99_ms_after_first",
            "claim_p50_ms_steady",
            "claim_p99_ms_steady",
            "claim_cpu_p50_ms",
            "claim_cpu_p99_ms",
            "metadata_ops_per_claim",
            "double_claims",
            "reclaimed",
            "lost",
            "duplicated",
            "status_mid_s",
            "status_end_s",
            "status_cpu_s",
            "gather_s",
            "gather_cpu_s",
            "wall_s",
            "ideal_s",
            "wall_vs_ideal",
            "fork_loop_s",
            "last_worker_start_s",
            "last_first_claim_s",
        ):
            lines.append(f"| {key} | {m.get(key)} |")
        lines += [
            "",
            "Metadata operations per claim, by kind: "
            + ", ".join(f"{k} {v}" for k, v in (m.get("claim_ops_by_kind") or {}).items()),
            "",
            "Every operation per unit, all threads of every worker (claims, chunks, done markers, heartbeats, "
            "reports): " + ", ".join(f"{k} {v}" for k, v in (m.get("ops_per_unit_by_kind") or {}).items()),
            "",
        ]
        if m.get("errors"):
            lines += ["Errors:", "", *[f"    {e.splitlines()[-1] if e else e}" for e in m["errors"]], ""]
    lines += ["## Targets", ""]
    for name, t in (results.get("analysis") or {}).get("targets", {}).items():
        lines.append(f"- {'MET' if t['met'] else 'NOT MET'}: {name} (measured {t['measured']})")
    return "\n".join(lines) + "\n"


__all__ = ["scale_analysis", "scale_markdown"]
