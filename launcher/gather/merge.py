"""gather/merge.py: unit chunks -> <output dir>/[<model>/|<adapter>/]<dataset>/<ablation>/ (samples, per-user JSON,
summary, manifest).

Verifies before writing: every chunk a done unit lists is there and passes its checksum, and every input row is in
the outputs exactly once with num_samples samples, or in quarantine with its reason. A unit that fails this is
reopened (not done), so `launcher submit` regenerates exactly its missing records. Gathering twice gives the same
bytes (no clocks in the outputs, sorted everything). Two gathers of one run at once (the gather job and a user's
`launcher gather`) take turns on a lock; the second finds every file already holding its bytes and writes nothing.

Throughput is measured by the wall clock (throughput.py), never as a sum of per-worker times.

A cell's folders are reached without following links and must be the user's (store/outputs.py): a cell folder that
is a link or another user's is refused (UntrustedFile, exit 2), the other cells are still written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import stat
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from launcher import __version__
from launcher.errors import GatherError, UntrustedFile
from launcher.gather.stream import LazyFolder, RowTotals, StreamedFile, jsonl_bytes
from launcher.gather.structured import structured_figures
from launcher.gather.throughput import RunFigures, cell_figures, run_figures
from launcher.plan import Cell, Plan, Unit
from launcher.store import SAMPLE_FILES, Folder, OutputDir, OutputRow, RunDir, encode_lines, json_bytes, safe_filename
from launcher.store.outputs import MANIFEST, QUARANTINE, SUMMARY, USERS, out_folder


@dataclass
class GroupReport:
    cell: Cell  # model or adapter x dataset x ablation
    out_dir: Path
    records: int = 0
    samples: int = 0
    quarantined: int = 0
    duplicates_dropped: int = 0
    missing_units: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # what failed verification, with its file
    missing_rows: list[int] = field(default_factory=list)
    bad_sample_counts: list[int] = field(default_factory=list)
    files_written: list[str] = field(default_factory=list)  # relative to out_dir; empty when all were up to date
    files_removed: list[str] = field(default_factory=list)  # an earlier gather's files this one does not write

    @property
    def dataset(self) -> str:
        return self.cell.dataset

    @property
    def ablation(self) -> str:
        return self.cell.ablation

    @property
    def label(self) -> str:
        return self.cell.label

    @property
    def ok(self) -> bool:
        return not (self.missing_units or self.damaged or self.missing_rows or self.bad_sample_counts)


def gather(plan: Plan, dest: Path | None = None, flat: bool = False) -> list[GroupReport]:
    """Merge and verify every dataset x ablation. Raises GatherError listing what is missing or damaged."""
    reports = []
    refused: list[UntrustedFile] = []
    figures = run_figures(plan)
    if dest is not None:  # a folder the user named (`launcher run --output_dir`): made when missing
        OutputDir(dest, plan.spec.output.share).create()
    with _gather_lock(plan.run), plan.run.keep_open():  # every unit's folders reached from the run's descriptor
        for cell, units in plan.cells().items():
            base = dest or plan.run.output_dir
            out = base if flat else base / cell.rel_dir
            try:
                reports.append(_gather_group(plan, cell, units, (base, "" if flat else cell.rel_dir), figures, flat))
            except UntrustedFile as exc:  # a planted cell folder: nothing written there; the other cells go on
                refused.append(exc)
                reports.append(GroupReport(cell, out, damaged=[str(exc)]))
        if all(r.ok for r in reports):
            plan.run.write_json(plan.run.summary, figures.as_json())
            from launcher.plan.estimate import record_run

            record_run(plan, figures.headline(), figures.main_worker())
    if refused:
        raise UntrustedFile([p for exc in refused for p in exc.problems])
    bad = [r for r in reports if not r.ok]
    if bad:
        raise GatherError("\n".join(_describe_missing(r, plan) for r in bad))
    return reports


@contextmanager
def _gather_lock(run: RunDir) -> Iterator[None]:
    """One gather of a run at a time; the next one waits (flock: released if the holder dies). Opened through the
    checked run folder, never through a link (store/fs.py: Folder.open_lock)."""
    with run.folder(create=True) as folder, folder.open_lock(run.gather_lock.name) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _put(
    folder: Folder, name: str, data: bytes, report: GroupReport, hashes: dict[str, dict[str, Any]], rel: str = ""
) -> None:
    """Write unless the file already holds exactly these bytes (a second gather then writes nothing, and only sets
    the share's mode on what an older launcher left group-writable)."""
    rel = rel or name
    hashes[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if folder.same_bytes(name, data):
        return
    folder.write_atomic(name, data)
    report.files_written.append(rel)


def _describe_missing(r: GroupReport, plan: Plan) -> str:
    lines = [f"{r.label}: incomplete, nothing written for this group"]
    if r.missing_units:
        lines.append(f"  units not finished ({len(r.missing_units)}): {', '.join(r.missing_units[:20])}")
        refusals = {  # a worker refused them: an input changed under the run (inputs/guard.py) says what to do
            error.removeprefix("InputChanged: ")
            for u in r.missing_units
            for f in plan.run.unit(u).read_failures()[-1:]
            if (error := f.error or "").startswith("InputChanged: ")
        }
        lines += [f"  refused: {why}" for why in sorted(refusals)[:5]]
    for problem in r.damaged[:20]:
        lines.append(f"  damaged: {problem}")
    if r.missing_rows:
        lines.append(f"  rows missing ({len(r.missing_rows)}): {r.missing_rows[:20]}")
    if r.bad_sample_counts:
        lines.append(f"  rows with a wrong number of samples: {r.bad_sample_counts[:20]}")
    from launcher.plan.persist import resume_hint

    lines.append(
        f"  fix: `launcher status {plan.run.root}` to see why; {resume_hint(plan.run)} again "
        "generates exactly what is missing (done records are kept)"
    )
    return "\n".join(lines)


def _gather_group(
    plan: Plan, cell: Cell, units: list[Unit], where: tuple[Path, Any], figures: RunFigures, flat: bool = False
) -> GroupReport:
    """One pass over the cell's units, in row order: each chunk read once (checked and parsed), each row written to
    samples.jsonl as it comes (stream.py). Rows are kept in memory only for what needs them all at once: parquet,
    per-user JSON files, structured-output figures. `where`: (the output folder, the cell's folder inside it),
    written through the checked way in (store/outputs.py), opened and made when the first row is written."""
    base, rel_dir = where
    report = GroupReport(cell, base / rel_dir)
    spec = plan.spec
    n = spec.data.num_samples
    keep = spec.output.format == "parquet" or spec.output.per_user_json or spec.sampling.structured is not None
    kept: list[OutputRow] = []
    quarantine: list[dict[str, Any]] = []
    totals = RowTotals()
    cell_folder = LazyFolder(partial(out_folder, base, rel_dir, spec.output.share, create=True))
    sink = StreamedFile(cell_folder.get, SAMPLE_FILES["jsonl"]) if spec.output.format != "parquet" else None
    try:
        for unit in sorted(units, key=lambda u: u.start):
            udir = plan.run.unit(unit.unit_id)
            if not udir.is_done():
                report.missing_units.append(unit.unit_id)
                continue
            scan = udir.scan()
            problems = udir.verify(scan)
            if problems:
                report.damaged += [f"unit {unit.unit_id}: {p}" for p in problems]
                udir.reopen("; ".join(problems))  # not done any more: a resubmit regenerates exactly these rows
                continue
            q = udir.read_quarantine()
            quarantine += q
            report.duplicates_dropped += scan.duplicates
            expected = set(range(unit.start, unit.stop)) - {x["row"] for x in q}
            report.missing_rows += sorted(expected - scan.rows.keys())
            if not report.ok:
                continue  # nothing will be written; the other units are still checked, to list every problem
            for r in sorted(x for x in scan.rows if unit.start <= x < unit.stop):  # units' ranges are disjoint
                row = scan.rows[r]
                if len(row["generated_samples"]) != row.get("num_samples", n):
                    report.bad_sample_counts.append(r)
                totals.add(row)
                if sink is not None:
                    sink.write(jsonl_bytes(row))
                if keep:
                    kept.append(row)
        if not report.ok:
            return report
        report.records, report.samples, report.quarantined = totals.records, totals.samples, len(quarantine)
        quarantine.sort(key=lambda x: x["row"])
        _write_group(plan, report, cell_folder.get(), sink, kept, quarantine, units, figures, totals, flat)
        sink = None
    finally:
        if sink is not None:
            sink.discard()
        cell_folder.close()
    return report


def _write_group(
    plan: Plan,
    report: GroupReport,
    out: Folder,
    sink: StreamedFile | None,
    rows: list[OutputRow],
    quarantine: list[dict[str, Any]],
    units: list[Unit],
    figures: RunFigures,
    totals: RowTotals,
    flat: bool = False,
) -> None:
    spec = plan.spec
    earlier = _listed_files(out)
    hashes: dict[str, dict[str, Any]] = {}
    if sink is None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), table)
        _put(out, SAMPLE_FILES["parquet"], table.getvalue().to_pybytes(), report, hashes)
    else:
        hashes[SAMPLE_FILES["jsonl"]] = {"sha256": sink.sha256, "bytes": sink.size}
        if sink.finish():
            report.files_written.append(SAMPLE_FILES["jsonl"])
    _put(out, QUARANTINE, encode_lines(quarantine, lone_surrogates="escape"), report, hashes)
    if spec.output.per_user_json:
        users = out.walk(()) if flat else out.child(USERS, create=True)
        with users:
            for name, data in _user_files(rows, flat):
                _put(users, name, data, report, hashes, name if flat else f"{USERS}/{name}")
    summary = summarize(plan, report, totals, rows, units, figures)
    _put(out, SUMMARY, json_bytes(summary), report, hashes)
    manifest = {
        "run_id": plan.run.run_id,
        "dataset": report.dataset,
        "ablation": report.ablation,
        **_variant_fields(report),
        "records": report.records,
        "samples": report.samples,
        "quarantined": report.quarantined,
        "files": dict(sorted(hashes.items())),
    }
    _put(out, MANIFEST, json_bytes(manifest), report, {})
    _remove_stale(out, set(earlier) - set(hashes), report)


