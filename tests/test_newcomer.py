"""What a newcomer meets (issue 32): no Slurm means a sentence and exit 2, not a traceback; the refusal's `kill`
hint and `launcher cancel` really stop a local run; `launcher explain` and `schema --markdown`; --help's examples
name folders the demo makes; the license metadata builds without deprecation warnings; and no string from data or
run files can move the cursor or recolour the terminal.

Real parts: the real CLI in subprocesses, a PATH without Slurm's commands (the live Slurm stays up for the others),
real local jobs of the tiny model (HF backend).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import tomllib
from rich.console import Console

from launcher.errors import Refused, SpecError
from launcher.plan import expand
from launcher.spec import json_schema, load_spec
from launcher.spec.explain import explain, field_docs, markdown
from launcher.store import RunDir
from launcher.store.claims import process_start
from launcher.submit.executors import submit
from launcher.terminal import printable, safe

from .conftest import ROOT, launcher, make_spec, write_jsonl

SLURM_COMMANDS = {"sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol", "salloc", "sattach", "sstat"}

# Every class of character that must never reach a terminal raw (launcher/terminal.py).
NASTY = (
    "u\x1b[2J\x1b[31mred\x1b]0;title\x07"  # ESC sequences: clear screen, recolour, retitle; BEL
    "\x9b31m"  # CSI in its one-byte C1 form
    "\r\x08\x00\x1c\x1d\x1e\x7f"  # CR, backspace, NUL, the separators splitlines() splits on, DEL
    "\x85\u2028\u2029"  # NEL, line and paragraph separators
    "\u202e\u2066\u2069\u200f"  # bidi override, isolate, pop, RLM
    "\udc80"  # a lone surrogate
    "[bold red]markup[/]\U0001f600"  # rich markup (must show as typed) and an astral character (kept)
)
UNSAFE_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def no_slurm_path(tmp_path: Path) -> str:
    """A PATH like this machine's, without Slurm's commands: symlinks to every other program on it."""
    bin_dir = tmp_path / "no-slurm-bin"
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            target = Path(folder) / name
            if name in SLURM_COMMANDS or (bin_dir / name).exists() or not os.access(target, os.X_OK):
                continue
            (bin_dir / name).symlink_to(target)
    return str(bin_dir)


# ------------------------------------------------------------------------------------------------ no Slurm here


def test_no_slurm_plan_shows_the_script_and_submit_refuses_writing_nothing(
    tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    path = no_slurm_path(tmp_path)
    env = {"PATH": path}
    spec = make_spec(tmp_path, tiny_model, users_file, executor="slurm")
    plan = launcher("plan", str(spec), env=env)
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr[-2000:]
    assert "#SBATCH --array=" in plan.stdout and "\nsrun " in plan.stdout, plan.stdout[-2000:]
    assert "sbatch and srun not found on PATH" in plan.stderr and "--executor local" in plan.stderr
    assert json.loads(launcher("plan", str(spec), "--json", env=env).stdout)["sbatch"].startswith("#!/bin/bash")

    for argv in (["submit", str(spec)], ["submit", str(spec), "--executor", "slurm", "--wait"]):
        proc = launcher(*argv, env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "Slurm is not reachable from here (nothing was submitted or written)" in proc.stderr
        assert "sbatch and srun not found on PATH" in proc.stderr and "--executor local" in proc.stderr
        assert "PATH" in proc.stderr and "slurm-client" in proc.stderr
    assert not (tmp_path / "out").exists(), "a refused submit must leave no run folder"

    requests = write_jsonl(tmp_path / "r.jsonl", [{"custom_id": "a", "method": "POST", "url": "/v1/completions",
                                                   "body": {"prompt": "x"}}])  # fmt: skip
    out = tmp_path / "res.jsonl"
    batch = launcher("batch", "-i", str(requests), "-o", str(out), "--model", str(tiny_model), "--executor", "slurm",
                     env=env)  # fmt: skip
    assert batch.returncode == 2 and "sbatch and srun not found" in batch.stderr and "Traceback" not in batch.stderr
    assert not out.exists() and not out.with_name(out.name + ".run").exists()


# ------------------------------------------------------------------------------------------------ stopping a local run


def _job_pids(run_dir: Path) -> list[int]:
    lock = json.loads((run_dir / "submit.lock").read_text())
    return [int(p["pid"]) for p in lock.get("local", [])]


def _wait_gone(pids: list[int], timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if all(process_start(pid) is None for pid in pids):
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"pids {pids} still run {timeout_s:.0f} s after they were told to stop")


def _submit_in_background(spec: Path, env: dict[str, str], log: Path) -> Path:
    """`launcher submit SPEC` (no --wait): its output to a file, which the local job inherits (a pipe would stay
    open until the job ends)."""
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "launcher", "submit", str(spec)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **env},
            timeout=300,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return Path(re.search(r"run dir: (\S+)", text).group(1))  # type: ignore[union-attr]


def _wait_for_records(out: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not list(out.rglob("chunks/*.jsonl")):
        time.sleep(0.3)
    assert list(out.rglob("chunks/*.jsonl")), "the local job wrote nothing in time"


def test_the_refusals_kill_hint_and_launcher_cancel_stop_a_local_run(
    tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    """The hint a second submit prints ("kill <pid>") stops the job: no "Bypassing signal SIGTERM", no traceback,
    records kept, status INTERRUPTED with what resumes it. `launcher cancel` does the same for a local run."""
    spec = make_spec(tmp_path, tiny_model, users_file, output={"chunk_records": 1}, model={"hf_batch_size": 1})
    slow = {"LAUNCHER_FAULT_SLOW_S": "4"}  # 10 records: ~40 s of work, stopped well before the end
    run_dir = _submit_in_background(spec, slow, tmp_path / "first.log")
    _wait_for_records(tmp_path / "out")
    # A second submit, in this process (a CLI one costs seconds of imports on a busy 2-core machine): refused.
    with pytest.raises(Refused) as refused:
        submit(expand(load_spec(spec), run=RunDir(run_dir)), "local")
    hint = re.search(r"`(kill [\d ]+)`", str(refused.value))
    assert hint and f"launcher cancel {run_dir}" in str(refused.value), str(refused.value)
    pids = _job_pids(run_dir)
    subprocess.run(shlex.split(hint.group(1)), check=True)  # the hint, exactly as printed
    _wait_gone(pids, 60)
    logs = "".join(p.read_text(errors="replace") for p in (run_dir / "logs").glob("*_log.*"))
    assert "Bypassing signal SIGTERM" not in logs and "Traceback" not in logs, logs[-3000:]
    status = json.loads(launcher("status", str(run_dir), "--json").stdout)
    assert status["jobs"][0]["state"] == "INTERRUPTED" and "SIGTERM" in status["jobs"][0]["reason"]
    assert f"`launcher submit {spec}` again resumes it" in status["jobs"][0]["reason"]
    assert status["counts"].get("DONE", 0) < len(status["units"]), "the job ran to its end: the kill did nothing"

    assert _submit_in_background(spec, slow, tmp_path / "again.log") == run_dir
    cancel = launcher("cancel", str(run_dir))
    assert cancel.returncode == 0 and "stopped 1 local job(s)" in cancel.stdout, cancel.stdout + cancel.stderr
    assert "again resumes" in cancel.stdout
    assert all(process_start(pid) is None for pid in _job_pids(run_dir))
    status = json.loads(launcher("status", str(run_dir), "--json").stdout)
    assert status["jobs"][0]["state"] == "INTERRUPTED" and "launcher cancel" in status["jobs"][0]["reason"]
    assert "nothing to cancel" in launcher("cancel", str(run_dir)).stdout
    records = sum(len(p.read_bytes().splitlines()) for p in (run_dir / "units").rglob("chunks/*.jsonl"))
    assert records >= 1  # what the workers wrote before they stopped is kept


# ------------------------------------------------------------------------------------------------ words


def test_explain_a_field_a_section_and_a_typo() -> None:
    schema = json_schema()
    top_p = explain(schema, "sampling.top_p")
    assert "type:    number" in top_p and "default: 0.9" in top_p and "allowed: > 0.0 and <= 1.0" in top_p
    assert "Nucleus sampling" in top_p
    slurm = explain(schema, "slurm")
    assert "fields:" in slurm and "slurm.gpus_per_node" in slurm and "slurm.partition" in slurm
    assert "data.datasets[].name" in explain(schema, "data.datasets.name")  # the list is implied
    with pytest.raises(SpecError) as exc:
        explain(schema, "sampling.topp")
    assert "sampling.top_p" in str(exc.value)
    proc = launcher("explain", "sampling.temprature")
    assert proc.returncode == 2 and "sampling.temperature" in proc.stderr and "Traceback" not in proc.stderr


def test_schema_markdown_lists_every_field_with_its_default() -> None:
    schema = json_schema()
    md = markdown(schema)
    docs = field_docs(schema)
    for doc in docs:
        if not doc.section:
            assert f"| `{doc.path}` |" in md, doc.path
    assert {"sampling.temperature", "slurm.time", "output.dir", "data.fields.user_id"} <= {d.path for d in docs}
    assert "| `sampling.max_tokens` | integer | `512` | >= 1 and <= 131072 |" in md
    for section in ("model", "data", "sampling", "slurm", "container", "output", "cost"):
        assert f"\n## {section}\n" in md
    proc = launcher("schema", "--markdown")
    assert proc.returncode == 0 and proc.stdout.startswith("# launcher job spec")


def test_help_examples_name_folders_the_demo_makes() -> None:
    from launcher.cli.parser import EPILOG

    demo = load_spec(ROOT / "configs" / "demo.yaml")
    out = Path(demo.output.dir).resolve().relative_to(ROOT).as_posix()  # demo/outputs
    model = Path(demo.model.path).resolve().relative_to(ROOT).as_posix()  # demo/model
    cells = {f"{out}/{d.name}/{a}" for d in demo.data.datasets for a in demo.data.ablation_configs}
    made = {out, model, f"{out}-reproduce"} | cells | {c.replace(out, f"{out}-reproduce", 1) for c in cells}
    commands = [re.split(r"\s{2,}", line.strip())[0] for line in EPILOG.splitlines()[1:] if line.strip()]
    paths = [w for cmd in commands for w in shlex.split(cmd) if "/" in w and not w.startswith("/")]
    assert paths, EPILOG
    for path in paths:
        if path.startswith("configs/"):
            assert (ROOT / path).is_file(), path
        elif path.endswith(".jsonl") or path.isupper():
            continue  # an input the user brings (requests.jsonl)
        else:
            assert path in made, f"--help names {path}, which the demo does not make ({sorted(made)})"


def test_license_metadata_is_the_spdx_form_setuptools_wants() -> None:
    from setuptools.config.pyprojecttoml import read_configuration

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert all((ROOT / f).is_file() for f in project["project"]["license-files"])
    assert any(r.replace(" ", "").startswith("setuptools>=77") for r in project["build-system"]["requires"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_configuration(ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message) for w in caught]


# ------------------------------------------------------------------------------------------------ safe output


def test_printable_escapes_every_dangerous_class_and_keeps_the_rest() -> None:
    shown = printable(NASTY)
    assert not UNSAFE_RE.search(shown) and "\n" not in shown and "\t" not in shown
    for escaped in ("\\x1b[2J", "\\x9b", "\\r", "\\x00", "\\x1c", "\\x85", "\\u2028", "\\u202e", "\\udc80", "\\x7f"):
        assert escaped in shown, escaped
    assert "\U0001f600" in shown and "[bold red]markup[/]" in shown
    assert printable("a\nb", keep_newlines=True) == "a\nb" and printable("a\nb") == "a\\nb"
    console = Console(file=io.StringIO(), force_terminal=False, color_system=None, width=300)
    console.print(f"id: {safe(NASTY)}")
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[bold red]markup[/]" in out and not UNSAFE_RE.search(out)
    shown.encode("utf-8")  # a lone surrogate no longer makes printing raise


def test_status_render_and_report_markdown_escape_data() -> None:
    from launcher.gather.report import CellRow
    from launcher.gather.report import markdown as report_markdown
    from launcher.submit.status import JobStatus, RunStatus, UnitStatus, WorkerStatus
    from launcher.submit.status_view import render, summary_line

    status = RunStatus(
        run_id="r1",
        run_dir="/x",
        jobs=[JobStatus(0, "FAILED", "", "node\x1b[31m", "12_0", 0, 1, f"ValueError: bad user {NASTY}")],
        workers=[WorkerStatus("0.0", f"host{NASTY}", [], "failed", [f"u.{NASTY}"], 0, 0, 0, None, 0, NASTY)],
        units=[UnitStatus(f"ds.{NASTY}.0000", "FAILED", 0, 2, NASTY, 3, NASTY, f"ds/{NASTY}")],
        gather_job_id=None,
        gather_state=None,
        run_figures={},
        warnings=[NASTY],
    )
    console = Console(file=io.StringIO(), force_terminal=False, color_system=None, width=400)
    console.print(render(status))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert not UNSAFE_RE.search(out), [m.group() for m in UNSAFE_RE.finditer(out)][:10]
    assert "\\x1b[31m" in out and "[bold red]markup[/]" in out
    assert not UNSAFE_RE.search(summary_line(status))
    row = CellRow("r1", "r1", f"model{NASTY}", "ds", "full", 1, 1, 0, 1.0, 1.0, 1.0, 1.0, None, None, None)
    md = report_markdown([row])
    assert not UNSAFE_RE.search(md.replace("\n", "")) and md.count("\n") == 3  # one row: the header, rule, row


def test_compare_and_errors_print_data_escaped(tmp_path: Path) -> None:
    nasty_id = "u1" + NASTY.replace("\udc80", "")  # JSON files hold no lone surrogates
    row = {"record_id": nasty_id, "generated_samples": ["a b"], "sample_tokens": [2]}
    write_jsonl(tmp_path / "a" / "samples.jsonl", [row])
    write_jsonl(tmp_path / "b" / "samples.jsonl", [row | {"generated_samples": ["a c"]}])
    proc = launcher("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr
    assert "first divergence: record u1u\\x1b[2J" in proc.stdout and not UNSAFE_RE.search(proc.stdout.replace("\n", ""))
    assert "character agreement (no token ids" in proc.stdout
    bad = tmp_path / f"bad{NASTY[:12]}.yaml"  # a spec path with an escape sequence in its name
    bad.write_text("name: [unclosed\n")
    err = launcher("plan", str(bad))
    assert err.returncode == 2 and "\\x1b[2J" in err.stderr and not UNSAFE_RE.search(err.stderr.replace("\n", ""))
