"""The Slurm layer's pure parts, without a cluster: the example spec's plan and sbatch script, retry bookkeeping,
the teardown lines, status parsing of sacct/squeue rows."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from launcher import faults
from launcher.job.retries import Attempt, describe_status, read_failures, record_failure, teardown_lines
from launcher.plan import expand
from launcher.spec import load_spec
from launcher.submit.preview import sbatch_preview
from launcher.submit.slurm_query import _expand, _parse

from .conftest import ROOT

EXAMPLE = ROOT / "configs" / "examples" / "slurm-local-demo.yaml"
SLURM_ENV = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "57",
    "SLURM_ARRAY_JOB_ID": "50",
    "SLURM_ARRAY_TASK_ID": "7",
    "SLURM_RESTART_COUNT": "2",
}


def test_example_spec_on_the_local_profile(tiny_model: Path, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE, [f"model.path={tiny_model}", f"output.dir={tmp_path}"])
    plan = expand(spec)
    assert len(plan.units) == 12 and {u.dataset for u in plan.units} == {"demo_users", "demo_users_again"}
    assert plan.jobs == 2  # array_parallelism 2 caps the worker jobs; each claims units until none is left
    script = sbatch_preview(plan)
    for line in (
        "#SBATCH --array=0-1%2",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --partition=debug",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --mem=2G",
        "-m launcher.job.retries",
    ):
        assert line in script, line
    assert script.rstrip().endswith('exit "$launcher_rc"')


def test_attempt_from_env() -> None:
    a = Attempt.from_env(SLURM_ENV)
    assert a is not None and (a.job_id, a.raw_job_id, a.submission, a.restart) == ("50_7", "57", "50", 2)
    single = Attempt.from_env({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "9"})
    assert single is not None and (single.job_id, single.submission, single.restart) == ("9", "9", 0)
    # inside an allocation but not a submitit Slurm job (salloc, the local executor): never requeue anything
    assert Attempt.from_env({"SLURM_JOB_ID": "9"}) is None
    assert Attempt.from_env({**SLURM_ENV, "SUBMITIT_EXECUTOR": "local"}) is None


def test_failures_counted_per_submission(tmp_path: Path) -> None:
    log = tmp_path / "x_log.err"
    log.write_text("Loading\rLoading 100%\nTraceback (most recent call last):\nValueError: bad record\n")
    env = dict(SLURM_ENV)
    records = []
    for restart in range(3):
        env["SLURM_RESTART_COUNT"] = str(restart)
        a = Attempt.from_env(env)
        assert a is not None
        records.append(record_failure(tmp_path, a, max_retries=2, kind="exception", error="ValueError: bad", log=log))
    assert [r.retry for r in records] == [True, True, False] and records[-1].failures == 3
    assert records[0].log_tail[-1] == "ValueError: bad record" and records[0].log_tail[0] == "Loading 100%"
    # a resubmission (another array job id) starts the count again
    b = Attempt.from_env({**SLURM_ENV, "SLURM_ARRAY_JOB_ID": "80", "SLURM_JOB_ID": "81"})
    assert b is not None and record_failure(tmp_path, b, 2, "died", "killed", None).retry is True
    c = Attempt.from_env({**SLURM_ENV, "SLURM_ARRAY_JOB_ID": "90", "SLURM_JOB_ID": "91"})
    assert c is not None
    assert record_failure(tmp_path, c, 2, "exception", "SpecError", None, retryable=False).retry is False
    assert len(read_failures(tmp_path)) == 5


def test_describe_status() -> None:
    assert "SIGKILL" in describe_status(137) and "OOM" in describe_status(137)
    assert "SIGTERM" in describe_status(143)
    assert "status 1 " in describe_status(1)


def test_teardown_lines_keep_srun_status_and_quote_paths(tmp_path: Path) -> None:
    odd = tmp_path / "it's a run; echo"
    lines = teardown_lines(shlex.quote("/opt/py thon/bin/python"), odd)
    script = "\n".join(lines)
    assert shlex.quote(str(odd)) in script and "'/opt/py thon/bin/python' -m launcher.job.retries" in script
    # bash -n: the lines parse; run with a failing "srun" and no Slurm around: exit status kept, nothing requeued
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    out = subprocess.run(["bash", "-c", "(exit 137)\n" + script.replace("scontrol", "false")], capture_output=True)
    assert out.returncode == 137


def test_status_parses_sacct_and_squeue_rows() -> None:
    assert _expand("12_[4-6%12]") == ["12_4", "12_5", "12_6"]
    assert _expand("12_3") == ["12_3"] and _expand("12") == ["12"]
    rows = _parse(
        "12_0|COMPLETED|vm|None\n12_1|CANCELLED by 0|None assigned|None\n12.batch|COMPLETED|vm|None\n"
        "12_[2-3%1]|PENDING||JobArrayTaskLimit\n"
    )
    assert rows["12_0"].state == "COMPLETED" and rows["12_0"].node == "vm"
    assert rows["12_1"].state == "CANCELLED" and rows["12_1"].node is None
    assert rows["12_3"].reason == "JobArrayTaskLimit" and "12.batch" not in rows


def test_faults_are_inert_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.CRASH_VAR, raising=False)
    monkeypatch.delenv(faults.SLOW_VAR, raising=False)
    faults.after_record("t.full.0000", tmp_path, 0, 5)
    monkeypatch.setenv(faults.CRASH_VAR, "t.full.0000:2:2")
    faults.after_record("t.full.0000", tmp_path, 0, 1)  # not yet: after 2 records
    faults.after_record("t.full.0000", tmp_path, 1, 2)  # only replica 0 crashes
    faults.after_record("other.full.0000", tmp_path, 0, 2)
    for n in (1, 2):
        with pytest.raises(faults.InjectedFault, match=f"{n} of 2"):
            faults.after_record("t.full.0000", tmp_path, 0, 2)
    faults.after_record("t.full.0000", tmp_path, 0, 2)  # crashed twice: from now on it goes through
    assert json.dumps(sorted(p.name for p in (tmp_path / "faults").iterdir())) == '["crash-0", "crash-1"]'
