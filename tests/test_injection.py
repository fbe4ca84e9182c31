"""Injection and exposure: every string that reaches an sbatch script, a container argv or a file name is either
refused with a SpecError (exit 2, nothing written) or passed through inert; secrets never land in readable files;
output files follow the user's umask.

"Inert" is shown three ways: the rendered sbatch script is parsed the way sbatch parses #SBATCH lines and run by
bash (srun stubbed, recording its argv); the container argv is checked item by item; and, with a live Slurm, a job
carrying the values runs and Slurm reports them back literally, with no side-effect file anywhere.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher.cli import main
from launcher.errors import SpecError
from launcher.plan import expand
from launcher.spec import load_spec
from launcher.store import read_jsonl, safe_filename
from launcher.store.names import unescape_stem
from launcher.submit.preview import sbatch_preview

from . import test_bad_inputs, test_concurrency
from .conftest import ROOT, USERS, make_spec, write_jsonl
from .test_bad_inputs import ODD_USERS, SECRETS, MixedRun, fake_model
from .test_concurrency import LockedRun

# The two real runs are session fixtures of those modules: shared, so each runs once per session.
mixed_run = test_bad_inputs.mixed_run
locked_run = test_concurrency.locked_run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inj")
    return fake_model(root / "model"), write_jsonl(root / "users.jsonl", USERS)


def spec_at(tmp_path: Path, inputs: tuple[Path, Path], **sections: Any) -> Path:
    model, data = inputs
    return make_spec(tmp_path, model, data, **sections)


# ---- refused: values that could break out of an #SBATCH line, an argv item or a folder --------------------------
NEWLINE = "x\n#SBATCH --wrap=touch /tmp/pwned"
REFUSED: list[tuple[str, Any, dict[str, Any]]] = [
    # (field shown in the error, value, spec sections)
    *[
        ("slurm.partition", v, {"slurm": {"partition": v}})
        for v in (NEWLINE, "$(touch X)", "gpu;touch X", "`id`", "a b", "gpu'", "p" * 200)
    ],
    *[("slurm.account", v, {"slurm": {"account": v}}) for v in (NEWLINE, "$(id)", "lab\r")],
    *[("slurm.qos", v, {"slurm": {"qos": v}}) for v in (NEWLINE, "high|x")],
    *[("slurm.constraint", v, {"slurm": {"constraint": v}}) for v in (NEWLINE, "h100;touch X", "$(x)", "a b")],
    *[("slurm.mem", v, {"slurm": {"mem": v}}) for v in ("64G\n", "64G;x", "$(x)")],
    *[("slurm.time", v, {"slurm": {"time": v}}) for v in ("04:00:00\n#SBATCH --x", "1;2", "`1`")],
    *[
        ("slurm.extra_args", {k: "v"}, {"slurm": {"extra_args": {k: "v"}}})
        for k in ("comment\n#SBATCH --x", "a b", "$(x)", "wrap", "output", "array", "--comment")
    ],
    *[
        ("slurm.extra_args.comment", v, {"slurm": {"extra_args": {"comment": v}}})
        for v in ("a\nb", "a\rb", "back\\slash", "c" * 2000)
    ],
    *[("name", v, {"name": v}) for v in ("a;b", "$(x)", "../x", "a\nb", "n" * 65, "-rf")],
    *[("data.datasets[0].name", v, {}) for v in ("../../etc", "a/b", "$(x)", ".hidden")],
    *[
        ("data.templates", {v: {"text": "hi"}}, {"data": {"templates": {v: {"text": "hi"}}}})
        for v in ("../x", "a/b", ".hidden", "a b")
    ],
    *[
        ("container.image", v, {"container": {"runtime": "docker", "image": v}})
        for v in ("--privileged", "-v/:/host", "img\nx")
    ],
    *[
        ("container.binds[0]", v, {"container": {"binds": [v]}})
        for v in ("/a:/b:/c:ro", "rel/path", "/a\n/b:/a", "/x:/y:exec")
    ],
    *[("container.env", {k: "v"}, {"container": {"env": {k: "v"}}}) for k in ("A B", "A=B", "$(x)", "1A", "A;B")],
    *[("container.env.BIG", {"BIG": "x" * 40_000}, {"container": {"env": {"BIG": "x" * 40_000}}})],
    # docker reads DOCKER_* itself, so the value would go in its argv (ps): a credential-like name is refused
    *[
        ("container.env", {k: "v"}, {"container": {"runtime": "docker", "image": "img:1", "env": {k: "v"}}})
        for k in ("DOCKER_TOKEN", "LD_SECRET")
    ],
    *[("output.dir", v, {"output": {"dir": v}}) for v in ("/tmp/a%jb", "/tmp/a\nb", "/tmp/a\\b", "/tmp/" + "x" * 300)],
    ("model.path", "/tmp/a\nb", {"model": {"path": "/tmp/a\nb"}}),
    ("container.runtime", "comma", {}),  # apptainer --bind reads ',' as a list separator: refused at plan time
]


def refused_spec(tmp_path: Path, inputs: tuple[Path, Path], field: str, value: Any, sections: dict[str, Any]) -> Path:
    model, data = inputs
    out = tmp_path / "out"
    sections = {"output": {"dir": str(out)}, **sections}
    if field.startswith("data.datasets"):
        sections["data"] = {"datasets": [{"name": value, "path": str(data)}]}
    if field == "container.runtime":
        sections["output"] = {"dir": str(tmp_path / "out,comma")}
        sections["container"] = {"runtime": "apptainer", "image": "/images/x.sif"}
    return make_spec(tmp_path, model, data, **sections)


@pytest.mark.parametrize(("field", "value", "sections"), REFUSED, ids=[f"{f}={str(v)[:24]!r}" for f, v, _ in REFUSED])
def test_refused(
    field: str,
    value: Any,
    sections: dict[str, Any],
    tmp_path: Path,
    inputs: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = refused_spec(tmp_path, inputs, field, value, sections)
    before = set(tmp_path.rglob("*"))
    for argv in (["plan", str(spec)], ["submit", str(spec)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert field.split("[")[0].split(".")[0] in err and "fix:" in err, err
        assert f"{spec.name}:" in err, err  # file:line
    assert set(tmp_path.rglob("*")) == before, "nothing written"
    assert not Path("/tmp/pwned").exists()


def test_set_override_is_refused_too(
    tmp_path: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_at(tmp_path, inputs)
    for override in ("slurm.partition=$(touch X)", 'slurm.extra_args={comment: "a\\nb"}', "a;b=1", "name=../x"):
        assert main(["plan", str(spec), "--set", override]) == 2
        err = capsys.readouterr().err
        assert "--set" in err and "fix:" in err, err


# ---- inert: free text that reaches the batch script ---------------------------------------------------------------
def payloads(canary: Path) -> list[str]:
    return [
        "a b",
        "it's",
        'say "hi"',
        "semi;colon",
        f"$(touch {canary})",
        f"`touch {canary}`",
        "a|b&c>d<e",
        "*?[x]",
        "#hash",
        "é ü ∑",
        "$HOME ${IFS}x",
        f"'; touch {canary}; '",
        "--wrap=touch x",
        " lead-trail ",
    ]


def sbatch_value(line: str) -> str:
    """An #SBATCH line's argument as sbatch itself reads it (src/sbatch/opt.c: _get_argument): "--key=value"."""
    text = line.split(None, 1)[1]
    out, quote, escape = [], "", False
    for ch in text:
        if escape:
            out.append(ch)
            escape = False
        elif ch == "\\":
            escape = True
        elif quote:
            if ch == quote:
                quote = ""
            else:
                out.append(ch)
        elif ch in "'\"":
            quote = ch
        elif ch == "#" or ch.isspace():
            break
        else:
            out.append(ch)
    return "".join(out)


