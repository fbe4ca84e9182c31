"""Real runtimes through the real local Slurm: `launcher submit SPEC --wait` runs every worker job inside the CPU
test image.

For docker, podman and apptainer, as the caller (root in CI) and as the non-root `slurmtest` user, one run each:
the tiny model, the HF backend, a 4-record dataset cut into more units than there are worker jobs (the caller's:
4 units for 2 worker jobs; the others: 2 units for 1), the local Slurm (slurm/up.sh), the test image
(containers/test-image/build.sh). A container starts once per worker job (array element), not once per unit: its
worker claims unit after unit inside it. All runs are submitted at once and waited for together, so the file costs
about one run's wall time. Each run is then checked for:
- outputs: gathered, complete, every record with num_samples samples, every unit done by a worker in the image;
- containers: exactly one per worker job (and one for the gather job), each element of the array in its own;
- binds: each container saw only its binds (see PROBE), wrote only where bound read-write, ran the image's Python;
- ownership: every file the run wrote belongs to the submitting user;
- the image: run.json records it, with the SIF's sha256 or the docker/podman image id.
What cannot run here is checked by exact argv built from a real Slurm job's variables: docker --gpus and podman
--device need NVIDIA's container toolkit and a driver (the local Slurm's GPUs are fake). apptainer --nv does run
without a driver, so the apptainer run asks Slurm for a (fake) GPU per worker job and runs with --nv for real.
One more docker run has a worker job that crashes once: its retry must work although the image has no scontrol.
`launcher doctor` is checked from the CLI (no GPU here: it says so and checks the rest).

Set-up (root, idempotent): bash slurm/up.sh && bash containers/runtimes/up-all.sh
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launcher.containers.runtimes import forwarded_env
from launcher.store import read_jsonl

from .conftest import ROOT, USERS, make_spec, write_jsonl
from .test_container_argv import argv_recorder, recorded_starts

STATE = Path(os.environ.get("LAUNCHER_CONTAINERS_STATE", "/var/tmp/launcher-containers"))
RUNTIMES = ("docker", "podman", "apptainer")
USERS_RUN_AS = ("caller", "slurmtest")
NON_ROOT = "slurmtest"  # made by slurm/up.sh; containers/runtimes/*.sh give it docker and rootless podman
RUN_TIMEOUT_S = 480
RECORDS = 4
NUM_SAMPLES = 2
SETUP_FIX = "bash slurm/up.sh && bash containers/runtimes/up-all.sh (as root)"
SUBMITIT_ENTRY = "submitit.core._submit"  # `python -u -m submitit.core._submit LOGS`: what each array element runs
RETRIES_ENTRY = "launcher.job.retries"  # the teardown of a job that failed: `python -m launcher.job.retries ...`
GATHER_MAX_S = 120  # the gather job's own run time: seconds here; launcher's storage wait in a job is 300 s
# In every run's container.env: must reach the worker jobs literally, and never be in the runtime's argv (ps).
ENV_SECRET = 'hf_Ct0Secret $(touch /tmp/ct-pwned) `id` it\'s "q" a,b=c \\ ${HOME}'

# Imported by every Python that starts inside the container (the run's PYTHONPATH names its folder): the worker
# jobs (array elements), the gather job, a failed job's teardown. It writes what that very process sees to results/,
# and never raises. This is how the test looks from inside a real worker job without changing the toolkit: a
# sitecustomize is Python's own hook.
PROBE = r'''
import json, os, sys

def _ids():
    """Which process this is: never fails, so even an error record says where it came from."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace").split("\0")
    except OSError:
        cmdline = []
    env = os.environ.get
    return {"pid": os.getpid(), "cmdline": cmdline, "job_id": env("SLURM_JOB_ID"), "job_name": env("SLURM_JOB_NAME"),
            "array_job": env("SLURM_ARRAY_JOB_ID"), "array_task": env("SLURM_ARRAY_TASK_ID"),
            "restart": env("SLURM_RESTART_COUNT")}

def _record():
    import errno, hashlib, importlib.util
    asked = json.loads(os.environ.get("LAUNCHER_PROBE", "{}"))
    spec = importlib.util.find_spec("launcher")
    pkg = os.path.dirname(spec.origin) if spec and spec.origin else None
    sources = {}
    for root, dirs, files in os.walk(pkg or "/nonexistent"):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    sources[os.path.relpath(path, pkg)] = hashlib.sha256(f.read()).hexdigest()
    writes = {}
    for folder in asked.get("write", []):
        target = os.path.join(folder, f".probe-{os.getpid()}")
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.unlink(target)
            writes[folder] = "ok"
        except OSError as err:
            writes[folder] = errno.errorcode.get(err.errno, str(err.errno))
    with open("/proc/self/mountinfo") as f:
        mounts = sorted({line.split()[4].replace("\\040", " ") for line in f})
    return {
        "uid": os.getuid(), "gid": os.getgid(), "executable": sys.executable, "launcher": pkg, "sources": sources,
        "visible": {p: os.path.exists(p) for p in asked.get("hidden", [])}, "writes": writes, "mounts": mounts,
        "env_names": sorted(os.environ), "cwd": os.getcwd(), "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "echo": {name: os.environ.get(name) for name in asked.get("echo", [])}, **_ids(),
    }

