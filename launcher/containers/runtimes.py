"""containers/runtimes.py: ContainerRequest -> the argv and environment that run it under a container runtime, kept in
one place so that binds, GPUs and secrets are handled alike by every runtime.

Pure: builds lists, runs nothing, reads no file (``available()`` only looks on PATH). Every argument stays
one list item from here to ``os.execvpe``; nothing passes through a shell, so paths with spaces, quotes,
``;`` or ``$(...)`` arrive in the container exactly as given. Quoting happens once, where a script is
rendered (``shlex.join``), never here.

Env values never go into the argv: every user on a node can read any process's argv (``ps``, /proc/PID/cmdline),
and container.env may hold a token. ``wrap()`` puts only names there (docker/podman ``-e NAME``) and
``exec_env()`` gives the environment to exec the runtime with, which carries the values (docker/podman read
``-e NAME``'s value from it; apptainer reads APPTAINERENV_NAME). /proc/PID/environ is readable by the owner only.

Runtimes are plug-ins: a class with a ``name``, ``wrap()`` and ``exec_env()``, added with ``@register``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, TypeVar

from launcher.errors import ContainerError
from launcher.secrets import is_secret_name

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"\d+:\d+")
HIDDEN = "<hidden>"
"""What `launcher plan` shows instead of an env value."""

# Variables taken from the host into the container (docker/podman start from an empty environment,
# apptainer runs with --cleanenv), on top of the env a request names explicitly:
# - SLURM_* and SUBMITIT_*: submitit's in-job code reads its job id, task index and folder from them, and
#   layout.py counts the GPUs from SLURM_*_GPUS;
# - CUDA_VISIBLE_DEVICES: which GPUs this task may use (container_exec renumbers it for docker/podman);
# - VLLM_*, NCCL_*: engine and collective settings a user sets for one run;
# - HF_* offline switches and cache locations, XDG_CACHE_HOME, TRITON_CACHE_DIR: where models and compile
#   caches are (shared storage), and that nothing is downloaded on a compute node;
# - LAUNCHER_*: the toolkit's own settings.
# Everything else (PATH, HOME, LD_LIBRARY_PATH, PYTHONPATH, ...) describes the host, not the image.
FORWARDED_ENV_NAMES: frozenset[str] = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_HOME",
        "HF_HUB_CACHE",
        "XDG_CACHE_HOME",
        "TRITON_CACHE_DIR",
        "OMP_NUM_THREADS",
    }
)
FORWARDED_ENV_PREFIXES: tuple[str, ...] = ("SLURM_", "SUBMITIT_", "VLLM_", "NCCL_", "LAUNCHER_")


def forwarded_env(host_env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``host_env`` that the allow-list above lets into a container."""
    return {
        name: value
        for name, value in host_env.items()
        if name in FORWARDED_ENV_NAMES or name.startswith(FORWARDED_ENV_PREFIXES)
    }


def _check_path(path: Path, role: str) -> str:
    text = str(path)
    for bad, why in ((":", "':' separates host, container and mode"), ("\n", "a newline"), ("\0", "a NUL byte")):
        if bad in text:
            raise ContainerError(
                f"bind {role} path {text!r} contains {why}; runtimes cannot bind it",
                fix=f"bind a parent folder whose path has no {bad!r}, or rename the folder",
            )
    return text


@dataclass(frozen=True, slots=True)
class Bind:
    """A host folder (or file) made visible inside the container.

    Identical host and container paths are the normal case: submitit pickles absolute paths on the
    login node and the task must find them at the same place inside the image.
    """

    host: Path
    container: Path
    read_only: bool = False

    def spec(self) -> str:
        """``host:container[:ro]``, the form ``--bind`` and ``-v`` take. One list item, never quoted."""
        text = f"{_check_path(self.host, 'host')}:{_check_path(self.container, 'container')}"
        return f"{text}:ro" if self.read_only else text

    @classmethod
    def parse(cls, text: str) -> Bind:
        """Read ``host[:container[:ro|rw]]``; the container path defaults to the host path."""
        parts = text.split(":")
        if not text or len(parts) > 3:
            raise ContainerError(
                f"bind {text!r} is not host[:container[:ro|rw]]",
                fix="e.g. /data/models or /scratch/run1:/scratch/run1:ro (paths cannot contain ':')",
            )
        host = parts[0]
        container = parts[1] if len(parts) > 1 and parts[1] else host
        mode = parts[2] if len(parts) > 2 else "rw"
        for role, path in (("host", host), ("container", container)):
            if not path.startswith("/"):
                raise ContainerError(
                    f"bind {text!r}: {role} path {path!r} is relative",
                    fix=f"use an absolute path (a relative one would depend on the directory the job starts "
                    f"in), e.g. {str(Path(path).absolute())!r}",
                )
        if mode not in ("ro", "rw"):
            raise ContainerError(f"bind {text!r}: mode {mode!r} is not allowed", fix="use ro or rw")
        bind = cls(Path(host), Path(container), read_only=mode == "ro")
        bind.spec()  # rejects newlines now rather than at run time
        return bind


