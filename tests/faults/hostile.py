"""hostile.py: the fault kind "hostile text" (issue 26): one dataset of the workload gets hostile rows after its good
ones, all in one unit, in an order the trial's seed chose. No process is hurt; the data is the fault.

Hostile but valid rows (every Unicode line separator, NUL, astral characters, a user id that climbs out of its
folder, a 300-level nested profile) must be generated, their ids byte-identical in the outputs. Rows no output can
hold (an escaped lone surrogate, bytes that are not UTF-8, a 1 MB field no context fits, JSON nested past what its
reader takes, a lone surrogate in a key) must be quarantined, each with its reason. The good rows of the workload
must come out as the reference run gives them (hostile neighbours in their batch change nothing), the other
dataset byte-identical, nothing lost, nothing generated twice, no unit failure.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.inputs.records import MAX_DEPTH

from ..helpers import chunk_rows, unit_failures

if TYPE_CHECKING:
    from .checks import TrialResult
    from .injectors import TrialRun


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


# user id -> the row: generated, its text intact
VALID = {
    "sep\u2028\u2029\u0085\x1c\x1d\x1e": {"context": "separators \u2028 \u2029 \u0085 \x1c\x1d\x1e \r \v \f inside"},
    "nul\x00del\x7f": {"context": "NUL \x00 and DEL \x7f inside"},
    "astral \U0001f600": {"context": "astral \U0001f600 \U00010348 inside"},
    "../../escape": {"context": "a user id that climbs out of users/"},
    # as deep as a record may be (inputs/records.py: MAX_DEPTH levels, the profile one level below the row)
    f"deep{MAX_DEPTH - 1}": {"context": "a deep profile", "profile": _nested(MAX_DEPTH - 1)},
}
# raw line -> what its quarantine reason must say
INVALID = {
    b'{"user_id": "lone", "context": "a \\ud800 b"}': "U+D800",
    b'{"user_id": "latin1", "context": "caf\xe9"}': "not UTF-8",
    json.dumps({"user_id": "huge", "context": "word " * 200_000}).encode(): "exceeds the context length",
    ('{"user_id": "deep", "context": "x", "p": ' + "[" * 50_000 + "]" * 50_000 + "}").encode(): "nested deeper",
    b'{"user_id": "keylone", "context": "x", "\\udc80": 1}': "U+DC80",
}


def hostile_lines(seed: int) -> list[tuple[bytes, str | None, str | None]]:
    """(line, its user id, None) for a valid row, (line, None, what its reason says) for one to quarantine; in the
    order the seed chose."""
    lines: list[tuple[bytes, str | None, str | None]] = [
        (json.dumps({"user_id": user, **row}).encode(), user, None) for user, row in VALID.items()
    ]
    lines += [(line, None, why) for line, why in INVALID.items()]
    random.Random(seed).shuffle(lines)
    return lines


def inject_hostile(run: TrialRun) -> None:
    """The unit's dataset, copied, gets the hostile rows after its good ones; one unit holds them all (their
    batches mix). Submitted at full speed."""
    wl = run.wl.with_data_copy(run.wl.root / "hostile" / run.trial.name)
    path = wl.dataset_of(run.unit)
    lines = hostile_lines(run.trial.point["order_seed"])
    with path.open("ab") as f:
        f.write(b"".join(line + b"\n" for line, _, _ in lines))
    name, _, good = next(d for d in wl.datasets if d[1] == path)
    run.notes["hostile"] = {
        "dataset": name,
        "good_rows": good,
        "valid": {good + i: user for i, (_, user, _) in enumerate(lines) if user is not None},
        "invalid": {good + i: why for i, (_, _, why) in enumerate(lines) if why is not None},
    }
    run.run_dir = run.submit(run.spec(replace(wl, per_shard=64)))  # one unit per dataset: hostile rows mixed in
    run.notes["cut_mid_unit"] = True  # nothing to cut: the data is the fault


def judge_hostile(run: TrialRun, result: TrialResult) -> TrialResult:
    from launcher.store import read_jsonl

    notes, wl = run.notes["hostile"], run.wl
    target = notes["dataset"]
    rows = Counter(chunk_rows(run.rd))
    expected = {(name, r) for name, _, n in wl.datasets for r in range(n)}
    expected |= {(target, r) for r in notes["valid"]}
    result.records = len(expected) + len(notes["invalid"])
    result.lost = len(expected - rows.keys())
    result.duplicated = sum(n - 1 for n in rows.values())
    errors = []
    if generated_bad := sorted(rows.keys() - expected):
        errors.append(f"rows generated that had to be quarantined: {generated_bad}")
    cell = run.out_dir / target / "full"
    quarantined = {int(q["row"]): str(q["reason"]) for q in read_jsonl(cell / "quarantine.jsonl")}
    wrong = {r: (why, quarantined.get(r)) for r, why in notes["invalid"].items() if why not in quarantined.get(r, "")}
    if wrong or set(quarantined) != set(notes["invalid"]):
        errors.append(f"quarantine differs from the hostile rows (row: (expected in reason, got)): {wrong}")
    samples = {r["row"]: r for r in read_jsonl(cell / "samples.jsonl")}
    got_ids = {r: samples[r]["user_id"] for r in notes["valid"] if r in samples}
    if got_ids != notes["valid"]:
        errors.append(f"hostile user ids did not come back byte-identical: {got_ids!r} != {notes['valid']!r}")
    # the workload's own rows: the same lines as the reference's (hostile neighbours in their batches change nothing)
    mine = (cell / "samples.jsonl").read_bytes().split(b"\n")[: notes["good_rows"]]
    theirs = run.reference[f"{target}/full/samples.jsonl"].split(b"\n")[: notes["good_rows"]]
    other = {k: v for k, v in run.reference.items() if not k.startswith(f"{target}/")}
    from .checks import gathered_files

    mine_other = {k: v for k, v in gathered_files(run.out_dir, wl).items() if not k.startswith(f"{target}/")}
    result.identical = mine == theirs and mine_other == other
    blamed = {u: [f.get("error") for f in unit_failures(run.rd, u)] for u in _unit_ids(run.rd)}
    if any(blamed.values()):
        errors.append(f"unit failure(s) recorded: {blamed}")
    if run.notes.get("gather_state") != "COMPLETED":
        errors.append(f"gather job {run.notes.get('gather_state')}")
    result.error = result.error or "; ".join(errors)
    result.landed = set(quarantined) == set(notes["invalid"]) and bool(notes["valid"])
    result.evidence = f"{len(notes['valid'])} hostile rows generated, {len(quarantined)} quarantined: " + "; ".join(
        f"row {r}: {why[:60]}" for r, why in sorted(quarantined.items())
    )
    result.passed = (
        result.lost == 0 and result.duplicated == 0 and result.identical and result.landed and not result.error
    )
    return result


def _unit_ids(run_dir: Path) -> list[str]:
    units = run_dir / "units"
    return sorted(p.name for p in units.iterdir()) if units.is_dir() else []


__all__ = ["INVALID", "VALID", "hostile_lines", "inject_hostile", "judge_hostile"]
