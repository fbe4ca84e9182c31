"""run_state.py: Plan <-> the run directory's spec.json + plan.json, and finding a run from what a user types.

Written before anything is submitted: jobs read them, and a resubmit must see the same units. Everything on the
node side opens a run from its directory (`load_plan(run_dir)`); the run id is that directory's name, never
recomputed from the spec (which hashes input files: touching one mid-run must not move a job's outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

from .plan import Plan
from .spec import JobSpec
from .store import RunDir, write_json_atomic


def save_plan(plan: Plan) -> Path:
    run = plan.run
    run.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.spec_json, plan.spec.model_dump(mode="json"))
    write_json_atomic(run.plan_json, plan.to_json())
    return run.root


def load_plan(run_dir: Path) -> Plan:
    run = RunDir(Path(run_dir))
    try:
        spec = JobSpec.model_validate(json.loads(run.spec_json.read_text()))
        obj = json.loads(run.plan_json.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{run.root} is not a run directory ({exc.filename} missing); "
                                "`launcher submit SPEC` creates one") from None
    units = Plan.units_from_json(obj)
    return Plan(spec, run, units, obj.get("rows_per_dataset", {}), int(obj.get("jobs") or 1),
                str(obj.get("jobs_reason") or ""))


def find_run_dir(target: str | Path) -> Path:
    """A run dir, or an output dir holding runs (its newest), or a spec file."""
    p = Path(target)
    if (p / "plan.json").exists():
        return p
    runs = p / "runs"
    if runs.is_dir():
        found = sorted((d for d in runs.iterdir() if (d / "plan.json").exists()), key=lambda d: d.stat().st_mtime)
        if found:
            return found[-1]
    if p.is_file() and p.suffix in {".yaml", ".yml"}:
        from .spec import load_spec

        spec = load_spec(p)
        return RunDir.of(spec.output.dir, spec.run_id).root
    raise FileNotFoundError(f"no run found at {p}: give a run directory (<output.dir>/runs/<run id>), "
                            "an output dir, or the spec file")
