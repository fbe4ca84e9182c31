"""What README and the spec's own help say about defaults is what the code does (issue 29: the README and the spec
said the compile cache defaults to <output.dir>/cache/compile; the code uses ~/.cache/launcher/compile)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from launcher.spec import json_schema

ROOT = Path(__file__).resolve().parents[1]


def _default_root() -> Path | None:
    # The compile cache is engine knowledge; issue 29 moves engines into plug-in folders: find it where it lives.
    for name in ("launcher.engines.compile_cache", "launcher.engines.vllm.compile_cache"):
        try:
            return importlib.import_module(name).default_root()
        except ModuleNotFoundError:
            continue
    raise AssertionError("no compile_cache module with default_root()")


def test_readme_states_the_compile_cache_default_the_code_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAUNCHER_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"compiled graphs are shared in `([^`]+)`", readme)
    assert stated, "README no longer says where the compile cache is"
    assert Path(stated.group(1).replace("~", str(tmp_path), 1)) == _default_root()
    monkeypatch.setenv("LAUNCHER_COMPILE_CACHE", "off")  # README: `off` turns it off
    assert "`off` turns it off" in readme and _default_root() is None


def test_no_doc_says_the_compile_cache_is_under_the_output_folder() -> None:
    scratch = json_schema()["$defs"]["OutputSpec"]["properties"]["scratch_dir"]["description"]
    assert "~/.cache/launcher/compile" in scratch and "<dir>/cache" not in scratch
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = doc.read_text()
        assert not re.search(r"output\.dir>?/cache|<dir>/cache", text), f"{doc.name} places a cache under output.dir"
