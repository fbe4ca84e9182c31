"""doctor.py: the checks, on recorded GPU-node answers (no GPU here) and on this machine's real runtimes.

``fake_*`` objects stand in for a GPU node: they replay what nvidia-smi and a runtime print there. The
decisions (which line fits, what to build, what to report) are doctor.py's own code, not replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.containers.doctor import (
    Check,
    CommandResult,
    Host,
    diagnose,
    main,
    read_driver,
    real_host,
    render,
)
from launcher.containers.matrix import load_matrix

MATRIX = load_matrix(Path(__file__).resolve().parents[1] / "containers" / "matrix.toml")
STATE = Path(os.environ.get("LAUNCHER_CONTAINERS_STATE", "/var/tmp/launcher-containers"))

# Recorded shape of `nvidia-smi` on an H100 node with a CUDA 13 driver (header lines only matter).
FAKE_NVIDIA_SMI_580 = """\
Tue Nov 24 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      CUDA Version: 13.0     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:18:00.0 Off |                    0 |
|   1  NVIDIA H100 80GB HBM3          On  |   00000000:2A:00.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+
"""
FAKE_NVIDIA_SMI_550 = FAKE_NVIDIA_SMI_580.replace("580.65.06", "550.54.15").replace("13.0", "12.4")
FAKE_NVIDIA_SMI_L = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0a1b2c3d-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-0a1b2c3d-0000-0000-0000-000000000001)
"""


def labels_of(line_name: str) -> dict[str, str]:
    line = MATRIX.line(line_name)
    return {"launcher.vllm.version": line.vllm, "launcher.torch.version": line.torch,
            "launcher.cuda.version": line.cuda, "launcher.python.version": line.python}  # fmt: skip


def fake_gpu_node(
    nvidia_smi: str | None = FAKE_NVIDIA_SMI_580,
    binaries: tuple[str, ...] = ("docker", "podman", "apptainer", "nvidia-smi"),
    images: dict[str, dict[str, str]] | None = None,
    gpus_inside: int = 2,
    probe: dict[str, str] | None = None,
) -> tuple[Host, list[list[str]]]:
    """A Host that answers like a GPU node would; also returns the commands it was asked to run."""
    images = images or {}
    asked: list[list[str]] = []

    def run(argv: list[str]) -> CommandResult:
        asked.append(argv)
        if argv == ["nvidia-smi"]:
            return CommandResult(0, nvidia_smi or "") if nvidia_smi else CommandResult(127, "", "not found")
        if argv == ["nvidia-smi", "-L"]:
            return CommandResult(0, FAKE_NVIDIA_SMI_L)
        if argv[:2] == ["docker", "version"]:
            return CommandResult(0, "20.10.24\n")
        if argv[1:3] == ["image", "inspect"]:
            image = argv[-1]
            if image not in images:
                return CommandResult(1, "", f"Error: No such image: {image}")
            return CommandResult(0, json.dumps(images[image]) + "\n")
        if argv[1:2] == ["inspect"]:  # apptainer inspect --labels --json
            return CommandResult(0, json.dumps({"data": {"attributes": {"labels": images[argv[-1]]}}}))
        if argv[-2:] == ["nvidia-smi", "-L"]:  # inside the container
            return CommandResult(0, "".join(FAKE_NVIDIA_SMI_L.splitlines(keepends=True)[:gpus_inside]))
        if "python3" in argv and probe is not None:
            return CommandResult(0, json.dumps(probe) + "\n")
        return CommandResult(1, "", f"fake GPU node: no answer recorded for {argv}")

    host = Host(
        run=run,
        which=lambda name: f"/usr/bin/{name}" if name in binaries else None,
        path_exists=lambda path: path in images,
        libcuda_version=lambda: None,
    )
    return host, asked


def levels(report_checks: list[Check]) -> dict[str, str]:
    return {c.name: c.level for c in report_checks}


def test_match_all_ok() -> None:
    host, asked = fake_gpu_node(images={"img:cu130": labels_of("vllm0.26-cu130")})
    report = diagnose("docker", "img:cu130", host=host, matrix=MATRIX)
    assert levels(report.checks) == {"runtime": "ok", "driver": "ok", "gpus": "ok", "image": "ok",
                                     "versions": "ok", "compat": "ok", "gpus-inside": "ok"}  # fmt: skip
    assert report.ok
    assert "matrix line vllm0.26-cu130" in render(report)
    inside = next(a for a in asked if a[-2:] == ["nvidia-smi", "-L"] and a[0] == "docker")
    assert inside[inside.index("--gpus") + 1] == '"device=0,1"'


def test_driver_too_old_names_the_line_to_build() -> None:
    host, _ = fake_gpu_node(nvidia_smi=FAKE_NVIDIA_SMI_550, images={"img:cu130": labels_of("vllm0.26-cu130")})
    report = diagnose("podman", "img:cu130", host=host, matrix=MATRIX)
    compat = next(c for c in report.checks if c.name == "compat")
    assert compat.level == "fail"
    assert "runs CUDA <= 12.4; the image needs CUDA 13.0" in compat.message
    assert compat.fix == "build the line for this driver: make container RUNTIME=podman CUDA=vllm0.19-cu128"
    assert not report.ok


def test_minor_version_compatibility_is_a_warning() -> None:
    host, _ = fake_gpu_node(nvidia_smi=FAKE_NVIDIA_SMI_550, images={"img:cu128": labels_of("vllm0.19-cu128")})
    report = diagnose("docker", "img:cu128", host=host, matrix=MATRIX)
    assert levels(report.checks)["compat"] == "warn"
    assert report.ok


