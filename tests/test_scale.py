"""Scale (issue 30, docs/scale.md): units.log, the claim cursor, status from the log, one measurer of the prompt
statistics, and the scale benchmark itself at 32 workers x 500 units (real worker processes on a real run directory,
a FakeEngine as the only stand-in: no GPU here). Counts of metadata operations are real (bench/op_count.py).

Cost: the benchmark test ~30-60 s on 2 loaded cores (32 forked workers, `launcher status` twice and `launcher gather`
as subprocesses); the rest a few seconds together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from launcher.bench.scale import ScaleShape, run_scale, write_run
from launcher.job.claim_cursor import TAKEOVER_PROBES, ClaimCursor
from launcher.store import Claim, Owner, RunDir
from launcher.store.claims import process_start
from launcher.store.unit_log import HEADER, UnitEvent, UnitLog, UnitView, claim_event


def in_child(fn: Callable[[], Any]) -> Any:
    """fn() in a forked process (its audit hooks and patches die with it), its JSON result back."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            out = json.dumps({"ok": fn()})
        except BaseException:
            out, code = json.dumps({"error": traceback.format_exc()}), 1
        with os.fdopen(w, "w") as f:
            f.write(out)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read() or '{"error": "no result"}')
    os.waitpid(pid, 0)
    assert "error" not in got, got.get("error")
    return got["ok"]


@pytest.mark.slow
def test_scale_bench_32_workers_500_units(tmp_path: Path, tiny_model: Path) -> None:
    """Real workers: every record exactly once, no unit held by two at a time, a bounded number of metadata
    operations per claim, status and gather answer."""
    shape = ScaleShape(workers=32, units=500, records_per_unit=2, latency_s=0.25, ablations=10)
    row = run_scale(tmp_path, shape, timeout_s=600, model=tiny_model)
    assert row["errors"] == []
    assert row["claims"] == 500
    assert (row["double_claims"], row["lost"], row["duplicated"]) == (0, 0, 0)
    assert row["generated"] == row["records"] == 1000
    assert row["metadata_ops_per_claim"] <= 10, row["claim_ops_by_kind"]
    assert row["status_ok"] and row["gather_ok"], row["gather_error"]


def _owner(slot: str, pid: int | None = None, host: str | None = None) -> Owner:
    me = Owner.me(slot)
    pid = os.getpid() if pid is None else pid
    start = process_start(pid) if pid == os.getpid() else 12345
    return Owner(slot, host or me.host, pid, start, me.pid_ns, None, 0)


def _claim(log: UnitLog, unit: str, owner: Owner, generation: int = 0) -> None:
    log.append(claim_event(unit, Claim(generation, Path("x"), owner)))


def test_unit_log_lines_from_many_processes_stay_whole(tmp_path: Path) -> None:
    log = UnitLog(tmp_path / "units.log")
    assert log.create() and not log.create()  # a resubmit keeps the log
    pids = []
    for k in range(6):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for i in range(300):
                    _claim(log, f"d.a{k}.{i:04d}", _owner(f"{k}.0"), i % 3)
                    log.append(UnitEvent("done", f"d.a{k}.{i:04d}", i % 3))
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    assert all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids)
    view = UnitView(log)
    view.refresh()
    assert view.complete and view.bad_lines == 0 and view.events == 6 * 600
    assert len(view.done) == 1800 and not view.holder


def test_unit_log_drops_torn_and_foreign_lines_and_reads_incrementally(tmp_path: Path) -> None:
    log = UnitLog(tmp_path / "units.log")
    log.create()
    _claim(log, "d.full.0000", _owner("0.0"))
    good = UnitEvent("done", "d.full.0001", 0).line().encode()
    with open(log.path, "ab") as f:
        f.write(good[:-12] + b"\n")  # torn: its checksum is cut
        f.write(good.replace(b"0001", b"0002"))  # changed after the checksum was taken
        f.write(b"done 0 d.full.0003 - - - - - 0000zzzz\n")  # not a checksum
        f.write(b"\x00\xff\xfe garbage \r \xe2\x80\xa8 \xc2\x85 \x1c\x1d\x1e\n")  # not UTF-8, line separators
        f.write("claim 0 d.full.\u2028x 0.0 h 1 - - 0\n".encode())
        f.write(good[:20])  # a line being written this instant: no newline yet
    view = UnitView(log)
    view.refresh()
    assert view.events == 1 and view.bad_lines == 5 and "d.full.0001" not in view.done
    with open(log.path, "ab") as f:
        f.write(good[20:])  # the rest of that line arrives
    assert view.refresh() == 1 and view.done == {"d.full.0001"}
    log.append(UnitEvent("reopen", "d.full.0001", -1))
    assert view.refresh() == 1 and view.done == set()