def _save(payload):
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(results, exist_ok=True)
    # A requeued job keeps its id, and a fresh container numbers its processes the same way (a failed attempt's
    # teardown runs in a container of its own, with the attempt's job id and restart count, and often its pid): the
    # restart count and a clock keep one record from overwriting another.
    import time
    job, restart = os.environ.get("SLURM_JOB_ID", "nojob"), os.environ.get("SLURM_RESTART_COUNT", "0")
    name = f"{job}-r{restart}-{os.getpid()}-{time.time_ns()}.json"
    with open(os.path.join(results, "." + name), "w") as f:
        json.dump(payload, f)
    os.replace(os.path.join(results, "." + name), os.path.join(results, name))

try:
    _save(_record())
except Exception as exc:  # the job must run whatever happens here; the test reads the error
    try:
        _save({"error": repr(exc), **_ids()})
    except Exception:
        pass
'''


# ---- the machine: env.sh, runtimes, image, users --------------------------------------------------------------
def runtime_env() -> dict[str, str]:
    """DOCKER_HOST, CONTAINERS_CONF, LAUNCHER_TEST_IMAGE, ... from the set-up scripts' env.sh (values win over none)."""
    found: dict[str, str] = {}
    env_file = STATE / "env.sh"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                name, value = line[len("export ") :].split("=", 1)
                found[name] = value.strip("'\"")
    return found


def image_for(runtime: str, env: dict[str, str]) -> str:
    if runtime == "apptainer":
        return env.get("LAUNCHER_TEST_SIF", str(STATE / "test-image" / "launcher-test.sif"))
    return env.get("LAUNCHER_TEST_IMAGE", "localhost/launcher-test:cpu")


def as_user(user: str) -> list[str]:
    # By absolute path: the other user's env (PATH without sbin) is what subprocess searches.
    return [] if user == "caller" else [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--"]


def user_env(user: str, env: dict[str, str]) -> dict[str, str]:
    """The environment a submit starts with: the caller's own, or a clean login-like one for the other user."""
    extra = {
        **env,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CT_HOST_ONLY": "must not reach the container",
    }  # not in the forwarding allow-list
    if user == "caller":
        return {**os.environ, **extra}
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": f"/home/{user}",
        "USER": user,
        "LOGNAME": user,
        "LANG": "C.UTF-8",
        **extra,
    }


def why_not(runtime: str, user: str, env: dict[str, str]) -> str | None:
    """None when this runtime can run a container as this user here; else the reason and the fix, for the skip."""
    if user != "caller":
        if os.getuid() != 0:
            return f"running as {NON_ROOT} needs root to switch users (runuser); run the tests as root"
        if subprocess.run(["id", "-u", NON_ROOT], capture_output=True).returncode != 0:
            return f"no user {NON_ROOT}: bash slurm/up.sh makes it"
    full_env = user_env(user, env)
    binary = shutil.which(runtime, path=full_env["PATH"])
    if not binary:
        script = "docker-up.sh" if runtime == "docker" else f"{runtime}-setup.sh"
        return f"{runtime} not installed: bash containers/runtimes/{script} (as root)"
    image = image_for(runtime, env)
    if runtime == "apptainer":
        probe = [runtime, "--version"]
        if not Path(image).exists():
            return f"no test SIF {image}: bash containers/test-image/build.sh apptainer (as root)"
    else:
        probe = [runtime, "image", "inspect", "--format", "{{.Id}}", image]
    done = subprocess.run([*as_user(user), *probe], env=full_env, capture_output=True, text=True, timeout=60, cwd="/")
    if done.returncode == 0:
        return None
    said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    if runtime == "apptainer" and user != "caller":
        # The apptainer here is sid's, run by a wrapper that needs root (unshare -m, pivot_root): on a cluster the
        # site's setuid or user-namespace install lets users run it.
        return f"apptainer here is a root-only wrapper (containers/runtimes/apptainer-setup.sh): {said[0]}"
    if runtime == "docker" and "Cannot connect" in said[0]:
        return "no docker daemon: bash containers/runtimes/docker-up.sh (as root)"
    if runtime == "docker" and "permission denied" in said[0].lower():
        return (
            f"{user} cannot reach the docker socket: bash containers/runtimes/docker-up.sh adds {NON_ROOT} "
            "to group docker"
        )
    return f"{runtime} cannot see the test image as {user} ({said[0]}): bash containers/test-image/build.sh (as root)"


# ---- one run per (runtime, user), all in flight at once -------------------------------------------------------
@dataclass
class Run:
    runtime: str
    user: str
    label: str
    """Names the run: the user, or what else is special about it (retry)."""
    uid: int
    gid: int
    image: str
    dir: Path
    spec: Path
    probe_dir: Path
    hidden: list[str]
    ro: list[str]
    rw: list[str]
    units: int
    """Units of work the plan cuts (records_per_shard), more than there are worker jobs."""
    jobs: int
    """Worker jobs (slurm.jobs): the array's size, so the number of containers the workers run in."""
    extra_env: dict[str, str]
    recorder_log: Path
    """Where the runtime's stand-in on PATH writes down each argv it is started with."""
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float | None = None
    waiter: threading.Thread | None = None
    stdout: str = ""

    @property
    def wall_s(self) -> float:
        return (self.ended or time.time()) - self.started

    @property
    def out(self) -> Path:
        return self.dir / "out"

    @property
    def name(self) -> str:
        return f"ct-{self.runtime}-{self.label}"

    def finish(self) -> Run:
        if self.proc is None or self.waiter is None or self.stdout:
            return self
        self.waiter.join(timeout=max(1.0, RUN_TIMEOUT_S - (time.time() - self.started)))
        if self.ended is None:
            self.proc.kill()
            self.waiter.join()
        self.stdout = (self.dir / "submit.log").read_text(errors="replace")
        if self.proc.returncode == -9:
            self.stdout += f"\n[test] killed after {RUN_TIMEOUT_S} s"
        return self

    def run_dir(self) -> Path:
        found = sorted((self.out / "runs").glob("*/run.json"))
        assert found, f"no run.json under {self.out}/runs; launcher said:\n{self.stdout[-3000:]}"
        return found[0].parent

    @property
    def unit_ids(self) -> list[str]:
        return [f"users.full.{i:04d}" for i in range(self.units)]

    def probes(self) -> list[dict[str, Any]]:
        """What each Python in a container saw: the worker jobs' (job name = spec name), the gather job's (and a
        failed job's teardown, which runs `python -m launcher.job.retries` in the image)."""
        return [json.loads(p.read_text()) for p in sorted((self.probe_dir / "results").glob("*.json"))]

    def job_probes(self) -> list[dict[str, Any]]:
        """The worker jobs' own Pythons: submitit's entry point in an element of the run's array."""
        return [p for p in self.probes() if p.get("job_name") == self.name and SUBMITIT_ENTRY in p.get("cmdline", [])]

    def teardown_probes(self) -> list[dict[str, Any]]:
        return [p for p in self.probes() if p.get("job_name") == self.name and RETRIES_ENTRY in p.get("cmdline", [])]

    def worker_reports(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.run_dir() / "workers").glob("*.json"))]

    def logs_tail(self) -> str:
        logs = sorted((self.out / "runs").glob("*/logs/*.err"))
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]) for p in logs)


def _shared_base(tiny_model: Path) -> Path:
    """A folder every test user can read (pytest's own tmp is 0700 root): model, data, a venv for the other user."""
    base = Path(tempfile.mkdtemp(prefix="launcher-ct-", dir="/tmp"))
    base.chmod(0o755)
    shutil.copytree(tiny_model, base / "model")
    write_jsonl(base / "data" / "users.jsonl", USERS[:RECORDS])
    # Next to the bound folders but never bound: visible inside means the container leaks the host's files.
    (base / "secret").mkdir()
    (base / "secret" / "marker.txt").write_text("no container may see this\n")
    # The venv's base Python lives under /root (0700 here), so the other user gets a venv of the system Python
    # that reads this checkout's packages, as a user's own venv on a login node would.
    if os.getuid() == 0:
        venv = base / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        ours = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
        (site / "launcher-checkout.pth").write_text(f"import site; site.addsitedir({str(ours)!r})\n")
    for path in base.rglob("*"):
        path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))
    return base


def ids_of(user: str) -> tuple[int, int]:
    if user == "caller":
        return os.getuid(), os.getgid()
    return int(subprocess.check_output(["id", "-u", user])), int(subprocess.check_output(["id", "-g", user]))


def _prepare(
    runtime: str,
    user: str,
    base: Path,
    env: dict[str, str],
    host_marker: Path,
    label: str = "",
    max_retries: int = 0,
    extra_env: dict[str, str] | None = None,
) -> Run:
    uid, gid = ids_of(user)
    label = label or user
    folder = base / f"{runtime}-{label}"
    probe_dir = folder / "probe"
    probe_dir.mkdir(parents=True)
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    (folder / "out").mkdir()
    for path in (folder, probe_dir, folder / "out"):
        os.chown(path, uid, gid)
    # The caller's runs: 4 units for an array of 2 worker jobs; the others: 2 units for 1. Never one container a unit.
    units, jobs = (RECORDS, 2) if label == "caller" else (RECORDS // 2, 1)
    hidden = [
        str(base / "secret" / "marker.txt"),
        str(base / "secret"),
        str(host_marker),
        str(ROOT / "pyproject.toml"),
        sys.prefix,
        str(STATE / "env.sh"),
    ]
    ro = [str(base / "model"), str(base / "data")]
    rw = [str(folder / "out"), str(probe_dir)]
    spec = make_spec(
        folder,
        base / "model",
        base / "data" / "users.jsonl",
        name=f"ct-{runtime}-{label}",
        executor="slurm",
        data={"records_per_shard": RECORDS // units, "num_samples": NUM_SAMPLES},
        sampling={"max_tokens": 4, "seed": 7},
        # apptainer --nv runs without a driver: each worker job gets a fake GPU from Slurm and runs with --nv for
        # real. docker --gpus / podman --device fail without NVIDIA's toolkit: their GPU argv is checked exactly below.
        slurm={
            "gpus_per_node": 1 if runtime == "apptainer" else 0,
            "cpus_per_gpu": 1,
            "mem": "1G",
            "time": "00:10:00",
            "signal_delay_s": 30,
            "max_retries": max_retries,
            "jobs": jobs,
        },
        container={
            "runtime": runtime,
            "image": image_for(runtime, env),
            "binds": [str(probe_dir)],
            # TEMPORARY workaround (launcher/history.py): the gather job records the run's rate in
            # ~/.cache/launcher, read-only in apptainer's image, and write_atomic waits out EROFS for 300 s
            # inside a job before record_run gives up. Remove once record_run does not wait.
            "env": {
                "PYTHONPATH": str(probe_dir),
                "CT_API_TOKEN": ENV_SECRET,
                "LAUNCHER_HISTORY": str(probe_dir / "history.json"),
                "LAUNCHER_PROBE": json.dumps({"hidden": hidden, "write": ro + rw, "echo": ["CT_API_TOKEN"]}),
            },
        },
    )
    os.chown(spec, uid, gid)
    # The runtime is reached through a recorder first on PATH (sbatch passes the submitter's PATH to the job).
    path = user_env(user, env)["PATH"]
    recorder, log = argv_recorder(folder, runtime, path)
    for item in (recorder, log):
        os.chown(item, uid, gid)
    extra_env = {**(extra_env or {}), "PATH": f"{recorder}:{path}"}
    return Run(
        runtime,
        user,
        label,
        uid,
        gid,
        image_for(runtime, env),
        folder,
        spec,
        probe_dir,
        hidden,
        ro,
        rw,
        units,
        jobs,
        extra_env,
        log,
    )


def _submit(run: Run, base: Path, env: dict[str, str]) -> None:
    python = sys.executable if run.user == "caller" else str(base / "venv" / "bin" / "python")
    argv = [*as_user(run.user), python, "-m", "launcher", "submit", str(run.spec), "--wait"]
    # The submit starts in the unbound secret/ folder: a runtime that binds the job's start directory shows it.
    run.started = time.time()
    with open(run.dir / "submit.log", "wb") as log:
        run.proc = subprocess.Popen(
            argv,
            cwd=base / "secret",
            env={**user_env(run.user, env), **run.extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait(proc: subprocess.Popen[bytes] = run.proc) -> None:
        proc.wait()
        run.ended = time.time()

    run.waiter = threading.Thread(target=wait, daemon=True)
    run.waiter.start()


@dataclass
class Fleet:
    runs: dict[tuple[str, str], Run]
    skipped: dict[tuple[str, str], str]
    env: dict[str, str]
    base: Path
    gpu_jobs: dict[tuple[str, str], GpuJob]
    gpu_skipped: dict[tuple[str, str], str]

    def get(self, runtime: str, label: str) -> Run:
        if (runtime, label) in self.skipped:
            pytest.skip(self.skipped[(runtime, label)])
        return self.runs[(runtime, label)].finish()


@pytest.fixture(scope="module")
def fleet(tiny_model: Path) -> Iterator[Fleet]:
    env = runtime_env()
    base = _shared_base(tiny_model)
    host_marker = Path(tempfile.mkstemp(prefix="launcher-ct-host-marker-", dir="/tmp")[1])
    host_marker.chmod(0o644)
    runs: dict[tuple[str, str], Run] = {}
    skipped: dict[tuple[str, str], str] = {}
    t0 = time.time()
    for runtime in RUNTIMES:
        for user in USERS_RUN_AS:
            reason = why_not(runtime, user, env)
            if reason:
                skipped[(runtime, user)] = reason
            else:
                runs[(runtime, user)] = _prepare(runtime, user, base, env, host_marker)
    if reason := why_not("docker", "caller", env):
        skipped[("docker", "retry")] = reason
    else:  # a worker job that crashes once: its retry must happen although scontrol is not in the image
        runs[("docker", "retry")] = _prepare(
            "docker",
            "caller",
            base,
            env,
            host_marker,
            label="retry",
            max_retries=1,
            extra_env={"LAUNCHER_FAULT_CRASH": "users.full.0000:1"},
        )
    for run in runs.values():
        _submit(run, base, env)
    gpu_jobs: dict[tuple[str, str], GpuJob] = {}
    gpu_skipped: dict[tuple[str, str], str] = {}
    for runtime, user in GPU_COMBOS:  # the shim only prints here: the runtime and image need not work as that user
        if user != "caller" and (reason := why_not("podman", user, env)):
            gpu_skipped[(runtime, user)] = reason
        else:
            gpu_jobs[(runtime, user)] = _start_gpu_job(runtime, user, base, env)
    yield Fleet(runs, skipped, env, base, gpu_jobs, gpu_skipped)
    for job in gpu_jobs.values():
        job.cancel()
    for run in runs.values():
        run.finish()
        print(f"\n[containers-slurm] {run.name} (as {run.user}): submit --wait took {run.wall_s:.1f} s", end="")
    print(f"\n[containers-slurm] all runs done {time.time() - t0:.1f} s after the first submit")
    host_marker.unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)


COMBOS = [pytest.param(rt, user, id=f"{rt}-{user}") for rt in RUNTIMES for user in USERS_RUN_AS]


# ---- GPU flags: exact argv from a real Slurm job's variables ------------------------------------------------
GPU_COMBOS = (("docker", "caller"), ("podman", "caller"), ("apptainer", "caller"), ("podman", NON_ROOT))
GPUS = 2


@dataclass
class GpuJob:
    """sbatch --gpus=2 --wait; inside, under srun (as submitit runs the shim): the step's env, then the shim's
    --print argv. Submitted with the runs, so that waiting for a free (fake) GPU overlaps with them."""

    runtime: str
    user: str
    folder: Path
    request: Path
    proc: subprocess.Popen[str]

    @property
    def out(self) -> Path:
        return self.folder / f"{self.runtime}-{self.user}.out"

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            subprocess.run(["scancel", "--name", self.folder.name], capture_output=True, check=False)

    def result(self) -> tuple[list[str], dict[str, str]]:
        try:
            _, err = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise AssertionError(f"sbatch --gpus={GPUS} still waiting after {RUN_TIMEOUT_S} s (busy node?)") from None
        said = self.out.read_text(errors="replace") if self.out.exists() else ""
        assert self.proc.returncode == 0, f"sbatch exited {self.proc.returncode}: {err}{said}"
        argv = json.loads(said.strip().splitlines()[-1])
        env_text = Path(f"{self.out}.env").read_text()
        return argv, dict(item.split("=", 1) for item in env_text.split("\0") if "=" in item)


def _start_gpu_job(runtime: str, user: str, base: Path, env: dict[str, str]) -> GpuJob:
    from launcher.containers.shim import write_request

    folder = Path(tempfile.mkdtemp(prefix=f"gpu-{runtime}-{user}-", dir=base))
    folder.chmod(0o777)
    req = write_request(folder / "request.json", runtime=runtime, image=image_for(runtime, env), workdir=folder)
    req.chmod(0o644)
    uid, gid = ids_of(user)  # a request is trusted only as a file of the user's own, in a folder of theirs (0700)
    for path in (folder, req):
        os.chown(path, uid, gid)
    python = sys.executable if user == "caller" else str(base / "venv" / "bin" / "python")
    out = folder / f"{runtime}-{user}.out"
    script = f"srun bash -c 'env -0 > {out}.env; {python} -m launcher.containers.shim --print {req} -- python3 -V'"
    proc = subprocess.Popen([*as_user(user), "sbatch", "--wait", "--parsable", f"--gpus={GPUS}", "-J", folder.name,
                             "-o", str(out), "-D", str(folder), "--wrap", script], env=user_env(user, env), cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    return GpuJob(runtime, user, folder, req, proc)


@pytest.mark.slurm
@pytest.mark.containers
@pytest.mark.parametrize(("runtime", "user"), GPU_COMBOS)
def test_gpu_argv_from_a_real_slurm_allocation(fleet: Fleet, runtime: str, user: str) -> None:
    if (runtime, user) not in fleet.gpu_jobs:
        pytest.skip(fleet.gpu_skipped.get((runtime, user), "not started"))
    job = fleet.gpu_jobs[(runtime, user)]
    argv, env = job.result()
    ids = env["SLURM_STEP_GPUS"].split(",")  # the node's numbering of the GPUs Slurm gave this step
    assert len(ids) == GPUS and env["SLURM_JOB_GPUS"] == env["SLURM_STEP_GPUS"]
    uid, gid = ids_of(user)
    tmp = job.folder
    image = image_for(runtime, fleet.env)
    inside = forwarded_env(env)
    if runtime == "apptainer":  # the env goes in APPTAINERENV_* variables, not the argv
        expected = ["apptainer", "exec", "--cleanenv", "--no-home", "--contain", "--nv", "--pwd", str(tmp),
                    image, "python3", "-V"]  # fmt: skip
    else:
        inside["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(GPUS)))  # only the selected GPUs exist inside
        users = ["--userns", "keep-id"] if (runtime == "podman" and uid != 0) else []
        gpu = (
            ["--gpus", f'"device={",".join(ids)}"']
            if runtime == "docker"
            else [*(x for i in ids for x in ("--device", f"nvidia.com/gpu={i}")), "--security-opt", "label=disable"]
        )
        expected = [runtime, "run", "--rm", "--init", "--pull", "never", "--network", "host", "--ipc", "host",
                    *users, "--user", f"{uid}:{gid}", *gpu,
                    *(x for k in sorted(inside) for x in ("-e", k)),  # names only: values from the env
                    "--workdir", str(tmp), image, "python3", "-V"]  # fmt: skip
    assert argv == expected


# ---- launcher doctor, from the CLI --------------------------------------------------------------------------
def _doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, dict[str, Any]]:
    full_env = {**os.environ, **runtime_env(), **(env or {})}
    text = subprocess.run(
        [sys.executable, "-m", "launcher", "doctor", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=180,
    )
    as_json = subprocess.run(
        [sys.executable, "-m", "launcher.containers.doctor", *args, "--json"],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=180,
    )
    levels = {c["name"]: c for c in json.loads(as_json.stdout)["checks"]} if as_json.stdout.strip() else {}
    return text.returncode, text.stdout + text.stderr, levels


@pytest.mark.containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_doctor_cli_without_gpu_checks_the_rest(runtime: str) -> None:
    env = runtime_env()
    if reason := why_not(runtime, "caller", env):
        pytest.skip(reason)
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver: the no-GPU path is not what runs here")
    image = image_for(runtime, env)
    code, out, checks = _doctor("--runtime", runtime, "--image", image)
    assert code == 0, out  # no GPU is a warning on a login/CPU node, not a failure
    assert "no NVIDIA driver here" in out and "result: OK (0 failed, 1 warnings)" in out, out
    assert {name: c["level"] for name, c in checks.items()} == {
        "runtime": "ok",
        "driver": "warn",
        "gpus": "skip",
        "image": "ok",
        "versions": "ok",
        "compat": "ok",
        "gpus-inside": "skip",
    }, out
    assert "a CPU image" in checks["versions"]["message"] and "srun --gpus=1" in checks["gpus-inside"]["fix"]


@pytest.mark.containers
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_doctor_cli_missing_image_fails_with_the_build_command(runtime: str) -> None:
    env = runtime_env()
    if reason := why_not(runtime, "caller", env):
        pytest.skip(reason)
    missing = "/nonexistent/launcher-missing.sif" if runtime == "apptainer" else "localhost/launcher-missing:none"
    code, out, checks = _doctor("--runtime", runtime, "--image", missing)
    assert code == 1, out
    assert checks["image"]["level"] == "fail" and missing in checks["image"]["message"], out
    assert f"make container RUNTIME={runtime} CUDA=auto" in checks["image"]["fix"], out
    assert checks["runtime"]["level"] == "ok" and checks["driver"]["level"] == "warn", out  # the rest still checked
    assert "FAIL" in out and "result: PROBLEMS (1 failed" in out, out


@pytest.mark.containers
def test_doctor_cli_missing_runtime_names_the_setup_script(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()  # a PATH with no podman on it
    code, out, checks = _doctor(
        "--runtime", "podman", "--image", "localhost/launcher-test:cpu", env={"PATH": str(tmp_path / "bin")}
    )
    assert code == 1, out
    assert checks["runtime"]["level"] == "fail" and "podman-setup.sh" in checks["runtime"]["fix"], out
    assert checks["image"]["level"] == "skip", out


# ---- (a) outputs, one container per worker job ---------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.containers
@pytest.mark.parametrize(("runtime", "user"), COMBOS)
def test_workers_run_in_image_and_outputs_are_complete(fleet: Fleet, runtime: str, user: str) -> None:
    run = fleet.get(runtime, user)
    assert run.proc is not None and run.proc.returncode == 0, (
        f"launcher submit --wait exited {run.proc and run.proc.returncode}:\n{run.stdout[-3000:]}\n{run.logs_tail()}"
    )
    assert f"{run.units} unit(s) to do; {run.jobs} worker job(s) submitted as array" in run.stdout, run.stdout
    assert f"users/full: {RECORDS} records, {RECORDS * NUM_SAMPLES} samples" in run.stdout
    rows = list(read_jsonl(run.out / "users" / "full" / "samples.jsonl"))
    assert sorted(r["user_id"] for r in rows) == [u["user_id"] for u in USERS[:RECORDS]]
    assert all(len(r["generated_samples"]) == NUM_SAMPLES for r in rows)
    summary = json.loads((run.out / "users" / "full" / "inference_summary.json").read_text())
    assert summary["total_samples"] == RECORDS * NUM_SAMPLES and summary["units"] == run.units
    assert summary["run"]["samples"] == RECORDS * NUM_SAMPLES and summary["run"]["samples_per_sec"] > 0
    # Every unit done once, by a worker of one of the array's jobs; a job that found none left runs no worker.
    workers = summary["workers"]
    assert 1 <= len(workers) <= run.jobs, workers
    assert sorted(u for w in workers for u in w["units"] or []) == run.unit_ids, workers
    assert {w["worker"] for w in workers} <= {f"{i}.0" for i in range(run.jobs)}, workers
    record = json.loads((run.run_dir() / "run.json").read_text())
    assert (record["units"], record["jobs"], record["submissions"][-1]["jobs"]) == (run.units, run.jobs, run.jobs)
    # The gather job (in the image too) merges 4 records in seconds: minutes mean it waited on something.
    gather_s = slurm_elapsed_s(record["submissions"][-1]["gather_job_id"])
    assert gather_s is None or gather_s < GATHER_MAX_S, f"the gather job took {gather_s} s\n{run.logs_tail()}"

    # One container per worker job: each element of the array ran its own Python in the image, with this
    # checkout's code (test_the_image_carries_this_checkouts_launcher), whatever the number of units.
    jobs = run.job_probes()
    where = [(p.get("job_name"), p.get("array_task"), p.get("cmdline")) for p in run.probes()]
    assert len(jobs) == run.jobs, f"one container per worker job expected, the probes saw {where}"
    assert len({p["job_id"] for p in jobs}) == run.jobs, where  # each in a Slurm job of its own
    if run.jobs > 1:  # the elements 0..jobs-1 of one array
        assert sorted(int(p["array_task"]) for p in jobs) == list(range(run.jobs)), where
        assert len({p["array_job"] for p in jobs}) == 1, where
    else:  # submitit submits a one-element array as a plain job: its index is 0
        assert [p["array_task"] for p in jobs] == [None], where
    for seen in jobs:
        assert "error" not in seen, seen["error"]
        assert seen["executable"].startswith("/opt/venv/"), seen["executable"]
        assert seen["launcher"].startswith("/opt/venv/"), seen["launcher"]
    # The workers are those very processes (DP = 1: the worker runs in its job's Python), and report the GPUs
    # that reached the container: apptainer's jobs asked Slurm for one each (--nv), the others for none.
    by_process = {(p["job_id"], p["pid"]): p for p in jobs}
    reports = run.worker_reports()
    assert len(reports) == len(workers), reports
    for report in reports:
        seen = by_process.get((report["job_id"], report["pid"]))
        assert seen is not None, f"worker {report['slot']} ran in no container the probes saw: {report}, {where}"
        assert report["slot"] == f"{seen['array_task'] or 0}.0" and report["state"] in ("done", "idle"), report
        if runtime == "apptainer":  # --nv was in the argv, and Slurm's allocation came through
            assert seen["cuda_visible"] not in (None, ""), seen
            assert report["gpus"] == seen["cuda_visible"].split(","), (report["gpus"], seen["cuda_visible"])
        else:
            assert report["gpus"] == [], report["gpus"]


# ---- (b) binds ----------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.containers
@pytest.mark.parametrize(("runtime", "user"), COMBOS)
def test_containers_see_only_their_binds(fleet: Fleet, runtime: str, user: str) -> None:
    run = fleet.get(runtime, user)
    request = json.loads((run.run_dir() / "container.json").read_text())
    bound = {b["container"] for b in request["binds"]}
    assert bound == {*run.ro, *run.rw}, f"binds: {sorted(bound)}"  # model, data, output, the spec's extra bind
    probes = run.probes()  # the gather job runs in the container too
    where = [(p.get("job_name"), p.get("cmdline")) for p in probes]
    assert len(run.job_probes()) == run.jobs and len(probes) == run.jobs + 1, where
    for seen in probes:
        assert "error" not in seen, seen["error"]
        leaked = [p for p, visible in seen["visible"].items() if visible]
        assert not leaked, f"{runtime}: host paths visible inside the container: {leaked}"
        assert seen["writes"] == {**{p: "EROFS" for p in run.ro}, **{p: "ok" for p in run.rw}}, seen["writes"]
        extra_mounts = [m for m in seen["mounts"] if not _system_mount(m) and m not in bound]
        assert not extra_mounts, f"{runtime}: mounts beyond the binds: {extra_mounts}"
        assert "CT_HOST_ONLY" not in seen["env_names"], "a host variable outside the allow-list reached the container"
        assert seen["cwd"] == str(run.run_dir())


def slurm_elapsed_s(job_id: str) -> int | None:
    """How long a finished job ran, by Slurm's accounting (None when sacct cannot say)."""
    done = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "ElapsedRaw"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = done.stdout.split()
    return int(said[0]) if done.returncode == 0 and said and said[0].isdigit() else None


def _system_mount(path: str) -> bool:
    """Mounts every container has (its root, /proc, /sys, /dev, runtime-written /etc files, the --init binary)
    and a private /tmp (apptainer --contain; its content is checked by the host marker in `hidden`)."""
    if path in {"/", "/tmp", "/var/tmp", "/proc", "/sys", "/dev", "/run", "/usr/sbin/docker-init"}:
        return True
    return path.startswith(("/proc/", "/sys/", "/dev/", "/etc/", "/run/", "/.singularity.d/"))


@pytest.mark.slurm
@pytest.mark.containers
@pytest.mark.parametrize(("runtime", "user"), COMBOS)
def test_env_values_reach_the_container_but_not_its_argv(fleet: Fleet, runtime: str, user: str) -> None:
    """container.env's CT_API_TOKEN arrives literally in every Python inside (worker jobs and gather job), while no
    argv a runtime was started with (what `ps` shows every user on the node) holds it: the value rode in its
    environment. The runtime was started once per worker job and once for the gather job, never once per unit."""
    run = fleet.get(runtime, user)
    probes = run.probes()
    assert len(probes) == run.jobs + 1, [p.get("job_name") for p in probes]
    assert [p.get("echo") for p in probes] == [{"CT_API_TOKEN": ENV_SECRET}] * len(probes)
    starts = recorded_starts(run.recorder_log)
    assert len(starts) == run.jobs + 1, f"the recorder saw {len(starts)} container start(s) for {run.jobs} job(s)"
    assert not [a for a in starts if any(ENV_SECRET in item for item in a)], "the value is in a runtime's argv"
    if runtime != "apptainer":
        assert all(a[a.index("CT_API_TOKEN") - 1] == "-e" for a in starts), starts
    assert not Path("/tmp/ct-pwned").exists()


# ---- (c) ownership ------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.containers
@pytest.mark.parametrize(("runtime", "user"), COMBOS)
def test_files_belong_to_the_submitting_user(fleet: Fleet, runtime: str, user: str) -> None:
    run = fleet.get(runtime, user)
    assert run.proc is not None and run.proc.returncode == 0, run.stdout[-2000:]
    assert {p["uid"] for p in run.probes()} == {run.uid}, "the container's processes ran as another uid"
    written = [p for p in [*run.out.rglob("*"), *run.probe_dir.rglob("*")] if p.name != "sitecustomize.py"]
    assert any(p.parent.name == "chunks" for p in written), "no chunk was written"
    assert any(p.parent.name == "workers" for p in written), "no worker report was written"
    foreign = [
        f"{p} {p.stat().st_uid}:{p.stat().st_gid}"
        for p in written
        if (p.stat().st_uid, p.stat().st_gid) != (run.uid, run.gid)
    ]
    assert not foreign, f"files not owned by {run.user} ({run.uid}:{run.gid}): {foreign[:10]}"


# ---- (d) the image in run.json ------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.containers
@pytest.mark.parametrize(("runtime", "user"), COMBOS)
def test_run_json_records_the_image(fleet: Fleet, runtime: str, user: str) -> None:
    run = fleet.get(runtime, user)
    record = json.loads((run.run_dir() / "run.json").read_text())["image"]
    assert (record["runtime"], record["image"]) == (runtime, run.image)
    inspects = [a for a in map(json.loads, map(Path.read_text, run.recorder_log.glob("*.json"))) if "inspect" in a]
    assert {"sha256", "id"} & set(record), (
        f"run.json has no digest or id for the image: {record}; the runtime's "
        f"`image inspect` calls: {inspects}\n{run.stdout[-1500:]}"
    )
    if runtime == "apptainer":
        assert record["sha256"] == sif_sha256(run.image)
    else:
        inspect = [*as_user(user), runtime, "image", "inspect", "--format", "{{.Id}}", run.image]
        image_id = subprocess.run(
            inspect, env=user_env(user, fleet.env), capture_output=True, text=True, cwd="/", check=True
        ).stdout.strip()
        assert record["id"] == image_id  # rootless podman: the id in that user's own store


@pytest.mark.slurm
@pytest.mark.containers
def test_runtimes_agree_on_the_samples(fleet: Fleet) -> None:
    """Same image, model, seed and shards: the runtime must not change a single sample."""
    texts = {}
    for (runtime, label), run in fleet.runs.items():
        run.finish()
        samples = run.out / "users" / "full" / "samples.jsonl"
        if label == "caller" and samples.exists():
            rows = map(json.loads, samples.read_text().splitlines())
            texts[runtime] = {r["user_id"]: r["generated_samples"] for r in rows}
    if len(texts) < 2:
        pytest.skip(f"needs two runtimes that ran, got {sorted(texts)}")
    first = next(iter(texts.values()))
    assert all(t == first for t in texts.values()), {rt: t for rt, t in texts.items()}


@pytest.mark.slurm
@pytest.mark.containers
def test_the_image_carries_this_checkouts_launcher(fleet: Fleet) -> None:
    """The worker jobs above ran the image's copy of launcher/: it must be this checkout's, or they tested other
    code."""
    ours = host_sources()
    seen = [(run.name, probe) for run in fleet.runs.values() for probe in run.finish().job_probes()]
    if not seen:
        pytest.skip("no worker job ran in a container")
    for name, probe in seen:
        stale = sorted(k for k in {*probe["sources"], *ours} if probe["sources"].get(k) != ours.get(k))
        assert not stale, (
            f"{name}: the image's launcher/ differs from this checkout in {', '.join(stale[:6])}\n"
            "  fix:   bash containers/test-image/build.sh (as root; ~20 s after a code change)"
        )


_HOST_SOURCES: dict[str, str] = {}


def host_sources() -> dict[str, str]:
    if not _HOST_SOURCES:
        for path in (ROOT / "launcher").rglob("*.py"):
            if "__pycache__" not in path.parts:
                _HOST_SOURCES[str(path.relative_to(ROOT / "launcher"))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HOST_SOURCES


_SIF_SHA: dict[str, str] = {}


def sif_sha256(path: str) -> str:
    if path not in _SIF_SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SIF_SHA[path] = h.hexdigest()
    return _SIF_SHA[path]


@pytest.mark.slurm
@pytest.mark.containers
def test_a_crashed_worker_job_is_retried_inside_a_container(fleet: Fleet) -> None:
    """The worker crashes in its first unit (LAUNCHER_FAULT_CRASH): the job records the failure for the host to
    requeue (no scontrol in the image), the teardown does, and the requeued job finishes every unit."""
    run = fleet.get("docker", "retry")
    assert run.proc is not None and run.proc.returncode == 0, f"{run.stdout[-1500:]}\n{run.logs_tail()[-1500:]}"
    assert f"users/full: {RECORDS} records" in run.stdout
    failures = sorted((run.run_dir() / "jobs" / "0" / "failures").glob("*.json"))
    assert len(failures) == 1, [f.name for f in failures]
    failure = json.loads(failures[0].read_text())
    assert failure["retry"] and failure["requeue_by"] == "teardown" and "injected fault" in failure["error"], failure
    unit = run.run_dir() / "units" / "users.full.0000"
    assert [json.loads(f.read_text())["worker"] for f in sorted((unit / "failures").glob("*.json"))] == ["0.0"]
    assert json.loads((unit / "done.json").read_text())["generation"] >= 1  # claimed again after the crash
    # In the image: the job's first attempt, the teardown that asked the host to requeue it, the requeued attempt.
    attempts = sorted((p.get("restart") or "0") for p in run.job_probes())
    assert attempts == ["0", "1"], [(p.get("restart"), p.get("cmdline")) for p in run.probes()]
    assert len(run.teardown_probes()) == 1, [(p.get("restart"), p.get("cmdline")) for p in run.probes()]
    assert len(recorded_starts(run.recorder_log)) == 4  # 2 attempts + the teardown + the gather job