def test_no_gpu_skips_gpu_checks_with_a_clear_message() -> None:
    host, _ = fake_gpu_node(nvidia_smi=None, binaries=("docker",), images={"i": labels_of("vllm0.26-cu130")})
    report = diagnose("docker", "i", host=host, matrix=MATRIX)
    got = levels(report.checks)
    assert (got["driver"], got["gpus"], got["compat"], got["gpus-inside"]) == ("warn", "skip", "skip", "skip")
    assert "srun --gpus=1 launcher doctor" in render(report)
    assert report.ok


def test_libcuda_stands_in_for_missing_nvidia_smi() -> None:
    host, _ = fake_gpu_node(nvidia_smi=None, binaries=())
    host = Host(run=host.run, which=host.which, path_exists=host.path_exists, libcuda_version=lambda: 12040)
    driver = read_driver(host)
    assert driver is not None and driver.cuda == "12.4"


def test_image_missing_names_the_build_command() -> None:
    host, _ = fake_gpu_node(images={})
    report = diagnose("docker", "localhost/launcher:nope", host=host, matrix=MATRIX)
    image = next(c for c in report.checks if c.name == "image")
    assert image.level == "fail" and "No such image" in image.message
    assert image.fix == "build it: make container RUNTIME=docker CUDA=vllm0.33-cu130"
    assert levels(report.checks)["gpus-inside"] == "skip"


def test_runtime_missing_fails_with_the_setup_script() -> None:
    host, _ = fake_gpu_node(binaries=("nvidia-smi",))
    report = diagnose("apptainer", "/x.sif", host=host, matrix=MATRIX)
    runtime = report.checks[0]
    assert (runtime.name, runtime.level) == ("runtime", "fail")
    assert "apptainer-setup.sh" in runtime.fix and "module load apptainer" in runtime.fix
    assert levels(report.checks)["image"] == "skip"


def test_apptainer_labels_and_gpus_inside_counted() -> None:
    host, _ = fake_gpu_node(images={"/img/l.sif": labels_of("vllm0.33-cu130")}, gpus_inside=1)
    report = diagnose("apptainer", "/img/l.sif", host=host, matrix=MATRIX)
    got = levels(report.checks)
    assert got["versions"] == "ok" and got["compat"] == "ok"
    assert got["gpus-inside"] == "fail"  # 1 of 2 visible
    assert "nvliblist.conf" in next(c for c in report.checks if c.name == "gpus-inside").fix


def test_unlabelled_image_is_asked_through_python() -> None:
    host, asked = fake_gpu_node(images={"plain": {}}, probe={"torch": "2.11.0", "cuda": "13.0", "vllm": "0.26.0"})
    report = diagnose("docker", "plain", host=host, matrix=MATRIX)
    versions = next(c for c in report.checks if c.name == "versions")
    assert versions.level == "ok" and "python inside the image" in versions.message
    assert any("python3" in a for a in asked)


def test_off_matrix_image_warns() -> None:
    host, _ = fake_gpu_node(images={"odd": {"launcher.vllm.version": "0.30.0", "launcher.torch.version": "2.12.0",
                                            "launcher.cuda.version": "13.0"}})  # fmt: skip
    report = diagnose("docker", "odd", host=host, matrix=MATRIX)
    assert levels(report.checks)["versions"] == "warn"


# ---- this machine, for real --------------------------------------------------------------------------------
def real_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = STATE / "env.sh"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                name, value = line[len("export ") :].split("=", 1)
                if name not in os.environ:
                    monkeypatch.setenv(name, value.strip("'\""))


def test_unknown_or_absent_runtime_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    if real_host().which("singularity"):
        pytest.skip("singularity is installed here")
    assert main(["--runtime", "singularity", "--image", "/nope.sif"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  runtime" in out and "result: PROBLEMS" in out


@pytest.mark.containers
@pytest.mark.parametrize("runtime", ["docker", "podman", "apptainer"])
def test_real_runtime_with_the_test_image(runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real_env(monkeypatch)
    host = real_host()
    if not host.which(runtime):
        pytest.skip(f"{runtime} not installed: see containers/runtimes/")
    if runtime == "apptainer":
        image = os.environ.get("LAUNCHER_TEST_SIF", str(STATE / "test-image/launcher-test.sif"))
    else:
        image = os.environ.get("LAUNCHER_TEST_IMAGE", "localhost/launcher-test:cpu")
    report = diagnose(runtime, image, matrix=MATRIX)
    got = levels(report.checks)
    if got["runtime"] != "ok":
        check = report.checks[0]
        pytest.skip(f"{runtime} not usable here: {check.message}; fix: {check.fix}")
    if got["image"] != "ok":
        pytest.skip(f"test image missing: run containers/test-image/build.sh {runtime}")
    assert got["versions"] == "ok" and got["compat"] == "ok", render(report)
    if read_driver(host) is None:
        assert got["gpus-inside"] == "skip"

    missing = diagnose(runtime, image + ".missing", matrix=MATRIX)
    assert levels(missing.checks)["image"] == "fail"
    assert "make container RUNTIME=" in render(missing)


def test_render_and_json_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--runtime", "none", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runtime"] == "none" and {c["name"] for c in data["checks"]} >= {"runtime", "driver", "image"}
