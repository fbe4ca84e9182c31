"""plan/prefix_source.py: prompts as a worker renders them, tokenized cheaply on a login node, for `launcher plan`'s
prefix analysis (plan/prefix.py).

A worker tokenizes with transformers' AutoTokenizer and the chat template; importing transformers (and torch under
it) costs seconds, which `launcher plan` should not pay. The model's tokenizer.json, read by the `tokenizers`
library (milliseconds), gives the same token ids for the rendered text; the chat template is left out, and since it
puts the same header before every config's text, it only lengthens what configs share: the plan's figure is a
slight underestimate. Without tokenizer.json (or `tokenizers`): ~4 characters a token, and the plan says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.plan.prefix import PromptSource
from launcher.spec import JobSpec

CHARS_PER_TOKEN = 4


class _Builders:
    def __init__(self, spec: JobSpec) -> None:
        from launcher.inputs.prompts import make_builder

        self._builders = {a: make_builder(spec.data, a, None) for a in spec.data.ablation_configs}

    def builder(self, ablation: str) -> Any:
        return self._builders[ablation]


class TokenizerFile(_Builders):
    """The model's tokenizer.json through `tokenizers`, without the chat template."""

    def __init__(self, spec: JobSpec) -> None:
        from tokenizers import Tokenizer

        super().__init__(spec)
        self.tokenizer = Tokenizer.from_file(str(Path(spec.model.path) / "tokenizer.json"))

    def encode(self, texts: list[str], templated: list[bool] | None = None) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer.encode_batch(texts)]


class CharEstimate(_Builders):
    """One pseudo-token per CHARS_PER_TOKEN characters."""

    def encode(self, texts: list[str], templated: list[bool] | None = None) -> list[list[int]]:
        # each chunk's UTF-32 bytes as one number: equal chunks, equal ids (lone surrogates included)
        step = CHARS_PER_TOKEN
        return [
            [int.from_bytes(t[i : i + step].encode("utf-32-le", "surrogatepass")) for i in range(0, len(t), step)]
            for t in texts
        ]


def login_source(spec: JobSpec) -> tuple[PromptSource, str]:
    """The cheapest faithful source here, and what the figures were measured with."""
    try:
        return TokenizerFile(spec), "the model's tokenizer.json, without the chat template (it adds a shared header)"
    except Exception as exc:  # no tokenizer.json, no `tokenizers`, a file it cannot read
        why = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return CharEstimate(spec), f"estimated at ~{CHARS_PER_TOKEN} characters a token (no tokenizer here: {why})"


__all__ = ["CharEstimate", "TokenizerFile", "login_source"]
