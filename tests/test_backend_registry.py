"""engines/registry.py: a backend defined here, in the test, is found, checked and run like a built-in one, and no code
outside engines/<name>/ tests a backend's name.

EchoTestEngine is a fake (its name says so): it runs no model, it answers each request with its prompt's length and
seed. It stands for a new backend (SGLang, say) that registers itself and nothing else.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.cli import main
from launcher.engines import registry
from launcher.engines.base import Completion, Engine, EngineReport, GenerationRequest, Sample, Workload
from launcher.errors import SpecError
from launcher.plan.layout import ParallelLayout
from launcher.spec import ModelSpec, SamplingSpec, load_spec

from .conftest import make_spec, read_samples

NAME = "echo_test_backend"
ROOT = Path(__file__).resolve().parents[1]


class EchoTestEngine(Engine):
    """A fake backend for this test: no model, each sample says which prompt and seed it answers."""

    name = NAME

    def load(self, workload: Workload, tokenizer: Any, layout: ParallelLayout) -> EngineReport:
        return EngineReport(NAME, "echo 0", "cpu", settings={"prompts": workload.prompts})

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[Completion]:
        for req in requests:
            n = req.n or self.n
            text = f"echo of {len(req.prompt_token_ids)} tokens, seed {req.seed}"
            samples = tuple(Sample(f"{text}, sample {j}", 1, "length") for j in range(n))
            yield Completion(req.key, len(req.prompt_token_ids), samples)


def echo_checks(spec: Any) -> None:
    """The echo backend cannot sample: it refuses any temperature but 0, naming the field."""
    from launcher.spec.common import _FieldError

    if spec.sampling.temperature != 0:
        raise _FieldError(
            ("sampling", "temperature"),
            f"temperature {spec.sampling.temperature} with backend {NAME}: it echoes, it does not sample",
            "0",
            "set sampling.temperature: 0",
        )


@pytest.fixture
def echo_backend() -> Iterator[registry.Backend]:
    backend = registry.register(
        registry.Backend(
            name=NAME,
            title="echo (a fake backend of the test)",
            engine=f"{__name__}:EchoTestEngine",
            capabilities=registry.Capabilities(),  # no TP, no nodes, no adapters, no structured output
            auto=False,  # `backend: auto` never picks a fake
            check_spec=echo_checks,
        )
    )
    yield backend
    registry.unregister(NAME)


def echo_spec(tmp_path: Path, tiny_model: Path, users_file: Path, **sampling: Any) -> Path:
    return make_spec(
        tmp_path,
        tiny_model,
        users_file,
        model={"backend": NAME},
        sampling={"temperature": 0, **sampling},
        data={"num_samples": 2},
    )


def test_the_registry_finds_a_registered_backend(echo_backend: registry.Backend) -> None:
    assert registry.get(NAME) is echo_backend
    assert registry.names()[:2] == ["vllm", "hf"] and NAME in registry.names()  # built-ins first, in BUILTIN order
    assert registry.spec_choices() == ["auto", *registry.names()]
    engine = registry.create_engine(NAME, ModelSpec(path="/m", backend=NAME), SamplingSpec(), 3)
    assert isinstance(engine, EchoTestEngine) and engine.n == 3
    assert registry.guess(NAME) is echo_backend  # named and importable: the job guesses it as is
    assert registry.guess("auto").name != NAME  # auto=False: never chosen for `backend: auto`


def test_the_spec_accepts_it_and_runs_its_checks(
    echo_backend: registry.Backend,
    tmp_path: Path,
    tiny_model: Path,
    users_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = load_spec(echo_spec(tmp_path, tiny_model, users_file))
    assert spec.model.backend == NAME
    # its own check: exit 2 from `launcher plan`, naming the file, the field, what is allowed and the fix
    bad = echo_spec(tmp_path, tiny_model, users_file, temperature=0.7)
    assert main(["plan", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sampling.temperature" in err and f"backend {NAME}" in err and "set sampling.temperature: 0" in err
    assert str(bad) in err
    # what its capabilities rule out, checked for it by the registry (it wrote no check of its own for these)
    for override, field in (
        ("model.tensor_parallel_size=2", "model.tensor_parallel_size"),
        ("slurm.nodes=2", "slurm.nodes"),
    ):
        with pytest.raises(SpecError) as caught:
            load_spec(echo_spec(tmp_path, tiny_model, users_file), [override])
        assert caught.value.problems[0].field == field, caught.value
        assert f"backend {NAME}" in str(caught.value) and "registered: vllm, hf" in str(caught.value)


def test_an_unknown_backend_lists_the_registered_ones(
    echo_backend: registry.Backend, tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(make_spec(tmp_path, tiny_model, users_file, model={"backend": "echo_test_backnd"}))
    problem = caught.value.problems[0]
    assert problem.field == "model.backend"
    assert problem.allowed == f"one of auto, vllm, hf, {NAME}"
    assert problem.fix == f"did you mean {NAME!r}?"
    with pytest.raises(SpecError, match=rf"unknown backend 'sglang'(.|\n)*auto, vllm, hf, {NAME}"):
        registry.get("sglang")
    registry.unregister(NAME)  # once it is gone, the spec refuses it, and says what is left
    with pytest.raises(SpecError, match="allowed: one of auto, vllm, hf\n"):
        load_spec(echo_spec(tmp_path, tiny_model, users_file))


def test_a_unit_runs_through_it_in_process(
    echo_backend: registry.Backend, tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    """`launcher run` in this process: the worker asks the registry for the backend, its engine answers every
    record, gather writes the samples. No model runs (the tokenizer does)."""
    spec = echo_spec(tmp_path, tiny_model, users_file)
    assert main(["run", "--spec", str(spec)]) == 0
    out = next(p.parent for p in (tmp_path / "out").rglob("samples.jsonl"))
    rows = read_samples(out)
    assert len(rows) == 10  # every record, each with its 2 samples, from the echo engine
    texts = [t for r in rows for t in r["generated_samples"]]
    assert len(texts) == 20 and all(re.fullmatch(r"echo of \d+ tokens, seed \d+, sample [01]", t) for t in texts)
    assert len({t.split(", sample")[0] for t in texts}) == 10  # a seed of its own per record (seeds.py)
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["backend"] == NAME


def test_the_prefix_block_is_vllms() -> None:
    """plan/prefix.py counts shared prefixes in vLLM's KV blocks without importing the vLLM backend (plan is a floor
    below engines): the two constants must agree."""
    from launcher.engines.vllm.sizing import BLOCK
    from launcher.plan import prefix

    assert prefix.BLOCK == BLOCK


def test_no_backend_name_is_tested_outside_its_folder() -> None:
    """`"hf"` / `"vllm"` in launcher/ only inside engines/<name>/, the registry's BUILTIN list, and places where the
    word names something else (a dataset format, a package version key, a weights loader, a benchmark system, a
    benchmark's spec)."""
    out = subprocess.run(
        ["grep", "-rn", '"hf"\\|"vllm"', "launcher", "--include=*.py"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    allowed = (
        "launcher/engines/vllm/",
        "launcher/engines/hf/",
        "launcher/engines/registry.py",
        "launcher/engines/loaders.py",  # LAUNCHER_WEIGHTS_LOADER=vllm: vLLM's own weights loader
        "launcher/engines/compile_cache.py",  # vLLM's cache folder and version key
        "launcher/inputs/records.py",  # data format "hf": a saved HF dataset
        "launcher/containers/doctor.py",  # the image's package versions
        "launcher/bench/",  # the benchmark's systems and the specs it writes
    )
    strays = [line for line in out.splitlines() if not line.startswith(allowed)]
    assert not strays, "\n".join(strays)
