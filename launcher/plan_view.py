"""plan_view.py: Plan -> what `launcher plan` shows: tasks, totals, resources, the sbatch header, the container argv."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .plan import Plan


def sbatch_preview(plan: Plan, n_tasks: int | None = None) -> str:
    """The sbatch script submitit would write for the array (its own renderer, nothing submitted)."""
    from submitit.slurm import slurm as ss

    from .slurm import executor_params, python_command

    spec = plan.spec
    ex = ss.SlurmExecutor(folder=plan.paths.logs, python=python_command(spec, plan.paths.run_dir))
    generic = executor_params(spec)
    # AutoExecutor's generic names -> SlurmExecutor's own (the same translation submitit does internally).
    mapping = {"timeout_min": "time", "cpus_per_task": "cpus_per_task", "gpus_per_node": "gpus_per_node",
               "nodes": "nodes", "tasks_per_node": "ntasks_per_node", "name": "job_name"}
    params: dict[str, Any] = {}
    for k, v in generic.items():
        params[mapping.get(k, k.removeprefix("slurm_"))] = v
    params["map_count"] = n_tasks if n_tasks is not None else len(plan.tasks)
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
    from .container_exec import preview_argv

    return preview_argv(spec, plan.paths.run_dir, gpu_count=spec.slurm.gpus_per_node)


def plan_json(plan: Plan) -> dict[str, Any]:
    return {"run_id": plan.spec.run_id, "run_dir": str(plan.paths.run_dir), "tasks": len(plan.tasks),
            "records": plan.total_records, "samples": plan.total_samples, "rows_per_dataset": plan.rows_per_dataset,
            "task_list": [{"index": t.index, "task_id": t.task_id, "rows": [t.start, t.stop]} for t in plan.tasks],
            "sbatch": sbatch_preview(plan) if plan.spec.executor == "slurm" else None,
            "container_argv": container_argv_preview(plan)}


def render_plan(plan: Plan, console: Console, show: int = 20, seconds: float = 0.0) -> None:
    spec = plan.spec
    table = Table(title=f"plan for {spec.name} (run {spec.run_id})", show_lines=False)
    for col in ("#", "task id", "dataset", "ablation", "rows", "samples"):
        table.add_column(col, justify="right" if col in {"#", "rows", "samples"} else "left")
    for t in plan.tasks[:show]:
        table.add_row(str(t.index), t.task_id, t.dataset, t.ablation, f"{t.start}-{t.stop - 1}",
                      str(t.rows * spec.data.num_samples))
    if len(plan.tasks) > show:
        table.add_row("...", f"{len(plan.tasks) - show} more", "", "", "", "")
    console.print(table)
    s = spec.slurm
    console.print(f"[bold]{len(plan.tasks)}[/] task(s), {plan.total_records} records x {spec.data.num_samples} samples"
                  f" = [bold]{plan.total_samples}[/] samples; executor {spec.executor}; planned in {seconds:.2f}s")
    console.print(f"per task: {s.gpus_per_node} GPU(s), {s.cpus_per_gpu * max(1, s.gpus_per_node)} CPUs, "
                  f"mem {s.mem or 'cluster default'}, time {s.time}; partition {s.partition or 'default'}"
                  + (f", at most {s.array_parallelism} at once" if s.array_parallelism else ""))
    console.print(f"outputs: {plan.paths.output_dir}/<dataset>/<ablation>/   run state: {plan.paths.run_dir}")
    if spec.executor == "slurm":
        console.rule("sbatch script submit would write")
        console.print(sbatch_preview(plan), markup=False, highlight=False)
    argv = container_argv_preview(plan)
    if argv:
        console.rule(f"container argv ({spec.container.runtime}; GPU ids filled in at run time, env values hidden)")
        console.print(repr(argv), markup=False, highlight=False)
    console.print("nothing was submitted. `launcher submit` with the same spec submits exactly this.")
