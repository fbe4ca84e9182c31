"""Tokenizers (and one tiny model) whose tokens end inside UTF-8 characters, for the decoder's parity tests.

- byte_level_model: the demo Llama with a byte-level BPE trained on CJK, emoji and accented text, so that merges stop
  inside characters (e.g. the first two bytes of a CJK character) and random ids give invalid byte runs.
- byte_fallback_tokenizer: a SentencePiece-style BPE whose characters outside a small alphabet fall back to <0xNN> byte
  tokens: Llama 2's decoder (Replace, ByteFallback, Fuse, Strip) or a Metaspace one (Llama 3.2 class converters).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from launcher.demo_model import WORDS, make_demo_model

CHINESE = "我们今天去看电影这部的故事很好看演员表演非常精彩但是结局有点让人失望音乐和画面都不错值得推荐给朋友"
JAPANESE = "日本語のテキストですとても面白い映画でした"
EMOJI = ["😀", "👍🏽", "🎬", "❤️", "👨‍👩‍👧", "🙂", "🔥"]
ACCENTED = ["café", "naïve", "résumé", "Ångström", "façade", "crème", "über", "niño"]
ODD = ["\r\n", "\u2028", "\u0085", "\t"]
SAMPLE_TEXTS = [  # prompts and reference texts of the tests: every class of character above
    "你好，世界！这部电影很好看 😀",
    "naïve café résumé 🎬 ok",
    "日本語のテキスト 👍🏽 über",
    "line one\r\nline two\u2028three\u0085four",
    "mixed 中文 and English, ça va? 👨‍👩‍👧",
]


def multilingual_corpus(lines: int = 1500, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        parts = []
        for _ in range(rng.randint(4, 16)):
            kind = rng.random()
            if kind < 0.35:
                start = rng.randrange(len(CHINESE) - 4)
                parts.append(CHINESE[start : start + rng.randint(2, 6)])
            elif kind < 0.45:
                start = rng.randrange(len(JAPANESE) - 3)
                parts.append(JAPANESE[start : start + rng.randint(2, 5)])
            elif kind < 0.55:
                parts.append(rng.choice(EMOJI))
            elif kind < 0.7:
                parts.append(rng.choice(ACCENTED))
            elif kind < 0.75:
                parts.append(rng.choice(ODD))
            else:
                parts.append(rng.choice(WORDS))
        out.append(" ".join(parts))
    return out


def byte_level_model(out: Path) -> Path:
    """A tiny random Llama (the demo's shape) with a multilingual byte-level BPE: ~2 s on CPU."""
    return make_demo_model(out, vocab_size=1024, texts=multilingual_corpus())


def partial_tokens(tokenizer: Any) -> list[int]:
    """Ids whose bytes are not whole UTF-8 characters (lone lead or continuation bytes, halves of characters)."""
    from tokenizers import decoders

    byte_decoder = decoders.ByteLevel()
    found = []
    for token, token_id in tokenizer.get_vocab().items():
        raw = byte_decoder.decode([token])
        if "\ufffd" in raw:
            found.append(token_id)
    return sorted(found)


def byte_token_ids(tokenizer: Any, data: bytes) -> list[int]:
    """One byte-level token per byte of `data` (GPT-2's byte-to-character table), any bytes, valid UTF-8 or not."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    table |= {b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in table)}
    return [tokenizer.convert_tokens_to_ids(table[b]) for b in data]


def byte_fallback_tokenizer(metaspace: bool = False) -> Any:
    """A fast (TokenizersBackend) tokenizer: BPE over a 24-character alphabet with byte fallback, <s> </s> specials."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    space = "▁"
    normalizer = normalizers.Sequence([normalizers.Prepend(space), normalizers.Replace(" ", space)])
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizer
    trained.train_from_iterator(
        multilingual_corpus(400, seed=1),
        trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>"], limit_alphabet=24, show_progress=False),
    )
    model = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizer
    if metaspace:
        tok.decoder = decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace(replacement=space, prepend_scheme="first")]
        )
    else:  # Llama 2's tokenizer.json
        tok.decoder = decoders.Sequence(
            [decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
