"""spec/safe_checks.py: sampling.structured's regex and JSON schema -> checks that are safe to run on any text.

- regex: RE2 (google-re2) matches in time linear in the text and compiles in bounded memory, so no pattern can
  backtrack without end (Python's re spends minutes on `(a+)+$` against 30 a's and a b). RE2 has no backreferences
  and no lookaround; vLLM's structured-output backends take regular languages only as well, so a pattern RE2
  refuses is refused when the spec loads (exit 2).
- JSON schema: `$ref`s are local ("#/$defs/NAME"): nothing is fetched over the network or read from a file (the
  jsonschema library would follow http(s) and file: URLs), and the validator's registry refuses any retrieval. A
  schema whose references loop without reading the sample ({"$ref": "#"}) is refused at load. `pattern`,
  `patternProperties` and `additionalProperties` match with RE2 as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

MAX_REGEX_CHARS = 20_000
RE2_MAX_MEM = 64 << 20  # bytes RE2 may use for one compiled pattern


@lru_cache(maxsize=256)
def compile_regex(pattern: str) -> Any:
    """An RE2 pattern; ValueError saying why not."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise ValueError(f"a regex of {len(pattern):,} characters: at most {MAX_REGEX_CHARS:,}")
    import re2

    options = re2.Options()
    options.log_errors = False  # the reason comes back in the exception; RE2 would also print it to stderr
    options.max_mem = RE2_MAX_MEM
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"not a regular expression RE2 takes ({why}): no backreferences or lookaround, as in vLLM's "
            "structured outputs"
        ) from None


def _walk(schema: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a schema, without recursion."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why this schema cannot be checked safely, or None."""
    for node in _walk(schema):
        for key in ("$ref", "$dynamicRef", "$recursiveRef"):
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                return (
                    f"{key} {ref!r} points outside the schema: only local references (#/$defs/NAME) are followed, "
                    "nothing is fetched from the network or read from files"
                )
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns += [p for p in node["patternProperties"] if isinstance(p, str)]
        for pattern in patterns:
            try:
                compile_regex(pattern)
            except ValueError as exc:
                return f"pattern {pattern[:80]!r}: {exc}"
    validator = make_validator(schema)
    probes: tuple[Any, ...] = (None, 0, "", [], {}, [{}], {"a": [{}]})
    for probe in probes:
        try:
            validator.is_valid(probe)
        except RecursionError:
            return "its $refs loop without end (a reference that reaches itself before reading any of the sample)"
        except Exception as exc:  # a $ref to nowhere, a keyword with a value of the wrong type...
            return f"it cannot be applied to a sample: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def _re2_search(pattern: str, text: str) -> bool:
    return compile_regex(pattern).search(text) is not None


def _pattern(validator: Any, patrn: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _re2_search(patrn, instance):
        yield ValidationError(f"{instance[:80]!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, props: dict[str, Any], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in props.items():
        for k, v in instance.items():
            if _re2_search(patrn, k):
                yield from validator.descend(v, subschema, path=k, schema_path=patrn)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in properties and not any(_re2_search(p, k) for p in patterns)]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, sorted(extras)[:5]))})")


def make_validator(schema: dict[str, Any]) -> Any:
    """A jsonschema validator for `schema` whose registry retrieves nothing and whose regexes run on RE2."""
    from jsonschema.validators import extend, validator_for
    from referencing import Registry
    from referencing.exceptions import NoSuchResource

    def refuse(uri: str) -> Any:
        raise NoSuchResource(uri)

    cls = extend(
        validator_for(schema),
        {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties},
    )
    return cls(schema, registry=Registry(retrieve=refuse))  # type: ignore[call-arg]


__all__ = ["MAX_REGEX_CHARS", "compile_regex", "make_validator", "schema_problem"]