def _listed_files(out: Folder) -> dict[str, Any]:
    """The files an earlier gather of this cell listed in its manifest: {} when there is none, or when it is not a
    plain file of yours (a planted manifest names nothing to remove)."""
    try:
        files = json.loads(out.read_bytes(MANIFEST)).get("files")
    except (OSError, ValueError, RecursionError, AttributeError, UntrustedFile):
        return {}
    return files if isinstance(files, dict) else {}


def _remove_stale(out: Folder, stale: set[str], report: GroupReport) -> None:
    """Files an earlier gather of this folder listed in its manifest and this one does not write: per-user files
    under a name the old naming gave them (store/names.py), users no longer in the data, the other format's samples
    file. Left there, a reader would take them for this run's. Files the launcher never listed are not touched.

    Only names inside the cell (its own files, users/<name>) are removed, through the checked folder: a users/ that
    is a link or another user's is refused (nothing in it removed), and a link at a listed name is removed itself,
    never the file it points to."""
    for rel in sorted(stale):
        parts = PurePosixPath(rel).parts
        if len(parts) not in (1, 2) or (len(parts) == 2 and parts[0] != USERS) or {"..", ".", "/"} & set(parts):
            continue  # a manifest is ours, but its folder may be shared: never a path outside the cell
        try:
            with out.child(parts[0]) if len(parts) == 2 else out.walk(()) as folder:
                st = folder.stat(parts[-1])
                if st is None or not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue  # a folder or a special file at that name: not what the launcher wrote there
                folder.unlink(parts[-1])  # unlinkat: a link goes, its target stays
            report.files_removed.append(rel)
        except (OSError, UntrustedFile):
            continue


