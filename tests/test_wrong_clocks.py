"""Claims survive a wrong clock (issue 26, part 6): a claim stamped in the future is taken over after a lease counted
from when it was first seen, a heartbeat keeps a skewed owner alive, the observer's own wall clock jumping moves
nothing, and a claim stamped years ago is simply old. In-process, on real files: each test takes well under 1 s."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.store import ClaimBook, Owner
from launcher.store.claim_clock import WITNESS_SUFFIX
from launcher.store.claims import owner_is_dead

YEAR_S = 365 * 24 * 3600.0


def remote_claim(folder: Path, generation: int = 0, mtime: float | None = None) -> tuple[Path, Owner]:
    """A claim written by a worker on another node (only the lease can judge it), stamped `mtime`."""
    me = Owner.me("0.0")
    other = replace(me, worker="1.0", host="skewed-node", pid=1, pid_ns="ns-elsewhere")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{generation:06d}.json"
    path.write_text(json.dumps(other.__dict__))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path, me


def age_witness(claim: Path, seconds: float) -> None:
    """As if the first observer had seen this stamp `seconds` ago."""
    witness = claim.with_name(claim.stem + WITNESS_SUFFIX)
    t = time.time() - seconds
    os.utime(witness, (t, t))


def test_a_claim_stamped_in_the_future_is_taken_over_after_a_lease_from_first_sight(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path / "claims")
    path, me = remote_claim(book.folder, mtime=time.time() + YEAR_S)
    head = book.head()
    assert head is not None and head.age_s < 5  # before: age 0 for a year, and the unit stuck for that year
    assert book.try_claim(me, lease=60) is None  # first sight: it may be a live owner with a clock ahead
    assert path.with_name("000000" + WITNESS_SUFFIX).exists()
    age_witness(path, 200)  # first seen 200 s ago, untouched since: dead by the lease
    taken = book.try_claim(me, lease=60)
    assert taken is not None and taken.generation == 1 and book.still_mine(taken)
    # exactly once: another observer that judged the same owner dead races for the same generation and loses
    assert ClaimBook(book.folder).try_claim(replace(me, worker="2.0"), lease=60) is None


def test_a_heartbeat_keeps_an_owner_with_a_clock_ahead_alive(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path / "claims")
    ahead = time.time() + 3600
    path, me = remote_claim(book.folder, mtime=ahead)
    assert book.try_claim(me, lease=60) is None
    age_witness(path, 200)
    os.utime(path, (ahead + 5, ahead + 5))  # its next heartbeat, by the same clock an hour ahead
    head = book.head()
    assert head is not None and head.age_s < 5 and not owner_is_dead(head, me, lease=60)
    assert book.try_claim(me, lease=60) is None


def test_a_future_stamp_ages_on_the_observers_monotonic_clock(tmp_path: Path) -> None:
    """A worker that looks again later (no witness file needed: it may be unwritable) counts the time itself."""
    book = ClaimBook(tmp_path / "claims")
    _, me = remote_claim(book.folder, mtime=time.time() + YEAR_S)
    assert book.try_claim(me, lease=0.3) is None
    time.sleep(0.4)
    taken = book.try_claim(me, lease=0.3)
    assert taken is not None and taken.generation == 1


def test_the_observers_wall_clock_jumping_moves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ages are read on the storage's clock (a file stamped now), carried by time.monotonic(): a node whose clock
    jumps a year ahead does not take every live claim for dead, nor one that jumps back keep a dead one alive."""
    live = ClaimBook(tmp_path / "live")
    _, me = remote_claim(live.folder)  # just touched
    dead = ClaimBook(tmp_path / "dead")
    remote_claim(dead.folder, mtime=time.time() - 600)  # untouched for 10 minutes
    real = time.time
    for jump in (YEAR_S, -YEAR_S):
        monkeypatch.setattr(time, "time", lambda jump=jump: real() + jump)
        head = live.head()
        assert head is not None and head.age_s < 5 and not owner_is_dead(head, me, lease=60)
        head = dead.head()
        assert head is not None and 590 < head.age_s < 700 and owner_is_dead(head, me, lease=60)


def test_a_claim_stamped_years_ago_is_old(tmp_path: Path) -> None:
    book = ClaimBook(tmp_path / "claims")
    _, me = remote_claim(book.folder, mtime=946_684_800.0)  # 2000-01-01
    head = book.head()
    assert head is not None and head.age_s > 20 * YEAR_S
    taken = book.try_claim(me, lease=120)
    assert taken is not None and taken.generation == 1


def test_an_unreadable_claim_stamped_in_the_future_is_cleared_after_a_while(tmp_path: Path) -> None:
    """A writer that died between creating its claim and writing it leaves an unreadable file; stamped in the future
    it used to block its generation for ever."""
    book = ClaimBook(tmp_path / "claims")
    first, me = remote_claim(book.folder)
    book.release(book.head())  # type: ignore[arg-type]
    broken = book.folder / "000001.json"
    broken.write_text("{half a cla")
    os.utime(broken, (time.time() + YEAR_S,) * 2)
    assert book.try_claim(me, lease=60) is None  # being written this instant, for all anyone can tell
    age_witness(broken, 120)
    taken = book.try_claim(me, lease=60)
    assert taken is not None and taken.generation == 1 and first.exists()
    assert any(p.name.startswith("000001.json.unreadable-") for p in book.folder.iterdir())
