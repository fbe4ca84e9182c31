"""One error root: every error a user can meet is a LauncherError, exits with the code README's table gives it, and is
printed one way by the CLI's one handler (launcher/terminal.py: report)."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest

import launcher.containers.shim  # noqa: F401  (ExecError: a subclass defined outside errors.py)
from launcher import errors
from launcher.plan.persist import load_plan
from launcher.terminal import report

ROOT = Path(__file__).resolve().parents[1]


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _documented_codes() -> dict[str, int]:
    """README's exit-code table: error class name -> code."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    codes: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|.*\|(.*)\|\s*$", line)
        if m:
            for name in re.findall(r"`(\w+)`", m.group(2)):
                codes[name] = int(m.group(1))
    return codes


SUBCLASSES = _all_subclasses(errors.LauncherError)


def _documented_ancestor(cls: type) -> str:
    codes = _documented_codes()
    return next(c.__name__ for c in cls.__mro__ if c.__name__ in codes)


def test_readme_documents_every_error_class_of_errors_py() -> None:
    codes = _documented_codes()
    defined = {c.__name__ for c in SUBCLASSES if c.__module__ == "launcher.errors"}
    assert defined == set(codes), "README's exit-code table and launcher/errors.py disagree"
    assert {c for c, code in codes.items() if code == 2} >= {"SpecError", "NoRun", "UntrustedFile"}


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_each_error_exits_with_its_documented_code_and_prints_one_way(
    cls: type[errors.LauncherError], capsys: pytest.CaptureFixture[str]
) -> None:
    problem = errors.Problem("spec.yaml:3", "sampling.top_p", "must be in (0, 1]", "(0, 1]", "set 0.9", "1.5")
    exc = cls.__new__(cls)
    errors.LauncherError.__init__(exc, [problem])
    code = report(exc)
    assert code == _documented_codes()[_documented_ancestor(cls)] == cls.exit_code
    printed = capsys.readouterr()
    assert printed.out == ""  # errors go to stderr, never mixed into what a command prints
    assert printed.err == (
        f"{cls.headline}:\n"
        "spec.yaml:3: sampling.top_p: must be in (0, 1]\n  got:     1.5\n  allowed: (0, 1]\n  fix:     set 0.9\n"
    )
    # Raised in a job (a gather job, a shim) it crosses submitit's pickle: the class and the words survive.
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and str(back) == str(exc) and back.problems == exc.problems


def test_gather_error_keeps_its_message_and_exits_1() -> None:
    exc = errors.GatherError("users/full: 2 unit(s) missing: users.full.0001\n  fix: launcher submit SPEC")
    assert str(exc) == "users/full: 2 unit(s) missing: users.full.0001\n  fix: launcher submit SPEC"
    assert exc.exit_code == 1 and isinstance(exc, errors.LauncherError)
    from launcher.gather import GatherError

    assert GatherError is errors.GatherError  # one class, whichever module a caller imports it from


def test_no_module_raises_the_root_itself_or_defines_an_unused_error() -> None:
    """A user's error is a named subtype (its exit code and headline say what happened); a class no one raises goes."""
    sources = {p: p.read_text() for p in (ROOT / "launcher").rglob("*.py")}
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = ast.unparse(target)
                assert name not in ("LauncherError", "LauncherError.one"), f"{path}: raises the root LauncherError"
    every = "\n".join(sources.values())
    for cls in SUBCLASSES:
        if cls.__module__ != "launcher.errors":
            continue
        raised = re.search(
            rf"raise {cls.__name__}\b|\b{cls.__name__}(\.one)?\(", every.replace("class " + cls.__name__, "")
        )
        assert raised, f"{cls.__name__} is never raised: a dead class"


def test_load_plan_of_a_folder_without_a_spec_is_no_run(tmp_path: Path) -> None:
    """`gather DIR` of a folder holding plan.json alone: NoRun (exit 2), not a traceback."""
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(errors.NoRun, match="not a run directory") as caught:
        load_plan(tmp_path)
    assert caught.value.exit_code == 2 and isinstance(caught.value, FileNotFoundError)
