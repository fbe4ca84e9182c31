"""The front door (submit/front_door.py): every command turns a spec into a plan through `prepare`, with its checks in
one order: Slurm reachable before any input is read, then the inputs, the run, the units."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from launcher.errors import NoSlurm, SpecError
from launcher.submit.front_door import prepare
from tests.conftest import make_spec

PACKAGE = Path(__file__).resolve().parents[1] / "launcher"


@pytest.fixture
def no_slurm_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.mark.parametrize("purpose", ["submit", "batch", "reproduce"])
def test_slurm_is_checked_before_any_input_is_read(
    tmp_path: Path, tiny_model: Path, no_slurm_on_path: None, purpose: str
) -> None:
    """The data file is missing: were the inputs read first, that would be the error. NoSlurm comes first, naming
    what the user typed (the flag, else the spec's executor line)."""
    spec = make_spec(tmp_path, tiny_model, tmp_path / "missing.jsonl", executor="slurm")
    with pytest.raises(NoSlurm) as flag:
        prepare(spec, purpose=purpose, executor="slurm")  # type: ignore[arg-type]
    assert flag.value.first.where == "--executor slurm" and flag.value.exit_code == 2
    with pytest.raises(NoSlurm) as line:
        prepare(spec, purpose=purpose)  # type: ignore[arg-type]
    assert line.value.first.where.startswith(f"{spec}:")
    with pytest.raises(SpecError, match=r"missing\.jsonl"):  # run and plan read the inputs: no Slurm check stops them
        prepare(spec, purpose="run")
    assert not (tmp_path / "out").exists()  # nothing written by any of them


def test_plan_reports_what_a_submit_would_refuse_and_goes_on(
    tmp_path: Path, tiny_model: Path, users_file: Path, no_slurm_on_path: None
) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file, executor="slurm")
    prepared = prepare(spec, purpose="plan")
    assert prepared.executor == "slurm" and prepared.slurm_missing == ("sbatch", "srun")
    assert prepared.plan.units and prepared.spec.executor == "slurm"
    local = prepare(spec, purpose="plan", executor="local")  # `--executor local`: nothing about Slurm
    assert local.slurm_missing == () and local.fit_refusal is None


def test_the_purpose_decides_what_a_refusal_offers(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file)
    submit = prepare(spec, purpose="submit", command="launcher submit s.yaml")
    assert submit.resolved.new_run == "launcher submit s.yaml --new-run"
    reproduce = prepare(spec, purpose="reproduce", command="launcher reproduce RUN")
    assert reproduce.resolved.new_run is None  # a reproduction of other inputs is not one
    assert reproduce.plan.run.root == submit.plan.run.root == prepare(spec, purpose="run").plan.run.root


def test_no_command_chains_the_stages_by_hand() -> None:
    """check_inputs -> resolve_run -> expand are called in plan/ (where they live) and the front door, nowhere else."""
    stages = {"check_inputs", "resolve_run", "expand"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("plan/") or rel == "submit/front_door.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in stages:
                    found.append(f"{rel}:{node.lineno}: {name}")
    assert not found, "enter through submit/front_door.py: prepare(...)\n" + "\n".join(found)
