"""What issues 26, 30 and 32 added to the run folder and the outputs, against what another user of a shared folder can
plant (issue 27's promises over the newer files): inputs.json is trusted like spec.json, the prompt clock is written
once, claims' probe and witness files are private and never reached through a link or a FIFO, a heartbeat never
touches a file through a link, and gather's removal of files an earlier gather listed never deletes through a link,
in another user's folder or on another user's manifest; units.log is read and appended to only as a private plain
file, and the streamed samples file is never written or read through a link. In-process and cheap: no generation, no
engine.

Files "of another user" are chowned to a real other uid: that needs root (CI runs as root); those tests skip
otherwise.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import UntrustedFile
from launcher.gather import gather
from launcher.inputs.guard import read_record, run_clock, write_record
from launcher.plan import Plan, expand
from launcher.plan.persist import save_plan
from launcher.spec import load_spec
from launcher.store import Owner, RunDir
from launcher.store.unit_log import HEADER, UnitEvent

from .conftest import make_spec, write_jsonl
from .test_store_safety import as_root, other_uid
from .test_text_roundtrip import _finish_units, _row

YEAR_S = 365 * 24 * 3600.0


@pytest.fixture
def run(tmp_path: Path, spec_file: Path) -> RunDir:
    """A submitted run's state (spec.json, plan.json, inputs.json), without generating anything."""
    plan = expand(load_spec(spec_file))
    save_plan(plan)
    write_record(plan.run, None, "launcher submit t.yaml", "launcher submit t.yaml --new-run")
    return plan.run


# ---- inputs.json: it decides which units are refused -------------------------------------------------------------
@pytest.mark.parametrize("how", ["other owner", "group-writable", "hard link", "symlink", "fifo"])
def test_inputs_json_is_trusted_like_the_spec(run: RunDir, how: str, tmp_path: Path) -> None:
    record = run.inputs_record
    expected = {
        "other owner": "belongs to uid",
        "group-writable": "can be written by its group",
        "hard link": "2 hard links",
        "symlink": "symbolic link",
        "fifo": "FIFO",
    }[how]
    if how == "other owner":
        if os.geteuid() != 0:
            pytest.skip("planting another user's file needs root (CI runs as root)")
        os.chown(record, other_uid(), -1)
    elif how == "group-writable":
        record.chmod(0o664)
    elif how == "hard link":
        os.link(record, tmp_path / "second-name.json")
    else:
        theirs = tmp_path / "theirs.json"
        theirs.write_text(json.dumps({"identity": {}, "command": "rm -rf ~", "prompt_clock": {"epoch": 0.0}}))
        record.unlink()
        if how == "symlink":
            record.symlink_to(theirs)
        else:
            os.mkfifo(record)  # a plain reader would wait here for ever
    for reader in (read_record, run_clock):  # the worker's guard and its prompt clock read it alike
        with pytest.raises(UntrustedFile, match=expected) as refused:
            reader(run)
        assert refused.value.first.where == str(record)


def test_inputs_json_is_private_under_umask_002_in_a_setgid_folder(tmp_path: Path, spec_file: Path) -> None:
    lab = tmp_path / "out"
    lab.mkdir()
    lab.chmod(0o2775)
    old = os.umask(0o002)
    try:
        plan = expand(load_spec(spec_file))
        save_plan(plan)
        write_record(plan.run, None, "launcher submit t.yaml", None)
    finally:
        os.umask(old)
    st = plan.run.inputs_record.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
    assert read_record(plan.run)["command"] == "launcher submit t.yaml"


