"""The store against what another user of a shared folder can plant, by class: a link at a temporary or final name,
a FIFO, a device or a folder where a file belongs, another user's file, a group-writable or hard-linked one, a
replaced folder, very long names (store/fs.py). In-process and cheap (no generation); the same attacks by real
users, on the local executor and the live Slurm, are in tests/test_shared_folder.py.

Files "of another user" are chowned to a real other uid: that needs root (CI runs as root); those tests skip
otherwise.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
import threading
from pathlib import Path

import pytest

from launcher.errors import UntrustedFile
from launcher.plan import expand
from launcher.plan.persist import load_plan, save_plan
from launcher.spec import load_spec
from launcher.store import OutputDir, RunDir, read_json, write_atomic
from launcher.store.fs import NAME_MAX, PRIVATE, Folder, plain_folder
from launcher.submit.lock import submit_lock

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root (CI runs as root)")


def other_uid() -> int:
    for name in ("labmate", "slurmtest", "nobody"):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    return 4242


@pytest.fixture
def run(tmp_path: Path, spec_file: Path) -> RunDir:
    """A submitted run's state (spec.json, plan.json), without generating anything."""
    plan = expand(load_spec(spec_file))
    save_plan(plan)
    return plan.run


def test_temporary_names_cannot_be_guessed_and_a_planted_link_is_replaced(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the other user's file\n")
    target = tmp_path / "out" / "container.json"
    target.parent.mkdir()
    # every name the old writer would have used (".name.host.pid.tid.tmp", ".name.pid.tmp") points at the victim
    for guess in (
        f".{target.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp",
        f".{target.name}.{os.getpid()}.tmp",
    ):
        (target.parent / guess).symlink_to(victim)
    target.symlink_to(victim)  # and the final name too
    write_atomic(target, b'{"env": {"TOKEN": "s3cret"}}', mode=0o600)
    assert victim.read_text() == "the other user's file\n"
    st = target.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600  # a file of ours, 0600 whatever the umask
    leftovers = [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == []
    (target.parent / "results.jsonl").mkdir()  # a folder planted where a file goes: refused by name, not a traceback
    with pytest.raises(UntrustedFile, match="is a folder, where a file belongs"):
        write_atomic(target.parent / "results.jsonl", b"{}")


@pytest.mark.parametrize("plant", ["symlink", "fifo", "folder"])
def test_a_spec_that_is_not_a_plain_file_is_refused_without_hanging(run: RunDir, plant: str) -> None:
    run.spec_json.unlink()
    if plant == "symlink":
        elsewhere = run.root.parent.parent / "elsewhere.json"
        elsewhere.write_text("{}")
        run.spec_json.symlink_to(elsewhere)
    elif plant == "fifo":
        os.mkfifo(run.spec_json)  # a reader that opened it plainly would wait here forever
    else:
        run.spec_json.mkdir()
    with pytest.raises(UntrustedFile) as refused:
        load_plan(run.root)
    assert refused.value.first.where == str(run.spec_json)
    assert {"symlink": "symbolic link", "fifo": "FIFO", "folder": "a folder"}[plant] in str(refused.value)
    assert refused.value.exit_code == 2 and "fix" in str(refused.value)


@as_root
def test_a_character_device_at_a_file_name_is_refused(run: RunDir) -> None:
    run.plan_json.unlink()
    os.mknod(run.plan_json, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    with pytest.raises(UntrustedFile, match="character device"):
        load_plan(run.root)


@as_root
@pytest.mark.parametrize("how", ["other owner", "group-writable", "hard link"])
def test_a_trusted_file_must_be_yours_alone(run: RunDir, how: str) -> None:
    if how == "other owner":
        os.chown(run.plan_json, other_uid(), -1)
        expected = "belongs to uid"
    elif how == "group-writable":
        run.plan_json.chmod(0o664)
        expected = "can be written by its group"
    else:
        os.link(run.plan_json, run.root.parent.parent / "second-name.json")
        expected = "2 hard links"
    with pytest.raises(UntrustedFile, match=expected):
        load_plan(run.root)
    if how == "other owner":  # a display reader ignores another user's file (logged), and never crashes on it
        assert read_json(run.plan_json, run.folder_at) == {}


def test_the_run_folder_is_private_whatever_the_umask_and_a_setgid_parent(tmp_path: Path, spec_file: Path) -> None:
    shared = tmp_path / "out"
    shared.mkdir()
    shared.chmod(0o2775)  # a lab's folder: group-writable, setgid
    old = os.umask(0o002)
    try:
        plan = expand(load_spec(spec_file))
        save_plan(plan)
        plan.run.write_json(plan.run.unit("u").failures / "x.json", {"a": 1})
    finally:
        os.umask(old)
    for path in [plan.run.root, *plan.run.root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {mode:o}"
    assert stat.S_IMODE((shared / "runs").stat().st_mode) == 0o700


def test_a_run_folder_an_older_launcher_left_open_is_closed_again(run: RunDir, spec_file: Path) -> None:
    run.root.chmod(0o2775)
    (run.root / "units").mkdir(mode=0o775)
    (run.root / "units").chmod(0o775)
    save_plan(expand(load_spec(spec_file)))  # a resubmit
    assert stat.S_IMODE(run.root.stat().st_mode) == 0o700
    run.write_json(run.units / "x.json", {})
    assert stat.S_IMODE((run.root / "units").stat().st_mode) & 0o022 == 0


@as_root
@pytest.mark.parametrize("plant", ["a link", "another user's folder"])
def test_a_replaced_run_folder_is_refused(run: RunDir, plant: str, tmp_path: Path) -> None:
    moved = run.root.with_name("moved-away")
    run.root.rename(moved)
    if plant == "a link":
        run.root.symlink_to(moved)  # even a link to the user's own run is not followed
    else:
        run.root.mkdir()
        (run.root / "spec.json").write_text((moved / "spec.json").read_text())
        os.chown(run.root, other_uid(), -1)
    with pytest.raises(UntrustedFile) as refused:
        load_plan(run.root)
    assert refused.value.first.where == str(run.root)
    with pytest.raises(UntrustedFile):
        run.write_json(run.prompt_stats, {"units": {}})
    assert not (moved / "prompt_stats.json").exists() and not (run.root / "prompt_stats.json").exists()


@pytest.mark.parametrize("plant", ["symlink", "hard link", "fifo"])
def test_the_submit_lock_is_never_opened_through_a_planted_name(run: RunDir, plant: str, tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("a file of the owner's\n")
    if plant == "symlink":
        run.submit_lock.symlink_to(precious)
    elif plant == "hard link":
        os.link(precious, run.submit_lock)
    else:
        os.mkfifo(run.submit_lock)
    with pytest.raises(UntrustedFile) as refused, submit_lock(run.submit_lock):
        pass
    assert refused.value.first.where == str(run.submit_lock)
    assert precious.read_text() == "a file of the owner's\n"  # not truncated through the planted name


@pytest.mark.parametrize("plant", ["symlink", "file"])
def test_gather_refuses_a_cell_folder_that_is_not_a_folder_of_yours(tmp_path: Path, plant: str) -> None:
    out = tmp_path / "out"
    elsewhere = tmp_path / "theirs"
    elsewhere.mkdir()
    out.mkdir()
    if plant == "symlink":
        (out / "users").symlink_to(elsewhere)
    else:
        (out / "users").write_text("")
    with pytest.raises(UntrustedFile, match="where a folder of yours belongs"):
        OutputDir(out).folder("users/full", create=True)
    assert list(elsewhere.iterdir()) == []


@as_root
def test_gather_refuses_a_cell_folder_of_another_user(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "users" / "full").mkdir(parents=True)
    os.chown(out / "users", other_uid(), -1)
    with pytest.raises(UntrustedFile, match="belongs to uid"):
        OutputDir(out).folder("users/full", create=True)


def test_outputs_are_never_writable_by_others_under_umask_002(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    lab.chmod(0o2775)
    old = os.umask(0o002)
    try:
        for outputs in (OutputDir(lab / "out"), OutputDir(lab / "mine", share="private")):
            outputs.create()  # a submit makes the output folder; gather then writes the cells in it
            write_atomic(outputs.cell("users/full").summary, b"{}", opener=outputs.opener)
    finally:
        os.umask(old)
    for path in [lab / "out", *(lab / "out").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o022 == 0 and mode & 0o040, f"{path}: {mode:o} (group-readable, writable by nobody else)"
        assert path.stat().st_gid == lab.stat().st_gid
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in [lab / "mine", *(lab / "mine").rglob("*")])


def test_very_long_and_odd_names(tmp_path: Path) -> None:
    longest = "é" * 127  # 254 bytes: the temporary name must still fit in NAME_MAX
    write_atomic(tmp_path / longest, b"x")
    assert (tmp_path / longest).read_bytes() == b"x"
    for odd in ("a\nb", "line\u2028sep", "\x1c\x1d\x1e", "tab\tand space"):
        write_atomic(tmp_path / odd, odd.encode())
        assert (tmp_path / odd).read_bytes() == odd.encode()
    with pytest.raises(OSError, match="too long"):
        write_atomic(tmp_path / ("x" * (NAME_MAX + 1)), b"x")
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with Folder.anchor(tmp_path, PRIVATE) as folder, pytest.raises(UntrustedFile):
        folder.write_atomic("../escape", b"x")
    with plain_folder(tmp_path) as folder, pytest.raises(UntrustedFile):
        folder.child("..")
