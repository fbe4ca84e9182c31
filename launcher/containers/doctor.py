"""containers/doctor.py: (runtime, image) + this machine -> DoctorReport: can this image run its GPUs here, and if not,
why; it exists so that a broken image is found in seconds on a login node, not after an hour in the queue.

Checks, in order: the runtime binary; the NVIDIA driver and the highest CUDA it runs; the GPUs; the image
and the vLLM/torch/CUDA it carries (from its labels, else by asking python inside); whether that CUDA fits
the driver per containers/matrix.toml (if not: the `make container ...` line to build instead); GPUs inside.

Everything the checks learn from the machine goes through a ``Host`` (run a command, find a binary, ask
libcuda), so tests hand in recorded nvidia-smi output where no GPU exists; the logic is the same code.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from launcher.containers.matrix import Matrix, MatrixLine, default_matrix_path, load_matrix, tomllib, vtuple
from launcher.containers.runtimes import RUNTIMES, ContainerRequest, get_runtime

Level = Literal["ok", "warn", "fail", "skip"]
LABEL_PREFIX = "launcher."
# Asked inside the image when it carries no launcher.* labels; prints one JSON line.
_PROBE = (
    "import json, importlib\n"
    "out = {}\n"
    "for name in ('torch', 'vllm'):\n"
    "    try:\n"
    "        mod = importlib.import_module(name)\n"
    "        out[name] = mod.__version__.split('+')[0]\n"
    "        if name == 'torch': out['cuda'] = mod.version.cuda or 'none'\n"
    "    except Exception:\n"
    "        out[name] = 'none'\n"
    "print(json.dumps(out))\n"
)


# ---- what the machine says ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str = ""


@dataclass(frozen=True)
class Host:
    """The machine, as the checks see it. ``real_host()`` asks this one; tests pass recorded answers."""

    run: Callable[[list[str]], CommandResult]
    which: Callable[[str], str | None]
    path_exists: Callable[[str], bool]
    libcuda_version: Callable[[], int | None]
    """cuDriverGetVersion(), e.g. 13000 for CUDA 13.0; None without a driver."""


def _run(argv: list[str], timeout_s: float = 120) -> CommandResult:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError as err:
        return CommandResult(127, "", str(err))
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"timed out after {timeout_s:.0f} s")
    return CommandResult(done.returncode, done.stdout, done.stderr)


def _libcuda_version() -> int | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def real_host() -> Host:
    return Host(run=_run, which=shutil.which, path_exists=os.path.exists, libcuda_version=_libcuda_version)


# ---- the report -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    message: str
    fix: str = ""


@dataclass
class DoctorReport:
    runtime: str
    image: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.level == "fail" for c in self.checks)

    def add(self, name: str, level: Level, message: str, fix: str = "") -> None:
        self.checks.append(Check(name, level, message, fix))


@dataclass(frozen=True)
class DriverInfo:
    version: str | None
    cuda: str | None
    gpus: tuple[str, ...]
    """Lines of `nvidia-smi -L`: 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)'."""


def read_driver(host: Host) -> DriverInfo | None:
    """The driver's version, the highest CUDA it runs, and the GPUs; None when there is no driver."""
    if host.which("nvidia-smi"):
        smi = host.run(["nvidia-smi"])
        if smi.returncode == 0:
            version = re.search(r"Driver Version:\s*([\d.]+)", smi.stdout)
            cuda = re.search(r"CUDA Version:\s*([\d.]+)", smi.stdout)
            listing = host.run(["nvidia-smi", "-L"])
            gpus = tuple(ln.strip() for ln in listing.stdout.splitlines() if ln.startswith("GPU "))
            return DriverInfo(version and version.group(1), cuda and cuda.group(1), gpus)
    code = host.libcuda_version()
    if code:
        return DriverInfo(None, f"{code // 1000}.{code % 1000 // 10}", ())
    return None


