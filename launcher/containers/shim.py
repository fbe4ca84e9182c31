"""containers/shim.py: REQUEST.json + this job's environment -> exec of the command inside the container.

Slurm runs this on the compute node as submitit's "python" command:

    python -m launcher.containers.shim REQUEST.json -- python3 -u -m submitit.core._submit FOLDER

because which GPUs a task got is known only there, at run time. It reads the request written at submit
time (``write_request``), counts the GPUs from the environment, forwards the SLURM_* / SUBMITIT_* variables
that submitit's in-job code reads, builds the argv and its environment with ``container.py`` and replaces itself
with them (``os.execvpe``), so Slurm's signals go straight to the runtime. The argv names env variables but never
holds their values (they ride in the environment): ``ps`` on the node shows no token. ``--print`` prints the argv
as JSON instead.

The request decides which image runs with the user's files mounted: it is read only from a run folder of the
user's (0700) as a file of theirs that nobody else can write (store: RunDir.read_trusted); anything else stops the
task with exit 2 and says which file and what to do (UntrustedFile).

Which variable names the GPUs (first one set wins):
1. SLURM_STEP_GPUS   the GPUs of this srun step, as the node's driver (NVML) numbers them. Exact, and the
                     numbering docker/podman use too: their daemon runs outside the job's cgroup.
2. SLURM_JOB_GPUS    the job's GPUs, same numbering, when not inside a step.
3. CUDA_VISIBLE_DEVICES  outside Slurm (a workstation). Under Slurm with ConstrainDevices it is renumbered
                     from 0 inside the job's cgroup, so it is never trusted for ids while 1 or 2 is there.
4. SLURM_GPUS_ON_NODE    a count only: enough for apptainer (--nv, the cgroup limits the devices), not for
                     docker/podman, which must be told which devices (that is an error, with the fix).
Counts that disagree between these are reported on stderr: that usually means a gres.conf problem.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.containers.runtimes import Bind, ContainerRequest, forwarded_env, get_runtime, preview
from launcher.errors import ContainerError, LauncherError
from launcher.slurm_env import parse_gpu_ids
from launcher.store import RunDir, json_bytes

REQUEST_VERSION = 1


class ExecError(ContainerError):
    """A request or environment the shim cannot run; the message says what to change."""


@dataclass(frozen=True)
class ExecRequest:
    """What submit time knows: the image and how to reach the job's files (not the GPUs)."""

    runtime: str
    image: str
    binds: tuple[Bind, ...] = ()
    env: Mapping[str, str] | None = None
    workdir: Path | None = None
    user: str | None = None


@dataclass(frozen=True)
class GpuAllocation:
    """The GPUs this task owns, and which variable said so."""

    ids: tuple[str, ...]
    source: str
    """The variable the ids came from, or "none"."""
    ids_known: bool = True
    """False when only a count was given (SLURM_GPUS_ON_NODE): ids are then 0..n-1 placeholders."""
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Launch:
    """What the shim execs for one task."""

    argv: list[str]
    """The runtime's argv: env variable names at most, never a value."""
    env: dict[str, str]
    """The environment to exec ``argv`` with: the node's own, plus the container's values as the runtime takes them."""
    shown: list[str]
    """``argv`` as `launcher plan` shows it: ``env NAME=<hidden>...`` first, so names show and values never do."""
    gpus: GpuAllocation


def allocated_gpus(environ: Mapping[str, str]) -> GpuAllocation:
    """Read this task's GPUs from Slurm/CUDA variables; see the module docstring for the order and why."""
    found: dict[str, tuple[str, ...]] = {
        name: parse_gpu_ids(environ[name])
        for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
        if name in environ
    }
    count_text = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    count = int(count_text) if count_text.isdigit() else None

    source = next(iter(found), "none")
    ids = found.get(source, ())
    ids_known = True
    if source == "none" and count:
        source, ids, ids_known = "SLURM_GPUS_ON_NODE", tuple(str(i) for i in range(count)), False

    warnings = []
    others = {name: len(v) for name, v in found.items() if name != source}
    if count is not None and source != "SLURM_GPUS_ON_NODE":
        others["SLURM_GPUS_ON_NODE"] = count
    for name, n in others.items():
        if n != len(ids):
            warnings.append(
                f"{source} names {len(ids)} GPU(s) but {name} says {n}; using {source}. "
                f"If GPUs are missing, check the node's gres.conf and the job's --gpus request."
            )
    return GpuAllocation(ids=ids, source=source, ids_known=ids_known, warnings=tuple(warnings))


