"""gather.py: task chunks -> <output dir>/<dataset>/<ablation>/ (samples, per-user JSON, summary, manifest).

Verifies before writing: every input row is in the outputs exactly once with num_samples samples, or in
quarantine with its reason. Gathering twice gives the same bytes (no clocks, sorted everything). Two gathers of
one run at once (the gather job and a user's `launcher gather`) take turns on a lock; the second finds every file
already holding the bytes it would write and writes nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .outputs import TaskStore, dumps_line, read_jsonl, safe_filename, write_atomic
from .plan import Plan, Task


@dataclass
class GroupReport:
    dataset: str
    ablation: str
    out_dir: Path
    records: int = 0
    samples: int = 0
    quarantined: int = 0
    duplicates_dropped: int = 0
    missing_tasks: list[str] = field(default_factory=list)
    missing_rows: list[int] = field(default_factory=list)
    bad_sample_counts: list[int] = field(default_factory=list)
    files_written: list[str] = field(default_factory=list)  # relative to out_dir; empty when all were up to date

    @property
    def ok(self) -> bool:
        return not (self.missing_tasks or self.missing_rows or self.bad_sample_counts)


class GatherError(RuntimeError):
    pass


def gather(plan: Plan, dest: Path | None = None, flat: bool = False) -> list[GroupReport]:
    """Merge and verify every dataset x ablation. Raises GatherError listing what is missing."""
    groups: dict[tuple[str, str], list[Task]] = defaultdict(list)
    for task in plan.tasks:
        groups[(task.dataset, task.ablation)].append(task)
    reports = []
    with _gather_lock(plan.paths.run_dir):
        for (dataset, ablation), tasks in groups.items():
            out = (dest or plan.paths.output_dir) if flat else (dest or plan.paths.output_dir) / dataset / ablation
            reports.append(_gather_group(plan, dataset, ablation, tasks, out))
    bad = [r for r in reports if not r.ok]
    if bad:
        raise GatherError("\n".join(_describe_missing(r, plan) for r in bad))
    return reports


@contextmanager
def _gather_lock(run_dir: Path) -> Iterator[None]:
    """One gather of a run at a time; the next one waits (flock: released if the holder dies)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "gather.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _put(out: Path, rel: str, data: bytes, report: GroupReport, hashes: dict[str, dict[str, Any]]) -> None:
    """Write unless the file already holds exactly these bytes (a second gather then writes nothing)."""
    path = out / rel
    hashes[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    write_atomic(path, data)
    report.files_written.append(rel)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True, default=str) + "\n").encode()


def _describe_missing(r: GroupReport, plan: Plan) -> str:
    lines = [f"{r.dataset}/{r.ablation}: incomplete, nothing written for this group"]
    if r.missing_tasks:
        lines.append(f"  tasks not finished ({len(r.missing_tasks)}): {', '.join(r.missing_tasks[:20])}")
    if r.missing_rows:
        lines.append(f"  rows missing ({len(r.missing_rows)}): {r.missing_rows[:20]}")
    if r.bad_sample_counts:
        lines.append(f"  rows with a wrong number of samples: {r.bad_sample_counts[:20]}")
    lines.append(f"  fix: `launcher status {plan.paths.run_dir}` to see why; `launcher submit` the same spec again "
                 "to finish what is missing (done records are kept)")
    return "\n".join(lines)


def _gather_group(plan: Plan, dataset: str, ablation: str, tasks: list[Task], out: Path) -> GroupReport:
    report = GroupReport(dataset, ablation, out)
    rows: dict[int, dict[str, Any]] = {}
    quarantine: list[dict[str, Any]] = []
    task_summaries = []
    n = plan.spec.data.num_samples
    for task in sorted(tasks, key=lambda t: t.index):
        store = TaskStore(plan.paths.task_dir(task))
        if not store.is_done():
            report.missing_tasks.append(task.task_id)
            continue
        task_summaries.append(json.loads(store.done_marker.read_text()))
        q = list(read_jsonl(store.quarantine)) if store.quarantine.exists() else []
        quarantine += q
        for chunk in store.chunk_files():
            for row in read_jsonl(chunk):
                if row["row"] in rows:
                    report.duplicates_dropped += 1  # an overlapping attempt wrote it too; same seed, same samples
                    continue
                rows[row["row"]] = row
        expected = set(range(task.start, task.stop)) - {x["row"] for x in q}
        report.missing_rows += sorted(expected - rows.keys())
    if report.missing_tasks:
        return report
    report.bad_sample_counts = sorted(r for r, v in rows.items() if len(v["generated_samples"]) != n)
    if not report.ok:
        return report
    ordered = [rows[r] for r in sorted(rows)]
    report.records, report.samples, report.quarantined = len(ordered), len(ordered) * n, len(quarantine)
    _write_group(plan, report, ordered, sorted(quarantine, key=lambda x: x["row"]), task_summaries)
    return report