def render(tmp_path: Path, inputs: tuple[Path, Path], out: Path, comment: str) -> tuple[str, Any]:
    spec = spec_at(
        tmp_path,
        inputs,
        executor="slurm",
        output={"dir": str(out)},
        slurm={"partition": "debug", "gpus_per_node": 2, "extra_args": {"comment": comment, "mail-user": comment}},
    )
    plan = expand(load_spec(spec))
    return sbatch_preview(plan), plan


STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stubs")
    for name in ("srun", "scontrol", "sbatch"):
        (folder / name).write_text(STUB.format(python=sys.executable))
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.parametrize("index", range(len(payloads(Path("c")))))
def test_sbatch_text_is_inert(index: int, tmp_path: Path, inputs: tuple[Path, Path], stubs: Path) -> None:
    canary = tmp_path / "CANARY"
    value = payloads(canary)[index]
    folder_part = value.replace("/", "_").strip() or "x"
    out = tmp_path / f"out {folder_part}"
    baseline, _ = render(tmp_path, inputs, tmp_path / "plain", "plain")
    text, plan = render(tmp_path, inputs, out, value)
    assert len(text.splitlines()) == len(baseline.splitlines()), "no line added or split"
    args = [sbatch_value(ln) for ln in text.splitlines() if ln.startswith("#SBATCH")]
    headers = {a.split("=", 1)[0]: a.split("=", 1)[-1] for a in args}
    assert headers["--comment"] == value and headers["--mail-user"] == value
    logs = plan.run.logs
    assert headers["--output"] == f"{logs}/%A_%a_0_log.out" and headers["--error"] == f"{logs}/%A_%a_0_log.err"
    # bash runs the script: srun (stubbed) must receive exactly these arguments, and nothing else may run
    script = tmp_path / "job.sh"
    script.write_text(text)
    log = tmp_path / "calls.jsonl"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log), "HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls == [
        [
            "srun",
            "--unbuffered",
            "--output",
            f"{logs}/%A_%a_%t_log.out",
            "--error",
            f"{logs}/%A_%a_%t_log.err",
            sys.executable,  # the run folder checked before submitit loads its pickle (store/guard.py)
            "-m",
            "launcher.store.guard",
            str(plan.run.root),
            "--",
            sys.executable,
            "-u",
            "-m",
            "submitit.core._submit",
            str(logs),
        ]
    ]
    teardown = next(ln for ln in text.splitlines() if "launcher.job.retries" in ln)
    assert str(plan.run.root) in shlex.split(teardown)  # one word for the shell, as given
    assert not canary.exists() and not (tmp_path / "x").exists()


