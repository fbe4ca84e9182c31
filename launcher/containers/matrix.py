"""containers/matrix.py: containers/matrix.toml -> the CUDA / torch / vLLM lines images are built from, and which
line a driver runs. build.sh and doctor read the same file."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the image and CI run 3.11+
    import tomli as tomllib


@dataclass(frozen=True)
class MatrixLine:
    name: str
    vllm: str
    torch: str
    cuda: str
    python: str
    base_image: str
    min_driver: str
    toolkit_driver: str


@dataclass(frozen=True)
class Matrix:
    lines: tuple[MatrixLine, ...]
    """Newest first."""
    default: str
    path: Path

    def line(self, name: str) -> MatrixLine:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(name)

    def best_for(self, driver_cuda: str, driver_version: str | None) -> MatrixLine | None:
        """The newest line this driver runs fully (line CUDA <= driver CUDA); failing that, the newest it runs
        through minor-version compatibility (same CUDA major, driver >= min_driver). build.sh `auto` agrees."""
        runs = [
            line
            for line in self.lines
            if vtuple(line.cuda)[:1] <= vtuple(driver_cuda)[:1]
            and (driver_version is None or vtuple(driver_version) >= vtuple(line.min_driver))
        ]
        full = [line for line in runs if vtuple(line.cuda) <= vtuple(driver_cuda)]
        return (full or runs)[0] if (full or runs) else None

    def matching(self, vllm: str, torch: str, cuda: str) -> MatrixLine | None:
        for line in self.lines:
            if (line.vllm, line.torch, line.cuda) == (vllm, torch, cuda):
                return line
        return None


def vtuple(text: str) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6); non-numeric parts end the version."""
    out = []
    for part in text.strip().split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def default_matrix_path() -> Path:
    env = os.environ.get("LAUNCHER_MATRIX")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "containers" / "matrix.toml"


def load_matrix(path: Path | None = None) -> Matrix:
    path = path or default_matrix_path()
    data = tomllib.loads(path.read_text())
    lines = tuple(MatrixLine(**{k: str(v) for k, v in line.items()}) for line in data["line"])
    return Matrix(lines=lines, default=str(data["default"]), path=path)
