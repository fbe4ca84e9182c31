"""gather/structured.py: how many samples of a structured-output run conform (inference_summary.json "structured").

vLLM's constrained decoding guarantees the format only up to max_tokens: a sample cut at the limit (finish reason
"length") is a prefix of a valid output, not a valid one. So the summary checks every sample rather than trusting
the constraint, and says how many were cut.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from launcher.inputs.bounded import BoundExceeded, deadline
from launcher.spec.safe_checks import compile_regex, make_validator
from launcher.spec.sampling import StructuredSpec

CHECK_S = 1.0  # per sample: a JSON document of max_tokens tokens validates in milliseconds
MAX_UNJUDGED = 20  # samples that hit a bound before the rest of the cell is left unjudged (a bounded gather)


class Unjudged(Exception):
    """This sample could not be judged within the bounds (the reason says why)."""


def _checker(spec: StructuredSpec) -> Callable[[str], bool] | None:
    """text -> conforms? (raises Unjudged); None for a grammar: no parser for vLLM's EBNF here, so those samples are
    not judged. Regexes run on RE2 and schemas on local $refs only (spec/safe_checks.py): linear, offline, bounded."""
    if spec.json_schema is not None:
        validator = make_validator(spec.json_schema)

        def check_json(text: str) -> bool:
            try:
                doc = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
                return False
            try:
                with deadline(CHECK_S, "the JSON schema check"):
                    return bool(validator.is_valid(doc))
            except (BoundExceeded, RecursionError) as exc:
                raise Unjudged(f"{type(exc).__name__}: {exc}") from None

        return check_json
    if spec.regex is not None:
        pattern = compile_regex(spec.regex)

        def check_regex(text: str) -> bool:
            try:
                return pattern.fullmatch(text) is not None
            except Exception as exc:  # text RE2 cannot take (a lone surrogate): never a crash
                raise Unjudged(f"{type(exc).__name__}: {exc}") from None

        return check_regex
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
    unjudged: list[str] = []
    for row in rows:
        texts: Sequence[str] = row["generated_samples"]
        reasons: Sequence[str] = row.get("finish_reasons") or [""] * len(texts)
        for text, reason in zip(texts, reasons, strict=False):
            samples += 1
            cut += reason == "length"
            if check is None or len(unjudged) >= MAX_UNJUDGED:
                continue
            try:
                conforming += check(text)
            except Unjudged as exc:
                unjudged.append(str(exc))
    judged = check is not None
    figures = {
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
    if unjudged:  # counted as not conforming; past MAX_UNJUDGED the rest is skipped so gather stays bounded
        figures["not_judged"] = {"samples": len(unjudged), "first_reason": unjudged[0][:300],
                                 "stopped_judging": len(unjudged) >= MAX_UNJUDGED}  # fmt: skip
    return figures