def _image_labels(runtime: str, image: str, host: Host) -> tuple[dict[str, str] | None, str]:
    """(labels, why-not). labels is None when the image is not there."""
    if runtime in ("docker", "podman"):
        res = host.run([runtime, "image", "inspect", "--format", "{{json .Config.Labels}}", image])
        if res.returncode != 0:
            return None, (res.stderr or res.stdout).strip()[-300:]
        return dict(json.loads(res.stdout.strip() or "null") or {}), ""
    if runtime in ("apptainer", "singularity"):
        if "://" not in image and not host.path_exists(image):
            return None, f"no file or folder {image}"
        res = host.run([runtime, "inspect", "--labels", "--json", image])
        if res.returncode != 0:
            return {}, res.stderr.strip()[-200:]
        data: dict[str, Any] = json.loads(res.stdout)
        return dict(data.get("data", {}).get("attributes", {}).get("labels") or {}), ""
    return {}, ""


def _probe_image(runtime: str, image: str, host: Host) -> dict[str, str] | None:
    argv = get_runtime(runtime).wrap(ContainerRequest(image=image, argv=["python3", "-c", _PROBE]))
    res = host.run(argv)
    if res.returncode != 0 or not res.stdout.strip():
        return None
    parsed: dict[str, str] = json.loads(res.stdout.strip().splitlines()[-1])
    return parsed


def _build_fix(runtime: str, line: MatrixLine | None) -> str:
    rt = runtime if runtime in ("apptainer", "docker", "podman") else "apptainer"
    return f"make container RUNTIME={rt} CUDA={line.name if line else 'auto'}"


def diagnose(
    runtime: str, image: str | None, *, host: Host | None = None, matrix: Matrix | None = None
) -> DoctorReport:
    """Run every check for ``runtime`` and ``image`` on ``host`` (this machine by default)."""
    host = host or real_host()
    report = DoctorReport(runtime, image)
    if matrix is None:
        try:
            matrix = load_matrix()
        except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
            fix = "set LAUNCHER_MATRIX=/path/to/containers/matrix.toml"
            report.add("matrix", "warn", f"cannot read {default_matrix_path()}: {err}", fix)
    runtime_ok = _check_runtime(report, runtime, host)
    driver = _check_driver(report, runtime, host)
    best = matrix.best_for(driver.cuda, driver.version) if (matrix and driver and driver.cuda) else None
    carried: dict[str, str] | None = None
    image_ok = False
    if runtime == "none":
        report.add("image", "skip", "no container, so no image to check")
    elif image is None:
        report.add("image", "skip", "no image given", "pass --image (a SIF path or a docker/podman tag)")
    elif not runtime_ok:
        report.add("image", "skip", f"cannot look for the image without a working {runtime}")
    else:
        image_ok, carried = _check_image(report, runtime, image, host, matrix, best)
    _check_compat(report, runtime, carried, driver, matrix, best)
    _check_gpus_inside(report, runtime, image, image_ok, driver, host)
    return report


_INSTALL_FIX = {
    "apptainer": "on a cluster: `module load apptainer`; on a test machine: containers/runtimes/apptainer-setup.sh",
    "docker": "start a daemon: containers/runtimes/docker-up.sh (then source /var/tmp/launcher-containers/env.sh)",
    "podman": "containers/runtimes/podman-setup.sh",
}
_GPU_ACCESS_FIX = {
    "docker": "install nvidia-container-toolkit, `nvidia-ctk runtime configure --runtime=docker`, restart dockerd",
    "podman": "install nvidia-container-toolkit, then `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`",
}


def _on_gpu_node(runtime: str) -> str:
    return f"srun --gpus=1 launcher doctor --runtime {runtime} --image IMAGE"


