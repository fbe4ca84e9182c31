"""Concurrency: two `launcher submit` of one spec at once -> one refused, clearly, and no mixed output; two
`launcher gather` of one run at once -> the same files, written once. Real processes, real locks (fcntl).

To make "at once" certain rather than lucky, the first submit is held *inside* its locked section: its PATH starts
with a `git` (submit records the launcher's git commit in run.json while holding the lock) that drops a marker file
and waits; the second submit starts when the marker appears, and the first goes on once the second has ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.gather import gather
from launcher.plan import expand
from launcher.plan.persist import load_plan, save_plan
from launcher.spec import load_spec
from launcher.store import read_jsonl, write_json_atomic
from launcher.store.claims import process_start
from launcher.store.unit_dir import chunk_listing
from launcher.submit.lock import LocalProcess

from .conftest import USERS, make_spec, write_jsonl
from .test_bad_inputs import RUNS, fake_model, start_early

SLOW_GIT = """#!/bin/sh
touch "$LAUNCHER_TEST_IN_LOCK"
i=0
while [ ! -e "$LAUNCHER_TEST_RELEASE" ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done
exec {git} "$@"
"""


class LockedRun:
    """Submit A (umask 077, --wait) holds the submit lock for a few seconds; submit B of the same spec starts then.
    Started early, in the background; finished when first looked at."""

    def __init__(self, root: Path, tiny_model: Path) -> None:
        data = write_jsonl(root / "users.jsonl", USERS[:4])
        self.spec = make_spec(
            root, tiny_model, data, name="twice", output={"dir": str(root / "out"), "chunk_records": 2}
        )
        self._out = root / "out"
        bin_dir = root / "slowbin"
        bin_dir.mkdir()
        (bin_dir / "git").write_text(SLOW_GIT.format(git=_git()))
        (bin_dir / "git").chmod(0o755)
        self._marker, self._release = root / "in-lock", root / "release"
        env_a = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "LAUNCHER_TEST_IN_LOCK": str(self._marker),
            "LAUNCHER_TEST_RELEASE": str(self._release),
            "LAUNCHER_GIT_TIMEOUT_S": "300",
        }
        self.cmd = [sys.executable, "-m", "launcher", "submit", str(self.spec), "--wait"]
        self._a = subprocess.Popen(
            self.cmd, cwd=root, env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, umask=0o077
        )
        self._root = root
        self._b: subprocess.CompletedProcess[str] | None = None
        self._a_done: subprocess.CompletedProcess[str] | None = None
        self.second_started_in_lock = False
        self._thread = threading.Thread(target=self._second, daemon=True)
        self._thread.start()

    def _second(self) -> None:
        deadline = time.time() + 300
        while not self._marker.exists() and self._a.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        self.second_started_in_lock = self._marker.exists() and self._a.poll() is None
        try:
            self._b = subprocess.run(self.cmd, cwd=self._root, capture_output=True, text=True, timeout=300, umask=0o077)
        finally:
            self._release.touch()  # A may leave its locked section now

    @property
    def second(self) -> subprocess.CompletedProcess[str]:
        self._thread.join(timeout=400)
        assert self._b is not None
        return self._b

    @property
    def first(self) -> subprocess.CompletedProcess[str]:
        if self._a_done is None:
            out, err = self._a.communicate(timeout=600)
            self._a_done = subprocess.CompletedProcess(self.cmd, self._a.returncode, out, err)
        return self._a_done

    @property
    def out(self) -> Path:
        self.first  # noqa: B018 - the files are complete once A ended
        self.second  # noqa: B018
        return self._out

    def stop(self) -> None:
        if self._a.poll() is None:
            self._a.kill()
            self._a.communicate()


def _git() -> str:
    for folder in ("/usr/bin", "/usr/local/bin", "/bin"):
        if os.access(f"{folder}/git", os.X_OK):
            return f"{folder}/git"
    return "git"


@pytest.fixture(scope="session")
def locked_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LockedRun]:
    if "locked" in RUNS:  # test_injection uses this fixture too: one run per session
        yield RUNS["locked"]
        return
    run = RUNS["locked"] = LockedRun(tmp_path_factory.mktemp("lock"), tiny_model)
    yield run
    run.stop()


@pytest.fixture(autouse=True, scope="module")
def _locked_run_in_background(request: pytest.FixtureRequest) -> None:
    start_early(request, "locked_run")


# ---- two gathers at once ------------------------------------------------------------------------------------------
N_ROWS = 300


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose units are all done (chunk files + done markers written the way workers write them), big enough
    that a gather takes a noticeable time, so two of them really overlap."""
    root = tmp_path_factory.mktemp("gather")
    model = fake_model(root / "model")
    data = write_jsonl(root / "users.jsonl", [{"user_id": f"user{i:05d}", "context": f"c{i}"} for i in range(N_ROWS)])
    spec = make_spec(
        root,
        model,
        data,
        name="g",
        data={"records_per_shard": 500, "num_samples": 4, "ablation_configs": ["full", "context_only"]},
        output={"dir": str(root / "out"), "per_user_json": True},
    )
    plan = expand(load_spec(spec))
    save_plan(plan)
    for unit in plan.units:
        udir = plan.run.unit(unit.unit_id)
        rows = [
            {
                "row": r,
                "record_id": f"user{r:05d}",
                "user_id": f"user{r:05d}",
                "dataset": unit.dataset,
                "ablation": unit.ablation,
                "prompt": f"prompt {r} " * 20,
                "prompt_tokens": 40,
                "generated_samples": [f"sample {j} of {r} " * 30 for j in range(4)],
                "sample_tokens": [90] * 4,
                "finish_reasons": ["length"] * 4,
                "seed": r,
            }
            for r in range(unit.start, unit.stop)
        ]
        for seq, i in enumerate(range(0, len(rows), 64)):
            udir.write_chunk(0, seq, rows[i : i + 64])
        udir.write_quarantine([])
        write_json_atomic(
            udir.done_marker,
            {
                "unit_id": unit.unit_id,
                "records": len(rows),
                "quarantined": 0,
                "chunks": chunk_listing(udir.scan(keep_rows=False)),
                "generation": 0,
            },
        )
    return plan.run.root


def write_jsonl_empty(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


GATHER_AT_GO = """
import json, os, sys, time
from pathlib import Path
from launcher.gather import gather
from launcher.plan.persist import load_plan
plan = load_plan(Path(sys.argv[1]))
go = Path(sys.argv[2])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
t0 = time.time()
reports = gather(plan)
print(json.dumps({"start": t0, "end": time.time(), "written": sum(len(r.files_written) for r in reports),
                  "records": sum(r.records for r in reports)}))
"""


def snapshot(out: Path) -> dict[str, tuple[int, int, bytes]]:
    files = [p for p in out.rglob("*") if p.is_file() and "runs" not in p.relative_to(out).parts]
    return {str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_two_gathers_at_once_write_the_same_result_once(finished_run: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", GATHER_AT_GO, str(finished_run), str(go)],
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)  # both have imported and loaded the plan: they start at the same instant
    go.touch()
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    first, second = sorted(results, key=lambda r: r["end"])
    assert second["start"] < first["end"], "the two gathers did not overlap"
    plan = load_plan(finished_run)
    out = plan.run.output_dir
    files = snapshot(out)
    n_groups = 2
    expected_files = n_groups * (4 + N_ROWS)  # samples, quarantine, summary, manifest + one file per user
    assert len(files) == expected_files
    assert first["written"] + second["written"] == expected_files, "every file written exactly once"
    assert first["records"] == second["records"] == n_groups * N_ROWS
    assert not [p for p in out.rglob("*.tmp")], "no temporary file left behind"
    # the bytes are what a lone gather writes, and a later gather rewrites nothing (same inode, same mtime)
    reports = gather(plan)
    assert sum(len(r.files_written) for r in reports) == 0
    assert snapshot(out) == files
    for r in reports:
        manifest = json.loads((r.out_dir / "manifest.json").read_text())
        assert manifest["records"] == N_ROWS and len(manifest["files"]) == 3 + N_ROWS


def test_two_gather_commands_at_once(finished_run: Path) -> None:
    """The same through the CLI: both succeed and print the same summary."""
    cmd = [sys.executable, "-m", "launcher", "gather", str(finished_run)]
    procs = [subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0] and f"{N_ROWS} records" in outs[0][0]


# ---- two submits at once ---------------------------------------------------------------------------------------
def test_second_submit_is_refused_while_the_first_holds_the_lock(locked_run: LockedRun) -> None:
    b = locked_run.second
    assert locked_run.second_started_in_lock, "the test did not manage to overlap the two submits"
    assert b.returncode == 2, b.stdout + b.stderr
    message = " ".join(b.stderr.split())
    assert "refused" in message and "another `launcher submit` of this run" in message and "pid" in message
    assert "launcher status" in message  # what to do next


def test_first_submit_completes_without_mixed_output(locked_run: LockedRun) -> None:
    a = locked_run.first
    assert a.returncode == 0, a.stdout + a.stderr
    run_dir = next((locked_run.out / "runs").iterdir())
    run = json.loads((run_dir / "run.json").read_text())
    assert len(run["submissions"]) == 1  # the refused submit recorded nothing
    units = sorted((run_dir / "units").iterdir())
    rows = [
        json.loads(x)["row"]
        for u in units
        for c in sorted((u / "chunks").iterdir())
        for x in c.read_text().splitlines()
    ]
    assert sorted(rows) == list(range(4))  # each record generated once, by one submission
    assert len(list((run_dir / "workers").iterdir())) == 1  # one worker process ran it
    samples = (locked_run.out / "users" / "full" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["user_id"] for x in samples] == [u["user_id"] for u in USERS[:4]]


# ---- a local run outlives its submit ------------------------------------------------------------------------
def _lock_record(run_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((run_dir / "submit.lock").read_text())
    return record


def test_second_submit_is_refused_while_local_jobs_run(tmp_path: Path, tiny_model: Path) -> None:
    """`submit` without --wait returns while the local jobs run (slowed to >= 6 s each by the test-only fault hook);
    a second submit meanwhile is refused, whatever its executor, and resubmits nothing. Once they end, a submit goes
    through: the lock does not outlive the processes."""
    data = write_jsonl(tmp_path / "users.jsonl", USERS[:4])
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        name="bg",
        data={"records_per_shard": 2},
        slurm={"jobs": 2},
        output={"dir": str(tmp_path / "out"), "chunk_records": 1},
    )
    cmd = [sys.executable, "-m", "launcher", "submit", str(spec)]
    # Output to a file, not a pipe: the local jobs inherit it, and reading a pipe to its end would wait for them.
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.run(
            cmd,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
            env={**os.environ, "LAUNCHER_FAULT_SLOW_S": "3"},
        )
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    plan = load_plan(next((tmp_path / "out" / "runs").iterdir()))
    recorded = _lock_record(plan.run.root)["local"]
    pids = [p["pid"] for p in recorded]
    assert sorted(p["task"] for p in recorded) == [0, 1] and all(p["start"] for p in recorded)
    try:
        for extra in ([], ["--executor", "slurm"]):
            second = subprocess.run([*cmd, *extra], cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stdout + second.stderr
            message = " ".join(second.stderr.split())
            assert "refused:" in message and "is still running 2 job(s) of this run" in message, message
            assert f"pids {pids[0]} {pids[1]}" in message and f"launcher status {plan.run.root}" in message
        # the refusals really overlapped the jobs, and left the record of their processes as it was
        assert not all(plan.run.unit(u.unit_id).is_done() for u in plan.units)
        assert _lock_record(plan.run.root)["local"] == recorded
        run = json.loads(plan.run.run_json.read_text())
        assert len(run["submissions"]) == 1
        deadline = time.time() + 300
        while time.time() < deadline and any(process_start(p) for p in pids):
            time.sleep(0.2)
        assert not any(process_start(p) for p in pids), "the local jobs did not end"
    finally:
        for pid in pids:
            if process_start(pid) is not None:
                os.kill(pid, signal.SIGKILL)
    third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "0 unit(s) to do, 2 already done; 0 worker job(s)" in third.stdout, (
        third.stdout + third.stderr
    )
    for unit in plan.units:  # each record generated once, in the first submission, by generation 0 of its claim
        udir = plan.run.unit(unit.unit_id)
        rows = [x["row"] for c in udir.chunk_files() for x in read_jsonl(c)]
        assert sorted(rows) == list(range(unit.start, unit.stop))
        assert udir.read_done()["generation"] == 0


def test_lock_names_a_process_by_pid_and_start_time() -> None:
    """A pid alone could be reused by another process after a crash; with the start time it names one process."""
    me = os.getpid()
    start = process_start(me)
    assert start is not None
    host = os.uname().nodename
    assert LocalProcess(me, start, 0, host).alive() is True
    assert LocalProcess(me, start + 1, 0, host).alive() is False  # same pid, another process
    assert LocalProcess(me, start, 0, host + "-elsewhere").alive() is None  # cannot tell from here
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child_start = process_start(child.pid)
    child.wait()
    assert child_start is not None and LocalProcess(child.pid, child_start, 0, host).alive() is False
