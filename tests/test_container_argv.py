"""container.py and container_exec.py: exact argv per runtime, binds, GPU and env handling.

The last tests run a real container (docker, podman, apptainer) with the CPU test image; they skip with the
command to run when a runtime or the image is missing. Set-up: containers/runtimes/*.sh, then
containers/test-image/build.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.containers.runtimes import HIDDEN, RUNTIMES, Bind, ContainerRequest, forwarded_env, get_runtime, preview
from launcher.containers.shim import (
    ExecError,
    ExecRequest,
    allocated_gpus,
    build_launch,
    main,
    read_request,
    write_request,
)

ODD_NAMES = ["plain", "with space", "it's", "semi;colon", "$(x)", 'dq"uote', "back`tick`", "star*"]
STATE = Path(os.environ.get("LAUNCHER_CONTAINERS_STATE", "/var/tmp/launcher-containers"))


def request(**overrides: object) -> ContainerRequest:
    fields: dict[str, object] = {
        "image": "img:1",
        "argv": ["python3", "-u", "-m", "submitit.core._submit", "/runs/r1/submitit"],
        "binds": (Bind(Path("/runs/r1"), Path("/runs/r1")), Bind(Path("/models/m"), Path("/models/m"), read_only=True)),
        "env": {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1"},
        "gpu_ids": ("2", "3"),
        "workdir": Path("/runs/r1"),
        "user": "1000:1000",
    }
    fields.update(overrides)
    return ContainerRequest(**fields)  # type: ignore[arg-type]


# ---- exact argv and exec environment, every runtime ---------------------------------------------------------
# What the runtime itself needs from the node, plus what must not slip into the container.
HOST_ENV = {"PATH": "/usr/bin", "DOCKER_HOST": "unix:///d.sock", "CUDA_VISIBLE_DEVICES": "5,6",
            "APPTAINERENV_STRAY": "from the user's shell", "SINGULARITYENV_STRAY": "x"}  # fmt: skip


def test_apptainer_argv_exact() -> None:
    apptainer = get_runtime("apptainer")
    assert apptainer.wrap(request()) == [
        "apptainer", "exec", "--cleanenv", "--no-home", "--contain", "--nv", "--pwd", "/runs/r1",
        "--security", "uid:1000,gid:1000",
        "--bind", "/runs/r1:/runs/r1", "--bind", "/models/m:/models/m:ro",
        "img:1", "python3", "-u", "-m", "submitit.core._submit", "/runs/r1/submitit",
    ]  # fmt: skip
    # The values ride in the environment; stray APPTAINERENV_/SINGULARITYENV_ from the node are dropped, so the
    # container gets exactly req.env.
    assert apptainer.exec_env(request(), HOST_ENV) == {
        "PATH": "/usr/bin", "DOCKER_HOST": "unix:///d.sock", "CUDA_VISIBLE_DEVICES": "5,6",
        "APPTAINERENV_CUDA_VISIBLE_DEVICES": "0,1", "APPTAINERENV_SLURM_JOB_ID": "42"}  # fmt: skip


def test_singularity_argv_uses_its_own_binary_and_env_prefix() -> None:
    singularity = get_runtime("singularity")
    req = request(gpu_ids=(), user=None, workdir=None, binds=(), env={"A": "1"})
    assert singularity.wrap(req) == ["singularity", "exec", "--cleanenv", "--no-home", "--contain", "img:1",
                                     "python3", "-u", "-m", "submitit.core._submit", "/runs/r1/submitit"]  # fmt: skip
    assert singularity.exec_env(req, {"SINGULARITYENV_STRAY": "x"}) == {"SINGULARITYENV_A": "1"}


def test_docker_argv_exact() -> None:
    docker = get_runtime("docker")
    assert docker.wrap(request()) == [
        "docker", "run", "--rm", "--init", "--pull", "never", "--network", "host", "--ipc", "host",
        "--user", "1000:1000", "--gpus", '"device=2,3"',
        "-v", "/runs/r1:/runs/r1", "-v", "/models/m:/models/m:ro",
        "-e", "CUDA_VISIBLE_DEVICES", "-e", "SLURM_JOB_ID",
        "--workdir", "/runs/r1",
        "img:1", "python3", "-u", "-m", "submitit.core._submit", "/runs/r1/submitit",
    ]  # fmt: skip
    # `-e NAME` takes the value from the CLI's environment: the node's, with the container's values on top.
    assert docker.exec_env(request(), HOST_ENV) == {**HOST_ENV, "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "42"}


def test_podman_argv_exact() -> None:
    podman = get_runtime("podman")
    assert podman.wrap(request()) == [
        "podman", "run", "--rm", "--init", "--pull", "never", "--network", "host", "--ipc", "host",
        "--user", "1000:1000",
        "--device", "nvidia.com/gpu=2", "--device", "nvidia.com/gpu=3", "--security-opt", "label=disable",
        "-v", "/runs/r1:/runs/r1", "-v", "/models/m:/models/m:ro",
        "-e", "CUDA_VISIBLE_DEVICES", "-e", "SLURM_JOB_ID",
        "--workdir", "/runs/r1",
        "img:1", "python3", "-u", "-m", "submitit.core._submit", "/runs/r1/submitit",
    ]  # fmt: skip
    assert podman.exec_env(request(), HOST_ENV) == {**HOST_ENV, "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "42"}


SECRET = "hf_live $(touch x) it's,a=b"


@pytest.mark.parametrize("name", ["apptainer", "singularity", "docker", "podman", "none"])
def test_env_values_never_in_the_argv(name: str) -> None:
    runtime = get_runtime(name)
    req = request(env={"HF_TOKEN": SECRET, "SLURM_JOB_ID": "42"})
    argv = runtime.wrap(req)
    assert not [a for a in argv if SECRET in a], argv
    prefix = {"apptainer": "APPTAINERENV_", "singularity": "SINGULARITYENV_"}.get(name, "")
    expected = SECRET.replace("$", "\\$") if prefix else SECRET  # apptainer: escaped for its shell evaluation
    assert runtime.exec_env(req, HOST_ENV)[f"{prefix}HF_TOKEN"] == expected
    shown = preview(runtime, req)
    assert not [a for a in shown if SECRET in a or a.endswith("=42")], shown
    assert [a for a in shown if a.endswith(f"HF_TOKEN={HIDDEN}")], shown  # the name still shows


@pytest.mark.parametrize("name", ["docker", "podman"])
def test_names_the_runtime_reads_itself_stay_in_the_argv(name: str) -> None:
    """PATH, HOME, LD_LIBRARY_PATH, DOCKER_* ... in the CLI's environment would steer docker/podman (another HOME is
    another image store for rootless podman): those go as -e NAME=value, and the CLI keeps the node's values."""
    runtime = get_runtime(name)
    env = {"PATH": "/opt/venv/bin:/usr/bin", "HOME": "/scratch/h", "LD_LIBRARY_PATH": "/opt/lib", "DOCKER_HOST": "x",
           "HF_TOKEN": SECRET}  # fmt: skip
    req = request(env=env)
    argv = runtime.wrap(req)
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-e"] == [
        "DOCKER_HOST=x",
        "HF_TOKEN",
        "HOME=/scratch/h",
        "LD_LIBRARY_PATH=/opt/lib",
        "PATH=/opt/venv/bin:/usr/bin",
    ]
    assert runtime.exec_env(req, HOST_ENV) == {**HOST_ENV, "HF_TOKEN": SECRET}
    assert preview(runtime, req)[:2] == ["env", f"HF_TOKEN={HIDDEN}"] and f"PATH={HIDDEN}" in preview(runtime, req)