# ---- inert: the container argv (lists end to end; the live round trip is in test_container_argv.py) ------------
def unescape_apptainer(text: str) -> str:
    out, escape = [], False
    for ch in text:
        if escape or ch != "\\":
            out.append(ch)
            escape = False
        else:
            escape = True
    return "".join(out)


@pytest.mark.parametrize("runtime", ["docker", "apptainer"])
def test_container_argv_is_inert(runtime: str, tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    from launcher.containers.shim import spec_launch

    canary = tmp_path / "CANARY"
    values = [v for v in payloads(canary) if v.strip() == v and not v.startswith("-")]
    bind_dir = tmp_path / "bind $(touch CANARY) it's;`x`"
    bind_dir.mkdir()
    env = {f"ODD_{i}": v for i, v in enumerate(values)}
    image = "registry.local/img:$(touch CANARY)" if runtime == "docker" else str(tmp_path / "img it's $(x).sif")
    spec = spec_at(
        tmp_path,
        inputs,
        executor="slurm",
        slurm={"gpus_per_node": 2},
        container={"runtime": runtime, "image": image, "binds": [str(bind_dir)], "env": env},
    )
    plan = expand(load_spec(spec))  # accepted: check_inputs builds this argv too
    launch = spec_launch(plan.spec, plan.run.root, gpu_count=2)
    argv = launch.argv
    assert image in argv
    assert f"{bind_dir}:{bind_dir}" in argv
    for name, value in env.items():  # the value reaches the runtime through its environment, as given
        assert not [a for a in argv if a == value or a.endswith(f"={value}")], f"{name}'s value is in the argv"
        if runtime == "docker":
            assert argv[argv.index(name) - 1] == "-e" and launch.env[name] == value
        else:
            assert unescape_apptainer(launch.env[f"APPTAINERENV_{name}"]) == value
    assert not canary.exists()


# ---- inert: names that become files --------------------------------------------------------------------------------
@pytest.mark.parametrize("user", [*ODD_USERS, "", ".", "..", "a" * 5000, "x/../../y", "\x00nul", "ü" * 200])
def test_user_ids_become_safe_file_names(user: str) -> None:
    name = safe_filename(user)
    assert name and "/" not in name and "\x00" not in name and not name.startswith(".")
    assert len(f"{name}.json".encode()) <= 255
    assert unescape_stem(name) in (user, None)  # reversible, or hashed (then the id is inside the file)
    assert "%" not in name if name == user else "%" in name  # plain ids keep their name; others are marked


def test_distinct_user_ids_stay_distinct() -> None:
    users = ["a/b", "a_b", "a\\b", "a b", "A_B", "ü", "ö", "." + "x", "x"]
    names = [safe_filename(u) for u in users]
    assert len(set(names)) == len(users)


def test_odd_user_ids_and_template_text_in_a_real_run(mixed_run: MixedRun) -> None:
    """User ids with ../, $(...), backslashes and 300 characters become files inside users/; template text full of
    shell syntax reaches the prompt as text; nothing ran."""
    assert mixed_run.proc.returncode == 0, mixed_run.proc.stderr
    users_dir = mixed_run.group / "users"
    files = sorted(users_dir.iterdir())
    assert all(f.parent == users_dir and f.is_file() for f in files)
    by_id = {json.loads(f.read_text())["user_id"]: f.name for f in files}
    assert set(ODD_USERS) <= set(by_id)
    assert (
        by_id["../../escape"] != "../../escape.json"
        and (users_dir / by_id["../../escape"]).resolve().parent == users_dir.resolve()
    )
    samples = list(read_jsonl(mixed_run.group / "samples.jsonl"))
    assert all(
        "Reply $(touch PWNED) `touch PWNED` ; rm -rf / && echo $HF_TOKEN > leak |" in s["prompt"] for s in samples
    )
    for where in (mixed_run.canary_dir, ROOT, Path.cwd()):
        assert not list(where.rglob("PWNED")) and not (where / "leak").exists()
    outside = [p for p in mixed_run.out.parent.rglob("*.json") if not p.is_relative_to(mixed_run.out)]
    assert outside == []  # no users/<id>.json escaped the output dir


# ---- secrets ----------------------------------------------------------------------------------------------------
def every_file(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_secrets_never_written(mixed_run: MixedRun) -> None:
    """HF_TOKEN & co. were in the environment of submit and of the task, and HF_TOKEN in container.env: no file
    under the output dir (run.json, spec.json, logs, outputs) holds any of them."""
    assert mixed_run.proc.returncode == 0
    for path in every_file(mixed_run.out):
        data = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in data, f"{name} leaked into {path}"
    run_dir = next((mixed_run.out / "runs").iterdir())
    for name in ("spec.json", "run.json"):
        obj = json.loads((run_dir / name).read_text())
        env = (obj.get("spec", obj))["container"]["env"]
        assert env == {"HF_TOKEN": "<redacted>", "VISIBLE_SETTING": "plain-value"}  # the rest stays readable
    assert all(s not in mixed_run.proc.stdout + mixed_run.proc.stderr for s in SECRETS.values())


def secret_spec(tmp_path: Path, inputs: tuple[Path, Path], runtime: str = "apptainer") -> Path:
    return spec_at(
        tmp_path,
        inputs,
        executor="slurm",
        slurm={"gpus_per_node": 1},
        output={"dir": str(tmp_path / "out")},
        container={
            "runtime": runtime,
            "image": "/images/x.sif" if runtime == "apptainer" else "img:1",
            "env": {"HF_TOKEN": SECRETS["HF_TOKEN"], "MY_API_KEY": SECRETS["MY_API_KEY"]},
        },
    )


def test_secrets_not_in_the_sbatch_script(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    plan = expand(load_spec(secret_spec(tmp_path, inputs)))
    text = sbatch_preview(plan)
    assert all(s not in text for s in SECRETS.values())


def test_engine_args_refuse_credentials(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    with pytest.raises(SpecError, match=r"container\.env"):
        load_spec(spec_at(tmp_path, inputs, model={"engine_args": {"hf_token": "x"}}))
    load_spec(spec_at(tmp_path, inputs, model={"engine_args": {"max_num_batched_tokens": 8192}}))  # not a secret


def test_container_request_holding_secrets_is_private(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    from launcher.containers.shim import request_path, write_spec_request

    plan = expand(load_spec(secret_spec(tmp_path, inputs)))
    old = os.umask(0o022)
    try:
        write_spec_request(plan.spec, plan.run.root)  # what submit does: writes run_dir/container.json
    finally:
        os.umask(old)
    request = request_path(plan.run.root)
    assert SECRETS["HF_TOKEN"] in request.read_text()  # the value must still reach the container
    assert stat.S_IMODE(request.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize("runtime", ["docker", "podman", "apptainer"])
def test_plan_output_does_not_show_secrets(
    runtime: str, tmp_path: Path, inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = secret_spec(tmp_path, inputs, runtime=runtime)
    assert main(["plan", str(spec)]) == 0
    text = capsys.readouterr().out
    assert main(["plan", str(spec), "--json"]) == 0
    argv = json.loads(capsys.readouterr().out)["container_argv"]
    for shown in (text, json.dumps(argv)):
        assert all(s not in shown for s in SECRETS.values())
        assert "HF_TOKEN=<hidden>" in shown and "MY_API_KEY=<hidden>" in shown  # the names still show
    assert "env values hidden" in text


@pytest.mark.parametrize("runtime", ["docker", "podman", "apptainer"])
def test_container_argv_holds_no_env_value(runtime: str, tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    """The argv the shim execs (visible to every user through ps on the node) names the variables at most; the
    values go in the runtime's environment (/proc/PID/environ: the owner only). The live proof, through Slurm and
    real runtimes, is test_containers_slurm.py::test_env_values_reach_the_container_but_not_its_argv."""
    from launcher.containers.shim import spec_launch

    plan = expand(load_spec(secret_spec(tmp_path, inputs, runtime=runtime)))
    launch = spec_launch(plan.spec, plan.run.root, gpu_count=1)
    assert not [a for a in launch.argv if any(s in a for s in SECRETS.values())], launch.argv
    prefix = "APPTAINERENV_" if runtime == "apptainer" else ""
    assert launch.env[f"{prefix}HF_TOKEN"] == SECRETS["HF_TOKEN"]
    assert launch.env[f"{prefix}MY_API_KEY"] == SECRETS["MY_API_KEY"]


def test_plan_with_a_container_writes_nothing(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    spec = secret_spec(tmp_path, inputs)
    assert main(["plan", str(spec)]) == 0
    assert not (tmp_path / "out").exists()


# ---- umask --------------------------------------------------------------------------------------------------------
def modes(folder: Path) -> dict[str, int]:
    return {
        str(p.relative_to(folder)): stat.S_IMODE(p.lstat().st_mode)
        for p in [folder, *folder.rglob("*")]
        if not p.is_symlink()
    }


def test_outputs_follow_umask_022(mixed_run: MixedRun) -> None:
    found = modes(mixed_run.out)
    assert len(found) > 20
    loose = {p: oct(m) for p, m in found.items() if m & 0o022}
    assert not loose, f"group/world-writable under umask 022: {loose}"
    assert all(m & 0o044 for p, m in found.items() if p.endswith(("samples.jsonl", "manifest.json"))), (
        "outputs stay readable by the group and others under umask 022 (shared storage)"
    )


def test_outputs_follow_umask_077(locked_run: LockedRun) -> None:
    found = modes(locked_run.out)
    assert len(found) > 20
    loose = {p: oct(m) for p, m in found.items() if m & 0o077}
    assert not loose, f"readable or writable by others under umask 077: {loose}"


# ---- a live Slurm job carrying the values ----------------------------------------------------------------------
@pytest.mark.slurm
def test_live_slurm_job_keeps_values_literal(tmp_path: Path, tiny_model: Path) -> None:
    canaries = [tmp_path / f"CANARY{i}" for i in range(4)]
    comment = f'$(touch {canaries[0]}) `touch {canaries[1]}` ; it\'s "quoted" #not-a-comment | & > x'
    out = tmp_path / f"out it's $(touch {canaries[2].name}) `touch {canaries[3].name}`; echo x"
    data = write_jsonl(tmp_path / "one.jsonl", USERS[:1])
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        name="inject",
        executor="slurm",
        slurm={
            "partition": "debug",
            "gpus_per_node": 0,
            "cpus_per_gpu": 1,
            "mem": "1G",
            "time": "00:10:00",
            "signal_delay_s": 30,
            "gather": False,
            "max_retries": 0,
            "extra_args": {"comment": comment},
        },
        output={"dir": str(out)},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "submit", str(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = next((out / "runs").iterdir())
    job = json.loads((run_dir / "run.json").read_text())["submissions"][-1]["array_job_id"]
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30).stdout
    assert f"Comment={comment} " in shown or shown.rstrip().endswith(f"Comment={comment}"), shown
    done = run_dir / "units" / "users.full.0000" / "done.json"
    deadline, gone = time.time() + 300, 0
    while not done.exists() and time.time() < deadline and gone < 3:  # until done, or out of the queue for 6 s
        queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        gone = 0 if queued.strip() else gone + 1
        time.sleep(2)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((run_dir / "logs").glob("*.err")))
    assert done.exists(), logs
    gathered = subprocess.run(
        [sys.executable, "-m", "launcher", "gather", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert gathered.returncode == 0, gathered.stderr
    assert (out / "users" / "full" / "samples.jsonl").exists()
    for canary in canaries:
        assert not canary.exists() and not (tmp_path / canary.name).exists() and not (ROOT / canary.name).exists()
    assert not list(tmp_path.rglob("CANARY*")) and not (out.parent / "x").exists()


def test_yaml_dump_roundtrip_of_payloads(tmp_path: Path) -> None:
    """The payloads above reach the loader intact (YAML quoting is not what makes them inert)."""
    values = payloads(tmp_path / "c")
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"v": values}))
    assert yaml.safe_load(path.read_text())["v"] == values