def write_request(
    path: Path,
    *,
    runtime: str,
    image: str,
    binds: Sequence[Bind] = (),
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    user: str | None = None,
) -> Path:
    """Write REQUEST.json at submit time (atomically). Checks what it can now, not on the compute node."""
    # Unknown runtimes, bad binds and env names fail here, before anything is submitted.
    get_runtime(runtime).wrap(
        ContainerRequest(image=image, argv=["true"], binds=tuple(binds), env=dict(env or {}), user=user)
    )
    payload = {
        "version": REQUEST_VERSION,
        "runtime": runtime,
        "image": image,
        "binds": [{"host": str(b.host), "container": str(b.container), "read_only": b.read_only} for b in binds],
        "env": dict(env or {}),
        "workdir": None if workdir is None else str(workdir),
        "user": user,
    }
    # 0600 whatever the umask: container.env may hold a token. Into the run folder only (0700, checked), under a
    # random temporary name created with O_EXCL: a link planted at a guessable name cannot catch the secrets.
    RunDir(path.parent).write_bytes(path, json_bytes(payload), mode=0o600)
    return path


def read_request(path: Path) -> ExecRequest:
    """The request, read as a file that decides what runs (UntrustedFile when it is not provably the user's)."""
    try:
        data: dict[str, Any] = RunDir(path.parent).read_trusted(path)
    except (OSError, json.JSONDecodeError) as err:
        raise ExecError(
            f"{path}: cannot read the container request: {err}",
            fix="write it with launcher.containers.shim.write_request (launcher submit does)",
        ) from err
    if data.get("version") != REQUEST_VERSION:
        raise ExecError(
            f"{path}: request version {data.get('version')!r}, this launcher reads {REQUEST_VERSION}",
            fix="submit again with the launcher installed on this node",
        )
    try:
        return ExecRequest(
            runtime=str(data["runtime"]),
            image=str(data["image"]),
            binds=tuple(Bind(Path(b["host"]), Path(b["container"]), bool(b.get("read_only"))) for b in data["binds"]),
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
            workdir=None if data.get("workdir") is None else Path(data["workdir"]),
            user=data.get("user"),
        )
    except (KeyError, TypeError) as err:
        raise ExecError(f"{path}: field {err} missing or malformed", fix="rewrite it with write_request") from err


def build_launch(request: ExecRequest, command: list[str], environ: Mapping[str, str]) -> Launch:
    """What to exec for ``command``, given this task's environment ``environ``. Pure."""
    runtime = get_runtime(request.runtime)
    gpus = allocated_gpus(environ)
    env = forwarded_env(environ)
    if runtime.selects_gpus:
        if gpus.ids and not gpus.ids_known:
            raise ExecError(
                f"this task has {len(gpus.ids)} GPU(s) (SLURM_GPUS_ON_NODE) but no variable names them, and "
                f"{request.runtime} must be told which devices to expose",
                fix="give the node's GPUs File= entries in gres.conf (Slurm then sets SLURM_JOB_GPUS), "
                "or use container.runtime: apptainer",
            )
        # Inside, only the selected GPUs exist and CUDA numbers them from 0.
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if gpus.ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpus.ids)))
    env.update(request.env or {})
    user = request.user
    if user is None and runtime.selects_gpus:
        # Docker/podman would run as root and leave root-owned files on shared storage.
        user = f"{os.getuid()}:{os.getgid()}"
    req = ContainerRequest(
        image=request.image,
        argv=list(command),
        binds=request.binds,
        env=env,
        gpu_ids=gpus.ids,
        workdir=request.workdir,
        user=user,
        rootless=request.runtime == "podman" and os.geteuid() != 0,  # podman run by a user is always rootless
    )
    return Launch(argv=runtime.wrap(req), env=runtime.exec_env(req, environ), shown=preview(runtime, req), gpus=gpus)