@pytest.mark.parametrize("var", ["DOCKER_TOKEN", "CONTAINERS_REGISTRY_PASSWORD", "LD_SECRET"])
def test_credential_names_the_runtime_reads_are_refused(var: str) -> None:
    with pytest.raises(ValueError, match=rf"{var}.*looks like a credential.*\n  fix: +rename it \(e.g. APP_{var}\)"):
        get_runtime("docker").wrap(request(env={var: "s"}))
    assert get_runtime("apptainer").wrap(request(env={var: "s"}))  # APPTAINERENV_ names never collide


def test_none_runtime_returns_the_command_unchanged() -> None:
    req = request()
    assert get_runtime("none").wrap(req) == req.argv
    assert get_runtime("none").available()


@pytest.mark.parametrize("name", ["apptainer", "singularity", "docker", "podman"])
def test_no_gpu_flags_without_gpus(name: str) -> None:
    argv = get_runtime(name).wrap(request(gpu_ids=()))
    assert not {"--nv", "--gpus", "--device", "--security-opt"} & set(argv)


def test_docker_single_gpu_and_uuid() -> None:
    assert get_runtime("docker").wrap(request(gpu_ids=("GPU-8a1b",)))[12:14] == ["--gpus", '"device=GPU-8a1b"']


@pytest.mark.parametrize("name", ["apptainer", "docker", "podman"])
@pytest.mark.parametrize("odd", ODD_NAMES)
def test_odd_paths_and_args_stay_single_items(name: str, odd: str) -> None:
    path = Path("/runs") / odd
    req = request(argv=["python3", "-c", "print(1)", odd, f"--out={path}"], binds=(Bind(path, path),), workdir=path)
    argv = get_runtime(name).wrap(req)
    assert argv[-3:] == ["print(1)", odd, f"--out={path}"]
    assert f"{path}:{path}" in argv
    assert str(path) in argv  # --pwd / --workdir value, unsplit