def test_unit_log_without_header_vouches_for_nothing(tmp_path: Path) -> None:
    """A run planned before units.log existed: its units may be done or failed without a line saying so."""
    log = UnitLog(tmp_path / "units.log")
    _claim(log, "d.full.0000", _owner("0.0"))  # appending creates the file, without the header
    view = UnitView(log)
    view.refresh()
    assert not view.complete and view.maybe_done("d.full.0009")
    fresh = UnitView(UnitLog(tmp_path / "new.log"))
    UnitLog(tmp_path / "new.log").create()
    fresh.refresh()
    assert fresh.complete and not fresh.maybe_done("d.full.0009")


def test_unit_log_symlink_is_neither_read_nor_written(tmp_path: Path) -> None:
    """Another user of a group-writable folder plants units.log as a link: nothing is read through it, nothing
    appended to its target; readers fall back to the units' folders."""
    target = tmp_path / "elsewhere.log"
    target.write_text(HEADER + UnitEvent("done", "d.full.0000", 0).line())
    (tmp_path / "units.log").symlink_to(target)
    before = target.read_bytes()
    UnitLog(tmp_path / "units.log").append(UnitEvent("done", "d.full.0001", 0))
    assert target.read_bytes() == before
    view = UnitView(UnitLog(tmp_path / "units.log"))
    view.refresh()
    assert not view.complete and view.done == set() and view.maybe_done("d.full.0000")


