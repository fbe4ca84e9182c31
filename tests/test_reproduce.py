"""`launcher reproduce RUN`: a finished run run again from its own record, byte-identical on CPU; refused when the
record no longer holds (other inputs, other launcher or image unless allowed, the original's own folder)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from launcher.errors import Refused
from launcher.plan.persist import find_run_dir
from launcher.submit.reproduce import check_reproducible

from .conftest import USERS, launcher, make_spec, write_jsonl


@pytest.fixture
def finished(tmp_path: Path, tiny_model: Path) -> tuple[Path, Path]:
    """(run dir, dataset) of a finished two-ablation run with sampled (seeded) output and token ids."""
    data = write_jsonl(tmp_path / "data" / "users.jsonl", USERS[:6])
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        data={"ablation_configs": ["full", "profile_only"]},
        sampling={"temperature": 0.9, "max_tokens": 8, "seed": 11},
        output={"token_ids": True},
    )
    proc = launcher("submit", str(spec), "--executor", "local", "--wait")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return find_run_dir(tmp_path / "out"), data


def test_reproduction_is_byte_identical_on_cpu(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    run_dir, _ = finished
    target = tmp_path / "again"
    proc = launcher("reproduce", str(run_dir), "--output-dir", str(target), "--wait", "--require-identical")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "users/full: byte-identical" in proc.stdout and "users/profile_only: byte-identical" in proc.stdout
    for cell in ("full", "profile_only"):
        a = (tmp_path / "out" / "users" / cell / "samples.jsonl").read_bytes()
        b = (target / "users" / cell / "samples.jsonl").read_bytes()
        assert a == b and len(a.splitlines()) == 6
    record = json.loads(next((target / "runs").glob("*/run.json")).read_text())
    assert record["reproduces"]["run_dir"] == str(run_dir)
    # launcher compare agrees, token by token
    cmp = launcher("compare", str(tmp_path / "out" / "users" / "full"), str(target / "users" / "full"), "--json")
    assert json.loads(cmp.stdout)["agreement"] == 1.0 and json.loads(cmp.stdout)["agreement_of"] == "tokens"
    # A run and its reproduction share a run id: the report still names them apart, and keeps both rows.
    report = launcher("report", str(run_dir), str(target), "--out", str(tmp_path / "report"), "--no-plot")
    assert report.returncode == 0, report.stderr[-2000:]
    runs = {r["run"] for r in json.loads((tmp_path / "report" / "report.json").read_text())["rows"]}
    assert runs == {run_dir.name, f"{run_dir.name} (reproduction)"}, runs


def test_changed_inputs_are_refused_and_nothing_is_written(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    run_dir, data = finished
    rows = data.read_text().splitlines()
    data.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")  # same rows, another order
    target = tmp_path / "again"
    proc = launcher("reproduce", str(run_dir), "--output-dir", str(target), "--allow-other-launcher")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "inputs: the inputs are not what the run read" in proc.stderr
        and "dataset 'users' holds other content" in proc.stderr
    )
    assert not target.exists()


def test_another_launcher_needs_the_flag(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    run_dir, _ = finished
    record_path = run_dir / "run.json"
    record = json.loads(record_path.read_text())
    assert record["git_dirty"] in (True, False) and re.fullmatch(r"[0-9a-f]{40}", record["git_sha"] or "")
    record["launcher_version"], record["git_sha"] = "0.0.1", "0123456789abcdef"
    record["git_dirty"] = True  # launched from a checkout with uncommitted changes: a warning, not a refusal
    record_path.write_text(json.dumps(record))
    target = tmp_path / "again"
    proc = launcher("reproduce", str(run_dir), "--output-dir", str(target))
    assert proc.returncode == 2 and "the launcher differs: recorded launcher 0.0.1 at 0123456789ab" in proc.stderr
    assert "git checkout 0123456789abcdef" in proc.stderr and not target.exists()
    check = check_reproducible(run_dir, target, allow_other_launcher=True)
    (launcher_diff,) = [d for d in check.allowed_differences if "uncommitted" not in d]
    assert "0.0.1" in launcher_diff
    (dirty,) = [d for d in check.allowed_differences if "uncommitted" in d]
    assert "the recorded run" in dirty and "git_dirty" in dirty


def test_another_image_needs_the_flag(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    run_dir, _ = finished
    record_path = run_dir / "run.json"
    record = json.loads(record_path.read_text())
    record["image"] = {"runtime": "apptainer", "image": "/images/vllm.sif", "sha256": "ab" * 32}
    record_path.write_text(json.dumps(record))
    with pytest.raises(Refused) as refused:
        check_reproducible(run_dir, tmp_path / "again")
    assert refused.value.first.field == "image" and "--allow-other-image" in refused.value.first.fix
    assert check_reproducible(run_dir, tmp_path / "again", allow_other_image=True).allowed_differences


def test_the_original_folder_and_a_used_one_are_refused(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    run_dir, _ = finished
    same = launcher("reproduce", str(run_dir), "--output-dir", str(tmp_path / "out"))
    assert same.returncode == 2 and "would write over the original run's outputs" in same.stderr
    assert launcher("reproduce", str(run_dir), "--output-dir", str(tmp_path / "r1"), "--wait").returncode == 0
    again = launcher("reproduce", str(run_dir), "--output-dir", str(tmp_path / "r1"))
    assert again.returncode == 2 and "already holds finished units" in again.stderr
    missing = launcher("reproduce", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "no run found here" in missing.stderr and "Traceback" not in missing.stderr