def _check_runtime(report: DoctorReport, runtime: str, host: Host) -> bool:
    if runtime not in RUNTIMES:
        report.add("runtime", "fail", f"unknown runtime {runtime!r}", f"use one of: {', '.join(sorted(RUNTIMES))}")
        return False
    if runtime == "none":
        report.add("runtime", "ok", "no container: commands run on the host")
        return True
    path = host.which(runtime)
    if not path:
        report.add("runtime", "fail", f"{runtime} is not on PATH here", _INSTALL_FIX.get(runtime, f"install {runtime}"))
        return False
    if runtime == "docker" and host.run(["docker", "version", "--format", "{{.Server.Version}}"]).returncode != 0:
        report.add("runtime", "fail", "docker is installed but its daemon does not answer", _INSTALL_FIX["docker"])
        return False
    report.add("runtime", "ok", f"{runtime} at {path}")
    return True


def _check_driver(report: DoctorReport, runtime: str, host: Host) -> DriverInfo | None:
    driver = read_driver(host)
    if driver is None:
        report.add(
            "driver",
            "warn",
            "no NVIDIA driver here (no nvidia-smi, no libcuda): a login or CPU node?",
            f"run the GPU checks on a compute node: {_on_gpu_node(runtime)}",
        )
        report.add("gpus", "skip", "no driver, so no GPU to count")
        return None
    report.add("driver", "ok", f"driver {driver.version or '?'} runs CUDA <= {driver.cuda or '?'}")
    if driver.gpus:
        report.add("gpus", "ok", f"{len(driver.gpus)} GPU(s): " + "; ".join(driver.gpus))
    else:
        report.add("gpus", "warn", "a driver but no GPU listed by `nvidia-smi -L`", "check `nvidia-smi -L`")
    return driver


def _check_image(
    report: DoctorReport, runtime: str, image: str, host: Host, matrix: Matrix | None, best: MatrixLine | None
) -> tuple[bool, dict[str, str] | None]:
    labels, why = _image_labels(runtime, image, host)
    if labels is None:
        report.add("image", "fail", f"image {image} not found: {why}", f"build it: {_build_fix(runtime, best)}")
        return False, None
    report.add("image", "ok", f"{image} is there")
    carried: dict[str, str] | None = {
        key[len(LABEL_PREFIX) :].removesuffix(".version"): value
        for key, value in labels.items()
        if key.startswith(LABEL_PREFIX) and key.endswith(".version")
    }
    source = "labels"
    if carried is None or not {"cuda", "torch", "vllm"} <= carried.keys():
        carried, source = _probe_image(runtime, image, host), "python inside the image"
    if carried is None:
        fix = "rebuild it with containers/build.sh, which labels every version"
        report.add("versions", "warn", "no launcher.* labels on the image, and python inside did not answer", fix)
        return True, None
    msg = f"vLLM {carried.get('vllm')}, torch {carried.get('torch')}, CUDA {carried.get('cuda')} (from {source})"
    line = (
        matrix.matching(carried.get("vllm", ""), carried.get("torch", ""), carried.get("cuda", "")) if matrix else None
    )
    if line:
        report.add("versions", "ok", f"{msg}: matrix line {line.name}")
    elif carried.get("cuda") == "none":
        report.add("versions", "ok", f"{msg}: a CPU image")
    else:
        report.add("versions", "warn", f"{msg}: not a matrix line", f"build a tested one: {_build_fix(runtime, best)}")
    return True, carried


