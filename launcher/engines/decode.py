"""engines/decode.py: a sample's token ids -> its text, the text vLLM's own detokenizer writes (detokenize=True).

Both backends and every text derived from token ids go through SampleDecoder, so a sample says the same thing
whichever engine made it. What vLLM does (vllm/v1/engine/detokenizer.py, read in 0.26.0 and 0.32.0: same results):
- A fast tokenizer (transformers' TokenizersBackend) goes through tokenizers' DecodeStream, primed with the prompt's
  ids; any other (a Python or SentencePiece tokenizer, vLLM's Mistral tokenizer) through vLLM's own incremental
  detokenizer over convert_ids_to_tokens / convert_tokens_to_string, primed with the prompt's last 7 tokens.
- Both hold back text that ends in U+FFFD: it may be a character the next token completes. What is still held back
  when the request finishes is dropped, not replaced. U+FFFD in the middle stays, as the tokenizer's decoder renders
  it (byte-level BPE: one per invalid sequence; byte fallback: one per byte of an invalid run).
- Special tokens are skipped (skip_special_tokens=True, vLLM's default); transformers' clean_up_tokenization_spaces is
  never applied; the token that ended the request (EOS or a stop token id) is not detokenized.
- Stop strings cut the text where the stop string starts; of several, the one that ends first (0.32: ties in list
  order; 0.26 takes list order among stop strings completed by one and the same token).

Decoding once at the end gives that text at the cost of one decode per sample: a short tail of the prompt (to place
the first token: a SentencePiece decoder strips the leading space of a text's first token) plus the sample, batched
per request. That equals DecodeStream's output wherever the decoder renders every token the same in any window:
always for byte-level BPE, and for other decoders as long as the sample has no U+FFFD. A sample that still ends in
U+FFFD after backing off a few tokens, or holds U+FFFD under another decoder, is replayed token by token (_stream).

One deliberate difference: when the prompt's own text ends in U+FFFD, DecodeStream's priming gives up and vLLM puts
the whole prompt's text in front of the sample (0.26 and 0.32); here the sample holds only what the model said.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REPLACEMENT = "\ufffd"
PROMPT_TAIL = 8  # prompt tokens decoded before a sample (more while they decode to nothing or start mid-character)
MAX_HELD = 8  # tokens backed off a sample ending in U+FFFD before replaying it (a character is at most 4 bytes)
SLOW_PROMPT_TOKENS = 7  # vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET (5) + 2
SLOW_PREFIX_WINDOW = 5


@dataclass(frozen=True, slots=True)
class Generated:
    """One sample's token ids as the engine returned them."""

    token_ids: Sequence[int]
    stopped_by_token: bool = False  # ended on EOS or a stop token id: vLLM leaves that last token out of the text


