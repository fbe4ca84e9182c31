"""gather/structured.py: how many samples of a structured-output run conform (inference_summary.json "structured").

vLLM's constrained decoding guarantees the format only up to max_tokens: a sample cut at the limit (finish reason
"length") is a prefix of a valid output, not a valid one. So the summary checks every sample rather than trusting
the constraint, and says how many were cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from launcher.spec.sampling import StructuredSpec


def _checker(spec: StructuredSpec) -> Any:
    """text -> conforms? (None for a grammar: no parser for vLLM's EBNF here, so those samples are not judged)."""
    if spec.json_schema is not None:
        from jsonschema.validators import validator_for

        validator = validator_for(spec.json_schema)(spec.json_schema)

        def check_json(text: str) -> bool:
            try:
                return bool(validator.is_valid(json.loads(text)))
            except ValueError:
                return False

        return check_json
    if spec.regex is not None:
        pattern = re.compile(spec.regex)
        return lambda text: pattern.fullmatch(text) is not None
    if spec.choice is not None:
        choices = set(spec.choice)
        return lambda text: text in choices
    return None


def structured_figures(spec: StructuredSpec | None, rows: Iterable[Any]) -> dict[str, Any] | None:
    """{kind, samples, conforming, conforming_fraction, cut_at_max_tokens} over every sample of a cell."""
    if spec is None:
        return None
    check = _checker(spec)
    samples = conforming = cut = 0
    for row in rows:
        texts: Sequence[str] = row["generated_samples"]
        reasons: Sequence[str] = row.get("finish_reasons") or [""] * len(texts)
        for text, reason in zip(texts, reasons, strict=False):
            samples += 1
            cut += reason == "length"
            if check is not None and check(text):
                conforming += 1
    judged = check is not None
    return {
        "kind": spec.kind,
        "samples": samples,
        "conforming": conforming if judged else None,
        "conforming_fraction": round(conforming / samples, 4) if judged and samples else None,
        "cut_at_max_tokens": cut,
        "how": {
            "json_schema": "json.loads, then validated against the schema",
            "regex": "full match of the regex",
            "choice": "exactly one of the choices",
            "grammar": "not judged (no EBNF parser outside vLLM)",
        }[spec.kind],
    }
