"""cli/__init__.py: the `launcher` command, kept thin so that everything it does also works from Python: parse
flags, call the front door (submit/front_door.py) or a stage's function, print.

Exit codes: 0 ok, 1 a run failed or is incomplete, 2 bad spec or bad flags (nothing submitted or written), 130 Ctrl-C.
Every error a user can meet is a LauncherError (errors.py), printed one way by `report` (launcher/terminal.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from launcher.cli.console import console, err, printable, report, safe
from launcher.cli.parser import build_parser
from launcher.errors import LauncherError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except BrokenPipeError:  # `launcher status RUN | head`: the reader left; that is not an error of ours
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's exit flush must not raise it again
        return 0
    except LauncherError as exc:
        return report(exc)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.submit.front_door import prepare
    from launcher.submit.preview import render_plan

    t0 = time.perf_counter()
    prepared = prepare(args.spec, args.overrides, purpose="plan")
    plan = prepared.plan
    if prepared.resolved.note:
        err.print(f"[yellow]note:[/] {safe(prepared.resolved.note)}", soft_wrap=True)
    if prepared.slurm_missing:
        err.print(
            f"[yellow]note:[/] {' and '.join(prepared.slurm_missing)} not found on PATH: no Slurm here. Below is what "
            "a submit from your cluster's login node would write; here `launcher submit` would refuse "
            "(`--executor local` runs it on this machine).",
            soft_wrap=True,
        )
    if prepared.fit_refusal is not None:
        refusal = safe(str(prepared.fit_refusal), True)
        err.print(f"[yellow]warning: submit would refuse this:[/]\n{refusal}", soft_wrap=True)
    if args.json:
        from launcher.submit.preview import plan_json

        print(json.dumps(plan_json(plan), indent=2))
    else:
        render_plan(plan, console, show=args.show, seconds=time.perf_counter() - t0)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from launcher.submit.executors import submit
    from launcher.submit.front_door import prepare

    command = shlex.join(
        ["launcher", "submit", args.spec, *_flags(args.overrides, "--set"), *_flags([args.executor], "--executor")]
    )
    prepared = prepare(
        args.spec,
        args.overrides,
        purpose="submit",
        executor=args.executor,
        choice="new" if args.new_run else "resume" if args.resume else "auto",
        command=command,
    )
    plan, resolved, kind = prepared.plan, prepared.resolved, prepared.executor
    if resolved.note:
        console.print(f"[yellow]{safe(resolved.note)}[/]: " + safe("; ".join(resolved.changes)), soft_wrap=True)
    sub = submit(plan, kind, resolved, command)
    console.print(
        f"run [bold]{safe(plan.run.run_id)}[/]: {sub.units_todo} unit(s) to do"
        + (f", {sub.units_done} already done" if sub.units_done else "")
        + f"; {len(sub.job_ids)} worker job(s) submitted"
        + (_arrays_text(sub.job_ids) if sub.job_ids and kind == "slurm" else "")
        + (f"; gather job {sub.gather_job_id}" if sub.gather_job_id else "")
    )
    console.print(f"run dir: {safe(sub.run_dir)}\nstatus:  launcher status {safe(sub.run_dir)}")
    if not args.wait:
        if kind == "local" and sub.job_ids:
            console.print(
                "the local job(s) go on in the background; the last one to finish gathers the outputs "
                f"(or `launcher gather {safe(sub.run_dir)}` once `launcher status` shows every unit done); "
                f"`launcher cancel {safe(sub.run_dir)}` stops them"
            )
        return 0
    return _wait(plan, sub, kind, args)


def _wait(
    plan: Any, sub: Any, kind: str, args: argparse.Namespace, noun: str = "records", after_gather: Any = None
) -> int:
    """`--wait`: follow, gather, summarize; Ctrl-C stops a local run cleanly, leaves a Slurm run running."""
    from launcher.submit.wait import follow

    return follow(plan, sub, kind, console, err, every_s=args.progress_every, noun=noun, after_gather=after_gather)


def cmd_gather(args: argparse.Namespace) -> int:
    from launcher.gather import gather
    from launcher.plan.persist import find_run_dir, load_plan
    from launcher.submit.wait import print_reports

    plan = load_plan(find_run_dir(args.run))
    print_reports(gather(plan), console)  # incomplete: GatherError, exit 1, printed by `report`
    return 0


def _arrays_text(job_ids: list[str]) -> str:
    """' as array 12', or ' as arrays 12, 13 (MaxArraySize)' when the jobs were more than one array may hold."""
    arrays = list(dict.fromkeys(j.split("_")[0] for j in job_ids))
    return f" as array {arrays[0]}" if len(arrays) == 1 else f" as arrays {', '.join(arrays)} (MaxArraySize)"


def cmd_status(args: argparse.Namespace) -> int:
    from launcher.plan.persist import find_run_dir
    from launcher.submit.status_view import show_status

    return show_status(find_run_dir(args.run), console, watch=args.watch, as_json=args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    from launcher.plan.persist import find_run_dir
    from launcher.submit.cancel import cancel_run

    return cancel_run(find_run_dir(args.run), console)


def cmd_compare(args: argparse.Namespace) -> int:
    from launcher.gather.compare import as_json, compare, render

    cmp = compare(Path(args.a), Path(args.b))
    print(as_json(cmp) if args.json else printable(render(cmp, Path(args.a), Path(args.b)), keep_newlines=True))
    return 1 if args.min_agreement is not None and cmp.agreement < args.min_agreement else 0


def cmd_batch(args: argparse.Namespace) -> int:
    from launcher.submit.executors import submit
    from launcher.submit.front_door import prepare
    from launcher.submit.openai_batch import batch_spec, write_output

    input_path, output_path = Path(args.input), Path(args.output)
    batch = batch_spec(input_path, output_path, args.model, args.spec, args.overrides)
    good, bad = batch.requests, batch.bad_lines
    command = shlex.join(batch_command(args))
    # A batch run's rows are the file's lines: changed lines cannot resume an earlier run, only start their own.
    prepared = prepare(
        batch.spec, purpose="batch", executor=args.executor, choice="new" if args.new_run else "auto", command=command
    )
    plan, kind = prepared.plan, prepared.executor
    sub = submit(plan, kind, prepared.resolved, command)
    # One way of counting: lines of the file. Each line is a record of the run (a bad one too: it gets its error
    # line), so the progress, this line and the last one all count the same lines.
    console.print(
        f"batch {safe(input_path)}: {good + bad} line(s): {good} request(s)"
        + (f", {bad} bad line(s) (each gets an error line)" if bad else "")
        + f"; run [bold]{safe(plan.run.run_id)}[/] ({sub.units_todo} unit(s) to do"
        + (f", {sub.units_done} already done" if sub.units_done else "") + f") in {safe(plan.run.root)}",
        soft_wrap=True,
    )  # fmt: skip

    def write_file() -> None:  # before the verdict: a batch that generated nothing still gets its error lines
        ok, errors = write_output(plan, input_path, output_path, command)
        failed = errors - bad  # requests a worker refused or could not run (quarantined: too long, bad settings)
        console.print(
            f"wrote {safe(output_path)}: {ok + errors} line(s): {ok} response(s), {errors} error line(s)"
            + (f" ({bad} bad line(s), {failed} request(s) that did not run: their error says why)" if failed and bad
               else f" ({failed} request(s) that did not run: their error says why)" if failed else ""),
            soft_wrap=True,
        )  # fmt: skip

    return _wait(plan, sub, kind, args, noun="lines", after_gather=write_file)


def batch_command(args: argparse.Namespace) -> list[str]:
    """The `launcher batch` command line that goes on with this run (its hints name it: a batch has no spec)."""
    cmd = ["launcher", "batch", "-i", args.input, "-o", args.output]
    for flag, value in (("--model", args.model), ("--spec", args.spec), ("--executor", args.executor)):
        if value:
            cmd += [flag, value]
    return cmd + [a for o in args.overrides for a in ("--set", o)]


def cmd_report(args: argparse.Namespace) -> int:
    from launcher.gather.report import cell_rows, markdown, run_labels, write_report
    from launcher.plan.persist import find_run_dir, load_plan

    plans = [load_plan(find_run_dir(r)) for r in args.runs]
    skipped: list[str] = []
    labels = run_labels(plans)  # a run and its reproduction share a run id: each still gets a name of its own
    rows = [row for plan, label in zip(plans, labels, strict=True) for row in cell_rows(plan, skipped, label)]
    for line in skipped:
        err.print(f"[yellow]left out:[/] {safe(line)}", soft_wrap=True)
    if not rows:
        err.print("[yellow]nothing gathered yet[/] in " + ", ".join(safe(p.run.root) for p in plans) + ": "
                  "`launcher gather RUN` once `launcher status RUN` shows every unit done", soft_wrap=True)  # fmt: skip
        return 1
    print(printable(markdown(rows), keep_newlines=True), end="")
    if args.out:
        written = write_report(rows, Path(args.out), draw=not args.no_plot)
    else:  # <output.dir>/report: a folder of the outputs, checked and made with the share's modes
        outputs = plans[0].run.outputs(plans[0].spec.output.share)
        written = write_report(rows, outputs.report, draw=not args.no_plot, opener=outputs.opener)
    for path in written:
        console.print(f"wrote {safe(path)}")
    if not args.no_plot and not any(p.suffix == ".png" for p in written):
        err.print(safe("no plot: matplotlib does not import here (pip install 'launcher[plot]')"), style="yellow")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from launcher.plan.persist import find_run_dir
    from launcher.submit.executors import submit
    from launcher.submit.front_door import prepare
    from launcher.submit.reproduce import agreement, check_reproducible, record_reproduction

    check = check_reproducible(
        find_run_dir(args.run), args.output_dir, args.allow_other_image, args.allow_other_launcher
    )
    for what in check.allowed_differences:
        err.print(f"[yellow]allowed:[/] {safe(what)}", soft_wrap=True)
    command = shlex.join(
        ["launcher", "reproduce", args.run, *_flags([args.output_dir and str(args.output_dir)], "--output-dir")]
    )
    prepared = prepare(
        check.spec,
        purpose="reproduce",
        executor=args.executor,
        executor_where=None if args.executor else f"{check.original.run.run_json}",
        command=command,
        reproducing=check.original.run,
    )
    plan, kind = prepared.plan, prepared.executor
    sub = submit(plan, kind, prepared.resolved)
    record_reproduction(plan, check)
    console.print(
        f"reproducing run [bold]{safe(check.original.run.run_id)}[/] ({safe(check.original.run.root)}) as "
        f"{safe(plan.run.root)}: {len(sub.job_ids)} worker job(s) submitted"
    )
    pairs = [(check.original.run.cell(c.rel_dir).root, plan.run.cell(c.rel_dir).root) for c in check.original.cells()]
    if not args.wait:
        console.print("once it has finished: " + "; ".join(safe(f"launcher compare {a} {b}") for a, b in pairs))
        return 0
    code = _wait(plan, sub, kind, args)
    if code:
        return code
    agreed = agreement(check.original, plan)
    for c in agreed:
        shown = (
            "byte-identical"
            if c.byte_identical
            else f"differs: token agreement {c.agreement:.4f}"
            if c.agreement is not None
            else "differs (no token ids in the samples: `launcher compare` shows character agreement, lengths and "
            "distinct-n; output.token_ids: true records token ids)"
        )
        console.print(f"{safe(c.cell)}: {shown} ({c.records[0]} vs {c.records[1]} records)")
    identical = all(c.byte_identical for c in agreed)
    console.print(
        "reproduced: every samples.jsonl is byte-identical"
        if identical
        else "not byte-identical: vLLM promises the same samples only on the same hardware and vLLM version "
        "(docs/reproducibility.md); `launcher compare A B` shows where they part"
    )
    return 1 if args.require_identical and not identical else 0


def _flags(values: list[str | None], flag: str) -> list[str]:
    """[flag, value] for each value given: the command a refusal names is the one the user typed."""
    return [x for v in values if v for x in (flag, v)]


def cmd_bench(args: argparse.Namespace) -> int:
    from launcher.bench import run as bench_run

    return int(bench_run(args))


def cmd_schema(args: argparse.Namespace) -> int:
    from launcher.spec import json_schema

    if args.markdown:
        from launcher.spec.explain import markdown

        print(markdown(json_schema()))
        return 0
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from launcher.spec import json_schema
    from launcher.spec.explain import explain

    print(explain(json_schema(), args.field))
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    from launcher.demo_model import make_demo_model

    t0 = time.perf_counter()
    out = make_demo_model(Path(args.dir))
    console.print(f"tiny demo model written to {out} in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from launcher.containers.doctor import main as doctor_main

    argv = []
    if args.spec:
        from launcher.spec import load_spec

        spec = load_spec(args.spec)
        argv += ["--runtime", spec.container.runtime]
        argv += ["--image", spec.container.image] if spec.container.image else []
    if args.runtime:
        argv += ["--runtime", args.runtime]
    if args.image:
        argv += ["--image", args.image]
    return int(doctor_main(argv))


def cmd_run(args: argparse.Namespace) -> int:
    from launcher.cli.run import run_command

    return run_command(args)


COMMANDS = {
    "plan": cmd_plan,
    "submit": cmd_submit,
    "run": cmd_run,
    "gather": cmd_gather,
    "status": cmd_status,
    "reproduce": cmd_reproduce,
    "batch": cmd_batch,
    "report": cmd_report,
    "cancel": cmd_cancel,
    "schema": cmd_schema,
    "explain": cmd_explain,
    "compare": cmd_compare,
    "demo-model": cmd_demo_model,
    "doctor": cmd_doctor,
    "bench": cmd_bench,
}
