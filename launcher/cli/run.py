"""cli/run.py: `launcher run`, so that a spec, a run directory, or the old inference_vllm.py flags run as one job
here, on this machine's GPUs -> gathered outputs. Also `--job N` (one worker job of a plan, as Slurm would run it)
and `--unit ID`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from launcher.cli.console import console, err, safe
from launcher.errors import SpecError
from launcher.plan import Plan
from launcher.store import RunDir


def run_command(args: argparse.Namespace) -> int:
    from launcher.cli.legacy import spec_from_flags, uses_legacy

    if args.spec:
        if uses_legacy(args):
            from launcher.cli.legacy import FLAGS

            given = [f"--{f}" for f in [*FLAGS, "dataset", "ablation_config"] if getattr(args, f, None) is not None]
            raise SpecError.one(
                "launcher run",
                "",
                f"--spec and the old flags ({', '.join(given)}) do not mix",
                fix="put the values in the spec (or --set section.field=value), or drop --spec",
            )
        return _run_spec(args)
    if not uses_legacy(args):
        raise SpecError.one(
            "launcher run",
            "",
            "nothing to run",
            fix="give --spec SPEC [--job N], or the old flags --checkpoint_dir --dataset --output_dir",
        )
    from launcher.cli.legacy import legacy_notes
    from launcher.submit.front_door import prepare

    spec = spec_from_flags(args, args.backend)
    for note in legacy_notes(args):
        err.print(f"[yellow]note:[/] {safe(note)}", soft_wrap=True)
    ds = spec.data.datasets[0]
    if args.dataset and args.scenario_path is None and Path(ds.path or "").name != args.dataset:
        where = spec.where("data", "datasets", 0, "path")
        console.print(f"dataset {safe(ds.name)}: {safe(ds.path)} ({safe(where)})", soft_wrap=True)
    return _run_inline(prepare(spec, purpose="run").plan, flat_dest=Path(spec.output.dir))


def _run_spec(args: argparse.Namespace) -> int:
    from launcher.plan.persist import load_plan, save_plan

    target = Path(args.spec)
    if RunDir(target).is_run():
        plan = load_plan(target)
    else:
        from launcher.submit.front_door import prepare

        plan = prepare(target, args.overrides, purpose="run").plan
    units = _unit_ids(plan, args.unit) if args.unit else None
    if args.job is None:
        return _run_inline(plan, units=units)
    if not 0 <= args.job < max(plan.jobs, 1):
        raise SpecError.one(
            "--job",
            "",
            f"no job {args.job}: the plan has {plan.jobs} worker job(s)",
            allowed=f"0..{plan.jobs - 1}",
            fix="`launcher plan SPEC` shows the jobs",
        )
    from launcher.job.entry import run_job

    save_plan(plan)
    summary = run_job(plan.run.root, args.job, units)
    console.print_json(json.dumps(summary, default=str))
    return 0


def _unit_ids(plan: Plan, asked: list[str]) -> tuple[str, ...]:
    known = {u.unit_id for u in plan.units}
    unknown = [u for u in asked if u not in known]
    if unknown:
        raise SpecError.one(
            "--unit",
            "",
            f"no unit {unknown[0]!r}",
            allowed=f"a unit id like {plan.units[0].unit_id}",
            fix="`launcher plan SPEC` lists them",
        )
    return tuple(asked)


def _run_inline(plan: Plan, flat_dest: Path | None = None, units: tuple[str, ...] | None = None) -> int:
    """One job holding every GPU this process sees; then gather (everything, or the units asked for)."""
    from launcher.gather import gather
    from launcher.job.entry import run_job
    from launcher.plan.persist import save_plan

    save_plan(plan)
    run_job(plan.run.root, 0, units)
    from launcher.submit.wait import print_warnings

    print_warnings(plan, err)
    if units is not None:
        console.print(
            f"ran unit(s) {safe(', '.join(units))}; `launcher gather {safe(plan.run.root)}` once all are done"
        )
        return 0
    reports = gather(plan, dest=flat_dest, flat=flat_dest is not None)  # incomplete: GatherError, exit 1
    from launcher.submit.wait import print_reports, report_empty_run

    print_reports(reports, console)
    return 1 if report_empty_run(reports, err) else 0
