"""The job spec: every field's validation (good and bad), file:line in errors, overrides, extends, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.spec import JobSpec, json_schema, load_spec, parse_time_min

from .conftest import launcher

BASE = """\
name: t
model:
  path: model
data:
  datasets:
    - name: users
      path: users.jsonl
sampling:
  temperature: 1.0
output:
  dir: out
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "users.jsonl").write_text('{"user_id": "a", "context": "x"}\n')
    p = tmp_path / "spec.yaml"
    p.write_text(BASE)
    return p


# (override, accepted). Each field gets at least one good and one bad value.
CASES = [
    ("name=ok-name_1.x", True),
    ("name=bad name", False),
    ("name=", False),
    ("model.backend=vllm", True),
    ("model.backend=hf", True),
    ("model.backend=tgi", False),
    ("model.dtype=bfloat16", True),
    ("model.dtype=int3", False),
    ("model.quantization=fp8", True),
    ("model.quantization=awq", True),
    ("model.max_model_len=8192", True),
    ("model.max_model_len=8", False),
    ("model.gpu_memory_utilization=0.5", True),
    ("model.gpu_memory_utilization=1.5", False),
    ("model.gpu_memory_utilization=0", False),
    ("model.tensor_parallel_size=auto", True),
    ("model.tensor_parallel_size=all", True),
    ("model.tensor_parallel_size=4", True),
    ("model.tensor_parallel_size=0", False),
    ("model.tensor_parallel_size=some", False),
    ("model.load_format=dummy", True),
    ("model.load_format=gguf", False),
    ("model.engine_args={max_num_seqs: 256}", True),
    ("model.engine_args=[1]", False),
    ("model.hf_batch_size=16", True),
    ("model.hf_batch_size=0", False),
    ("data.num_samples=1", True),
    ("data.num_samples=0", False),
    ("data.num_samples=5000", False),
    ("data.records_per_shard=100", True),
    ("data.records_per_shard=0", False),
    ("data.limit=3", True),
    ("data.limit=-1", False),
    ("data.ablation_configs=[context_only, history_only]", True),
    ("data.ablation_configs=[nope]", False),
    ("data.ablation_configs=[full, full]", False),
    ("data.ablation_configs=[]", False),
    ("data.fields.user_id=uid", True),
    ("data.fields.colour=x", False),
    ("data.chat_template=false", True),
    ("data.chat_template=maybe", False),
    ("data.templates={mine: {text: 'hi {{ context }}'}}", True),
    ("data.templates={mine: {}}", False),
    ("data.templates={mine: {text: a, file: b}}", False),
    ("sampling.temperature=0", True),
    ("sampling.temperature=2", True),
    ("sampling.temperature=-0.2", False),
    ("sampling.temperature=2.5", False),
    ("sampling.top_p=1", True),
    ("sampling.top_p=0.95", True),
    ("sampling.top_p=0", False),
    ("sampling.top_p=1.5", False),
    ("sampling.top_k=-1", True),
    ("sampling.top_k=50", True),
    ("sampling.top_k=-2", False),
    ("sampling.max_tokens=1", True),
    ("sampling.max_tokens=0", False),
    ("sampling.seed=0", True),
    ("sampling.seed=-1", False),
    ("sampling.seed=abc", False),
    ("sampling.ignore_eos=true", True),
    ("sampling.stop=['\\n\\n']", True),
    ("sampling.stop=3", False),
    ("slurm.partition=gpu", True),
    ("slurm.account=lab", True),
    ("slurm.qos=high", True),
    ("slurm.nodes=1", True),
    ("slurm.nodes=2", True),  # one engine over two nodes (engines/multinode.py)
    ("slurm.nodes=65", False),
    ("slurm.nodes=auto", True),
    ("slurm.gpus_per_node=4", True),
    ("slurm.gpus_per_node=-1", False),
    ("slurm.gpus_per_node=99", False),
    ("slurm.cpus_per_gpu=8", True),
    ("slurm.cpus_per_gpu=0", False),
    ("slurm.mem=64G", True),
    ("slurm.mem=500000M", True),
    ("slurm.mem=lots", False),
    ("slurm.time=04:00:00", True),
    ("slurm.time=1-00:00:00", True),
    ("slurm.time=90", True),
    ("slurm.time=4h", False),
    ("slurm.constraint=h100", True),
    ("slurm.array_parallelism=8", True),
    ("slurm.array_parallelism=0", False),
    ("slurm.extra_args={reservation: abc, exclusive: true}", True),
    ("slurm.extra_args={'Bad Key': 1}", False),
    ("slurm.max_retries=3", True),
    ("slurm.max_retries=-1", False),
    ("container.runtime=none", True),
    ("container.runtime=docker", False),  # docker without an image
    ("container.runtime=lxc", False),
    ("container.binds=['/data:/data:ro']", True),
    ("container.env={A: b}", True),
    ("container.env={A: [1]}", False),
    ("output.format=parquet", True),
    ("output.format=csv", False),
    ("output.per_user_json=true", True),
    ("output.chunk_records=0", False),
    ("executor=local", True),
    ("executor=slurm", True),
    ("executor=k8s", False),
]


@pytest.mark.parametrize(("override", "ok"), CASES, ids=[c[0] for c in CASES])
def test_field_validation(base: Path, override: str, ok: bool) -> None:
    if ok:
        assert isinstance(load_spec(base, [override]), JobSpec)
    else:
        with pytest.raises(SpecError) as exc:
            load_spec(base, [override])
        text = str(exc.value)
        field = override.split("=")[0]
        assert field.split(".")[0] in text, text  # names the field
        assert f"--set {override}" in text or "spec.yaml" in text  # names where it came from


