"""The example specs in configs/ stay valid as the code changes (the cluster paths in them need not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.spec import load_spec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["quick-test", "chameleons-production", "dmsc-high-quality", "demo"])
def test_example_specs_validate(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", "/tmp")
    spec = load_spec(CONFIGS / f"{name}.yaml")
    assert spec.name
    if name != "demo":
        assert spec.slurm.partition == "gpu" and spec.container.runtime == "apptainer"  # from the profile
    if name == "chameleons-production":
        assert spec.slurm.gpus_per_node == 4 and spec.data.ablation_configs == ["profile_and_context"]
    if name == "dmsc-high-quality":
        assert (spec.sampling.temperature, spec.sampling.top_p) == (0.8, 0.95)
        assert spec.data.ablation_configs == ["profile_and_history"]
    if name == "quick-test":
        assert spec.slurm.gpus_per_node == 1 and spec.output.scratch_dir == "/tmp/launcher-cache"


@pytest.mark.parametrize("name", ["lora-sweep", "models-sweep"])
def test_sweep_examples_validate(name: str) -> None:
    spec = load_spec(CONFIGS / "examples" / f"{name}.yaml")
    if name == "lora-sweep":
        assert spec.adapter_names() == ["base", "sql", "support"] and spec.model.adapters["base"] is None
    else:
        assert spec.model_names() == ["llama-8b", "qwen-7b"] and spec.model.path == ""
        assert spec.for_model("qwen-7b").model.path.endswith("qwen2.5-7b-instruct")
