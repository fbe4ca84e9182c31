"""Against the live local Slurm: a run of more worker jobs than MaxArraySize is several arrays and one run (status,
cancel, submit --wait, the gather job), and Slurm is asked once per command for all of them, not once per task.

The local Slurm's MaxArraySize is 10001 (slurm/up.sh): the tests lower it on the submit side
($LAUNCHER_SLURM_MAX_ARRAY_SIZE, submit/slurm_query.py); the running Slurm's config is left alone.
Cost: the held run ~10 s; the run that works ~1-2 min (3 worker jobs of the tiny model on 2 loaded cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, USERS, write_jsonl
from .helpers import in_queue, launcher, submissions, submit

pytestmark = pytest.mark.slurm


def _spec(tmp_path: Path, model: Path, name: str, jobs: int, per_shard: int = 2, **slurm: Any) -> Path:
    data = write_jsonl(tmp_path / "data" / f"{name}.jsonl", USERS[:6])
    spec = {
        "extends": str(ROOT / "configs" / "slurm-local.yaml"),
        "name": name,
        "model": {"path": str(model)},
        "data": {
            "datasets": [{"name": "ds", "path": str(data)}],
            "ablation_configs": ["full"],
            "num_samples": 1,
            "records_per_shard": per_shard,
        },
        "sampling": {"max_tokens": 4, "seed": 7},
        "slurm": {"gpus_per_node": 0, "mem": "512M", "time": 5, "jobs": jobs, **slurm},
        "output": {"dir": str(tmp_path / name)},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _counting_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with sacct and squeue wrapped: each call is written to a log, then the real command runs."""
    shims, calls = tmp_path / "shims", tmp_path / "slurm-calls.log"
    shims.mkdir()
    for cmd in ("sacct", "squeue"):
        real = shutil.which(cmd)
        assert real, f"{cmd} not found"
        shim = shims / cmd
        shim.write_text(f'#!/bin/sh\necho "{cmd} $*" >> {calls}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    return {"PATH": f"{shims}:{os.environ['PATH']}"}, calls


def test_jobs_beyond_max_array_size_are_several_arrays_of_one_run(tmp_path: Path, tiny_model: Path) -> None:
    spec = _spec(tmp_path, tiny_model, "split", jobs=5, per_shard=1, extra_args={"hold": True})  # 6 units
    run_dir, proc = submit(spec, env={"LAUNCHER_SLURM_MAX_ARRAY_SIZE": "2"})
    sub = submissions(run_dir)[0]
    try:
        arrays = sub["array_job_ids"]
        assert len(arrays) == 3 and len(sub["job_ids"]) == 5 and sub["job_indices"] == list(range(5))
        assert [j.split("_")[0] for j in sub["job_ids"]] == [arrays[0]] * 2 + [arrays[1]] * 2 + [arrays[2]]
        assert f"as arrays {', '.join(arrays)}" in proc.stdout, proc.stdout
        # the gather job waits for every array, not only the first
        gather = subprocess.run(
            ["scontrol", "show", "job", sub["gather_job_id"]], capture_output=True, text=True, check=True
        ).stdout
        assert all(f"afterany:{a}" in gather for a in arrays), gather

        env, calls = _counting_path(tmp_path)
        status = launcher("status", str(run_dir), "--json", env=env)
        got = json.loads(status.stdout)
        assert [j["job_id"] for j in got["jobs"]] == sub["job_ids"]
        assert {j["state"] for j in got["jobs"]} == {"PENDING"}, got["jobs"]
        lines = calls.read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["sacct", "squeue"], lines  # one each, for 5 tasks
        assert all(a in lines[0] for a in arrays)
    finally:
        cancel = launcher("cancel", str(run_dir))
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert not any(in_queue(a) for a in [*sub["array_job_ids"], sub["gather_job_id"]])


@pytest.mark.slow
def test_split_run_waits_gathers_and_reports_as_one(tmp_path: Path, tiny_model: Path) -> None:
    spec = _spec(tmp_path, tiny_model, "splitrun", jobs=3)
    run_dir, _ = submit(spec, "--wait", env={"LAUNCHER_SLURM_MAX_ARRAY_SIZE": "2"})
    sub = submissions(run_dir)[0]
    assert len(sub["array_job_ids"]) == 2
    got = json.loads(launcher("status", str(run_dir), "--json").stdout)
    assert got["counts"] == {"DONE": 3}
    assert [j["state"] for j in got["jobs"]] == ["COMPLETED"] * 3
    assert sorted(p.name for p in (run_dir / "jobs").iterdir()) == ["0", "1", "2"]  # each job index ran
    samples = (tmp_path / "splitrun" / "ds" / "full" / "samples.jsonl").read_text().splitlines()
    assert sorted(json.loads(s)["row"] for s in samples) == list(range(6))