def _write_group(plan: Plan, report: GroupReport, rows: list[dict[str, Any]], quarantine: list[dict[str, Any]],
                 task_summaries: list[dict[str, Any]]) -> None:
    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    spec = plan.spec
    hashes: dict[str, dict[str, Any]] = {}
    if spec.output.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        _put(out, "samples.parquet", sink.getvalue().to_pybytes(), report, hashes)
    else:
        _put(out, "samples.jsonl", "".join(dumps_line(r) for r in rows).encode(), report, hashes)
    _put(out, "quarantine.jsonl", "".join(dumps_line(q) for q in quarantine).encode(), report, hashes)
    if spec.output.per_user_json:
        for rel, data in _user_files(rows):
            _put(out, rel, data, report, hashes)
    _put(out, "inference_summary.json", _json_bytes(summarize(plan, report, rows, task_summaries)), report, hashes)
    manifest = {"run_id": spec.run_id, "dataset": report.dataset, "ablation": report.ablation,
                "records": report.records, "samples": report.samples, "quarantined": report.quarantined,
                "files": dict(sorted(hashes.items()))}
    _put(out, "manifest.json", _json_bytes(manifest), report, {})


def _user_files(rows: list[dict[str, Any]]) -> Iterator[tuple[str, bytes]]:
    """users/<user id>.json, the old script's layout. safe_filename: an id such as '../../x' stays inside users/."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    for user, recs in sorted(by_user.items()):
        obj = {"user_id": user, "generated_samples": [s for r in recs for s in r["generated_samples"]],
               "records": [{"record_id": r["record_id"], "prompt": r["prompt"],
                            "generated_samples": r["generated_samples"]} for r in recs]}
        yield f"users/{safe_filename(user)}.json", (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True)
                                                    + "\n").encode()


def summarize(plan: Plan, report: GroupReport, rows: list[dict[str, Any]],
              tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """inference_summary.json: the old script's fields first, then what a reader needs to trust the numbers."""
    spec = plan.spec
    gen_s = sum(t["inference_time_seconds"] for t in tasks)
    out_tokens = sum(sum(r["sample_tokens"]) for r in rows)
    engine = next((t["engine"] for t in tasks if t.get("engine")), None) or {}
    layout = next((t["last_layout"] for t in tasks if t.get("last_layout")), None) or {}
    return {
        "total_samples": report.samples,
        "inference_time_seconds": round(gen_s, 3),
        "throughput_samples_per_sec": round(report.samples / gen_s, 4) if gen_s else None,
        "output_tokens": out_tokens,
        "output_tokens_per_sec": round(out_tokens / gen_s, 2) if gen_s else None,
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "records": report.records,
        "quarantined": report.quarantined,
        "num_samples": spec.data.num_samples,
        "startup_seconds_max": max((t["startup_seconds"] for t in tasks), default=0.0),
        "dataset": report.dataset,
        "ablation_config": report.ablation,
        "backend": next((t["backend"] for t in tasks if t.get("backend")), None),
        "backend_reason": next((t["backend_reason"] for t in tasks if t.get("backend_reason")), None),
        "tensor_parallel_size": layout.get("tensor_parallel_size"),
        "data_parallel_size": layout.get("data_parallel_size"),
        "layout_reason": layout.get("reason"),
        "gpu_name": engine.get("gpu_name"),
        "engine_version": engine.get("version"),
        "engine_settings": engine.get("settings"),
        "engine_settings_reasons": engine.get("reasons"),
        "launcher_version": __version__,
        "model": spec.model.path,
        "sampling": spec.sampling.model_dump(),
        "spec_hash": spec.fingerprint(),
        "run_id": spec.run_id,
        "tasks": [{k: t[k] for k in ("task_id", "records", "quarantined", "attempts", "inference_time_seconds",
                                     "startup_seconds")} for t in tasks],
    }
