"""Plan expansion (counts, stable ids, paths, seeds), per-record seeds, GPU counting and the TP x DP layout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.inputs.model import ModelShape
from launcher.plan import expand
from launcher.plan.layout import GiB, GpuInfo, GpuSet, allocated_gpus, choose_layout
from launcher.seeds import record_seed, sample_seed
from launcher.spec import load_spec

from .conftest import USERS, launcher, make_spec, write_jsonl


def test_expand_counts_ids_and_paths(tmp_path: Path, tiny_model: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", USERS)  # 10 rows
    b = write_jsonl(tmp_path / "b.jsonl", USERS[:7])
    spec_path = make_spec(
        tmp_path,
        tiny_model,
        a,
        data={
            "datasets": [{"name": "chameleons", "path": str(a)}, {"name": "dmsc", "path": str(b)}],
            "ablation_configs": ["context_only", "full"],
            "records_per_shard": 4,
        },
    )
    plan = expand(load_spec(spec_path))
    # chameleons: 3 shards (4+4+2), dmsc: 2 shards (4+3); x 2 ablations
    assert len(plan.units) == (3 + 2) * 2
    assert plan.total_records == (10 + 7) * 2
    # largest first (stable): the full shards of every cell, then the remainders, which workers take last
    assert [u.unit_id for u in plan.units[:3]] == [
        "chameleons.context_only.0000",
        "chameleons.context_only.0001",
        "chameleons.full.0000",
    ]
    assert [u.rows for u in plan.units] == [4] * 6 + [3, 3, 2, 2]
    assert [u.index for u in plan.units] == list(range(10))
    last = next(u for u in plan.units if u.unit_id == "chameleons.context_only.0002")
    assert (last.start, last.stop) == (8, 10)
    assert (
        plan.run.unit(last.unit_id).root
        == Path(plan.spec.output.dir) / "runs" / plan.spec.run_id / "units" / "chameleons.context_only.0002"
    )
    again = expand(load_spec(spec_path))
    assert again.units == plan.units  # stable: same spec, same units


def test_auto_units_and_job_count(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", [{"user_id": f"u{i}", "context": "c"} for i in range(400)])
    spec = make_spec(tmp_path, tiny_model, data, executor="slurm", slurm={"gpus_per_node": 2})
    plan = expand(load_spec(spec))
    # auto: 8 jobs x 2 GPUs expected -> 400 / (16 workers x 4) -> 7 records, at least 16; the last shard (16) is
    # cut in pieces of at least 8, which sort last: the run's final claims are small
    assert {u.rows for u in plan.units[:-2]} == {16} and sum(u.rows for u in plan.units) == 400
    assert [u.rows for u in plan.units[-2:]] == [8, 8]
    assert plan.jobs == 4 and "auto" in plan.jobs_reason  # ceil(26 units / (2 workers x 4)) = 4
    capped = expand(load_spec(spec, ["slurm.max_gpus=4"]))
    assert capped.jobs == 2 and "max_gpus 4" in capped.jobs_reason
    local = expand(load_spec(make_spec(tmp_path, tiny_model, data, name="loc")))
    assert local.jobs == 1 and "local" in local.jobs_reason
    few = expand(load_spec(spec, ["slurm.jobs=50"]))
    assert few.jobs == min(50, len(few.units))  # never more jobs than units


def test_resubmit_keeps_the_units_of_the_first_submit(tmp_path: Path, tiny_model: Path) -> None:
    from launcher.plan.persist import save_plan

    data = write_jsonl(tmp_path / "a.jsonl", [{"user_id": f"u{i}", "context": "c"} for i in range(100)])
    spec = make_spec(tmp_path, tiny_model, data, executor="slurm", slurm={"jobs": 1})
    first = expand(load_spec(spec))
    save_plan(first)
    later = expand(load_spec(spec, ["slurm.jobs=8"]))  # more jobs would cut smaller units: the run keeps its own
    assert later.units == first.units and later.jobs == min(8, len(first.units))


def test_limit_and_empty_dataset(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", USERS)
    plan = expand(load_spec(make_spec(tmp_path, tiny_model, data, data={"limit": 3})))
    assert plan.total_records == 3
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SpecError, match="no rows"):
        expand(load_spec(make_spec(tmp_path, tiny_model, empty)))


def test_missing_inputs_are_spec_errors(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", USERS)
    with pytest.raises(SpecError, match="not a folder"):
        expand(load_spec(make_spec(tmp_path, tmp_path / "nope", data)))
    bad_model = tmp_path / "badmodel"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"config\.json"):
        expand(load_spec(make_spec(tmp_path, bad_model, data)))
    with pytest.raises(SpecError, match="file not found"):
        expand(load_spec(make_spec(tmp_path, tiny_model, tmp_path / "missing.jsonl")))


def test_plan_10k_tasks(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "big.jsonl", [{"user_id": f"u{i}", "context": "c"} for i in range(5000)])
    plan = expand(
        load_spec(
            make_spec(
                tmp_path, tiny_model, data, data={"ablation_configs": ["context_only", "full"], "records_per_shard": 1}
            )
        )
    )
    assert len(plan.units) == 10_000  # its speed is measured in benchmarks/plan_speed.py, not asserted here
    assert len({u.unit_id for u in plan.units}) == 10_000


def test_plan_cli_shows_sbatch_and_submits_nothing(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "a.jsonl", USERS)
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        executor="slurm",
        slurm={"partition": "debug", "gpus_per_node": 2, "time": "01:00:00", "extra_args": {"exclusive": True}},
    )
    proc = launcher("plan", str(spec))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "#SBATCH --partition=debug" in out and "#SBATCH --gpus-per-node=2" in out and "#SBATCH --array=0-0%1" in out
    assert "#SBATCH --time=60" in out and "#SBATCH --exclusive" in out and "nothing was submitted" in out
    assert not (tmp_path / "out").exists()
    as_json = json.loads(launcher("plan", str(spec), "--json").stdout)
    assert as_json["units"] == 1 and as_json["jobs"] == 1 and as_json["samples"] == 20


def test_record_seeds_wide_and_disjoint() -> None:
    seeds = [record_seed(42, f"u{i}") for i in range(2000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**62 for s in seeds)
    # vLLM gives sample j the seed s + j: neighbouring records must not share any sample stream
    streams = [{sample_seed(s, j) for j in range(16)} for s in seeds]
    for a, b in itertools.pairwise(streams):
        assert not a & b
    assert record_seed(42, "u1") == record_seed(42, "u1") != record_seed(43, "u1")


LLAMA8B = ModelShape(("LlamaForCausalLM",), 32, 4096, 32, 8, 128, 14336, 128256, 8192, "bfloat16", 16 * GiB, "t")
SHAPE_40_40 = ModelShape(("X",), 40, 5120, 40, 40, 128, 13824, 32000, 4096, "bfloat16", 26 * GiB, "t")
LLAMA70B = ModelShape(("LlamaForCausalLM",), 80, 8192, 64, 8, 128, 28672, 128256, 8192, "bfloat16", 131 * GiB, "t")
H100, H200 = GpuInfo("H100", 80 * GiB), GpuInfo("H200", 141 * GiB)


def _gpus(n: int) -> GpuSet:
    return GpuSet(tuple(str(i) for i in range(n)), "test")


@pytest.mark.parametrize(
    ("shape", "n", "gpu", "tp", "dp"),
    [
        (LLAMA8B, 1, H100, 1, 1),
        (LLAMA8B, 2, H100, 1, 2),
        (LLAMA8B, 4, H100, 1, 4),
        (SHAPE_40_40, 4, H100, 1, 4),
        (LLAMA70B, 1, H200, None, None),  # does not fit: refused with a reason
        (LLAMA70B, 2, H200, 2, 1),
        (LLAMA70B, 4, H100, 4, 1),
        (LLAMA70B, 4, H200, 2, 2),
    ],
)
def test_auto_layout(shape: ModelShape, n: int, gpu: GpuInfo, tp: int | None, dp: int | None) -> None:
    if tp is None:
        with pytest.raises(SpecError, match="does not fit"):
            choose_layout(shape, _gpus(n), gpu, 0.9, "auto")
        return
    layout = choose_layout(shape, _gpus(n), gpu, 0.9, "auto")
    assert (layout.tensor_parallel, layout.data_parallel) == (tp, dp), layout.reason
    assert "auto" in layout.reason
    assert layout.replica_gpus(dp - 1) == tuple(str(i) for i in range((dp - 1) * tp, dp * tp))


def test_fp8_70b_fits_one_h200() -> None:
    layout = choose_layout(LLAMA70B, _gpus(2), H200, 0.9, "auto", weight_bytes=LLAMA70B.weight_bytes // 2)
    assert (layout.tensor_parallel, layout.data_parallel) == (1, 2)


def test_explicit_and_all() -> None:
    assert choose_layout(LLAMA8B, _gpus(4), H100, 0.9, "all").tensor_parallel == 4
    layout = choose_layout(LLAMA8B, _gpus(4), H100, 0.9, 2)
    assert (layout.tensor_parallel, layout.data_parallel) == (2, 2)
    with pytest.raises(SpecError, match="does not split"):
        choose_layout(SHAPE_40_40, _gpus(3), H100, 0.9, 3)
    # more than the machine has: a speed choice that cannot be honoured here is said, and auto runs instead
    fewer = choose_layout(LLAMA8B, _gpus(2), H100, 0.9, 4)
    assert (fewer.tensor_parallel, fewer.data_parallel) == (1, 2)
    assert "tensor_parallel_size 4 asked, but only 2 GPU(s) here" in fewer.notes[0]
    with pytest.raises(SpecError, match="does not split"):
        choose_layout(SHAPE_40_40, _gpus(3), H100, 0.9, "all")


def test_no_gpu_is_cpu_layout() -> None:
    layout = choose_layout(LLAMA8B, _gpus(0), None, 0.9, "auto")
    assert (layout.tensor_parallel, layout.data_parallel, layout.gpus) == (1, 1, ()) and not layout.notes
    asked = choose_layout(LLAMA8B, _gpus(0), None, 0.9, 4)
    assert asked.gpus == () and "no GPU here" in asked.notes[0]


@pytest.mark.parametrize(
    ("env", "ids"),
    [
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, ("2", "3")),  # a second job on the node: count, not numbering
        ({"SLURM_JOB_GPUS": "2,3"}, ("0", "1")),  # cgroups renumber from 0 for CUDA
        ({"SLURM_GPUS_ON_NODE": "4"}, ("0", "1", "2", "3")),
        ({"CUDA_VISIBLE_DEVICES": ""}, ()),
    ],
)
def test_gpu_counting(env: dict[str, str], ids: tuple[str, ...]) -> None:
    assert allocated_gpus(env).ids == ids
