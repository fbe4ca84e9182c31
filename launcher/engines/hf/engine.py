"""engines/hf/engine.py: the HF transformers backend's engine. Batched, left-padded, num_return_sequences = n, one
seed per sample (seeds.py sample_seed, the rule vLLM follows) drawn by engines/hf/sampler.py, so a record's samples
do not depend on what it was batched with.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from launcher import seeds
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
from launcher.engines.hf.sampler import SeededSampler
from launcher.plan.layout import ParallelLayout
from launcher.spec import SamplingSpec

CPU_BATCH, GPU_BATCH = 8, 32
log = logging.getLogger("launcher.engines.hf")


class HFEngine(Engine):
    name = "hf"

    def load(self, workload: Workload, tokenizer: Any, layout: ParallelLayout) -> EngineReport:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, LogitsProcessorList

        self.processors: Any = LogitsProcessorList
        if self.sampling.structured is not None:  # backend auto fell back to HF (no vLLM here): refuse, never ignore
            raise RuntimeError(
                f"sampling.structured ({self.sampling.structured.kind}) needs vLLM, and this worker runs the HF "
                "backend (vLLM does not import here): run in an image with vLLM, or drop sampling.structured"
            )
        if self.model.adapters:  # the same: a sweep over adapters must not silently run the base model for each
            raise RuntimeError(
                f"model.adapters ({', '.join(self.model.adapters)}) need vLLM, and this worker runs the HF backend "
                "(vLLM does not import here): run in an image with vLLM, or merge each adapter into a checkpoint "
                "and list them under models:"
            )

        t0 = time.perf_counter()
        self.tokenizer = tokenizer
        self.decoder = SampleDecoder(tokenizer)
        # One GPU per worker: HF runs data-parallel only (a TP group's other GPUs would sit idle; the layout for HF
        # asks TP=1).
        self.device = "cuda" if layout.gpus and torch.cuda.is_available() else "cpu"
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
        dtype = dtypes.get(self.model.dtype) or (torch.bfloat16 if self.device == "cuda" else torch.float32)
        loader: Any = AutoModelForCausalLM
        self.hf_model: Any = loader.from_pretrained(
            self.model.path, dtype=dtype, trust_remote_code=self.model.trust_remote_code
        )
        self.hf_model.to(self.device).eval()
        gen_eos = self.hf_model.generation_config.eos_token_id
        eos = gen_eos if gen_eos is not None else tokenizer.eos_token_id
        self.eos_ids: list[int] = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]
        default_batch = GPU_BATCH if self.device == "cuda" else CPU_BATCH
        self.batch_size = self.model.hf_batch_size or default_batch
        gpu_name = torch.cuda.get_device_name(0) if self.device == "cuda" else None
        reason = "set in the spec" if self.model.hf_batch_size else f"default for {self.device}"
        return EngineReport(
            backend="hf",
            version=f"transformers {transformers.__version__}, torch {torch.__version__}",
            device=self.device,
            gpu_name=gpu_name,
            load_seconds=time.perf_counter() - t0,
            settings={"batch_size": self.batch_size, "dtype": str(dtype).removeprefix("torch.")},
            reasons={"batch_size": reason},
        )

    def generate(self, requests: Iterable[GenerationRequest]) -> Iterator[Completion]:
        feed = iter(requests)
        breaker = FailureBreaker()
        while batch := list(itertools.islice(feed, self.batch_size)):
            # One generate() call runs one setting: requests with their own (an OpenAI batch body) go in groups.
            groups: dict[str, list[GenerationRequest]] = {}
            for req in batch:
                if req.sampling is not None and req.sampling.structured is not None:
                    # backend auto fell back to HF (no vLLM here): this request gets an error, never an unconstrained
                    # answer, and the others of its unit run
                    yield refused(
                        req,
                        f"this request asks for structured output ({req.sampling.structured.kind}), which needs "
                        "vLLM, and this worker runs the HF backend (vLLM does not import here): run it in an image "
                        "with vLLM, or drop response_format from this request",
                    )
                    continue
                key = req.sampling.model_dump_json() + f"|{req.n}" if req.sampling else ""
                groups.setdefault(key, []).append(req)
            for group in groups.values():
                s, n = group[0].sampling or self.sampling, group[0].n or self.n
                yield from self._each_alone_if_needed(group, s, n, breaker)
        yield from breaker.finish()

    def _each_alone_if_needed(
        self, batch: Sequence[GenerationRequest], s: SamplingSpec, n: int, breaker: FailureBreaker
    ) -> Iterator[Completion]:
        """The batch at once; if generate() raises on it, each request alone, so only the one that fails on its own
        is refused (its samples do not depend on its batch: SeededSampler). A refusal waits in the breaker until
        the engine has shown it works."""
        try:
            done = list(self._batch(batch, s, n))
        except Exception as exc:
            if len(batch) > 1:
                log.warning("HF generate failed on a batch of %d (%s: %s); trying each request alone", len(batch),
                            type(exc).__name__, exc)  # fmt: skip
                for req in batch:
                    yield from self._each_alone_if_needed([req], s, n, breaker)
                return
            breaker.failed(exc, refused(batch[0], f"generation failed on this request: {type(exc).__name__}: {exc}"))
            return
        yield from breaker.ok()
        yield from done

    def _batch(self, batch: Sequence[GenerationRequest], s: SamplingSpec, n: int) -> Iterator[Completion]:
        import torch

        width = max(len(r.prompt_token_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, req in enumerate(batch):  # left padding: every prompt ends where generation starts
            ids[row, width - len(req.prompt_token_ids) :] = torch.tensor(req.prompt_token_ids)
            mask[row, width - len(req.prompt_token_ids) :] = 1
        per_sample = [seeds.sample_seed(req.seed, j) for req in batch for j in range(n)]  # vLLM's rule for n > 1
        sampler = SeededSampler(per_sample, s.temperature, s.top_k, s.top_p, self.eos_ids if s.ignore_eos else [])
        extra: dict[str, Any] = {}
        if s.stop:
            extra.update(stop_strings=s.stop, tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.hf_model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=s.max_tokens,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=n,
                logits_processor=self.processors([sampler]),
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids or None,
                **extra,
            )
        new = out[:, width:].cpu().tolist()
        for b, req in enumerate(batch):
            samples = tuple(self._sample(new[b * n + j], s, req.prompt_token_ids) for j in range(n))
            yield Completion(req.key, len(req.prompt_token_ids), samples)

    def _sample(self, tokens: list[int], s: SamplingSpec, prompt_token_ids: list[int]) -> Sample:
        kept, reason = tokens, "length"
        for i, tok in enumerate(tokens):
            if not s.ignore_eos and tok in self.eos_ids:
                kept, reason = tokens[: i + 1], "stop"
                break
        else:  # no EOS: trailing pads only appear once every row of the batch is done, so trim them
            while kept and kept[-1] == self.pad_id and self.pad_id not in self.eos_ids and len(kept) < len(tokens):
                kept = kept[:-1]
        # vLLM's text for these ids (engines/decode.py): the EOS that ended the sample is left out, and a character
        # cut at max_tokens is dropped, not replaced.
        text = self.decoder.decode(prompt_token_ids, [Generated(kept, reason == "stop")])[0]
        if s.stop and (cut := cut_at_stop(text, s.stop)) is not None:
            text, reason = cut, "stop"
        return Sample(text, len(kept), reason, tuple(kept))