def _usage() -> str:
    return "usage: python -m launcher.containers.shim [--print] REQUEST.json -- COMMAND [ARG...]"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print(f"error: no '--' before the command\n{_usage()}", file=sys.stderr)
        return 2
    split = args.index("--")
    options, command = args[:split], args[split + 1 :]
    print_only = "--print" in options
    positional = [a for a in options if a != "--print"]
    if len(positional) != 1 or not command or positional[0].startswith("-"):
        print(f"error: expected one REQUEST.json and a command\n{_usage()}", file=sys.stderr)
        return 2
    try:
        request = read_request(Path(positional[0]))
        launch = build_launch(request, command, os.environ)
    except LauncherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in launch.gpus.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if print_only:
        print(json.dumps(launch.argv))
        return 0
    # The task's log then says exactly what started; `shown` holds no env value.
    print(f"launcher.containers.shim: exec {shlex.join(launch.shown)}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        os.execvpe(launch.argv[0], launch.argv, launch.env)
    except OSError as err:
        print(
            f"error: cannot start {launch.argv[0]!r} on {os.uname().nodename}: {err}\n"
            f"  fix:   install {request.runtime} on the compute nodes or pick another container.runtime; "
            f"`launcher doctor --runtime {request.runtime}` checks a node",
            file=sys.stderr,
        )
        return 127
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())


# --- glue for submit and plan: JobSpec -> request file + the "python" command Slurm runs -----------------

IN_IMAGE_PYTHON = "python3"


def spec_binds(spec: Any, run_dir: Path) -> list[Bind]:
    """The model(s) and adapters, the data, the output and scratch dirs, and what the spec adds; nothing else. Same
    paths inside as outside: submitit's pickles and our run files hold absolute paths."""
    folders: list[tuple[Path, bool]] = [(Path(p), True) for p in spec.model_paths().values()]
    folders += [(Path(p), True) for p in spec.model.adapters.values() if p]
    folders.append((Path(spec.output.dir), False))
    folders += [(ds.file.parent if ds.file.is_file() else ds.file, True) for ds in spec.data.datasets]
    if spec.data.preamble:
        folders.append((Path(spec.data.preamble).parent, True))
    if spec.output.scratch_dir:
        folders.append((Path(spec.output.scratch_dir), False))
    folders.append((run_dir, False))
    binds: dict[Path, Bind] = {}
    for folder, ro in folders:
        folder = folder.resolve()
        if any(folder == b or folder.is_relative_to(b) for b in binds if not binds[b].read_only or ro):
            continue  # already inside a bind that allows as much
        binds[folder] = Bind(folder, folder, ro)
    for text in spec.container.binds:
        b = Bind.parse(text)
        binds[b.host] = b
    return list(binds.values())


def request_path(run_dir: Path) -> Path:
    return RunDir(run_dir).container_json


def write_spec_request(spec: Any, run_dir: Path) -> Path:
    """At submit time only (`launcher plan` writes nothing): the request the shim reads on the compute node, in the
    run's private folder (made here when the submit has not yet)."""
    RunDir(run_dir).create()
    return write_request(
        request_path(run_dir),
        runtime=spec.container.runtime,
        image=spec.container.image,
        binds=spec_binds(spec, run_dir),
        env=dict(spec.container.env),
        workdir=run_dir,
    )


def container_python_argv(spec: Any, run_dir: Path) -> list[str]:
    """What submitit runs as 'python' on the compute node: this shim (host Python), then python3 in the image."""
    return [sys.executable, "-m", "launcher.containers.shim", str(request_path(run_dir)), "--", IN_IMAGE_PYTHON]


def spec_launch(spec: Any, run_dir: Path, gpu_count: int) -> Launch:
    """What a task would exec, as if Slurm had given it GPUs 0..n-1 and nothing else (writes nothing)."""
    request = ExecRequest(
        runtime=spec.container.runtime,
        image=spec.container.image,
        binds=tuple(spec_binds(spec, run_dir)),
        env=dict(spec.container.env),
        workdir=run_dir,
    )
    environ = {"SLURM_JOB_GPUS": ",".join(map(str, range(gpu_count)))} if gpu_count else {}
    command = [IN_IMAGE_PYTHON, "-u", "-m", "submitit.core._submit", str(RunDir(run_dir).logs)]
    return build_launch(request, command, environ)


def preview_argv(spec: Any, run_dir: Path, gpu_count: int) -> list[str]:
    """The argv a task would exec, env values hidden (for `launcher plan`, whose output lands in terminals and CI
    logs)."""
    return spec_launch(spec, run_dir, gpu_count).shown