@dataclass(frozen=True)
class ContainerRequest:
    """One command to run inside one image, with what it needs from the host."""

    image: str
    """Docker/podman image reference, or an Apptainer image (SIF path, sandbox dir, docker://...)."""
    argv: list[str]
    """The command inside the container, one list item per argument."""
    binds: tuple[Bind, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    """Exactly the variables the container gets (besides the image's own ENV); see forwarded_env()."""
    gpu_ids: tuple[str, ...] = ()
    """The host's ids (NVML index or UUID) of the GPUs this task owns; empty: no GPU flags at all."""
    workdir: Path | None = None
    user: str | None = None
    """``uid:gid`` the process runs as; None: the runtime's default (apptainer: the caller)."""
    rootless: bool = False
    """The runtime runs unprivileged in a user namespace (podman started by a non-root user). Its uid 1500 inside
    is then a sub-uid outside, so files written would belong to neither the caller nor anyone: the caller's own
    ids must be mapped through unchanged (podman ``--userns keep-id``)."""

    def __post_init__(self) -> None:
        if not self.image or self.image.startswith("-"):
            raise ContainerError(f"container image {self.image!r} is empty or starts with '-'", fix="name an image")
        if not self.argv:
            raise ContainerError("empty command for the container", fix="give the program to run, e.g. ['python3']")
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise ContainerError(f"environment variable name {name!r} is not valid", fix="use letters, digits, _")
        if self.user is not None and not _USER.fullmatch(self.user):
            raise ContainerError(f"container user {self.user!r} is not uid:gid", fix="e.g. user='1000:1000'")
        for gpu in self.gpu_ids:
            if not gpu or "," in gpu or gpu != gpu.strip():
                raise ContainerError(f"GPU id {gpu!r} is not valid", fix="one index or UUID per item, e.g. ('0', '1')")


class ContainerRuntime(Protocol):
    name: ClassVar[str]
    selects_gpus: ClassVar[bool]
    """True when only ``gpu_ids`` are visible inside, renumbered from 0 (docker/podman); False when the
    container sees the host's devices and CUDA_VISIBLE_DEVICES decides (apptainer, none)."""

    def available(self) -> bool: ...

    def wrap(self, req: ContainerRequest) -> list[str]:
        """The argv to exec: names of env variables at most, never their values."""
        ...

    def exec_env(self, req: ContainerRequest, host_env: Mapping[str, str]) -> dict[str, str]:
        """The environment to exec ``wrap(req)`` with: ``host_env`` (what the runtime itself needs: PATH, its
        socket, its config) plus ``req.env``'s values in the form this runtime passes them on."""
        ...


def preview(runtime: ContainerRuntime, req: ContainerRequest) -> list[str]:
    """``wrap(req)`` as `launcher plan` shows it: preceded by ``env NAME=<hidden>...`` for each variable the
    runtime gets through its environment, so the names show and the values never do."""
    masked = ContainerRequest(
        image=req.image,
        argv=req.argv,
        binds=req.binds,
        env=dict.fromkeys(req.env, HIDDEN),
        gpu_ids=req.gpu_ids,
        workdir=req.workdir,
        user=req.user,
        rootless=req.rootless,
    )
    added = runtime.exec_env(masked, {})  # an empty host env: exactly what the request adds
    return [*(["env", *(f"{k}={v}" for k, v in sorted(added.items()))] if added else []), *runtime.wrap(masked)]


R = TypeVar("R", bound=type[ContainerRuntime])
RUNTIMES: dict[str, type[ContainerRuntime]] = {}


def register(cls: R) -> R:
    """Class decorator: make a runtime selectable by its ``name``."""
    RUNTIMES[cls.name] = cls
    return cls


def get_runtime(name: str) -> ContainerRuntime:
    if name not in RUNTIMES:
        raise ContainerError(
            f"unknown container runtime {name!r}",
            allowed=f"{', '.join(sorted(RUNTIMES))}",
            fix="set container.runtime to one of those (none runs on the host, without a container)",
        )
    return RUNTIMES[name]()


def _apptainer_env_value(value: str) -> str:
    # Apptainer sets these variables by evaluating them in a double-quoted shell context inside the
    # container, so "$(x)", "${HOME}" and backticks would run or expand there. Escaping \\, $ and ` makes
    # every value arrive exactly as given (measured with apptainer 1.4.5 on 24 awkward values).
    return value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")


@register
class Apptainer:
    """``apptainer exec --cleanenv --no-home --contain [--nv] [--pwd] [--bind]... IMAGE CMD...``, exec'd with
    ``APPTAINERENV_K=V`` in its environment for each variable.

    APPTAINERENV_K (which --cleanenv lets through) rather than ``--env K=V``: --env would show the value in the
    argv, and it parses its value as CSV, so values holding both ',' and '=' or '"' (Slurm node lists, JSON) are
    split or mangled; the APPTAINERENV_ route round-trips any value once escaped.
    """

    name: ClassVar[str] = "apptainer"
    env_prefix: ClassVar[str] = "APPTAINERENV_"
    selects_gpus: ClassVar[bool] = False

    def available(self) -> bool:
        return shutil.which(self.name) is not None

    def wrap(self, req: ContainerRequest) -> list[str]:
        # --cleanenv: only the env below gets in. --no-home: the user's ~/.local would shadow the image's
        # packages; everything a task needs is bound explicitly. --contain: without it apptainer also binds the
        # host's /tmp, /var/tmp and the directory the job started in (measured through Slurm: a file in the submit
        # directory was readable inside); with it /tmp and /var/tmp are private (in memory) and --nv still works.
        out = [self.name, "exec", "--cleanenv", "--no-home", "--contain"]
        if req.gpu_ids:
            out.append("--nv")  # exposes the driver; Slurm's cgroup and CUDA_VISIBLE_DEVICES pick the GPUs
        if req.workdir is not None:
            out += ["--pwd", str(req.workdir)]
        if req.user is not None:
            uid, gid = req.user.split(":")
            out += ["--security", f"uid:{uid},gid:{gid}"]  # only root may switch; a user runs as self
        for bind in req.binds:
            spec = bind.spec()
            if "," in spec:
                raise ContainerError(
                    f"bind {spec!r} contains ',' which {self.name} --bind reads as a list separator",
                    fix="bind a parent folder whose path has no ','",
                )
            out += ["--bind", spec]
        return [*out, req.image, *req.argv]

    def exec_env(self, req: ContainerRequest, host_env: Mapping[str, str]) -> dict[str, str]:
        # The host's own APPTAINERENV_/SINGULARITYENV_ variables (a user's shell exports them; sbatch passes the
        # submitter's environment on) would get into the container too: req.env is to be exactly what does.
        env = {k: v for k, v in host_env.items() if not k.startswith(_APPTAINER_ENV_PREFIXES)}
        env.update({f"{self.env_prefix}{name}": _apptainer_env_value(value) for name, value in req.env.items()})
        return env


# Both prefixes work with either binary (apptainer still reads SINGULARITYENV_).
_APPTAINER_ENV_PREFIXES = ("APPTAINERENV_", "SINGULARITYENV_")


@register
class Singularity(Apptainer):
    name: ClassVar[str] = "singularity"
    env_prefix: ClassVar[str] = "SINGULARITYENV_"


@register
class Docker:
    """``docker run ... -e NAME... IMAGE CMD...``, exec'd with each NAME=value in its environment: ``-e NAME``
    without a value takes the value from there (set but empty counts as set). Names the runtime reads for itself
    are the exception: see runtime_reads()."""

    name: ClassVar[str] = "docker"
    selects_gpus: ClassVar[bool] = True

    def available(self) -> bool:
        return shutil.which(self.name) is not None

    def user_args(self, req: ContainerRequest) -> list[str]:
        # A rootful daemon (the usual docker, even for members of the docker group) maps uids 1:1.
        return [] if req.user is None else ["--user", req.user]

    def gpu_args(self, gpu_ids: tuple[str, ...]) -> list[str]:
        # --gpus parses its value as CSV: the device list must be one quoted field, '"device=0,1"'.
        return ["--gpus", f'"device={",".join(gpu_ids)}"']

    def wrap(self, req: ContainerRequest) -> list[str]:
        # --init: python is not PID 1, so SIGTERM/SIGUSR2 from Slurm reach submitit's handlers.
        # --ipc host: vLLM and NCCL need more shared memory than the default 64 MB /dev/shm.
        # --pull never: compute nodes have no registry access; a missing image must fail, not hang.
        out = [self.name, "run", "--rm", "--init", "--pull", "never", "--network", "host", "--ipc", "host"]
        out += self.user_args(req)
        if req.gpu_ids:
            out += self.gpu_args(req.gpu_ids)
        for bind in req.binds:
            out += ["-v", bind.spec()]
        for name, value in sorted(req.env.items()):
            out += ["-e", f"{name}={value}" if runtime_reads(name) else name]
        if req.workdir is not None:
            out += ["--workdir", str(req.workdir)]
        return [*out, req.image, *req.argv]

    def exec_env(self, req: ContainerRequest, host_env: Mapping[str, str]) -> dict[str, str]:
        return {**host_env, **{k: v for k, v in req.env.items() if not runtime_reads(k)}}


# Variables docker and podman read for themselves: where the daemon, the image store and the config are (a
# rootless podman with another HOME or XDG_* looks in another store and finds no image), how Go and the dynamic
# loader behave, PATH (podman finds conmon and the OCI runtime there). A container.env value for one of these,
# put in the runtime's environment, would steer the runtime, not just the container: such a variable goes in the
# argv as ``-e NAME=value`` as before, and its name must not look like a credential (wrap() refuses it).
RUNTIME_READS_NAMES = frozenset({
    "PATH", "HOME", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "NOTIFY_SOCKET",
    "REGISTRY_AUTH_FILE", "STORAGE_DRIVER", "STORAGE_OPTS", "GODEBUG", "GOGC", "GOMAXPROCS", "GOMEMLIMIT",
    "GOTRACEBACK",
})  # fmt: skip
RUNTIME_READS_PREFIXES = ("DOCKER_", "CONTAINERS_", "CONTAINER_", "_CONTAINERS_", "PODMAN_", "BUILDAH_", "LD_")


def runtime_reads(name: str) -> bool:
    """True when docker/podman read ``name`` themselves, so its value cannot travel in their environment."""
    if name not in RUNTIME_READS_NAMES and not name.startswith(RUNTIME_READS_PREFIXES):
        return False
    if is_secret_name(name):
        raise ContainerError(
            f"container.env variable {name!r} looks like a credential, but docker/podman read {name} for "
            f"themselves, so its value would have to go in their argv, which every user on the node can read",
            fix=f"rename it (e.g. APP_{name}) and read that name inside the container, or use apptainer",
        )
    return True


@register
class Podman(Docker):
    name: ClassVar[str] = "podman"

    def user_args(self, req: ContainerRequest) -> list[str]:
        # Rootless podman: keep-id maps the caller's uid/gid to the same ids inside (measured: with --user alone a
        # non-root caller's task got EACCES on its own bound output folder).
        return [*(["--userns", "keep-id"] if req.rootless else []), *super().user_args(req)]

    def gpu_args(self, gpu_ids: tuple[str, ...]) -> list[str]:
        # CDI (nvidia-ctk cdi generate): one --device per GPU. SELinux labels would hide the device nodes.
        out: list[str] = []
        for gpu in gpu_ids:
            out += ["--device", f"nvidia.com/gpu={gpu}"]
        return [*out, "--security-opt", "label=disable"]


@register
class NoContainer:
    """Runs the command on the host as it is (the env is applied by container_exec)."""

    name: ClassVar[str] = "none"
    selects_gpus: ClassVar[bool] = False

    def available(self) -> bool:
        return True

    def wrap(self, req: ContainerRequest) -> list[str]:
        return list(req.argv)

    def exec_env(self, req: ContainerRequest, host_env: Mapping[str, str]) -> dict[str, str]:
        return {**host_env, **req.env}
