"""plan/persist.py: Plan <-> the run directory's spec.json + plan.json, and finding a run from what a user types.

Written before anything is submitted: jobs read them, and a resubmit must see the same units. Everything on the
node side opens a run from its directory (`load_plan(run_dir)`); the run id is that directory's name, never
recomputed from the spec (which hashes input files: touching one mid-run must not move a job's outputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from launcher.errors import NoRun, SpecError, UnreadableRun
from launcher.inputs.guard import PromptClock
from launcher.inputs.identity import InputIdentity, changes, identify, matches, model_changed
from launcher.plan import Plan
from launcher.spec import JobSpec
from launcher.store import OutputDir, RunDir

Choice = Literal["auto", "new", "resume"]


def save_plan(plan: Plan) -> Path:
    """The output folder (with the spec's output.share) and the run's private folder, then spec.json and plan.json."""
    run = plan.run
    OutputDir(run.output_dir, plan.spec.output.share).create()
    run.create()
    if not run.exists(run.units):  # no unit ever claimed: its units.log can vouch for every claim (store/unit_log.py)
        run.unit_events().create()
    run.write_json(run.spec_json, plan.spec.model_dump(mode="json"))
    run.write_json(run.plan_json, plan.to_json())
    return run.root


def load_plan(run_dir: Path) -> Plan:
    """The run's plan, from files checked as a job decides what to run from them (RunDir.read_trusted): a spec or
    plan that is not provably the user's own refuses (UntrustedFile) instead of steering the job."""
    run = RunDir(Path(run_dir))
    try:
        raw = run.read_trusted(run.spec_json)
        obj = run.read_trusted(run.plan_json)
    except FileNotFoundError as exc:
        raise NoRun.one(
            str(run.root),
            "",
            f"not a run directory ({exc.filename or 'a file'} missing)",
            fix="`launcher submit SPEC` creates one",
        ) from None
    try:
        spec = JobSpec.model_validate(_migrate(raw))
    except ValidationError as exc:
        raise UnreadableRun.one(
            str(run.spec_json),
            "",
            f"this run was written by another launcher version, which "
            f"this one cannot read ({exc.error_count()} field(s): {exc.errors()[0]['loc']})",
            fix="use the launcher version that wrote it (run.json says which), or submit the spec again as a new run",
        ) from None
    if "units" not in obj:
        raise UnreadableRun.one(
            str(run.plan_json),
            "",
            "this run was planned by a launcher before workers (tasks, not units): it cannot be resumed by this one",
            fix="gather it with the launcher that ran it, or submit the spec again (a new run)",
        )
    units = Plan.units_from_json(obj)
    return Plan(
        spec, run, units, obj.get("rows_per_dataset", {}), int(obj.get("jobs") or 1), str(obj.get("jobs_reason") or "")
    )


@dataclass
class ResolvedRun:
    """Which run directory a submit of this spec goes to, and why."""

    run: RunDir
    inputs: InputIdentity
    changes: list[str] = field(default_factory=list)  # set when resuming a run whose inputs changed (--resume)
    note: str = ""
    command: str = "launcher submit SPEC"  # what submits this run again: the fix a worker's refusal names
    new_run: str | None = "launcher submit SPEC --new-run"  # what makes a run of its own for changed inputs
    prompt_clock: PromptClock | None = None  # None: the run's own (its first submit); a reproduction: the original's


def resume_hint(run: RunDir) -> str:
    """What goes on with this run, as a hint's words: the command its last submit recorded (a `launcher batch` file
    has no spec to submit), else `launcher submit` of its spec. Data: print it through launcher.terminal."""
    command = run.read_run().resume_with
    return f"`{command}`" if command else "`launcher submit` the same spec"


def runs_of(spec: JobSpec) -> list[RunDir]:
    """The runs of this spec (its base id, and `<base>-<inputs>` made by --new-run), oldest first."""
    base = spec.run_id
    return [r for r in OutputDir(Path(spec.output.dir)).runs() if r.run_id == base or r.run_id.startswith(base + "-")]


def resolve_run(
    spec: JobSpec,
    choice: Choice = "auto",
    strict: bool = True,
    command: str = "launcher submit SPEC",
    can_resume: bool = True,
) -> ResolvedRun:
    """The run a submit goes to. Its id is fixed here, once: the directory's name. Inputs whose content changed
    since that run was submitted stop a strict resolve (exit 2) until the user chooses --new-run or --resume (or,
    where `command` cannot resume changed inputs, `launcher batch`, --new-run). The fixes name `command`."""
    resolved = _resolve(spec, choice, strict, command, can_resume)
    resolved.command, resolved.new_run = command, f"{command} --new-run"
    return resolved


def _resolve(spec: JobSpec, choice: Choice, strict: bool, command: str, can_resume: bool) -> ResolvedRun:
    now = identify(spec)
    runs = runs_of(spec)
    recorded = {r.root: r.read_run().inputs or {} for r in runs}
    same = [r for r in runs if matches(recorded[r.root], now)]
    base = RunDir.of(spec.output.dir, spec.run_id)
    if choice == "new":
        if same:
            raise SpecError.one(
                _where(spec),
                "--new-run",
                f"run {same[-1].run_id} already holds exactly these inputs",
                fix=f"`{command}` without --new-run resumes it; `launcher status {same[-1].root}` shows it",
            )
        return ResolvedRun(
            base if not runs else RunDir.of(spec.output.dir, f"{spec.run_id}-{now.digest[:6]}"),
            now,
            note="a new run for the changed inputs (--new-run)",
        )
    if same:
        return ResolvedRun(same[-1], now)
    if not runs:
        return ResolvedRun(base, now)
    latest = runs[-1]
    diff = changes(recorded[latest.root], now)
    if choice == "resume":
        if model_changed(recorded[latest.root], now):
            raise SpecError.one(
                _where(spec),
                "--resume",
                f"the model changed since run {latest.run_id} was "
                f"submitted ({'; '.join(diff)}): its samples would be presented as the new model's",
                fix="use --new-run: a run of its own for the new weights",
            )
        return ResolvedRun(latest, now, diff, note=f"resuming run {latest.run_id} with changed inputs (--resume)")
    if not strict:
        return ResolvedRun(
            latest,
            now,
            diff,
            note=f"the inputs changed since run {latest.run_id}: "
            + "; ".join(diff)
            + (" (submit asks for --new-run or --resume)" if can_resume else " (asks for --new-run)"),
        )
    resume = (
        f"; `{command} --resume` goes on with run {latest.run_id} (done records keep their samples; the change is "
        "recorded in its run.json; not allowed when the model changed)"
        if can_resume
        else f"; or put back the input run {latest.run_id} read, and `{command}` resumes it"
    )
    raise SpecError.one(
        _where(spec),
        "",
        f"the inputs changed since run {latest.run_id} was submitted: " + "; ".join(diff) + "; nothing was submitted",
        allowed="--new-run or --resume" if can_resume else "--new-run",
        fix=f"`{command} --new-run` starts a run of its own for the new inputs{resume}",
    )


def _where(spec: JobSpec) -> str:
    return spec.where("data")


# Fields renamed since a run directory may have been written: old key -> new key, per section.
RENAMED_FIELDS = {"data": {"scenario": "preamble"}}


def _migrate(raw: dict[str, Any]) -> dict[str, Any]:
    for section, renames in RENAMED_FIELDS.items():
        part = raw.get(section)
        if isinstance(part, dict):
            for old, new in renames.items():
                if old in part:
                    value = part.pop(old)
                    part.setdefault(new, value)
    return raw


def find_run_dir(target: str | Path) -> Path:
    """A run dir, or an output dir holding runs (its newest), or a spec file (the run its inputs belong to)."""
    p = Path(target)
    if os.path.lexists(RunDir(p).plan_json):  # a run folder: load_plan checks it, and refuses a planted one by name
        return p
    found = OutputDir(p).runs()
    if found:
        return found[-1].root
    if p.is_file() and p.suffix in {".yaml", ".yml"}:
        from launcher.spec import load_spec

        return resolve_run(load_spec(p), strict=False).run.root
    raise NoRun.one(
        str(p),
        "",
        "no run found here (no plan.json, no runs/ folder with one, not a spec file)",
        allowed="a run directory (<output.dir>/runs/<run id>), the output dir holding runs/, or the job spec",
        fix="`ls <output.dir>/runs` lists the runs; `launcher submit SPEC` starts one",
    )
