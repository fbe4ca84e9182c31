"""submit/preview.py: Plan -> what `launcher plan` shows: units, worker jobs and GPUs, an estimate, the sbatch header,
the container argv."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from launcher.plan import Plan
from launcher.plan.estimate import gpus_per_job
from launcher.plan.prefix import PrefixDecision
from launcher.terminal import printable, safe


def sbatch_preview(plan: Plan, n_tasks: int | None = None) -> str:
    """The sbatch script submitit would write for the array (its own renderer, nothing submitted), also where no
    Slurm is installed: the script is the same text."""
    from submitit.slurm import slurm as ss

    from launcher.submit.executors import executor_params, python_command

    class PreviewExecutor(ss.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:  # submitit refuses to build one without srun on PATH; rendering needs no srun
            return 1

    spec = plan.spec
    ex = PreviewExecutor(folder=plan.run.logs, python=python_command(spec, plan.run.root))
    generic = executor_params(spec, plan.run.root)
    # AutoExecutor's generic names -> SlurmExecutor's own (the same translation submitit does internally).
    mapping = {
        "timeout_min": "time",
        "cpus_per_task": "cpus_per_task",
        "gpus_per_node": "gpus_per_node",
        "nodes": "nodes",
        "tasks_per_node": "ntasks_per_node",
        "name": "job_name",
    }
    params: dict[str, Any] = {}
    for k, v in generic.items():
        params[mapping.get(k, k.removeprefix("slurm_"))] = v
    params["map_count"] = n_tasks if n_tasks is not None else plan.jobs
    ex.update_parameters(**{k: v for k, v in params.items() if k != "map_count"})
    ex.parameters["map_count"] = params["map_count"]
    text: str = ex._make_submission_file_text(ex._submitit_command_str, "preview")
    return text


def container_argv_preview(plan: Plan) -> list[str] | None:
    """The container argv a task would exec. container.env values show as <hidden>: plan output lands in terminals
    and CI logs, and the real argv never holds them either (the runtime gets them through its environment)."""
    spec = plan.spec
    if spec.container.runtime == "none":
        return None
    from launcher.containers.shim import preview_argv

    return preview_argv(spec, plan.run.root, gpu_count=spec.slurm.gpus_per_node)


def prefix_preview(plan: Plan) -> PrefixDecision:
    """What scheduling.prefix_order will do, measured on the first rows the way a worker measures them (the tokenizer
    read cheaply here: plan/prefix_source.py)."""
    from launcher.plan.prefix import analyse, decide, sample_prompt_ids
    from launcher.plan.prefix_source import login_source

    spec = plan.spec.for_model(plan.spec.model_names()[0])  # prompts are checked with the first model's tokenizer
    try:
        source, how = login_source(spec)
        analysis = analyse(spec, sample_prompt_ids(spec, source), plan.rows_per_dataset, how)
    except Exception as exc:  # preflight checked the data and templates: this is no reason to refuse a plan
        return PrefixDecision(spec.scheduling.prefix_order, False, f"not measured here: {exc}"[:300])
    return decide(spec, analysis)


def plan_json(plan: Plan) -> dict[str, Any]:
    from launcher.plan.estimate import estimate
    from launcher.plan.nodes import choose_nodes
    from launcher.plan.preflight import duplicate_report

    nodes = choose_nodes(plan.spec)
    est, why = estimate(plan)
    return {
        "run_id": plan.run.run_id,
        "run_dir": str(plan.run.root),
        "units": len(plan.units),
        "jobs": plan.jobs,
        "jobs_reason": plan.jobs_reason,
        "gpus_per_job": gpus_per_job(plan),
        "nodes_per_job": nodes.nodes,
        "nodes_reason": nodes.reason,
        "gpus": plan.jobs * gpus_per_job(plan),
        "records": plan.total_records,
        "samples": plan.total_samples,
        "rows_per_dataset": plan.rows_per_dataset,
        "estimate": {
            "generation_s": round(est.generation_s, 1),
            "startup_s": round(est.startup_s, 1),
            "gpu_hours": round(est.gpu_hours, 3),
            "cost": None if est.cost is None else round(est.cost, 2),
            "currency": plan.spec.cost.currency,
            "basis": est.basis,
        }
        if est
        else None,
        "estimate_reason": why,
        "duplicates": duplicate_report(plan.spec),
        "prefix_order": prefix_preview(plan).as_json(),
        "unit_list": [{"index": u.index, "unit_id": u.unit_id, "rows": [u.start, u.stop]} for u in plan.units],
        "sbatch": sbatch_preview(plan) if plan.spec.executor == "slurm" else None,
        "container_argv": container_argv_preview(plan),
    }


def render_plan(plan: Plan, console: Console, show: int = 20, seconds: float = 0.0) -> None:
    from launcher.plan.estimate import estimate

    spec = plan.spec
    table = Table(title=f"plan for {safe(spec.name)} (run {safe(plan.run.run_id)})", show_lines=False)
    variants = len(spec.model_names()) * len(spec.adapter_names()) > 1
    cols = ("#", "unit id", *(["model"] if variants else []), "dataset", "ablation", "rows", "samples")
    for col in cols:
        table.add_column(col, justify="right" if col in {"#", "rows", "samples"} else "left")
    for u in plan.units[:show]:
        table.add_row(
            str(u.index),
            safe(u.unit_id),
            *([safe(u.cell.variant)] if variants else []),
            safe(u.dataset),
            safe(u.ablation),
            f"{u.start}-{u.stop - 1}",
            str(u.rows * spec.data.num_samples),
        )
    if len(plan.units) > show:
        table.add_row("...", f"{len(plan.units) - show} more", *[""] * (len(cols) - 2))
    console.print(table)
    s = spec.slurm
    console.print(
        f"[bold]{len(plan.units)}[/] unit(s), {plan.total_records} records x {spec.data.num_samples} samples"
        f" = [bold]{plan.total_samples}[/] samples; executor {spec.executor}; planned in {seconds:.2f}s"
    )
    per_job = gpus_per_job(plan)
    workers = f"one worker per GPU group of its {per_job} GPU(s)" if per_job else "one worker on the CPU"
    console.print(
        f"[bold]{plan.jobs}[/] worker job(s) ({safe(plan.jobs_reason)}), {workers}: "
        + (f"[bold]{plan.jobs * per_job}[/] GPU(s) at most" if per_job else "no GPU")
        + "; each worker starts its engine once"
        + (f" per model ({len(spec.models)}, one after the other)" if spec.models else "")
        + (
            f", serving {len([a for a in spec.model.adapters.values() if a])} LoRA adapter(s),"
            if spec.model.adapters
            else ""
        )
        + " and claims units until none is left"
    )
    from launcher.plan.nodes import choose_nodes
    from launcher.plan.preflight import duplicate_report

    node_choice = choose_nodes(spec)
    if node_choice.nodes > 1 or s.nodes == "auto":
        console.print(f"nodes per task: [bold]{node_choice.nodes}[/] ({node_choice.reason})")
    for line in duplicate_report(spec):
        console.print(f"[yellow]duplicates:[/] {safe(line)}", soft_wrap=True)  # user ids: data
    prefix = prefix_preview(plan)
    console.print(f"prefix order: {safe(prefix.reason)}", soft_wrap=True)  # the reason opens with on or off
    est, why = estimate(plan)
    if est is not None:
        wall = est.startup_s + est.generation_s
        console.print(
            f"estimate: ~{_duration(wall)} wall ({_duration(est.startup_s)} start-up + at most "
            f"{_duration(est.generation_s)} generating)"
            + (f", ~{est.gpu_hours:.2f} GPU-hours" if per_job else ", on the CPU (no GPU-hours)")
            + (f" (~{est.cost:,.2f} {spec.cost.currency})" if est.cost is not None else "")
            + f"; {safe(est.basis)}",
            soft_wrap=True,
        )
    else:
        console.print(f"estimate: none ({safe(why)})")
    console.print(safe(per_job_words(plan)), soft_wrap=True)
    axis = "<model>/" if spec.models else "<adapter>/" if spec.model.adapters else ""
    console.print(
        f"outputs: {safe(plan.run.output_dir)}/{axis}<dataset>/<ablation>/   run state: {safe(plan.run.root)}"
    )
    if spec.executor == "slurm":
        console.rule("sbatch script submit would write")
        console.print(printable(sbatch_preview(plan), keep_newlines=True), markup=False, highlight=False)
    argv = container_argv_preview(plan)
    if argv:
        console.rule(f"container argv ({spec.container.runtime}; GPU ids filled in at run time, env values hidden)")
        console.print(repr(argv), markup=False, highlight=False)
    console.print("nothing was submitted. `launcher submit` with the same spec submits exactly this.")


def per_job_words(plan: Plan) -> str:
    """What each worker job asks for: sbatch's request on Slurm; on this machine, what a local job really has (its
    GPUs or none, its cores), since the slurm section's GPUs, CPUs and memory are not asked of anyone there."""
    s = plan.spec.slurm
    if plan.spec.executor == "local":
        import os

        from launcher.plan.layout import allocated_gpus

        seen = allocated_gpus()
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        held = (
            f"{seen.count} GPU(s) ({seen.source})"
            if seen.count
            else f"no GPU (none seen: {seen.source}), so a CPU run: one worker on the CPU"
        )
        return (
            f"per job (a local process on this machine): {held}, {cores} CPU core(s) shared by the jobs; time limit "
            f"{s.time}. slurm.gpus_per_node, cpus_per_gpu and mem apply on Slurm only."
        )
    gpus = f"{s.gpus_per_node} GPU(s)" if s.gpus_per_node else "no GPU (CPU workers)"
    return (
        f"per job: {gpus}, {s.cpus_per_gpu * max(1, s.gpus_per_node)} CPUs, "
        f"mem {s.mem or 'cluster default'}, time {s.time}; partition {s.partition or 'default'}"
        + (f", at most {s.array_parallelism} at once" if s.array_parallelism else "")
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
