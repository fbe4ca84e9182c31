"""Shared fixtures: a tiny real model (made once per session), small datasets, spec files, markers.

Nothing here is a mock: the model is a real (random) Llama with a tokenizer trained on the spot, the specs
go through the real loader, tasks run real engines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The plan-time estimates' history (plan/estimate.py): the suite's hundreds of tiny runs must not become the estimates
# a user of this machine sees in ~/.cache/launcher/history.json ("median of 221 earlier run(s)" for the demo).
os.environ.setdefault("LAUNCHER_HISTORY", str(Path(tempfile.mkdtemp(prefix="launcher-test-history-")) / "history.json"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    have_slurm = _slurm_up()
    for item in items:
        if "slurm" in item.keywords and not have_slurm:
            item.add_marker(pytest.mark.skip(reason="no live Slurm: `make slurm-up` (make test brings it up)"))


def _slurm_up() -> bool:
    if not shutil.which("sinfo") or not shutil.which("scontrol"):
        return False
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from launcher.demo_model import make_demo_model

    return make_demo_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def unicode_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with a byte-level BPE trained on CJK, emoji and accents: tokens end inside characters."""
    from tests.unicode_tokenizers import byte_level_model

    return byte_level_model(tmp_path_factory.mktemp("model") / "unicode")


USERS = [
    {
        "user_id": f"u{i:02d}",
        "profile": {"age": 20 + i, "likes": ["films", "music"][i % 2]},
        "history": [f"review {i}.{j}: fine" for j in range(1 + i % 3)],
        "context": f"Write about item {i}.",
    }
    for i in range(10)
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "data" / "users.jsonl", USERS)


def make_spec(tmp_path: Path, model_dir: Path, data_path: Path, name: str = "t", **sections: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "model": {"path": str(model_dir), "backend": "hf"},
        "data": {
            "datasets": [{"name": "users", "path": str(data_path)}],
            "ablation_configs": ["full"],
            "num_samples": 2,
        },
        "sampling": {"max_tokens": 8, "seed": 7},
        "output": {"dir": str(tmp_path / "out"), "chunk_records": 2},
        "executor": "local",
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def spec_file(tmp_path: Path, tiny_model: Path, users_file: Path) -> Path:
    return make_spec(tmp_path, tiny_model, users_file)


def launcher(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess (exit codes and stdout as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def read_samples(out_dir: Path) -> list[dict[str, Any]]:
    """samples.jsonl's rows, read as the launcher reads JSONL (split on b"\\n" only: store/jsonl.py)."""
    from launcher.store import read_jsonl

    return list(read_jsonl(out_dir / "samples.jsonl"))
