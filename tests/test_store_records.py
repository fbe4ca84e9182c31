"""The typed records of the run folder (store/run_record.py, store/failure_records.py): what each writer puts in a
file comes back key for key, an older or partial file reads with the defaults the readers always used, and a
damaged file has the outcome it always had (skipped, empty, or refused when it is not provably ours)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.errors import UntrustedFile
from launcher.job.retries import Attempt, needs_host_requeue, read_failures, record_failure
from launcher.plan import Plan, expand
from launcher.plan.persist import resume_hint, save_plan
from launcher.spec import load_spec
from launcher.store import AttemptRecord, JobDir, RunDir, RunRecord, UnitDir, UnitFailure, json_bytes, of_submission
from launcher.submit.provenance import write_run_json

from .conftest import make_spec

RUN_KEYS = {
    "run_id", "name", "spec", "fingerprint", "units", "records", "jobs", "jobs_reason", "inputs", "input_changes",
    "launcher_version", "git_sha", "git_dirty", "python", "image", "submissions", "resume_with",
}  # fmt: skip
SUBMISSION_KEYS = {
    "submitted_at", "submitted_epoch", "executor", "job_ids", "array_job_id", "array_job_ids", "gather_job_id",
    "jobs", "job_indices", "units_todo", "submission", "user", "host",
}  # fmt: skip


@pytest.fixture
def plan(tmp_path: Path, tiny_model: Path, users_file: Path) -> Plan:
    planned = expand(load_spec(make_spec(tmp_path, tiny_model, users_file)))
    save_plan(planned)
    return planned


def test_run_json_round_trip_keeps_keys_and_bytes(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUNCHER_SUBMISSION", "local-1")
    write_run_json(plan, [], None, "local", 1, 1, resume_with="launcher batch x.jsonl")
    monkeypatch.setenv("LAUNCHER_SUBMISSION", "77")
    write_run_json(plan, ["77_0", "77_1", "78_2"], "79", "slurm", 3, 3)
    on_disk = plan.run.run_json.read_bytes()
    record = plan.run.read_run()
    assert set(record.to_json()) == RUN_KEYS and json_bytes(record.to_json()) == on_disk  # the file's keys are sorted
    assert [set(s.to_json()) for s in record.submissions] == [SUBMISSION_KEYS, SUBMISSION_KEYS]
    first, latest = record.first, record.latest
    assert (first.executor, first.submission, first.jobs) == ("local", "local-1", 1)
    assert (latest.executor, latest.submission, latest.gather_job_id) == ("slurm", "77", "79")
    assert latest.elements() == [(0, "77_0"), (1, "77_1"), (2, "78_2")]
    assert record.task_job_ids() == ["77", "78"] and record.gather_job_ids() == ["79"]
    assert record.resume_with == "launcher batch x.jsonl", "a later submit keeps the command that resumes the run"
    assert resume_hint(plan.run) == "`launcher batch x.jsonl`"
    assert record.fingerprint == plan.spec.fingerprint() and record.inputs is None  # submitted without a resolve


def test_reproduction_changes_no_other_byte(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create()
    older = {"zeta": [1, "\u2028"], "submissions": [{"job_ids": ["5_0"]}], "launcher_version": "0.1"}  # no resume_with
    run.write_json(run.run_json, older)
    marked = run.read_run().with_reproduction({"run_id": "orig"})
    run.write_json(run.run_json, marked.to_json())
    assert run.run_json.read_bytes() == json_bytes({**older, "reproduces": {"run_id": "orig"}})
    assert run.read_run().reproduces == {"run_id": "orig"}


def test_older_run_json_reads_with_the_readers_defaults(tmp_path: Path) -> None:
    """A run.json from before executor, job_indices, submitted_epoch and resume_with were written."""
    record = RunRecord.from_json({"submissions": [{"job_ids": ["12_0", "12_1"], "jobs": 2}, {"jobs": None}]})
    old = record.first
    assert old.executor == "slurm" and old.elements() == [(0, "12_0"), (1, "12_1")]
    assert record.task_job_ids() == ["12"] and record.latest.jobs == 0 and record.latest.submitted_epoch == 0.0
    assert record.resume_with is None and record.inputs is None and record.inputs_digest is None
    never = RunRecord()  # never submitted: no submission, no jobs, nothing to cancel
    assert not never.exists and never.latest.executor is None and never.latest.jobs == 0
    assert never.task_job_ids() == [] and never.first.submitted_at == ""


@pytest.mark.parametrize("content", [b"", b'{"submissions": [', b"[1, 2]", b"\xff\xfe", b"null"])
def test_damaged_run_json_reads_as_never_submitted(tmp_path: Path, content: bytes) -> None:
    run = RunDir(tmp_path / "run")
    run.create()
    run.run_json.write_bytes(content)
    record = run.read_run()
    assert not record.exists and record.submissions == ()


def test_planted_run_json_is_refused(tmp_path: Path) -> None:
    """run.json decides what a submit does: a link there is refused, never followed (as before the records)."""
    run = RunDir(tmp_path / "run")
    run.create()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"submissions": [{"job_ids": ["1_0"]}]}))
    run.run_json.symlink_to(elsewhere)
    with pytest.raises(UntrustedFile):
        run.read_run()


def test_unit_failures_round_trip_and_count_per_submission(tmp_path: Path) -> None:
    udir = UnitDir(tmp_path / "units" / "u0")
    written = UnitFailure.new("0.1", "node\u0085a", 1.5, "InputChanged: x", "77", "77_0")
    udir.record_failure("0.1", written)
    udir.record_failure("0.2", UnitFailure.new("0.2", "h", 2.0, "E: y", None, None))
    (path, _) = sorted(udir.failures.iterdir())
    assert set(json.loads(path.read_bytes())) == {"worker", "host", "time", "error", "submission", "job_id"}
    read = udir.read_failures()
    assert written in read and [f.to_json() for f in read if f == written] == [written.to_json()]
    assert [f.worker for f in of_submission(read, "77")] == ["0.1"]
    assert [f.worker for f in of_submission(read, None)] == ["0.2"]


def test_partial_and_damaged_failure_files(tmp_path: Path) -> None:
    udir = UnitDir(tmp_path / "units" / "u0")
    udir.failures.mkdir(parents=True)
    (udir.failures / "old.json").write_text('{"error": "RuntimeError: boom"}')  # an older worker's record
    (udir.failures / "cut.json").write_text('{"error": "Runt')  # a crash mid-write (before atomic writes)
    (udir.failures / "list.json").write_text("[1]")
    (udir.failures / "empty.json").write_text("{}")
    (only,) = udir.read_failures()  # what is not a JSON object with something in it is skipped, as it always was
    assert (only.error, only.submission, only.worker, only.time) == ("RuntimeError: boom", None, None, 0.0)
    assert of_submission([only], None) == [only] and of_submission([only], "77") == []


def test_job_failures_round_trip_sorted_by_time(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "jobs" / "0")
    env = {"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "0", "SUBMITIT_EXECUTOR": "slurm"}
    attempt = Attempt.from_env({**env, "SLURM_RESTART_COUNT": "1"})
    assert attempt is not None
    record = record_failure(job, attempt, 3, "exception", "ValueError: bad", None, requeue_by="teardown")
    assert (record.failures, record.retry, record.requeued_by_host, record.submission) == (1, True, True, "40")
    on_disk = json.loads(job.failure_file(attempt.key).read_bytes())
    assert on_disk == record.to_json() and {"job_id", "submission", "restart", "log_tail"} <= set(on_disk)
    assert needs_host_requeue(job, attempt)
    # an older file without time sorts first (time 0), without retry is no retry; a damaged one is skipped
    (job.failures / "old.json").write_text('{"error": "died", "submission": "40"}')
    (job.failures / "cut.json").write_text('{"error": ')
    old, new = read_failures(job)
    assert (old.error, old.time, old.retry, new.error) == ("died", 0.0, False, "ValueError: bad")
    again = record_failure(job, attempt, 3, "died", "killed", None)
    assert again.failures == 3, "every earlier failure of the submission counts, the older file's too"


def test_attempt_records_round_trip(tmp_path: Path) -> None:
    job = JobDir(tmp_path / "jobs" / "0")
    layout = {"tensor_parallel": 1, "data_parallel": 2}
    attempt = AttemptRecord.new(
        job=0, started=10.0, ended=12.0, layout=layout, model="", workers=["0.0", "0.1"], job_id=None, restart=0
    )
    job.write(job.attempt_file(10.0, os.getpid()), attempt.to_json())
    job.write(job.attempts / "older.json", {"job": 0, "started": 9.0})  # an older attempt: no layout
    by_start = sorted(job.read_attempts(), key=lambda a: a.started)
    assert [a.layout for a in by_start] == [None, layout] and by_start[1] == attempt
    assert by_start[1].workers == ("0.0", "0.1") and by_start[1].to_json() == attempt.to_json()
