"""spec/sampling.py: the sampling section (vLLM's names; the old script's defaults)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from launcher.spec.common import _FieldError, _Section
from launcher.spec.safe_checks import compile_regex, schema_problem

STRUCTURED_KINDS = ("json_schema", "regex", "choice", "grammar")


class StructuredSpec(_Section):
    """One output constraint, checked when the spec is loaded (so at `plan`), applied by vLLM to every sample."""

    json_schema: dict[str, Any] | None = None
    """A JSON Schema (inline mapping) every sample must satisfy. Checked against the JSON Schema meta-schema."""
    regex: str | None = None
    """A regular expression every sample must match in full."""
    choice: list[str] | None = Field(default=None, min_length=1)
    """The sample is exactly one of these strings."""
    grammar: str | None = Field(default=None, min_length=1)
    """An EBNF (GBNF/Lark) grammar, as vLLM's structured outputs take it."""

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        from jsonschema import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(value).check_schema(value)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "(top level)"
            raise _FieldError(
                tuple(str(p) for p in exc.path),
                f"not a valid JSON Schema at {where}: {exc.message}",
                "a JSON Schema (https://json-schema.org), e.g. {type: object, properties: {answer: {type: string}}}",
                "fix the schema; `python -c 'import jsonschema, yaml, sys; jsonschema.validators.validator_for({}).'"
                "check_schema(yaml.safe_load(sys.stdin))' < schema.yaml` checks one alone",
            ) from None
        except RecursionError:
            raise ValueError("a JSON Schema nested too deeply to check") from None
        problem = schema_problem(value)
        if problem is not None:
            raise _FieldError(
                (),
                f"this JSON Schema cannot be checked safely: {problem}",
                "a self-contained JSON Schema: local $refs (#/$defs/NAME) only, RE2 patterns",
                "inline what the $ref points at (or put it under $defs and refer to it as #/$defs/NAME)",
            )
        return value

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
            try:  # samples are judged with RE2 (linear time): a pattern it refuses is refused here
                compile_regex(value)
            except ValueError as exc:
                raise _FieldError(
                    (),
                    str(exc),
                    "a regular expression of a regular language (RE2 syntax: classes, groups, |, *, +, ?, {m,n})",
                    "rewrite it without backreferences (\\1) and lookaround ((?=...), (?!...), (?<=...)); "
                    "or use sampling.structured.json_schema / grammar",
                ) from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredSpec:
        given = [k for k in STRUCTURED_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise _FieldError(
                (),
                f"{'several constraints given: ' + ', '.join(given) if given else 'no constraint given'}",
                "exactly one of " + ", ".join(STRUCTURED_KINDS),
                "keep one of them" if given else "add e.g. json_schema: {type: object, ...}",
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STRUCTURED_KINDS if getattr(self, k) is not None)

    def vllm_kwargs(self) -> dict[str, Any]:
        """The arguments of vLLM's StructuredOutputsParams."""
        kind = self.kind
        return {"json" if kind == "json_schema" else kind: getattr(self, kind)}


class SamplingSpec(_Section):
    """How each sample is drawn (vLLM's names; the old inference_vllm.py defaults)."""

    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    """0 means greedy. 1.0 is the old inference_vllm.py default, kept so migrated runs match."""
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to top_p."""
    top_k: int = Field(default=50, ge=-1)
    """Keep the k most likely tokens; -1 or 0 keeps all."""
    max_tokens: int = Field(default=512, ge=1, le=131_072)
    """New tokens per sample (vLLM's name)."""
    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    """Run seed. A record's samples depend only on (seed, record id), never on sharding, batching or retries."""
    ignore_eos: bool = False
    """Generate exactly max_tokens (benchmarks)."""
    stop: list[str] = Field(default_factory=list)
    """Stop strings (each at least one character: an empty one would end every sample before its first token)."""
    structured: StructuredSpec | None = None
    """Constrain every sample to a format (vLLM's structured outputs): exactly one of json_schema, regex, choice,
    grammar. vLLM only; the HF backend refuses it. JSON runs count the samples that parse in the summary."""

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: list[str]) -> list[str]:
        empty = [i for i, x in enumerate(value) if x == ""]
        if empty:
            raise _FieldError(
                (empty[0],),
                "an empty stop string: every sample would stop before its first token (all empty)",
                "stop strings of at least one character",
                "remove the empty string from sampling.stop",
            )
        return value
