"""`launcher report`: one table over several runs (checkpoints or settings side by side), from gathered outputs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from launcher.plan import expand
from launcher.plan.persist import save_plan
from launcher.spec import load_spec

from .conftest import ROOT, launcher, make_spec, read_samples


def _rows(cell: Path) -> list[dict]:
    """A gathered cell's rows, read here without the launcher's reader: the "hot" run writes parquet."""
    if (cell / "samples.parquet").exists():
        import pyarrow.parquet as pq

        assert not (cell / "samples.jsonl").exists()
        return pq.read_table(cell / "samples.parquet").to_pylist()
    return read_samples(cell)


def test_report_over_two_runs(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    """Two runs side by side; the second writes output.format parquet, which report and compare read as well."""
    outs = []
    for name, temperature, fmt in (("cool", 0.3, "jsonl"), ("hot", 1.5, "parquet")):
        spec = make_spec(
            tmp_path,
            tiny_model,
            users_file,
            name=name,
            data={"ablation_configs": ["full", "profile_only"], "limit": 4},
            sampling={"temperature": temperature, "max_tokens": 12},
            output={"dir": str(tmp_path / name), "format": fmt},
        )
        proc = launcher("submit", str(spec), "--executor", "local", "--wait")
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(tmp_path / name)
    folder = tmp_path / "report"
    proc = launcher("report", *map(str, outs), "--out", str(folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((folder / "report.json").read_text())
    rows = data["rows"]
    assert sorted((r["run_id"].split("-")[0], r["ablation"]) for r in rows) == [
        ("cool", "full"), ("cool", "profile_only"), ("hot", "full"), ("hot", "profile_only"),
    ]  # fmt: skip
    for r in rows:
        samples = _rows(tmp_path / r["run_id"].split("-")[0] / "users" / r["ablation"])
        lengths = [n for s in samples for n in s["sample_tokens"]]
        assert r["records"] == len(samples) == 4 and r["samples"] == 8
        assert r["mean_tokens"] == round(statistics.fmean(lengths), 1)
        stops = sum(x == "stop" for s in samples for x in s["finish_reasons"])
        assert r["stop_fraction"] == round(stops / 8, 4)
        assert r["samples_per_sec"] and r["samples_per_sec"] > 0
    md = (folder / "report.md").read_text()
    assert md.count("\n") == 2 + len(rows) and "| distinct-2 |" in md and proc.stdout.startswith("| model |")
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without matplotlib (a login node without the plot extra) the hint names the extra as typed: rich would
    # swallow "[plot]" as markup.
    code = "import sys; sys.modules['matplotlib'] = None\nfrom launcher.cli import main; sys.exit(main(sys.argv[1:]))"
    bare = subprocess.run(
        [sys.executable, "-c", code, "report", *map(str, outs), "--out", str(tmp_path / "bare")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert bare.returncode == 0 and "pip install 'launcher[plot]'" in bare.stderr, bare.stderr[-2000:]
    assert (tmp_path / "bare" / "report.md").exists() and not (tmp_path / "bare" / "report.png").exists()
    # compare reads the parquet cell too: same records and seeds, other temperature
    cool, hot = (str(tmp_path / name / "users" / "full") for name in ("cool", "hot"))
    cmp = launcher("compare", cool, hot, "--json")
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    assert json.loads(cmp.stdout)["common"] == 4


def test_report_before_gather_says_so(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    plan = expand(load_spec(make_spec(tmp_path, tiny_model, users_file)))
    save_plan(plan)  # planned, nothing run: no cell gathered
    proc = launcher("report", str(plan.run.root))
    assert proc.returncode == 1 and "nothing gathered yet" in proc.stderr and "not gathered" in proc.stderr
    missing = launcher("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no run found here" in missing.stderr


def test_compare_without_samples_teaches(tmp_path: Path) -> None:
    proc = launcher("compare", str(tmp_path), str(tmp_path / "missing"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no samples.jsonl or samples.parquet here" in proc.stderr and "launcher gather" in proc.stderr
