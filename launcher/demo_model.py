"""demo_model.py: `launcher demo-model DIR` -> a tiny random Llama + a tokenizer trained here, in seconds on CPU.

Head size 32 (hidden 128, 4 heads, 2 KV heads): the smallest that vLLM's CPU attention runs. Deterministic:
the same DIR contents every time (fixed seed, fixed corpus), so tests can compare runs across processes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = (
    "the",
    "user",
    "film",
    "movie",
    "review",
    "story",
    "great",
    "bad",
    "plot",
    "actor",
    "music",
    "scene",
    "love",
    "hate",
    "watch",
    "again",
    "long",
    "short",
    "profile",
    "history",
    "context",
    "write",
    "next",
    "voice",
    "style",
    "friend",
    "family",
    "city",
    "night",
    "day",
    "morning",
    "book",
    "song",
    "game",
    "happy",
    "sad",
    "funny",
    "boring",
    "brilliant",
    "slow",
    "fast",
    "old",
    "new",
    "first",
    "last",
    "best",
    "worst",
    "always",
    "never",
    "maybe",
    "really",
)


def corpus(lines: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + rng.choice([".", "!", "?"])
        for _ in range(lines)
    ]


def make_demo_model(out: Path, vocab_size: int = 1024, seed: int = 0, texts: list[str] | None = None) -> Path:
    """`texts`: the tokenizer's training text (default: the English corpus above). Byte-level BPE either way, so any
    text encodes; text in other scripts gives merges that end inside a character (tests of the decoder use that)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts if texts is not None else corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    settings: dict[str, Any] = dict(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=[fast.eos_token_id, fast.convert_tokens_to_ids("<|end|>")],
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    config = LlamaConfig(**settings)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    (out / "DEMO_MODEL.json").write_text(json.dumps({"made_by": "launcher demo-model", "seed": seed}) + "\n")
    return out
