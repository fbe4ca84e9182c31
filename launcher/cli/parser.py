"""cli/parser.py: the `launcher` command's flags: one sub-command each, with help that teaches (examples in the
epilog)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import NoReturn

from launcher.cli.console import err
from launcher.engines import registry

EPILOG = """\
examples (the demo's own folders: `launcher demo-model demo/model` first):
  launcher plan configs/demo.yaml                 what would run: units, worker jobs, GPUs, sbatch header
  launcher submit configs/demo.yaml --wait        submit, wait, gather (local executor: no cluster needed)
  launcher status demo/outputs                    one table per run: state, records done, speed, errors
  launcher run --checkpoint_dir M --dataset D.jsonl --output_dir OUT   the old inference_vllm.py flags
  launcher reproduce demo/outputs --wait          run it again from its record (into demo/outputs-reproduce)
  launcher report demo/outputs demo/outputs-reproduce   one table (and a plot) over runs, datasets and ablations
  launcher compare demo/outputs/demo_users/full demo/outputs-reproduce/demo_users/full   record by record
  launcher batch -i requests.jsonl -o results.jsonl --model demo/model   an OpenAI Batch API file (vllm run-batch)
  launcher explain sampling.top_p                 one field of the job spec: what it means, type, default, allowed
  launcher schema --markdown                      every field of the job spec, readable (no flag: JSON Schema)
"""

PROGRESS_HELP = (
    "with --wait where stdout is no terminal (a log, CI, `| cat`): seconds between progress lines "
    "(default: $LAUNCHER_PROGRESS_S, else 10)"
)


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
    c.add_argument("--progress-every", type=float, default=None, metavar="SECONDS", help=PROGRESS_HELP)
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
    c.add_argument("--backend", choices=registry.spec_choices(), default="auto", help="with the old flags")
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
    c.add_argument("--progress-every", type=float, default=None, metavar="SECONDS", help=PROGRESS_HELP)
    c.add_argument(
        "--new-run",
        action="store_true",
        help="the input changed since the last `launcher batch` of it: run it as a run of its own (the same command "
        "without it refuses a changed input; with the original file back it resumes)",
    )

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

    c = sub.add_parser(
        "cancel",
        help="Stop a run's jobs: scancel its Slurm jobs, or SIGTERM its local ones (finished records stay; "
        "submit again to resume).",
    )
    c.add_argument("run", help="run directory, output dir, or spec")

    c = sub.add_parser(
        "schema",
        help="Print the job spec's JSON Schema (for editor completion), or with --markdown every field, readable.",
    )
    c.add_argument("--markdown", action="store_true", help="a table per section: field, type, default, meaning")

    c = sub.add_parser(
        "explain",
        help="One field of the job spec (or a section): what it means, its type, default and allowed values.",
    )
    c.add_argument("field", nargs="?", default="", help="e.g. sampling.top_p, slurm, model.backend (none: sections)")

    c = sub.add_parser(
        "compare",
        help="Compare two output dirs record by record (greedy: token agreement, or character agreement where "
        "the samples hold no token ids (output.token_ids: true records them); sampled: lengths and distinct-n).",
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
    c.add_argument("--progress-every", type=float, default=None, metavar="SECONDS", help=PROGRESS_HELP)

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