def test_unit_log_of_another_user_is_neither_read_nor_written(tmp_path: Path) -> None:
    """In a group-writable folder another user replaces units.log with theirs, claiming every unit done."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    path = tmp_path / "units.log"
    path.write_text(HEADER + UnitEvent("done", "d.full.0000", 0).line())
    os.chown(path, 65534, 65534)
    before = path.read_bytes()
    UnitLog(path).append(UnitEvent("done", "d.full.0001", 0))
    assert path.read_bytes() == before
    view = UnitView(UnitLog(path))
    view.refresh()
    assert view.done == set() and not view.complete and view.maybe_done("d.full.0000")


class _U:
    def __init__(self, uid: str) -> None:
        self.unit_id = uid


def _cursor(tmp_path: Path, position: int, workers: int, slot: str = "w") -> tuple[ClaimCursor, UnitLog]:
    log = UnitLog(tmp_path / "units.log")
    log.create()
    view = UnitView(log)
    return ClaimCursor(view, _owner(slot), position, workers), log


def offered(cur: ClaimCursor, units: list[_U]) -> list[str]:
    """What a worker that loses every race is offered, in order."""
    out = []
    for u in cur.walk(units):
        out.append(u.unit_id)
        cur.taken(u.unit_id)
    return out


def test_cursor_spreads_workers_and_skips_what_the_log_knows(tmp_path: Path) -> None:
    units = [_U(f"u{i:02d}") for i in range(20)]
    a, log = _cursor(tmp_path, 0, 4, "0.0")
    b = ClaimCursor(UnitView(log), _owner("1.0"), 1, 4)
    assert offered(a, units)[:5] == ["u00", "u04", "u08", "u12", "u16"]
    assert offered(b, units)[:5] == ["u01", "u05", "u09", "u13", "u17"]
    log.append(UnitEvent("done", "u01", 0))
    _claim(log, "u05", _owner("3.0"))  # held by a live process (this one)
    b.view.refresh()  # (a worker reads the log again at most once a second, and after each lost race)
    got = offered(b, units)
    assert "u01" not in got and "u05" not in got and got[:3] == ["u09", "u13", "u17"]
    assert got[3] in {"u16", "u18", "u19"}  # its stride used up: the END of another's stride


def test_cursor_does_not_offer_what_it_was_given_again(tmp_path: Path) -> None:
    units = [_U(f"u{i}") for i in range(3)]
    cur, _ = _cursor(tmp_path, 0, 1)
    first = next(iter(cur.walk(units)))  # the worker claimed it (no taken())
    assert first.unit_id not in [u.unit_id for u in cur.walk(units)]


def test_cursor_vets_prefix_partners_claimed_outside_its_walk(tmp_path: Path) -> None:
    """A prefix group's members are claimed beside the unit the walk offered: one the log says is done or held by a
    live worker is not tried; one claimed that way is never offered again."""
    units = [_U(f"u{i}") for i in range(4)]
    cur, log = _cursor(tmp_path, 0, 1, "0.0")
    log.append(UnitEvent("done", "u1", 0))
    _claim(log, "u2", _owner("5.0"))  # this host, alive (this process)
    cur.view.refresh()
    assert [cur.worth_a_try(u.unit_id) for u in units] == [True, False, False, True]
    cur.claimed("u3")
    assert not cur.worth_a_try("u3") and offered(cur, units) == ["u0"]


def test_cursor_takeovers_come_last_and_are_bounded(tmp_path: Path) -> None:
    units = [_U(f"u{i:02d}") for i in range(40)]
    cur, log = _cursor(tmp_path, 0, 1, "0.0")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _claim(log, "u00", _owner("7.0", pid=dead.pid))  # this host, its process gone: dead at once
    _claim(log, "u01", _owner("0.0", pid=dead.pid))  # an earlier run of this very slot (a requeue)
    _claim(log, "u02", _owner("5.0"))  # this host, alive (this process)
    for i in range(3, 40):
        _claim(log, f"u{i:02d}", _owner(f"{i}.0", host="another-node"))
    got = offered(cur, units)
    assert got[0] == "u01"  # a requeued slot takes its own unit back with its stride
    assert "u00" in got and "u02" not in got
    assert len([u for u in got if u not in ("u00", "u01")]) == TAKEOVER_PROBES


def _finished_run(tmp_path: Path, model: Path, units: int, header: bool = True) -> Path:
    """A planned run whose units.log says every unit was done at its first claim (no unit folder at all: status
    must not need them)."""
    run_dir = write_run(ScaleShape(4, units, records_per_unit=1, ablations=10), tmp_path, model)
    log = UnitLog(RunDir(run_dir).unit_log)
    if not header:
        log.path.unlink()
    plan = json.loads((run_dir / "plan.json").read_text())
    owner = _owner("0.0")
    for row in plan["units"]:
        _claim(log, row[1], owner)
        log.append(UnitEvent("done", row[1], 0))
    return run_dir


def _status_ops(run_dir: Path) -> dict[str, Any]:
    """collect() on the run, its metadata operations under the run directory counted."""

    def measure() -> dict[str, Any]:
        from launcher.bench.op_count import install
        from launcher.submit.status import collect

        counter = install(str(run_dir))
        status = collect(run_dir)
        return {"ops": counter.total(), "counts": status.counts}

    result: dict[str, Any] = in_child(measure)
    return result


def test_status_of_2000_units_reads_the_log_not_the_folders(tmp_path: Path, tiny_model: Path) -> None:
    run_dir = _finished_run(tmp_path, tiny_model, 2000)
    got = _status_ops(run_dir)
    assert got["counts"] == {"DONE": 2000}
    assert got["ops"] < 60, got  # spec, plan, run.json, units.log, jobs/, workers/: not one per unit


def test_status_of_running_units_comes_from_their_workers_reports(tmp_path: Path, tiny_model: Path) -> None:
    """Units held at their first claim by a live worker: RUNNING from its report, their folders not read; a unit
    whose holder has gone quiet is read from its folder (no claim file there: PENDING)."""
    run_dir = write_run(ScaleShape(4, 200, records_per_unit=2, ablations=10), tmp_path, tiny_model)
    run = RunDir(run_dir)
    log = UnitLog(run.unit_log)
    units = [row[1] for row in json.loads(run.plan_json.read_text())["units"]]
    live, quiet = _owner("1.0"), _owner("2.0")
    for uid in units[:100]:
        _claim(log, uid, live)
    _claim(log, units[100], quiet)
    run.workers.mkdir()
    for slot, held, beat in (("1.0", units[:100], time.time()), ("2.0", [units[100]], time.time() - 3600)):
        report = {"slot": slot, "heartbeat_at": beat, "started": beat, "ended": None, "current_units": held}
        report["unit_windows"] = {u: [beat, None, 1, 4] for u in held}  # 1 sample of num_samples 1: 1 record
        (run.workers / f"{slot}-r0-1.json").write_text(json.dumps(report))
    got = _status_ops(run_dir)
    assert got["counts"] == {"RUNNING": 100, "PENDING": 100}, got
    assert got["ops"] < 60, got


def test_status_without_a_complete_log_reads_every_folder(tmp_path: Path, tiny_model: Path) -> None:
    run_dir = _finished_run(tmp_path, tiny_model, 200, header=False)
    got = _status_ops(run_dir)
    assert got["counts"] == {"PENDING": 200}  # no done.json anywhere: the log alone is not believed
    assert got["ops"] >= 200


def test_prompt_stats_are_measured_by_one_worker(tmp_path: Path, tiny_model: Path) -> None:
    """Four workers start at once: one measures the run's prompts and keeps them; the others do not wait for it (their
    engine starts from a bound and is refined later: job/prompt_stats.py), and what they got agrees with the file."""
    from launcher.job import prepare, prompt_stats
    from launcher.plan.persist import load_plan

    run_dir = write_run(ScaleShape(4, 60, records_per_unit=2, ablations=10), tmp_path, tiny_model)
    plan = load_plan(run_dir)
    tokenizer = prepare.load_tokenizer(plan.spec)
    marks = tmp_path / "measured"
    marks.mkdir()

    def worker() -> dict[str, list[float]]:
        real = prepare.Preparer.stats_of

        def counted(self: prepare.Preparer, units: Any, tick: Any = lambda: None) -> Any:
            (marks / str(os.getpid())).touch()
            return real(self, units, tick)

        prepare.Preparer.stats_of = counted  # type: ignore[method-assign]
        return prompt_stats.prompt_stats(plan, prepare.Preparer(plan.spec, tokenizer))

    pids, results = [], tmp_path / "results"
    results.mkdir()
    for k in range(4):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                (results / f"{k}.json").write_text(json.dumps(worker(), sort_keys=True))
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    assert all(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) == 0 for p in pids)
    assert len(list(marks.iterdir())) == 1
    kept = json.loads(plan.run.prompt_stats.read_text())["units"]
    assert len(kept) == 60 and all(v[0] == 2 and v[1] > 0 for v in kept.values())
    got = [json.loads(p.read_text()) for p in results.iterdir()]
    assert sum(len(g) == 60 for g in got) >= 1  # the measurer's; the others' may be empty, never different
    assert all(kept[u] == v for g in got for u, v in g.items())
    assert in_child(worker) == kept and len(list(marks.iterdir())) == 1  # measured once: a later worker reads it


def test_a_worker_that_does_not_measure_sizes_from_its_first_unit_then_refines(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Another live worker holds the measurer's claim: this one does not wait for it. Its engine's admission comes from
    its first unit's prompts, and is refined from the run's statistics once their file is there."""
    run_dir = write_run(ScaleShape(1, 10, records_per_unit=2, ablations=10), tmp_path, tiny_model)
    run = RunDir(run_dir)
    assert run.prompt_stats_book().try_claim(Owner.me("prompt-stats")) is not None  # alive: this process

    def worker() -> dict[str, Any]:
        import launcher.job.worker as worker_module
        from launcher.bench.fake_engine import FakeEngine, use_fake_engine
        from launcher.job.prepare import Preparer, load_tokenizer
        from launcher.job.prompt_stats import prompt_stats
        from launcher.plan.layout import ParallelLayout

        use_fake_engine(0.0, 4)
        refined: list[int] = []
        FakeEngine.refine = lambda self, workload: refined.append(workload.prompts)  # type: ignore[method-assign]
        worker_module.RUN_STATS_EVERY_S = 0.0
        real_next = worker_module.Worker._claim_next

        def claim_next(self: Any, preparer: Any) -> Any:
            if not run.prompt_stats.exists():  # the measuring worker finishes while this one generates
                book = run.prompt_stats_book()
                held = book.head()
                assert held is not None
                book.release(held)
                prompt_stats(self.plan, Preparer(self.spec, load_tokenizer(self.spec)))
            return real_next(self, preparer)

        worker_module.Worker._claim_next = claim_next  # type: ignore[method-assign]
        w = worker_module.Worker(worker_module.WorkerConfig(run_dir, 0, 0, ParallelLayout(1, 1, (), "test")))
        report = w.run()
        return {"refined": refined, "state": report["state"], "workload": report.get("workload")}

    got = in_child(worker)
    assert got["state"] == "done"
    assert got["refined"][0] == 2  # its first unit's 2 records: not the run's 20, not waited for
    assert got["refined"][1] >= 18 and got["workload"]["prompts"] == got["refined"][1], got  # the run's, when in


