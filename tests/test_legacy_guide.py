"""The old guide's commands, with only the program's name changed (`python inference_vllm.py` -> `launcher run`), on
the tiny model and a Chameleons-like dataset: a dataset NAME found through the catalog or the data root, the
records given with --scenario_path, an unknown name, AWQ checks, the helper script and the notes on changed flags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import ROOT, USERS, launcher, write_jsonl

CHAMELEONS = [{**u, "user_id": f"cham{i:03d}"} for i, u in enumerate(USERS)]


def _guide(model: Path, out: Path, *extra: str) -> list[str]:
    """The guide's quick test, as typed (flag for flag), bar the program name."""
    return [
        "run",
        "--checkpoint_dir",
        str(model),
        "--dataset",
        "Chameleons",
        "--ablation_config",
        "profile_and_context",
        "--output_dir",
        str(out),
        "--num_samples",
        "2",
        "--temperature",
        "1.0",
        "--top_p",
        "0.9",
        "--top_k",
        "50",
        "--max_tokens",
        "8",
        "--seed",
        "42",
        "--backend",
        "hf",
        *extra,
    ]


def _check_outputs(out: Path) -> None:
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["total_samples"] == 2 * len(CHAMELEONS) and summary["dataset"] == "Chameleons"
    user = json.loads((out / "cham003.json").read_text())  # <output_dir>/<user>.json, as the old script wrote it
    assert len(user["generated_samples"]) == 2


def test_dataset_name_through_the_project_catalog(tmp_path: Path, tiny_model: Path) -> None:
    project = tmp_path / "project"
    write_jsonl(project / "data" / "chameleons" / "scenarios.jsonl", CHAMELEONS)
    (project / "launcher.yaml").write_text("datasets:\n  Chameleons: data/chameleons/scenarios.jsonl\n")
    (project / "work").mkdir()
    proc = launcher(*_guide(tiny_model, tmp_path / "out"), cwd=project / "work")  # a launcher.yaml of a parent
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "catalog" in proc.stdout and "scenarios.jsonl" in proc.stdout  # says where the name led
    assert "--seed 42: each record's samples are seeded from (seed, record id)" in " ".join(proc.stderr.split())
    _check_outputs(tmp_path / "out")