def _variant_fields(report: GroupReport) -> dict[str, str]:
    return {k: v for k, v in (("model", report.cell.model), ("adapter", report.cell.adapter)) if v}


OWN_FILES = frozenset({"samples", "quarantine", "inference_summary", "manifest"})


def _user_files(rows: list[OutputRow], flat: bool = False) -> Iterator[tuple[str, bytes]]:
    """<user id>.json with generated_samples: under users/, or at the top of --output_dir as the old script wrote them
    (`launcher run` with its flags, `flat`). safe_filename: two ids never share a file, an id such as '../../x' stays
    inside the folder, and a user named like one of our own files gets its first letter escaped instead of
    overwriting it."""
    by_user: dict[str, list[OutputRow]] = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    for user, recs in sorted(by_user.items()):
        obj = {
            "user_id": user,
            "generated_samples": [s for r in recs for s in r["generated_samples"]],
            "records": [
                {"record_id": r["record_id"], "prompt": r["prompt"], "generated_samples": r["generated_samples"]}
                for r in recs
            ],
        }
        name = safe_filename(user, reserved=OWN_FILES if flat else frozenset())
        yield f"{name}.json", json_bytes(obj)


def summarize(
    plan: Plan,
    report: GroupReport,
    totals: RowTotals,
    rows: list[OutputRow],
    units: list[Unit],
    figures: RunFigures,
) -> dict[str, Any]:
    """inference_summary.json: the old script's fields first (by the wall clock), then what a reader needs to trust
    the numbers: the run's own wall-clock figures, the workers beside them, the engine and why. `rows` are there
    only when the spec asks for structured output (its figures judge every sample)."""
    spec, key = plan.spec, report.cell
    cell = cell_figures(figures, [u.unit_id for u in units])
    out_tokens = totals.output_tokens
    gen_s = cell["generation_wall_s"]
    worker = figures.main_worker()
    engine = worker.get("engine") or {}
    layout = figures.layout or {}
    return {
        "total_samples": report.samples,
        "inference_time_seconds": gen_s,
        "throughput_samples_per_sec": round(report.samples / gen_s, 4) if gen_s else None,
        "output_tokens": out_tokens,
        "output_tokens_per_sec": round(out_tokens / gen_s, 2) if gen_s else None,
        "prompt_tokens": totals.prompt_tokens,
        "records": report.records,
        "quarantined": report.quarantined,
        "num_samples": spec.data.num_samples,
        "timing": "wall clock: from the first request of this dataset x ablation to its last sample written, "
        "over all workers at once (never a sum of per-worker times)",
        "run": figures.headline(),
        "workers": figures.per_worker(),
        "units": len(units),
        "startup_seconds_max": figures.startup_max_s(),
        "dataset": report.dataset,
        "ablation_config": report.ablation,
        "backend": worker.get("backend"),
        "backend_reason": worker.get("backend_reason"),
        "tensor_parallel_size": layout.get("tensor_parallel_size"),
        "data_parallel_size": layout.get("data_parallel_size"),
        "layout_reason": layout.get("reason"),
        "gpu_name": engine.get("gpu_name"),
        "engine_version": engine.get("version"),
        "engine_settings": engine.get("settings"),
        "engine_settings_reasons": engine.get("reasons"),
        # vLLM's own start-up seconds (weights_load_s, compile_s, graph_capture_s), the compile cache, a swap
        "engine_startup": engine.get("startup"),
        "prefix_order": worker.get("prefix_order"),
        "launcher_version": __version__,
        "model": spec.model_paths()[key.model],
        **({"model_name": key.model} if key.model else {}),
        **({"adapter": key.adapter, "adapter_path": spec.model.adapters[key.adapter]} if key.adapter else {}),
        "sampling": spec.sampling.model_dump(),
        **({"structured": structured_figures(spec.sampling.structured, rows)} if spec.sampling.structured else {}),
        "spec_hash": spec.fingerprint(),
        "run_id": plan.run.run_id,
    }