def _clock_of(run_root: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    out.put(run_clock(RunDir(Path(run_root))).epoch)


def test_the_prompt_clock_is_written_once_whoever_races(tmp_path: Path, spec_file: Path) -> None:
    """A run submitted without inputs.json (`launcher run`): the workers that ask at once all get the first one's
    clock, and none of them ever sees the file half-written or with a second link (which would refuse it)."""
    plan = expand(load_spec(spec_file))
    save_plan(plan)
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_clock_of, args=(str(plan.run.root), barrier, out)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 6  # none refused the file another one was writing
    epochs = {out.get(timeout=5) for _ in procs}
    assert len(epochs) == 1 and read_record(plan.run)["prompt_clock"]["epoch"] in epochs
    st = plan.run.inputs_record.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
    assert [n for n in os.listdir(plan.run.root) if n.endswith(".tmp")] == []


# ---- claims: the probe, the witness, the heartbeat ---------------------------------------------------------------
def test_claims_probe_and_witness_files_are_private_under_umask_002(tmp_path: Path, spec_file: Path) -> None:
    lab = tmp_path / "out"
    lab.mkdir()
    lab.chmod(0o2775)
    old = os.umask(0o002)
    try:
        plan = expand(load_spec(spec_file))
        save_plan(plan)
        book = plan.run.unit(plan.units[0].unit_id).claims
        me = Owner.me("0.0")
        claim = book.try_claim(me)
        assert claim is not None
        ahead = time.time() + YEAR_S  # its owner's clock a year ahead: the next observer writes a witness
        os.utime(claim.path, (ahead, ahead))
        assert book.try_claim(replace(me, worker="1.0"), lease=60) is None  # alive here: not taken over
        book.release(claim)
    finally:
        os.umask(old)
    folder = book.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(os.listdir(folder))
    assert names == ["000000.json", "000000.released", "000000.seen"]  # no probe left behind
    for name in names:
        st = (folder / name).lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name


@pytest.mark.parametrize("plant", ["symlink", "fifo", "folder"])
def test_a_planted_witness_is_never_read_or_written_through(run: RunDir, plant: str, tmp_path: Path) -> None:
    book = run.unit("u0").claims
    me = Owner.me("0.0")
    claim = book.try_claim(me)
    assert claim is not None
    ahead = time.time() + YEAR_S
    os.utime(claim.path, (ahead, ahead))
    victim = tmp_path / "victim.txt"
    victim.write_text("the owner's own file\n")
    witness = book.folder / "000000.seen"
    if plant == "symlink":
        witness.symlink_to(victim)
    elif plant == "fifo":
        os.mkfifo(witness)  # a plain reader would hang the worker here
    else:
        witness.mkdir()
    head = book.head()
    assert head is not None and head.age_s < 5  # a planted witness counts as none: from now, never "a year old"
    assert victim.read_text() == "the owner's own file\n"
    if plant != "folder":  # replaced by a rename with a witness of ours; a folder cannot be renamed over
        st = witness.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_a_heartbeat_never_touches_a_file_through_a_link(run: RunDir, tmp_path: Path) -> None:
    book = run.unit("u0").claims
    claim = book.try_claim(Owner.me("0.0"))
    assert claim is not None
    victim = tmp_path / "victim.txt"
    victim.write_text(claim.path.read_text())
    os.utime(victim, (1_000_000_000.0, 1_000_000_000.0))
    claim.path.unlink()
    claim.path.symlink_to(victim)
    book.heartbeat(claim)
    assert victim.stat().st_mtime == 1_000_000_000.0
    assert book.head() is None  # a link at a claim's name is never read as a claim


# ---- gather's removal of an earlier gather's files ---------------------------------------------------------------
def _gathered_cell(tmp_path: Path, tiny_model: Path) -> tuple[Plan, Path]:
    """A run whose units are done (two users), its cell folder made by a first gather."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"user_id": u, "context": "c"} for u in ("a", "b")])
    plan = expand(load_spec(make_spec(tmp_path, tiny_model, data)))
    _finish_units(plan, [_row(i, f"r{i}", u, "users", "p", ["s", "t"]) for i, u in enumerate(["a", "b"])])
    (report,) = gather(plan)
    return plan, report.out_dir


def _list_in_manifest(cell: Path, *names: str) -> None:
    manifest = json.loads((cell / "manifest.json").read_bytes())
    manifest["files"].update({n: {} for n in names})
    (cell / "manifest.json").write_text(json.dumps(manifest))


def test_gather_removes_a_link_it_listed_never_its_target_nor_through_a_linked_folder(
    tmp_path: Path, tiny_model: Path
) -> None:
    plan, cell = _gathered_cell(tmp_path, tiny_model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "old.json"
    victim.write_text("the owner's own file\n")
    (cell / "samples.parquet").symlink_to(victim)  # at a name the earlier gather listed: the link goes, not the file
    (cell / "users").symlink_to(elsewhere)  # a users/ replaced by a link: nothing in it is removed
    _list_in_manifest(cell, "samples.parquet", "users/old.json")
    (report,) = gather(plan)
    assert report.files_removed == ["samples.parquet"]
    assert not (cell / "samples.parquet").is_symlink() and victim.read_text() == "the owner's own file\n"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["old.json"]


@as_root
def test_gather_removes_nothing_another_users_folder_or_manifest_lists(tmp_path: Path, tiny_model: Path) -> None:
    plan, cell = _gathered_cell(tmp_path, tiny_model)
    (cell / "users").mkdir()
    (cell / "users" / "old.json").write_text("{}")
    os.chown(cell / "users", other_uid(), -1)  # their folder: refused, nothing in it removed
    (cell / "stale.json").write_text("{}")
    _list_in_manifest(cell, "users/old.json")
    (report,) = gather(plan)
    assert report.files_removed == [] and (cell / "users" / "old.json").exists()
    _list_in_manifest(cell, "stale.json")
    os.chown(cell / "manifest.json", other_uid(), -1)  # a manifest of theirs names nothing to remove
    (again,) = gather(plan)
    assert again.files_removed == [] and (cell / "stale.json").exists()
    assert (cell / "manifest.json").stat().st_uid == os.geteuid()  # and it was replaced by ours


# ---- what issue 30 added: units.log and the streamed samples file ------------------------------------------------
@pytest.mark.parametrize("plant", ["symlink", "fifo", "hard link"])
def test_units_log_planted_in_the_run_folder_is_neither_read_nor_written(
    run: RunDir, plant: str, tmp_path: Path
) -> None:
    """units.log as a run reaches it (through the checked run folder): a link, a FIFO or a hard link at its name is
    never appended to nor read (a forged `done` line would make every worker skip a unit), and a FIFO hangs nobody.
    The view then vouches for nothing: readers go to the units' own folders."""
    assert stat.S_IMODE(run.unit_log.stat().st_mode) == 0o600  # save_plan's, with its header
    theirs = tmp_path / "theirs.log"
    theirs.write_text(HEADER + UnitEvent("done", "d.full.0000", 0).line())
    before = theirs.read_bytes()
    run.unit_log.unlink()
    if plant == "symlink":
        run.unit_log.symlink_to(theirs)
    elif plant == "fifo":
        os.mkfifo(run.unit_log)
    else:
        os.link(theirs, run.unit_log)
    run.unit_events().append(UnitEvent("done", "d.full.0001", 0))
    view = run.unit_view()
    assert not view.complete and view.done == set() and view.maybe_done("d.full.0000")
    assert theirs.read_bytes() == before
    assert stat.S_ISFIFO(os.lstat(run.unit_log).st_mode) if plant == "fifo" else True


def test_units_log_is_appended_to_as_a_private_file(tmp_path: Path, spec_file: Path) -> None:
    """Under umask 002 in a setgid folder, units.log is 0600 in the 0700 run folder, and one opened up (an older
    launcher, a chmod) is made 0600 again when appended to."""
    lab = tmp_path / "out"  # the spec's output.dir
    lab.mkdir()
    lab.chmod(0o2775)
    old = os.umask(0o002)
    try:
        plan = expand(load_spec(spec_file))
        save_plan(plan)
        run = plan.run
        assert stat.S_IMODE(run.root.stat().st_mode) == 0o700
        assert stat.S_IMODE(run.unit_log.stat().st_mode) == 0o600
        run.unit_log.chmod(0o664)
        run.unit_events().append(UnitEvent("done", "d.full.0000", 0))
    finally:
        os.umask(old)
    assert stat.S_IMODE(run.unit_log.stat().st_mode) == 0o600
    assert run.unit_view().done == {"d.full.0000"}


def test_streamed_samples_are_never_written_or_read_through_a_link(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gather streams samples.jsonl into a temporary it creates with O_EXCL in the checked cell folder, then renames
    it into place. A link planted at a temporary name it draws is refused (it draws again, the link's target is not
    touched); a link at the final name is replaced, never written through, and never read as "already holds these
    bytes" even when its target does."""
    import launcher.store.fs as fs

    plan, cell = _gathered_cell(tmp_path, tiny_model)
    samples = cell / "samples.jsonl"
    good, mode = samples.read_bytes(), stat.S_IMODE((cell / "quarantine.jsonl").stat().st_mode)
    victim = tmp_path / "victim.jsonl"
    victim.write_bytes(good)  # the same bytes: a comparison through the link would skip the write
    samples.unlink()
    samples.symlink_to(victim)
    guessed = ".samples.jsonl.guessed.tmp"
    (cell / guessed).symlink_to(victim)
    draws: list[str] = []
    real_temp_name = fs.temp_name

    def temp_name(name: str) -> str:  # the first name drawn for the samples is the one planted
        draws.append(name)
        return guessed if draws.count("samples.jsonl") == 1 and name == "samples.jsonl" else real_temp_name(name)

    monkeypatch.setattr(fs, "temp_name", temp_name)
    victim.chmod(0o444)  # had anything written through a link, it would fail loudly too
    (report,) = gather(plan)
    assert draws.count("samples.jsonl") == 2  # the planted name refused (O_EXCL), a second one drawn
    assert "samples.jsonl" in report.files_written
    assert not samples.is_symlink() and samples.read_bytes() == good
    assert stat.S_IMODE(samples.stat().st_mode) == mode  # output.share's, as every other file of the cell
    assert victim.read_bytes() == good and (cell / guessed).is_symlink()
    assert not [n for n in os.listdir(cell) if n.endswith(".tmp") and n != guessed]  # no temporary left behind