def test_dataset_name_with_scenario_path_and_data_root(tmp_path: Path, tiny_model: Path) -> None:
    records = write_jsonl(tmp_path / "elsewhere" / "chameleons-test.jsonl", CHAMELEONS)
    proc = launcher(*_guide(tiny_model, tmp_path / "a", "--scenario_path", str(records)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_outputs(tmp_path / "a")
    root = tmp_path / "root"
    write_jsonl(root / "chameleons" / "scenarios.jsonl", CHAMELEONS)  # the convention: <root>/<name, lowercased>/
    proc = launcher(*_guide(tiny_model, tmp_path / "b"), cwd=tmp_path, env={"LAUNCHER_DATA_ROOT": str(root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_outputs(tmp_path / "b")
    assert (tmp_path / "a" / "cham003.json").read_bytes() == (tmp_path / "b" / "cham003.json").read_bytes()


def test_unknown_name_lists_the_known_ones(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "launcher.yaml").write_text("datasets:\n  Chameleons: c.jsonl\n  DMSC: d.jsonl\n")
    proc = launcher(
        *_guide(tiny_model, tmp_path / "out")[:4],
        "Chameleon",
        "--output_dir",
        str(tmp_path / "out"),
        cwd=tmp_path,
        env={"LAUNCHER_DATA_ROOT": ""},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "no dataset named 'Chameleon'" in message and "Chameleons, DMSC" in message
    assert "launcher.yaml" in message and "--scenario_path" in message
    assert not (tmp_path / "out").exists()


def test_spec_datasets_by_name_and_the_renamed_preamble(tmp_path: Path, tiny_model: Path) -> None:
    write_jsonl(tmp_path / "cham.jsonl", CHAMELEONS)
    (tmp_path / "preamble.txt").write_text("You write reviews.")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"name: s\nmodel: {{path: {tiny_model}, backend: hf}}\ndatasets: {{Chameleons: cham.jsonl}}\n"
        "data:\n  datasets: [{name: Chameleons}]\n  preamble: preamble.txt\n"
        f"output: {{dir: {tmp_path / 'out'}}}\nexecutor: local\n"
    )
    plan = launcher("plan", str(spec), "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["records"] == len(CHAMELEONS)
    spec.write_text(spec.read_text().replace("preamble:", "scenario:"))
    old = launcher("plan", str(spec))
    assert old.returncode == 2 and "data.scenario was renamed data.preamble" in old.stderr


def test_awq_flags_against_the_checkpoint(tmp_path: Path, tiny_model: Path) -> None:
    write_jsonl(tmp_path / "c.jsonl", CHAMELEONS)
    base = [
        "run",
        "--checkpoint_dir",
        str(tiny_model),
        "--scenario_path",
        str(tmp_path / "c.jsonl"),
        "--output_dir",
        str(tmp_path / "o"),
        "--backend",
        "hf",
    ]
    proc = launcher(*base, "--quantization", "awq")
    assert (
        proc.returncode == 2
        and "has no quantization_config: the weights are not quantized" in " ".join(proc.stderr.split())
        and "AutoAWQ" in proc.stderr
    )
    awq = tmp_path / "awq-model"
    shutil.copytree(tiny_model, awq)
    config = json.loads((awq / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    (awq / "config.json").write_text(json.dumps(config))
    base[2] = str(awq)
    proc = launcher(*base, "--quantization", "fp8")
    assert proc.returncode == 2 and "already quantized (awq)" in " ".join(proc.stderr.split())
    proc = launcher(*base, "--quantization", "gptq")
    assert proc.returncode == 2 and "quantized with awq" in " ".join(proc.stderr.split())
    spec = tmp_path / "s.yaml"  # the matching method passes every check (running AWQ kernels needs a GPU)
    spec.write_text(
        f"name: s\nmodel: {{path: {awq}, quantization: awq_marlin}}\n"
        f"data: {{datasets: [{{name: c, path: {tmp_path / 'c.jsonl'}}}]}}\noutput: {{dir: {tmp_path}/p}}\n"
    )
    assert launcher("plan", str(spec)).returncode == 0


def test_helper_script_and_example_sweep_are_valid() -> None:
    script = (ROOT / "configs" / "examples" / "inference_with_launcher.sh").read_text()
    assert "run_vllm_inference()" in script and "launcher run --checkpoint_dir" in script
    calls = [ln for ln in script.splitlines() if ln.startswith("run_vllm_inference ")]
    assert calls and all(len(c.split()) >= 5 for c in calls)
    proc = launcher("plan", "configs/examples/guide-sweep.yaml", "--json")  # datasets by name: the example catalog
    # /shared does not exist here: the spec loads, names resolve through the catalog, then the model is missing
    assert proc.returncode == 2 and "model.path" in proc.stderr and "no dataset named" not in proc.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_tensor_parallel_not_honoured_is_said_on_the_console(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("vllm")
    write_jsonl(tmp_path / "c.jsonl", CHAMELEONS[:3])
    proc = launcher(
        "run",
        "--checkpoint_dir",
        str(tiny_model),
        "--scenario_path",
        str(tmp_path / "c.jsonl"),
        "--output_dir",
        str(tmp_path / "o"),
        "--tensor_parallel_size",
        "4",
        "--max_tokens",
        "4",
        "--num_samples",
        "1",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "tensor_parallel_size 4 asked, but there is no GPU here" in message
    status = json.loads(launcher("status", str(tmp_path / "o"), "--json").stdout)
    assert any("tensor_parallel_size 4" in w for w in status["warnings"])
