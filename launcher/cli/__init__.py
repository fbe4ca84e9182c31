"""cli.py: the `launcher` command. Thin: parse flags, call a function that also works from Python, print.

Exit codes: 0 ok, 1 a run failed or is incomplete, 2 bad spec or bad flags (nothing submitted or written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import time
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from launcher.errors import LauncherError, SpecError

console = Console(stderr=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

EPILOG = """\
examples:
  launcher plan configs/demo.yaml                 what would run: units, worker jobs, GPUs, sbatch header
  launcher submit configs/demo.yaml --wait        submit, wait, gather (local executor: no cluster needed)
  launcher status outputs/demo                    one table per run: state, records done, speed, errors
  launcher run --checkpoint_dir M --dataset D.jsonl --output_dir OUT   the old inference_vllm.py flags
  launcher reproduce outputs/demo --wait          run it again from its record; byte-identical on CPU
  launcher batch -i requests.jsonl -o results.jsonl --model M   an OpenAI Batch API file (vllm run-batch format)
  launcher report outputs/a outputs/b             one table (and a plot) over runs, datasets and ablations
  launcher schema > spec.schema.json              JSON Schema for editors
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own exit code is 2 as well; add the fix
        self.print_usage(sys.stderr)
        err.print(f"[red]error:[/] {message}\n  fix: `{self.prog} --help` lists the flags")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from launcher.cli.legacy import add_legacy_flags

    p = _Parser(
        prog="launcher",
        description="Batch LLM generation on Slurm: YAML job spec -> array jobs -> samples.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"launcher {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def spec_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("spec", help="the job spec (YAML)")
        c.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="A.B=C",
            help="override a field, e.g. --set sampling.temperature=0.8 (repeatable)",
        )
        return c

    c = spec_cmd(
        "plan",
        "Validate the spec; show the units of work, worker jobs, GPUs, an estimate and the exact "
        "sbatch header. Submits nothing.",
    )
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--show", type=int, default=20, help="task rows to show (default 20)")

    c = spec_cmd(
        "submit", "Submit worker jobs for every unfinished unit as one array (+ a gather job). Resubmitting resumes."
    )
    c.add_argument("--wait", action="store_true", help="wait for the workers, then gather and print the summary")
    c.add_argument("--executor", choices=["slurm", "local"], help="override the spec's executor")
    choice = c.add_mutually_exclusive_group()
    choice.add_argument(
        "--new-run",
        action="store_true",
        help="the inputs changed since the last submit: start a run of its own for them",
    )
    choice.add_argument(
        "--resume",
        action="store_true",
        help="the inputs changed since the last submit: go on with that run anyway (recorded in its "
        "run.json; refused when the model changed)",
    )

    c = sub.add_parser(
        "run",
        help="Run a job in this process, on this machine's GPUs (or the old inference_vllm.py flags).",
        description="Run a spec (or a run directory) here: one job that holds every GPU this process "
        "sees, one worker per GPU group, each claiming units until none is left; then "
        "gather. Or the old inference_vllm.py flags.",
    )
    c.add_argument("--spec", help="job spec (YAML) or a run directory")
    c.add_argument(
        "--job", type=int, default=None, help="run only this worker job of the plan (as Slurm would), without gathering"
    )
    c.add_argument(
        "--unit",
        action="append",
        default=None,
        metavar="UNIT_ID",
        help="run only this unit (repeatable): one engine per unit, the old way",
    )
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C")
    c.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto", help="with the old flags")
    add_legacy_flags(c)

    c = sub.add_parser(
        "batch",
        help="Run an OpenAI Batch API file (vLLM run-batch's format): -i requests.jsonl -o results.jsonl.",
        description=textwrap.fill(
            "Each line of -i ({custom_id, method, url: /v1/chat/completions or /v1/completions, body}) "
            "becomes a record of an ordinary run (resumable, on Slurm with --executor slurm); its body's max_tokens, "
            "temperature, top_p, top_k, n, seed, stop and response_format override the spec's sampling for that line. "
            "-o gets one line per input line, in input order: {id, custom_id, response: {status_code, request_id, "
            "body}, error}. A bad line gets an error line and the others still run; the same command again resumes.",
            width=100,
        ),
        epilog="example: launcher batch -i requests.jsonl -o results.jsonl --model /shared/ckpt/llama3-8b\n"
        "         launcher batch -i big.jsonl -o big.out.jsonl --spec configs/cluster.yaml --executor slurm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("-i", "--input", required=True, help="the OpenAI batch input file (JSONL)")
    c.add_argument("-o", "--output", required=True, help="where the results go (JSONL; written whole at the end)")
    c.add_argument("--model", default=None, help="checkpoint folder (default: the spec's model.path)")
    c.add_argument("--spec", default=None, help="a job spec for everything else (cluster, image, sampling)")
    c.add_argument("--executor", choices=["slurm", "local"], default=None, help="default: the spec's, else local")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=C")

    c = sub.add_parser(
        "report",
        help="One table over runs: run x dataset x ablation (records, lengths, distinct-n, finish reasons, tok/s).",
        description="Reads the gathered outputs of each run given (run dir, output dir or spec) and writes "
        "report.json, report.md and report.png. Several runs side by side compare checkpoints or settings.",
    )
    c.add_argument("runs", nargs="+", help="run directories, output dirs, or specs")
    c.add_argument("--out", default=None, help="folder for report.* (default: <first run's output.dir>/report)")
    c.add_argument("--no-plot", action="store_true", help="markdown and JSON only")

    c = sub.add_parser("gather", help="Merge and verify a run's outputs into <output dir>/<dataset>/<ablation>/.")
    c.add_argument("run", help="run directory, output dir, or spec")

    c = sub.add_parser("status", help="A run's workers (node, GPUs, unit, rate) and units (done, running, pending).")
    c.add_argument("run", help="run directory, output dir, or spec")
    c.add_argument("--watch", action="store_true", help="refresh every few seconds until every job has ended")
    c.add_argument("--json", action="store_true")

    c = sub.add_parser("cancel", help="Cancel a run's Slurm jobs (finished records stay; submit again to resume).")
    c.add_argument("run")

    sub.add_parser("schema", help="Print the job spec's JSON Schema (for editor completion).")

    c = sub.add_parser(
        "compare",
        help="Compare two output dirs record by record (greedy: token agreement; sampled: lengths and distinct-n).",
    )
    c.add_argument("a", help="folder with samples.jsonl or samples.parquet (e.g. <output dir>/<dataset>/<ablation>)")
    c.add_argument("b", help="the other folder (or samples file)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--min-agreement", type=float, default=None, help="exit 1 when agreement is below this")

    c = sub.add_parser(
        "reproduce",
        help="Run a finished run again from its own record (spec, seeds, inputs, image, launcher), then compare.",
        description="Run a finished run again from its record: the spec as resolved (seeds included), checked "
        "against the inputs' content, the image digest and the launcher version/git sha it recorded; a mismatch "
        "is refused (exit 2) unless allowed. Writes to --output-dir (default <output.dir>-reproduce). With --wait, "
        "prints how far each dataset x ablation agrees with the original (byte-identical, else token agreement). "
        "vLLM promises the same samples only on the same hardware with the same vLLM version.",
    )
    c.add_argument("run", help="the original run: run directory, output dir, or spec")
    c.add_argument("--output-dir", type=Path, default=None, help="where the reproduction writes (a new folder)")
    c.add_argument("--executor", choices=["slurm", "local"], help="override the recorded executor")
    c.add_argument("--wait", action="store_true", help="wait, gather, and compare with the original")
    c.add_argument("--allow-other-image", action="store_true", help="run even if the image digest differs")
    c.add_argument(
        "--allow-other-launcher", action="store_true", help="run even if the launcher version or git sha differs"
    )
    c.add_argument(
        "--require-identical", action="store_true", help="with --wait: exit 1 unless every samples.jsonl is identical"
    )

    c = sub.add_parser("demo-model", help="Make a tiny random Llama + locally trained tokenizer (seconds, CPU).")
    c.add_argument("dir")

    from launcher.bench import add_parser as add_bench_parser

    add_bench_parser(sub)

    c = sub.add_parser("doctor", help="Check driver, GPUs, container runtime and image compatibility on this node.")
    c.add_argument("--runtime", default=None, help="apptainer|singularity|docker|podman|none")
    c.add_argument("--image", default=None)
    c.add_argument("--spec", default=None, help="take runtime and image from a job spec")
    return p


def _version() -> str:
    from launcher import __version__

    return __version__


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


def report(exc: LauncherError) -> int:
    """The one way any stage's error reaches the user: headline, then where / field / got / allowed / fix."""
    # soft_wrap: messages hold paths and commands to copy, never broken at the terminal's width; escape: a path may
    # hold '[...]', which rich would read as markup.
    err.print(f"[red]{escape(exc.headline)}:[/]\n{escape(str(exc))}", soft_wrap=True, highlight=False)
    return exc.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    from launcher.plan import check_inputs, expand
    from launcher.plan.persist import resolve_run
    from launcher.spec import load_spec
    from launcher.submit.preview import render_plan

    t0 = time.perf_counter()
    spec = load_spec(args.spec, args.overrides)
    rows = check_inputs(spec)  # every input readable before its content is identified
    resolved = resolve_run(spec, strict=False)
    plan = expand(spec, rows, run=resolved.run)
    if resolved.note:
        err.print(f"[yellow]note:[/] {escape(resolved.note)}", soft_wrap=True)
    if spec.executor == "slurm":
        from launcher.submit.fit import check_fits

        try:
            check_fits(spec)
        except SpecError as exc:
            err.print(f"[yellow]warning: submit would refuse this:[/]\n{escape(str(exc))}", soft_wrap=True)
    if args.json:
        from launcher.submit.preview import plan_json

        print(json.dumps(plan_json(plan), indent=2))
    else:
        render_plan(plan, console, show=args.show, seconds=time.perf_counter() - t0)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from launcher.plan import check_inputs, expand
    from launcher.plan.persist import resolve_run
    from launcher.spec import load_spec
    from launcher.submit.executors import submit

    spec = load_spec(args.spec, args.overrides)
    rows = check_inputs(spec)
    resolved = resolve_run(spec, "new" if args.new_run else "resume" if args.resume else "auto")
    plan = expand(spec, rows, run=resolved.run)
    if resolved.note:
        console.print(f"[yellow]{escape(resolved.note)}[/]: " + "; ".join(resolved.changes), soft_wrap=True)
    kind = args.executor or spec.executor
    if kind == "slurm":
        from launcher.submit.fit import check_fits

        check_fits(spec)  # a job no node can hold would pend forever: refused before anything is written
    sub = submit(plan, kind, resolved)
    console.print(
        f"run [bold]{plan.run.run_id}[/]: {sub.units_todo} unit(s) to do"
        + (f", {sub.units_done} already done" if sub.units_done else "")
        + f"; {len(sub.job_ids)} worker job(s) submitted"
        + (f" as array {sub.job_ids[0].split('_')[0]}" if sub.job_ids and kind == "slurm" else "")
        + (f"; gather job {sub.gather_job_id}" if sub.gather_job_id else "")
    )
    console.print(f"run dir: {sub.run_dir}\nstatus:  launcher status {sub.run_dir}")
    if not args.wait:
        if kind == "local" and sub.job_ids:
            console.print(
                "the local job(s) go on in the background; the last one to finish gathers the outputs "
                f"(or `launcher gather {sub.run_dir}` once `launcher status` shows every unit done)"
            )
        return 0
    from launcher.submit.wait import wait_and_gather

    try:
        return wait_and_gather(plan, sub, console)
    except KeyboardInterrupt:
        from launcher.store import write_json_atomic

        write_json_atomic(
            plan.run.root / "interrupted.json",
            {"time": time.time(), "executor": kind, "by": "Ctrl-C on `launcher submit --wait`"},
        )
        if kind == "local":
            err.print(
                "[yellow]interrupted:[/] the local jobs stopped with this command. Every record already "
                f"written is kept; `launcher submit {args.spec}` again resumes with the rest "
                f"(`launcher status {sub.run_dir}` shows what is done).",
                soft_wrap=True,
            )
        else:
            err.print(
                "[yellow]stopped waiting:[/] the jobs go on in Slurm. `launcher status "
                f"{sub.run_dir}` follows them, `launcher gather {sub.run_dir}` once they are done, "
                f"`launcher cancel {sub.run_dir}` stops them (records written are kept).",
                soft_wrap=True,
            )
        return 130


def cmd_gather(args: argparse.Namespace) -> int:
    from launcher.gather import GatherError, gather
    from launcher.plan.persist import find_run_dir, load_plan
    from launcher.submit.wait import print_reports

    plan = load_plan(find_run_dir(args.run))
    try:
        print_reports(gather(plan), console)
    except GatherError as exc:
        err.print(f"[red]gather failed: outputs incomplete[/]\n{escape(str(exc))}", soft_wrap=True)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from launcher.plan.persist import find_run_dir
    from launcher.submit.status_view import show_status

    return show_status(find_run_dir(args.run), console, watch=args.watch, as_json=args.json)


def cmd_cancel(args: argparse.Namespace) -> int:
    from launcher.plan.persist import find_run_dir
    from launcher.submit.status import cancel_run

    return cancel_run(find_run_dir(args.run), console)


def cmd_compare(args: argparse.Namespace) -> int:
    from launcher.gather.compare import as_json, compare, render

    cmp = compare(Path(args.a), Path(args.b))
    print(as_json(cmp) if args.json else render(cmp, Path(args.a), Path(args.b)))
    return 1 if args.min_agreement is not None and cmp.agreement < args.min_agreement else 0


def cmd_batch(args: argparse.Namespace) -> int:
    from launcher.plan import check_inputs, expand
    from launcher.plan.persist import resolve_run
    from launcher.submit.executors import submit
    from launcher.submit.openai_batch import batch_spec, write_output
    from launcher.submit.wait import wait_and_gather

    input_path, output_path = Path(args.input), Path(args.output)
    batch = batch_spec(input_path, output_path, args.model, args.spec, args.overrides)
    spec, good, bad = batch.spec, batch.requests, batch.bad_lines
    rows = check_inputs(spec)
    resolved = resolve_run(spec)
    plan = expand(spec, rows, run=resolved.run)
    kind = args.executor or spec.executor
    if kind == "slurm":
        from launcher.submit.fit import check_fits

        check_fits(spec)
    sub = submit(plan, kind, resolved)
    console.print(
        f"batch {input_path}: {good} request(s)" + (f", {bad} bad line(s) (error lines in the output)" if bad else "")
        + f"; run [bold]{plan.run.run_id}[/] ({sub.units_todo} unit(s) to do"
        + (f", {sub.units_done} already done" if sub.units_done else "") + f") in {plan.run.root}",
        soft_wrap=True,
    )  # fmt: skip
    code = wait_and_gather(plan, sub, console)
    if code:
        return code
    ok, errors = write_output(plan, input_path, output_path)
    console.print(f"wrote {output_path}: {ok} response(s), {errors} error(s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from launcher.gather.report import cell_rows, markdown, write_report
    from launcher.plan.persist import find_run_dir, load_plan

    plans = [load_plan(find_run_dir(r)) for r in args.runs]
    skipped: list[str] = []
    rows = [row for plan in plans for row in cell_rows(plan, skipped)]
    for line in skipped:
        err.print(f"[yellow]left out:[/] {escape(line)}", soft_wrap=True)
    if not rows:
        err.print("[yellow]nothing gathered yet[/] in " + ", ".join(str(p.run.root) for p in plans) + ": "
                  "`launcher gather RUN` once `launcher status RUN` shows every unit done", soft_wrap=True)  # fmt: skip
        return 1
    folder = Path(args.out) if args.out else plans[0].run.output_dir / "report"
    print(markdown(rows), end="")
    written = write_report(rows, folder, draw=not args.no_plot)
    for path in written:
        console.print(f"wrote {path}")
    if not args.no_plot and not any(p.suffix == ".png" for p in written):
        err.print("[yellow]no plot:[/] matplotlib does not import here (pip install 'launcher[plot]')")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from launcher.plan import check_inputs, expand
    from launcher.plan.persist import find_run_dir, resolve_run
    from launcher.submit.executors import submit
    from launcher.submit.reproduce import agreement, check_reproducible, record_reproduction

    check = check_reproducible(
        find_run_dir(args.run), args.output_dir, args.allow_other_image, args.allow_other_launcher
    )
    for what in check.allowed_differences:
        err.print(f"[yellow]allowed:[/] {escape(what)}", soft_wrap=True)
    rows = check_inputs(check.spec)
    resolved = resolve_run(check.spec)
    plan = expand(check.spec, rows, run=resolved.run)
    kind = args.executor or check.spec.executor
    if kind == "slurm":
        from launcher.submit.fit import check_fits

        check_fits(check.spec)
    sub = submit(plan, kind, resolved)
    record_reproduction(plan, check)
    console.print(
        f"reproducing run [bold]{check.original.run.run_id}[/] ({check.original.run.root}) as "
        f"{plan.run.root}: {len(sub.job_ids)} worker job(s) submitted"
    )
    pairs = [
        (check.original.run.output_dir / c.rel_dir, plan.run.output_dir / c.rel_dir) for c in check.original.cells()
    ]
    if not args.wait:
        console.print("once it has finished: " + "; ".join(f"launcher compare {a} {b}" for a, b in pairs))
        return 0
    from launcher.submit.wait import wait_and_gather

    code = wait_and_gather(plan, sub, console)
    if code:
        return code
    agreed = agreement(check.original, plan)
    for c in agreed:
        shown = (
            "byte-identical"
            if c.byte_identical
            else f"differs: token agreement {c.agreement:.4f}"
            if c.agreement is not None
            else "differs (sampled without token ids: `launcher compare` shows lengths and distinct-n)"
        )
        console.print(f"{c.cell}: {shown} ({c.records[0]} vs {c.records[1]} records)")
    identical = all(c.byte_identical for c in agreed)
    console.print(
        "reproduced: every samples.jsonl is byte-identical"
        if identical
        else "not byte-identical: vLLM promises the same samples only on the same hardware and vLLM version "
        "(docs/reproducibility.md); `launcher compare A B` shows where they part"
    )
    return 1 if args.require_identical and not identical else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from launcher.bench import run as bench_run

    return int(bench_run(args))


def cmd_schema(args: argparse.Namespace) -> int:
    from launcher.spec import json_schema

    print(json.dumps(json_schema(), indent=2))
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
    "compare": cmd_compare,
    "demo-model": cmd_demo_model,
    "doctor": cmd_doctor,
    "bench": cmd_bench,
}