def test_a_claim_of_a_fresh_unit_costs_few_operations(tmp_path: Path, tiny_model: Path) -> None:
    """One worker claims three units in turn, counted: the refresh of units.log, the claim's listdir, mkdirs and
    O_EXCL create; no stat of a done marker, no failures, chunks or quarantine for a unit never claimed."""
    run_dir = write_run(ScaleShape(2, 20, records_per_unit=1, ablations=10), tmp_path, tiny_model)

    def claims() -> list[dict[str, int]]:
        from launcher.bench.op_count import install
        from launcher.job.prepare import Preparer, load_tokenizer
        from launcher.job.worker import Worker, WorkerConfig
        from launcher.plan.layout import ParallelLayout

        counter = install(str(run_dir))
        w = Worker(WorkerConfig(run_dir, 0, 0, ParallelLayout(1, 1, (), "test")))
        p = Preparer(w.spec, load_tokenizer(w.spec))
        ops = []
        for _ in range(3):
            before = counter.as_dict().get("claim", {})
            with counter.phase("claim"):
                assert w._claim_next(p)  # a group of one unit
            after = counter.as_dict()["claim"]
            ops.append({k: after[k] - before.get(k, 0) for k in after})
        return ops

    ops = in_child(claims)
    for claim in ops[1:]:  # the first one also creates units/
        metadata = {k: v for k, v in claim.items() if k not in ("lock", "fsync") and v}
        assert sum(metadata.values()) <= 6, claim
        assert "stat" not in metadata, claim  # no done marker looked for
