"""The CI-sized fault campaign (issues 6 and 17): >= 20 seeded trials against the live local Slurm, every fault kind,
each proving 0 records lost, 0 generated twice and outputs byte-identical to an uninterrupted run. ~6-8 min on the
2-core CI machine. `make faults` runs the long one through the CLI (python -m tests.faults.campaign).

LAUNCHER_FAULT_TRIALS / LAUNCHER_FAULT_SEED change its size and seed; a failing trial prints its seed and injection
point, and its run dir (logs, chunks, claims, markers) is kept under <tmp>/faults*/kept/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .campaign import KINDS, TrialResult, Workload, describe, make_workload, plan_trials, run_campaign, schedule

TRIALS = int(os.environ.get("LAUNCHER_FAULT_TRIALS", str(2 * len(KINDS) + 1)))  # 2 per kind + 1
SEED = int(os.environ.get("LAUNCHER_FAULT_SEED", "6"))
SHAPE = Workload(
    Path("/nonexistent"),
    Path("/nonexistent"),
    (("ds_a", Path("a.jsonl"), 4), ("ds_b", Path("b.jsonl"), 4)),
    per_shard=4,
)


def test_trials_come_from_the_seed_and_cover_every_kind() -> None:
    """No Slurm needed: the generator alone. Same seed, same trials; any len(KINDS) in a row hold every kind; every
    injection point lands inside its unit."""
    trials = plan_trials(TRIALS, SEED, SHAPE)
    assert trials == plan_trials(TRIALS, SEED, SHAPE)
    assert trials != plan_trials(TRIALS, SEED + 1, SHAPE)
    assert {"workerkill", "touch", "corrupt"} <= set(KINDS)
    for start in range(0, len(trials) - len(KINDS) + 1, len(KINDS)):
        assert {t.kind for t in trials[start : start + len(KINDS)]} == set(KINDS)
    units = dict(SHAPE.units)
    assert units == {"ds_a.full.0000": 4, "ds_b.full.0000": 4}
    for t in trials:
        assert t.point["unit"] in units
        if "after_records" in t.point:  # mid-unit: at least one record written, at least one left
            assert 1 <= t.point["after_records"] < units[t.point["unit"]], t
        if t.kind == "corrupt":  # a chunk of the unit (one record each), a byte inside it, a bit of that byte
            assert 0 <= t.point["chunk"] < units[t.point["unit"]] and 0 <= t.point["byte"] < 1
            assert 0 <= t.point["bit"] < 8
    # every trial is scheduled exactly once, the time limits (the longest) first
    order = schedule(trials)
    assert sorted(t.index for t in order) == list(range(TRIALS))
    timeouts = [t for t in trials if t.kind == "timeout"]
    assert order[: len(timeouts)] == timeouts


@pytest.mark.slurm
@pytest.mark.slow
def test_seeded_fault_campaign(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    if os.geteuid() != 0:
        pytest.skip("the campaign mounts file systems and restarts slurmd: needs root (as make test runs)")
    assert 2 * len(KINDS) <= TRIALS, f"LAUNCHER_FAULT_TRIALS={TRIALS}: fewer than two trials per kind"
    wl = make_workload(tmp_path_factory.mktemp("faults"), tiny_model)
    trials = plan_trials(TRIALS, SEED, wl)
    lines: list[str] = []

    def show(result: TrialResult) -> None:
        lines.append(describe(result))

    result = run_campaign(trials, wl, on_result=show)
    (wl.root / "report.json").write_text(json.dumps(result, indent=1))
    summary = result["summary"]
    print(f"\nfault campaign, seed {SEED}:\n" + "\n".join(lines) + "\n" + json.dumps(summary, indent=1))

    # The promise, for every trial: nothing lost, nothing twice, the same bytes as the clean run.
    assert summary["trials_run"] == TRIALS
    assert summary["records_checked"] >= TRIALS * wl.records  # a hostile-text trial checks its hostile rows too
    assert summary["records_lost"] == 0 and summary["records_duplicated"] == 0
    assert summary["outputs_identical"] == TRIALS, "\n".join(lines)
    assert set(summary["faults_by_kind"]) == set(KINDS)
    # A fault aimed mid-unit can miss when the unit finishes first on a loaded machine (seen once in 63 trials of
    # `make faults`: slurmd went down after the unit's last record). A miss proves nothing, so at most one is allowed
    # and the campaign must still have hit every kind.
    missed = TRIALS - summary["faults_landed"]
    assert missed <= 1, f"{missed} faults did not land (seed {SEED}):\n" + "\n".join(lines)
    assert all(k["passed"] >= 1 for k in summary["faults_by_kind"].values()), summary["faults_by_kind"]
    failed = [line for line in lines if " FAIL " in line]
    assert len(failed) <= missed, f"{len(failed)} trial(s) failed (seed {SEED}):\n" + "\n".join(failed)
