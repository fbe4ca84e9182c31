"""Regression test for what the fault campaign's disk-full trials found: a job whose chunk write hit ENOSPC crashed,
could not record its failure on that same full disk, so it was never retried and its records were lost. Now a
write inside a job (a chunk, a done marker, a claim's report) waits out full or read-only storage (bounded), and
outside a job fails at once as before.

Real mounts (a tmpfs that really fills, a bind mount really remounted read-only): needs root, as the campaign does.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.store.atomic import STORAGE_WAIT_VAR, write_atomic

from . import cluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs and a read-only bind mount: needs root")

DATA = b"".join(b'{"row": %d, "generated_samples": ["a b c"]}\n' % i for i in range(100))  # ~4.5 KB: two pages


@pytest.fixture
def in_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a Slurm job has (the wait applies inside jobs only), with a short, explicit bound."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv(STORAGE_WAIT_VAR, "60")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with a ballast file filling it to the last byte."""
    disk = tmp_path / "disk"
    with cluster.tmpfs(disk, 64 * 1024):
        with open(disk / "ballast", "wb", buffering=0) as f:  # unbuffered: close() has nothing left to fail on
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield disk


def write_in_thread(path: Path) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            write_atomic(path, DATA)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


@pytest.mark.usefixtures("in_job")
def test_a_write_in_a_job_waits_until_the_disk_has_room(full_disk: Path) -> None:
    target = full_disk / "chunks" / "000000-000000-0123456789abcdef.jsonl"
    thread, errors = write_in_thread(target)
    time.sleep(1.5)
    assert thread.is_alive() and not errors, f"gave up on a full disk instead of waiting: {errors}"
    assert not target.exists(), "nothing half-written is visible under the final name"
    (full_disk / "ballast").unlink()  # room again, as when a user cleans up or a quota is raised
    thread.join(30)
    assert not thread.is_alive() and not errors, errors
    assert target.read_bytes() == DATA
    assert leftovers(target.parent) == []


@pytest.mark.usefixtures("in_job")
def test_a_write_in_a_job_waits_until_the_storage_is_writable_again(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "units" / "ds.full.0000").mkdir(parents=True)
    target = shared / "units" / "ds.full.0000" / "done.json"
    with cluster.read_only(shared):
        thread, errors = write_in_thread(target)
        time.sleep(1.5)
        assert thread.is_alive() and not errors, f"gave up on read-only storage instead of waiting: {errors}"
    thread.join(30)
    assert not thread.is_alive() and not errors, errors
    assert target.read_bytes() == DATA
    assert leftovers(target.parent) == []


def test_outside_a_job_a_full_disk_fails_at_once(full_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(STORAGE_WAIT_VAR, raising=False)
    target = full_disk / "plan.json"
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        write_atomic(target, DATA)
    assert info.value.errno == errno.ENOSPC and time.monotonic() - t0 < 1.0
    assert not target.exists() and leftovers(full_disk) == []


def test_the_wait_is_bounded(full_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv(STORAGE_WAIT_VAR, "1.5")
    t0 = time.monotonic()
    with pytest.raises(OSError) as info:
        write_atomic(full_disk / "chunk.jsonl", DATA)
    waited = time.monotonic() - t0
    assert info.value.errno == errno.ENOSPC and 1.5 <= waited < 5.0, waited