def test_registry_lists_every_runtime_and_rejects_unknown() -> None:
    assert set(RUNTIMES) == {"apptainer", "singularity", "docker", "podman", "none"}
    with pytest.raises(
        ValueError, match=r"unknown container runtime 'dokcer'\n  allowed: apptainer, docker, none, podman, singularity"
    ):
        get_runtime("dokcer")


# ---- Bind --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data", Bind(Path("/data"), Path("/data"))),
        ("/data:/in", Bind(Path("/data"), Path("/in"))),
        ("/data:/in:ro", Bind(Path("/data"), Path("/in"), read_only=True)),
        ("/data::ro", Bind(Path("/data"), Path("/data"), read_only=True)),
        ("/with space/it's:/x:rw", Bind(Path("/with space/it's"), Path("/x"))),
    ],
)
def test_bind_parse(text: str, expected: Bind) -> None:
    assert Bind.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data/x", "host path 'data/x' is relative"),
        ("/data:in", "container path 'in' is relative"),
        ("/data:/in:rx", "mode 'rx' is not allowed"),
        ("/a:/b:ro:x", "is not host\\[:container"),
        ("", "is not host\\[:container"),
        ("/a\nb", "newline"),
    ],
)
def test_bind_parse_errors_teach(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Bind.parse(text)


def test_bind_spec_rejects_colon_and_newline_naming_the_path() -> None:
    with pytest.raises(ValueError, match=r"host path '/a:b'"):
        Bind(Path("/a:b"), Path("/a")).spec()
    with pytest.raises(ValueError, match=r"container path '/x\\ny'"):
        Bind(Path("/x"), Path("/x\ny")).spec()


def test_apptainer_refuses_comma_in_bind() -> None:
    with pytest.raises(ValueError, match="','"):
        get_runtime("apptainer").wrap(request(binds=(Bind(Path("/a,b"), Path("/a,b")),)))


@pytest.mark.parametrize(
    "bad",
    [{"image": ""}, {"image": "-rm"}, {"argv": []}, {"user": "root"}, {"env": {"A-B": "1"}}, {"gpu_ids": ("0,1",)}],
)
def test_request_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="fix:"):
        request(**bad)


def test_apptainer_env_values_are_escaped_for_its_shell_evaluation() -> None:
    env = get_runtime("apptainer").exec_env(request(env={"V": "a\\b $(x) `y` ${HOME}"}), {})
    assert env == {"APPTAINERENV_V": "a\\\\b \\$(x) \\`y\\` \\${HOME}"}