def test_container_with_image(base: Path) -> None:
    spec = load_spec(base, ["container.runtime=docker", "container.image=localhost/launcher:cpu"])
    assert spec.container.runtime == "docker"


def test_error_names_file_line_and_range(base: Path) -> None:
    base.write_text(BASE.replace("temperature: 1.0", "top_p: 1.5"))
    with pytest.raises(SpecError) as exc:
        load_spec(base)
    text = str(exc.value)
    assert "spec.yaml:9: sampling.top_p:" in text
    assert "(0.0, 1.0]" in text and "1.5" in text


def test_unknown_key_suggests(base: Path) -> None:
    base.write_text(BASE.replace("temperature: 1.0", "temprature: 0.7"))
    with pytest.raises(SpecError) as exc:
        load_spec(base)
    text = str(exc.value)
    assert "spec.yaml:9" in text and "unknown key 'temprature'" in text and "did you mean 'temperature'" in text


def test_unknown_section_suggests(base: Path) -> None:
    base.write_text(BASE + "slrum:\n  partition: gpu\n")
    with pytest.raises(SpecError, match="did you mean 'slurm'"):
        load_spec(base)


def test_missing_required(base: Path) -> None:
    base.write_text(BASE.replace("output:\n  dir: out\n", ""))
    with pytest.raises(SpecError, match="output: required, but missing"):
        load_spec(base)


def test_yaml_syntax_error_has_line(base: Path) -> None:
    base.write_text(BASE + "sampling: [unclosed\n")
    with pytest.raises(SpecError, match=r"spec.yaml:1[0-9]: YAML syntax error"):
        load_spec(base)


def test_not_a_mapping(base: Path) -> None:
    base.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(base)


def test_paths_relative_to_spec_folder(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    spec = load_spec(base)
    assert spec.model.path == str(tmp_path / "model")
    assert spec.data.datasets[0].path == str(tmp_path / "users.jsonl")
    assert spec.output.dir == str(tmp_path / "out")


def test_env_vars_in_paths(base: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SCRATCH_X", str(tmp_path / "scratch"))
    spec = load_spec(base, ["output.dir=$SCRATCH_X/runs"])
    assert spec.output.dir == str(tmp_path / "scratch" / "runs")


def test_overrides_typed(base: Path) -> None:
    spec = load_spec(
        base,
        [
            "sampling.temperature=0.8",
            "sampling.top_p=0.95",
            "data.num_samples=3",
            "model.tensor_parallel_size=2",
            "slurm.extra_args={exclusive: true}",
        ],
    )
    assert spec.sampling.temperature == 0.8 and spec.sampling.top_p == 0.95 and spec.data.num_samples == 3
    assert spec.model.tensor_parallel_size == 2 and spec.slurm.extra_args == {"exclusive": True}


def test_bad_override_form(base: Path) -> None:
    with pytest.raises(SpecError, match=r"section\.field=value"):
        load_spec(base, ["sampling.temperature"])


def test_extends_merges_and_child_wins(base: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profiles" / "cluster.yaml"
    profile.parent.mkdir()
    profile.write_text("slurm:\n  partition: gpu\n  account: lab\n  time: '08:00:00'\nsampling:\n  top_k: 10\n")
    base.write_text("extends: profiles/cluster.yaml\n" + BASE + "slurm:\n  account: mine\n")
    spec = load_spec(base)
    assert spec.slurm.partition == "gpu" and spec.slurm.account == "mine" and spec.slurm.time == "08:00:00"
    assert spec.sampling.top_k == 10 and spec.sampling.temperature == 1.0


def test_extends_error_points_into_profile(base: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("slurm:\n  gpus_per_node: -3\n")
    base.write_text("extends: p.yaml\n" + BASE)
    with pytest.raises(SpecError, match=r"p.yaml:2: slurm.gpus_per_node"):
        load_spec(base)


def test_extends_loop_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SpecError, match="loops back"):
        load_spec(tmp_path / "a.yaml")


def test_fingerprint_ignores_cluster_settings(base: Path) -> None:
    a = load_spec(base)
    b = load_spec(base, ["slurm.partition=other", "slurm.time=10", "output.chunk_records=7"])
    c = load_spec(base, ["sampling.seed=1"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.run_id.startswith("t-")


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("90", 90), ("30:00", 30), ("04:00:00", 240), ("1-00:00:00", 1440), ("2-12", 3600), ("0:30", 1), ("01:30:10", 91)],
)
def test_time_formats(text: str, minutes: int) -> None:
    assert parse_time_min(text) == minutes


def test_schema_has_docs_and_defaults() -> None:
    schema = json_schema()
    sampling = schema["$defs"]["SamplingSpec"]["properties"]
    assert sampling["temperature"]["default"] == 1.0 and "greedy" in sampling["temperature"]["description"]
    assert "extends" in schema["properties"]


def test_schema_command() -> None:
    proc = launcher("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == "launcher job spec"


def test_cli_bad_spec_exit_2_and_nothing_written(base: Path, tmp_path: Path) -> None:
    base.write_text(BASE.replace("temperature: 1.0", "temperature: -1"))
    for cmd in ("plan", "submit"):
        proc = launcher(cmd, str(base))
        assert proc.returncode == 2, proc.stderr
        assert "sampling.temperature" in proc.stderr + proc.stdout
        assert "nothing was submitted" in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_cli_unknown_flag_exit_2() -> None:
    proc = launcher("plan", "--bogus")
    assert proc.returncode == 2 and "--help" in proc.stderr