def _check_gpus_inside(
    report: DoctorReport, runtime: str, image: str | None, image_ok: bool, driver: DriverInfo | None, host: Host
) -> None:
    if driver is None or not driver.gpus:
        report.add(
            "gpus-inside",
            "skip",
            "no GPU on this machine, so GPU access inside the container is not checked",
            f"on a GPU node: {_on_gpu_node(runtime)}",
        )
        return
    if runtime != "none" and not image_ok:
        report.add("gpus-inside", "skip", "no usable image to start")
        return
    ids = tuple(str(i) for i in range(len(driver.gpus)))
    request = ContainerRequest(image=image or "none", argv=["nvidia-smi", "-L"], gpu_ids=ids)
    res = host.run(get_runtime(runtime).wrap(request))
    seen = [ln for ln in res.stdout.splitlines() if ln.startswith("GPU ")]
    if res.returncode == 0 and len(seen) == len(ids):
        report.add("gpus-inside", "ok", f"{len(seen)} GPU(s) visible inside the container")
        return
    report.add(
        "gpus-inside",
        "fail",
        f"{len(seen)} of {len(ids)} GPU(s) visible inside: {(res.stderr or res.stdout).strip()[-300:]}",
        _GPU_ACCESS_FIX.get(runtime, "apptainer --nv needs the driver libraries listed in its nvliblist.conf"),
    )


def _check_compat(
    report: DoctorReport,
    runtime: str,
    carried: Mapping[str, str] | None,
    driver: DriverInfo | None,
    matrix: Matrix | None,
    best: MatrixLine | None,
) -> None:
    if carried is None or not carried.get("cuda"):
        report.add("compat", "skip", "the image's CUDA is unknown")
        return
    image_cuda = carried["cuda"]
    if image_cuda == "none":
        report.add("compat", "ok", "CPU image: needs no CUDA driver")
        return
    if driver is None or not driver.cuda:
        report.add("compat", "skip", f"image needs CUDA {image_cuda}; no driver here to compare with")
        return
    line = matrix.matching(carried.get("vllm", ""), carried.get("torch", ""), image_cuda) if matrix else None
    rebuild = (
        f"build the line for this driver: {_build_fix(runtime, best)}"
        if best
        else "upgrade the NVIDIA driver: no matrix line runs on this one"
    )
    have, need = vtuple(driver.cuda), vtuple(image_cuda)
    if have[:1] < need[:1]:
        report.add(
            "compat",
            "fail",
            f"driver {driver.version or '?'} runs CUDA <= {driver.cuda}; the image needs CUDA {image_cuda}",
            rebuild,
        )
    elif line and driver.version and vtuple(driver.version) < vtuple(line.min_driver):
        report.add(
            "compat",
            "fail",
            f"driver {driver.version} is older than {line.min_driver}, the minimum for CUDA {image_cuda}",
            rebuild,
        )
    elif have < need or (line and driver.version and vtuple(driver.version) < vtuple(line.toolkit_driver)):
        report.add(
            "compat",
            "warn",
            f"driver {driver.version or '?'} (CUDA {driver.cuda}) runs the image's CUDA "
            f"{image_cuda} only through minor-version compatibility: no PTX JIT",
            rebuild if best and best.cuda != image_cuda else "upgrade the driver for full support",
        )
    else:
        report.add("compat", "ok", f"driver CUDA {driver.cuda} >= image CUDA {image_cuda}")


_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render(report: DoctorReport) -> str:
    out = [f"launcher doctor: runtime={report.runtime} image={report.image or '-'}"]
    width = max((len(c.name) for c in report.checks), default=0)
    for check in report.checks:
        out.append(f"  {_MARK[check.level]}  {check.name:<{width}}  {check.message}")
        if check.fix and check.level != "ok":
            out.append(f"        {'':<{width}}  fix: {check.fix}")
    fails = sum(c.level == "fail" for c in report.checks)
    warns = sum(c.level == "warn" for c in report.checks)
    out.append(f"result: {'OK' if not fails else 'PROBLEMS'} ({fails} failed, {warns} warnings)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launcher doctor", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--runtime", default="apptainer", choices=sorted(RUNTIMES))
    parser.add_argument("--image", default=None, help="SIF path, sandbox folder, or docker/podman tag")
    parser.add_argument("--matrix", type=Path, default=None, help="containers/matrix.toml (default: the repo's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    matrix = load_matrix(args.matrix) if args.matrix else None
    report = diagnose(args.runtime, args.image, matrix=matrix)
    print(json.dumps(asdict(report), indent=2) if args.json else render(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