def test_forwarded_env_allow_list() -> None:
    host = {"SLURM_JOB_ID": "1", "SUBMITIT_EXECUTOR": "slurm", "VLLM_X": "1", "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": "0", "PATH": "/usr/bin", "HOME": "/home/u", "LD_LIBRARY_PATH": "/x"}  # fmt: skip
    assert set(forwarded_env(host)) == {"SLURM_JOB_ID", "SUBMITIT_EXECUTOR", "VLLM_X", "HF_HUB_OFFLINE",
                                        "CUDA_VISIBLE_DEVICES"}  # fmt: skip


# ---- GPUs from the environment ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "ids", "source"),
    [
        ({"SLURM_STEP_GPUS": "2,3", "SLURM_JOB_GPUS": "2,3,4,5", "CUDA_VISIBLE_DEVICES": "0,1"}, ("2", "3"),
         "SLURM_STEP_GPUS"),
        ({"SLURM_JOB_GPUS": "4-6", "CUDA_VISIBLE_DEVICES": "0,1,2"}, ("4", "5", "6"), "SLURM_JOB_GPUS"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}, ("GPU-aa", "GPU-bb"), "CUDA_VISIBLE_DEVICES"),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, (), "CUDA_VISIBLE_DEVICES"),
        ({"SLURM_GPUS_ON_NODE": "2"}, ("0", "1"), "SLURM_GPUS_ON_NODE"),
        ({}, (), "none"),
    ],
)  # fmt: skip
def test_allocated_gpus_order(env: dict[str, str], ids: tuple[str, ...], source: str) -> None:
    gpus = allocated_gpus(env)
    assert (gpus.ids, gpus.source) == (ids, source)


def test_allocated_gpus_warns_on_disagreeing_counts() -> None:
    gpus = allocated_gpus({"SLURM_STEP_GPUS": "2,3", "SLURM_GPUS_ON_NODE": "4"})
    assert gpus.ids == ("2", "3")
    assert "SLURM_GPUS_ON_NODE says 4" in gpus.warnings[0]


def test_build_launch_docker_renumbers_gpus_and_forwards_slurm() -> None:
    environ = {"SLURM_STEP_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_ARRAY_TASK_ID": "7",
               "SUBMITIT_FOLDER": "/runs/r1", "PATH": "/host/bin"}  # fmt: skip
    req = ExecRequest(runtime="docker", image="img:1", env={"HF_HOME": "/models/hf"}, user="1000:1000")
    launch = build_launch(req, ["python3", "-V"], environ)
    argv = launch.argv
    assert launch.gpus.source == "SLURM_STEP_GPUS"
    assert argv[argv.index("--gpus") + 1] == '"device=2,3"'
    env_items = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert env_items == ["CUDA_VISIBLE_DEVICES", "HF_HOME", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_GPUS",
                         "SUBMITIT_FOLDER"]  # fmt: skip
    # the docker CLI's environment: the node's own (PATH), and the values those names take inside
    assert launch.env == {**environ, "CUDA_VISIBLE_DEVICES": "0,1", "HF_HOME": "/models/hf"}


