"""decode_speed.py: what vLLM's decode rule (launcher/engines/decode.py) costs against plain batch_decode.

5,000 samples x 256 tokens (1,000 prompts of ~300 tokens x 5 samples), text mixing English with CJK, emoji and
accents, cut anywhere (so some samples end inside a character), on two tokenizers: byte-level BPE (the Llama 3 /
Qwen class) and SentencePiece-style byte fallback with Llama 2's decoder. Best of 3 of each.

Run: .venv/bin/python -m benchmarks.decode_speed  -> benchmarks/results/decode_speed.json
"""

from __future__ import annotations

import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from launcher.engines.decode import REPLACEMENT, Generated, SampleDecoder
from tests.unicode_tokenizers import SAMPLE_TEXTS, byte_fallback_tokenizer, byte_level_model

RESULTS = Path(__file__).resolve().parent / "results" / "decode_speed.json"
PROMPTS, SAMPLES, TOKENS, PROMPT_TOKENS = 1000, 5, 256, 300


def workload(tokenizer: Any, seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """A model's samples start where the prompt ends and hold whole characters, but max_tokens cuts them anywhere:
    each is the start of a text (a random mix of the sample texts), cut at TOKENS."""
    rng = random.Random(seed)

    def text() -> list[int]:
        return list(tokenizer.encode(" ".join(rng.choice(SAMPLE_TEXTS) for _ in range(60)), add_special_tokens=False))

    return [(text()[-PROMPT_TOKENS:], [text()[:TOKENS] for _ in range(SAMPLES)]) for _ in range(PROMPTS)]


def measure(tokenizer: Any) -> dict[str, Any]:
    work = workload(tokenizer)
    flat = [s for _, samples in work for s in samples]
    old_texts = tokenizer.batch_decode(flat, skip_special_tokens=True)
    decoder = SampleDecoder(tokenizer)
    replayed = 0
    stream = decoder._stream

    def counted(*args: Any) -> str:
        nonlocal replayed
        replayed += 1
        return stream(*args)

    decoder._stream = counted  # type: ignore[method-assign]
    new_texts = [t for prompt, samples in work for t in decoder.decode(prompt, [Generated(s) for s in samples])]
    decoder._stream = stream  # type: ignore[method-assign]
    old_s, new_s = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        tokenizer.batch_decode(flat, skip_special_tokens=True)
        t1 = time.perf_counter()
        for prompt, samples in work:
            decoder.decode(prompt, [Generated(s) for s in samples])
        new_s.append(time.perf_counter() - t1)
        old_s.append(t1 - t0)
    return {
        "samples": len(flat),
        "tokens": sum(map(len, flat)),
        "batch_decode_s": round(min(old_s), 3),
        "sample_decoder_s": round(min(new_s), 3),
        "ratio": round(min(new_s) / min(old_s), 2),
        "old_texts_ending_in_U+FFFD": sum(t.endswith(REPLACEMENT) for t in old_texts),
        "texts_that_differ": sum(a != b for a, b in zip(old_texts, new_texts, strict=True)),
        "replayed_token_by_token": replayed,
    }


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as in a worker (one process per GPU group)
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        byte_level = AutoTokenizer.from_pretrained(byte_level_model(Path(tmp) / "m"))
        result: dict[str, Any] = {
            "byte_level_bpe": measure(byte_level),
            "byte_fallback_llama2_decoder": measure(byte_fallback_tokenizer()),
        }
    result["machine"] = (
        f"{platform.node()} {platform.machine()} ({os.cpu_count()} cores), python {platform.python_version()}"
    )
    result["load_average_1min"] = round(os.getloadavg()[0], 1)
    result["date"] = time.strftime("%Y-%m-%d")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
