"""run_state.py: the run directory's own files: spec.json + plan.json (what tasks read), run.json (what ran).

Written before anything is submitted: array tasks read them, and a resubmit must see the same shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .outputs import write_json_atomic
from .plan import Plan, Task
from .spec import JobSpec


def save_plan(plan: Plan) -> Path:
    paths = plan.paths
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.spec_json, plan.spec.model_dump(mode="json"))
    write_json_atomic(paths.plan_json, plan.to_json())
    return paths.run_dir


def load_run(run_dir: Path) -> tuple[JobSpec, tuple[Task, ...]]:
    run_dir = Path(run_dir)
    try:
        spec = JobSpec.model_validate(json.loads((run_dir / "spec.json").read_text()))
        tasks = Plan.tasks_from_json(json.loads((run_dir / "plan.json").read_text()))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{run_dir} is not a run directory ({exc.filename} missing); "
                                "`launcher submit SPEC` creates one") from None
    return spec, tasks


def load_plan(run_dir: Path) -> Plan:
    spec, tasks = load_run(run_dir)
    rows = json.loads((Path(run_dir) / "plan.json").read_text()).get("rows_per_dataset", {})
    return Plan(spec, tasks, rows)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def find_run_dir(target: str | Path) -> Path:
    """A run dir, or an output dir holding exactly one run (or its newest), or a spec file."""
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
        from .plan import RunPaths

        return RunPaths.of(spec).run_dir
    raise FileNotFoundError(f"no run found at {p}: give a run directory (<output.dir>/runs/<run id>), "
                            "an output dir, or the spec file")
