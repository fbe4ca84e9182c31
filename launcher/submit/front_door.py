"""submit/front_door.py: a spec (a file with --set overrides, or one built from old flags or a batch file) -> a
checked, resolved, expanded plan. Every command that plans a run enters here (plan, submit, run, batch, reproduce,
and through them the bench's toolkit runs), so the order of the checks is written once: Slurm reachable and the job
fits a node (before any input is read), every input readable, the run directory resolved, the units cut.

It lives in submit/ (the login side), not plan/, because the first check is Slurm's (submit/fit.py) and imports run
one way, top to bottom. Nothing is submitted or written here: the caller submits, runs or prints the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from launcher.errors import SpecError
from launcher.plan import Plan, check_inputs, expand
from launcher.plan.persist import Choice, ResolvedRun, resolve_run
from launcher.spec import JobSpec, load_spec
from launcher.store import RunDir

Purpose = Literal["plan", "submit", "run", "batch", "reproduce"]
"""What the plan is for; it decides how strict the checks are:
plan       shows what a submit would do: changed inputs are a note, a Slurm refusal a warning (never raised)
submit     refuses changed inputs until --new-run or --resume; Slurm must be there and the job must fit
run        one job on this machine: no Slurm check; changed inputs refuse like a submit's
batch      like submit, but a batch file's changed lines cannot resume a run (only --new-run)
reproduce  like submit, with the original run's prompt clock and no --new-run offered"""


SUBMIT_COMMAND = "launcher submit SPEC"  # the fix a refusal names when the caller gives no command of its own


@dataclass(frozen=True)
class PreparedPlan:
    """What the front door hands a command: the plan, the run it resolved to and why, and where it would run."""

    plan: Plan
    resolved: ResolvedRun
    executor: str  # "local" or "slurm": the --executor given, else the spec's
    slurm_missing: tuple[str, ...] = ()  # purpose "plan": Slurm's commands not on PATH (a submit would refuse)
    fit_refusal: SpecError | None = None  # purpose "plan": why a submit would refuse the job's shape

    @property
    def spec(self) -> JobSpec:
        return self.plan.spec


def prepare(
    spec: JobSpec | str | Path,
    overrides: Sequence[str] = (),
    *,
    purpose: Purpose,
    executor: str | None = None,
    executor_where: str | None = None,
    choice: Choice = "auto",
    command: str | None = None,
    reproducing: RunDir | None = None,
) -> PreparedPlan:
    """The plan of `spec` for `purpose`. `spec`: a spec file (loaded with `overrides`) or a JobSpec already built.
    `executor`: the --executor flag, if given; `executor_where`: what a Slurm refusal names (default: that flag, else
    the spec's executor line). `choice`: auto, new (--new-run) or resume (--resume). `command`: what submits this run
    again, named by the refusals' fixes and recorded in run.json (default `launcher submit SPEC`). `reproducing`:
    the original run a reproduction reads its prompt clock from. Raises SpecError, NoSlurm, UntrustedFile: exit 2,
    nothing written."""
    if not isinstance(spec, JobSpec):
        spec = load_spec(spec, list(overrides))
    kind = executor or spec.executor
    if kind == "slurm" and purpose in ("submit", "batch", "reproduce"):
        _require_slurm(spec, executor_where or ("--executor slurm" if executor else spec.where("executor")))
    rows = check_inputs(spec)  # every input readable before its content is identified
    resolved = resolve_run(
        spec, choice, strict=purpose != "plan", command=command or SUBMIT_COMMAND, can_resume=purpose != "batch"
    )
    if purpose == "reproduce":
        from launcher.submit.reproduce import original_clock

        resolved.new_run = None  # a reproduction of other inputs is not one: the refusal offers no new run
        if reproducing is not None:
            resolved.prompt_clock = original_clock(reproducing)  # the original's date: the same prompts, any day
    plan = expand(spec, rows, run=resolved.run)
    if purpose == "plan" and kind == "slurm":
        missing, refusal = _would_refuse(spec)
        return PreparedPlan(plan, resolved, kind, missing, refusal)
    return PreparedPlan(plan, resolved, kind)


def _require_slurm(spec: JobSpec, where: str) -> None:
    """Before anything is read or written: Slurm's commands are here, and the job fits a node of the partition."""
    from launcher.submit.fit import check_fits, require_slurm

    require_slurm(where)
    check_fits(spec)  # a job no node can hold would pend forever: refused before anything is written


def _would_refuse(spec: JobSpec) -> tuple[tuple[str, ...], SpecError | None]:
    """`launcher plan` of a Slurm spec: what a submit from here would refuse, as data (the plan shows it, warned)."""
    from launcher.submit.fit import check_fits, missing_slurm_commands

    missing = tuple(missing_slurm_commands())
    try:
        check_fits(spec)
    except SpecError as exc:
        return missing, exc
    return missing, None


__all__ = ["PreparedPlan", "Purpose", "prepare"]