def test_build_launch_docker_defaults_to_the_callers_uid() -> None:
    argv = build_launch(ExecRequest(runtime="podman", image="i"), ["true"], {}).argv
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def test_build_launch_apptainer_keeps_host_cuda_visible_devices() -> None:
    environ = {"SLURM_JOB_GPUS": "5", "CUDA_VISIBLE_DEVICES": "0"}
    launch = build_launch(ExecRequest(runtime="apptainer", image="/img.sif"), ["true"], environ)
    assert launch.env["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "0" and "--nv" in launch.argv
    assert "--security" not in launch.argv  # runs as the caller unless asked


def test_build_launch_docker_with_only_a_gpu_count_is_an_error() -> None:
    with pytest.raises(ExecError, match="no variable names them"):
        build_launch(ExecRequest(runtime="docker", image="i"), ["true"], {"SLURM_GPUS_ON_NODE": "2"})


# ---- the request file and the CLI -------------------------------------------------------------------------
def test_request_roundtrip_and_print(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    odd = tmp_path / "it's a dir; $(x)"
    path = write_request(tmp_path / "req.json", runtime="docker", image="img:1", binds=[Bind(odd, odd)],
                         env={"A": "1"}, workdir=odd, user="1:2")  # fmt: skip
    assert read_request(path) == ExecRequest("docker", "img:1", (Bind(odd, odd),), {"A": "1"}, odd, "1:2")
    monkeypatch.setattr(os, "environ", {"SLURM_JOB_ID": "9"})
    assert main(["--print", str(path), "--", "python3", "-c", "x; y"]) == 0
    argv = json.loads(capsys.readouterr().out)
    assert argv[-4:] == ["img:1", "python3", "-c", "x; y"]
    assert f"{odd}:{odd}" in argv and argv[argv.index("SLURM_JOB_ID") - 1] == "-e"
    assert not [a for a in argv if a.endswith("=9")], "a value in the argv"


def test_main_execs_with_the_values_in_the_environment(tmp_path: Path) -> None:
    """runtime none, exec'd for real: the command gets the values, and its own argv is just the command."""
    path = write_request(tmp_path / "req.json", runtime="none", image="none", env={"HF_TOKEN": SECRET})
    show = "import os, sys; print(repr(os.environ['HF_TOKEN'])); print(repr(open('/proc/self/cmdline').read()))"
    done = subprocess.run([sys.executable, "-m", "launcher.containers.shim", str(path), "--", sys.executable, "-c",
                           show], capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    value, cmdline = done.stdout.splitlines()
    assert value == repr(SECRET) and SECRET not in cmdline
    assert f"HF_TOKEN={HIDDEN}" in done.stderr and SECRET not in done.stderr  # the line in the task log


def test_write_request_rejects_unknown_runtime_before_submit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowed: apptainer"):
        write_request(tmp_path / "r.json", runtime="docke", image="i")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("args", [[], ["r.json"], ["--", "x"], ["a.json", "b.json", "--", "x"]])
def test_main_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    assert "usage:" in capsys.readouterr().err


def test_main_bad_request_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.json").write_text("{not json")
    assert main([str(tmp_path / "r.json"), "--", "true"]) == 2
    assert "fix:" in capsys.readouterr().err


# ---- real containers --------------------------------------------------------------------------------------
def runtime_env() -> dict[str, str]:
    """The host env plus DOCKER_HOST / CONTAINERS_CONF / LAUNCHER_TEST_* from the set-up scripts' env.sh."""
    env = dict(os.environ)
    env_file = STATE / "env.sh"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                name, value = line[len("export ") :].split("=", 1)
                env.setdefault(name, value.strip("'\""))
    return env


def live_image(runtime: str, env: dict[str, str]) -> str:
    if not shutil.which(runtime, path=env.get("PATH")):
        script = "docker-up.sh" if runtime == "docker" else f"{runtime}-setup.sh"
        pytest.skip(f"{runtime} not installed: run containers/runtimes/{script}")
    if runtime == "apptainer":
        image = env.get("LAUNCHER_TEST_SIF", str(STATE / "test-image" / "launcher-test.sif"))
        found = Path(image).exists()
    else:
        image = env.get("LAUNCHER_TEST_IMAGE", "localhost/launcher-test:cpu")
        probe = subprocess.run([runtime, "image", "inspect", image], env=env, capture_output=True, check=False)
        if runtime == "docker" and b"Cannot connect" in probe.stderr:
            pytest.skip("no docker daemon: run containers/runtimes/docker-up.sh")
        found = probe.returncode == 0
    if not found:
        pytest.skip(f"test image missing for {runtime}: run containers/test-image/build.sh {runtime}")
    return image


PROBE = """
import json, os, sys
out = sys.argv[1]
open(os.path.join(out, "written.txt"), "w").write("x")
print(json.dumps({"argv": sys.argv[2:], "uid": os.getuid(), "cwd": os.getcwd(),
                  "env": {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SUBMITIT_", "ODD"))},
                  "path": os.environ.get("PATH", "")}))
"""
TRICKY = {"ODD_SUBST": "$(touch /tmp/pwned)", "ODD_NODES": "node[01-02],gpu03", "ODD_CSV": "a,b=c",
          "ODD_QUOTES": "it's \"q\" \\ `x`", "ODD_EMPTY": "", "ODD_API_TOKEN": "hf_Live0Token0Value"}  # fmt: skip

# Stands in for the runtime, first on PATH: writes down the argv it was started with (what `ps` shows every user on
# the node), then execs the real runtime. Python, not sh: argv items may hold anything, and JSON keeps them exact.
# -I: the runtime's environment holds the container's variables (PYTHONPATH too), which this Python must ignore.
RECORDER = """#!{python} -I
import json, os, sys
with open(os.path.join({log!r}, f"{{os.getpid()}}-{{os.urandom(4).hex()}}.json"), "w") as f:
    json.dump(sys.argv[1:], f)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def argv_recorder(folder: Path, runtime: str, path: str) -> tuple[Path, Path]:
    """(bin folder to put first on PATH, folder where each start of ``runtime`` leaves its argv as JSON)."""
    real = shutil.which(runtime, path=path)
    assert real, f"{runtime} not on {path}"
    bin_dir, log = folder / "recorder-bin", folder / "recorder-log"
    bin_dir.mkdir(parents=True)
    log.mkdir()
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable  # any user can run it
    (bin_dir / runtime).write_text(RECORDER.format(python=python, log=str(log), real=real))
    (bin_dir / runtime).chmod(0o755)
    return bin_dir, log


def recorded_starts(log: Path) -> list[list[str]]:
    """The argv of each container start (run / exec) the recorder saw; `image inspect` and the like left out."""
    argvs = [json.loads(p.read_text()) for p in sorted(log.glob("*.json"))]
    return [a for a in argvs if a[:1] in (["run"], ["exec"])]


@pytest.mark.containers
@pytest.mark.parametrize("runtime", ["docker", "podman", "apptainer"])
def test_real_container_roundtrip(runtime: str, tmp_path: Path) -> None:
    env = runtime_env()
    image = live_image(runtime, env)
    bound = tmp_path / "out dir; it's $(x)"
    bound.mkdir()
    # As root, ask for another uid and check the file is owned by it; otherwise only one's own uid is possible.
    uid = 1000 if os.getuid() == 0 else os.getuid()
    if os.getuid() == 0:
        os.chown(bound, uid, uid)
    req = write_request(tmp_path / "req.json", runtime=runtime, image=image, binds=[Bind(bound, bound)],
                        env=TRICKY, workdir=bound, user=f"{uid}:{uid}")  # fmt: skip
    env.update({"SLURM_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SUBMITIT_EXECUTOR": "slurm"})
    recorder, log = argv_recorder(tmp_path, runtime, env["PATH"])
    env["PATH"] = f"{recorder}:{env['PATH']}"
    odd_args = ["a b", "semi;colon", "$(x)", "*", ""]
    done = subprocess.run(
        [sys.executable, "-m", "launcher.containers.shim", str(req), "--", "python3", "-c", PROBE, str(bound),
         *odd_args],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["argv"] == odd_args
    assert seen["uid"] == uid and seen["cwd"] == str(bound)
    assert seen["env"] == {**TRICKY, "SLURM_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3", "SUBMITIT_EXECUTOR": "slurm"}
    assert "/opt/venv/bin" in seen["path"]  # the image's PATH, not the host's
    assert (bound / "written.txt").stat().st_uid == uid
    # ... and no value was in the runtime's argv: it came through the runtime's environment.
    (started,) = recorded_starts(log)
    assert not [(k, a) for k, v in TRICKY.items() if v for a in started if v in a], started
    if runtime != "apptainer":
        assert [
            started[i + 1] for i, a in enumerate(started) if a == "-e" and started[i + 1].startswith("ODD")
        ] == sorted(TRICKY)