class SampleDecoder:
    """One tokenizer's decode rule. The fast path needs the tokenizers library's Tokenizer behind a fast tokenizer;
    anything else is decoded the way vLLM decodes it: token by token through the tokenizer's own methods."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.backend: Any = _stream_backend(tokenizer)
        self.local_invalid = False
        if self.backend is not None:
            from tokenizers import decoders

            # Byte-level BPE renders invalid bytes the same in any window (lossy UTF-8 of the bytes); byte fallback
            # turns a whole run of byte tokens into U+FFFD when any of it is invalid, so windows may differ there.
            self.local_invalid = isinstance(self.backend.decoder, decoders.ByteLevel)
        self._slow_setup: tuple[bool, frozenset[str], frozenset[str], int] | None = None

    def decode(self, prompt_ids: Sequence[int], samples: Sequence[Generated]) -> list[str]:
        """The text of each sample of one request (one prompt), as vLLM's detokenizer writes it."""
        gens = [list(s.token_ids[:-1] if s.stopped_by_token else s.token_ids) for s in samples]
        if self.backend is None:
            return [self._slow(prompt_ids, g) for g in gens]
        context, before = self._context(prompt_ids)
        whole = self.backend.decode_batch([context + g for g in gens], skip_special_tokens=True) if gens else []
        out = []
        for gen, text in zip(gens, whole, strict=True):
            settled = self._settle(context, before, gen, text)
            out.append(settled if settled is not None else self._stream(context, before, gen))
        return out

    def _context(self, prompt_ids: Sequence[int]) -> tuple[list[int], str]:
        """The prompt's last tokens and their text, standing in for the whole prompt: from PROMPT_TAIL on, more while
        they decode to nothing (special tokens: the sample's first token must follow text, as in vLLM) or start
        inside a character (U+FFFD first: the cut would change how a byte run across the junction is read)."""
        take = PROMPT_TAIL
        while True:
            context = list(prompt_ids[-take:]) if take < len(prompt_ids) else list(prompt_ids)
            text = self.backend.decode(context, skip_special_tokens=True)
            if (text and not text.startswith(REPLACEMENT)) or len(context) == len(prompt_ids):
                return context, text
            take *= 4

    def _settle(self, context: list[int], before: str, gen: list[int], text: str) -> str | None:
        """The stream's text from one whole decode, or None where only a replay can tell."""
        kept = len(gen)
        while text.endswith(REPLACEMENT) and kept and len(gen) - kept < MAX_HELD:
            kept -= 1  # what the stream still held back at the end: dropped
            text = self.backend.decode(context + gen[:kept], skip_special_tokens=True)
        if text.endswith(REPLACEMENT) or not text.startswith(before):
            return None
        said = text[len(before) :]
        if REPLACEMENT in said and not self.local_invalid:
            return None
        return said

    def _stream(self, context: list[int], before: str, gen: list[int]) -> str:
        """tokenizers' step_decode_stream (tokenizers/src/tokenizer/mod.rs) token by token, as vLLM drives it, primed
        with the prompt's tail (vLLM primes with the whole prompt: the same text), and always primed (see the
        module's docstring)."""
        decode = self.backend.decode
        ids, prefix, start = list(context), before, len(context)
        chunks: list[str] = []
        for token in gen:
            if not prefix and ids:
                primed = decode(ids, skip_special_tokens=True)
                if not primed.endswith(REPLACEMENT):
                    prefix, start = primed, len(ids)
            ids.append(token)
            text = decode(ids, skip_special_tokens=True)
            if len(text.encode()) <= len(prefix.encode()) or text.endswith(REPLACEMENT):
                continue
            if not text.startswith(prefix):
                # tokenizers raises "Invalid prefix"; vLLM starts a fresh stream (no context) at this token.
                ids, prefix, start = [token], "", 0
                text = decode(ids, skip_special_tokens=True)
                if not text or text.endswith(REPLACEMENT):
                    continue
            chunks.append(text[len(prefix) :])
            emitted = len(ids) - start
            ids = ids[start:]
            prefix = decode(ids, skip_special_tokens=True)
            start = emitted
        return "".join(chunks)

    def _slow(self, prompt_ids: Sequence[int], gen: list[int]) -> str:
        """vLLM's SlowIncrementalDetokenizer (detokenize_incrementally in vllm/tokenizers/detokenizer_utils.py)."""
        tok = self.tokenizer
        if self._slow_setup is None:
            plain = bool(getattr(tok, "is_fast", False)) or not tok.get_added_vocab()
            self._slow_setup = (plain, frozenset(tok.get_added_vocab()), frozenset(tok.all_special_tokens), len(tok))
        plain, added, special, vocab = self._slow_setup
        tokens = [
            t or "" for t in tok.convert_ids_to_tokens(list(prompt_ids[-SLOW_PROMPT_TOKENS:]), skip_special_tokens=True)
        ]
        read = len(tokens)
        prefix = max(read - SLOW_PREFIX_WINDOW, 0)
        chunks: list[str] = []
        for token in gen:
            new = tok.convert_ids_to_tokens([token], skip_special_tokens=True) if 0 <= token < vocab else [""]
            tokens.extend([new] if isinstance(new, str) else [t or "" for t in new])
            head = self._tokens_to_string(tokens[prefix:read], plain, added, special)
            text = self._tokens_to_string(tokens[prefix:], plain, added, special)
            if len(text) <= len(head) or text.endswith(REPLACEMENT):
                continue  # a character may not be complete yet
            chunks.append(text[len(head) :])
            prefix, read = read, len(tokens)
        return "".join(chunks)

    def _tokens_to_string(self, tokens: list[str], plain: bool, added: frozenset[str], special: frozenset[str]) -> str:
        if plain:
            return str(self.tokenizer.convert_tokens_to_string(tokens))
        # A Python tokenizer with added tokens: each added token is its own piece, joined by a space
        # (vLLM's spaces_between_special_tokens=True); special ones are skipped.
        pieces: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in special:
                continue
            if token in added:
                if run:
                    pieces.append(self.tokenizer.convert_tokens_to_string(run))
                    run = []
                pieces.append(token)
            else:
                run.append(token)
        if run:
            pieces.append(self.tokenizer.convert_tokens_to_string(run))
        return " ".join(pieces)


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """The text before the stop string that ends first (ties: the first listed), or None when none occurs."""
    best: tuple[int, int] | None = None  # (end, start)
    for s in stop:
        at = text.find(s) if s else -1
        if at >= 0 and (best is None or at + len(s) < best[0]):
            best = (at + len(s), at)
    return None if best is None else text[: best[1]]


def _stream_backend(tokenizer: Any) -> Any:
    """The tokenizers.Tokenizer vLLM would stream through (transformers' TokenizersBackend, before v5
    PreTrainedTokenizerFast), or None for a tokenizer vLLM decodes the slow way."""
    try:
        import transformers
    except ImportError:
        return None
    fast = getattr(transformers, "TokenizersBackend", None) or getattr(transformers, "PreTrainedTokenizerFast", None)
    if fast is None or not isinstance(tokenizer, fast):
        return None
    return getattr(tokenizer, "_tokenizer", None)


__all__ = ["Generated", "SampleDecoder", "cut_at_stop"]
