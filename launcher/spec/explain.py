"""spec/explain.py: the job spec's JSON Schema -> what a person reads: `launcher explain FIELD` (one field: meaning,
type, default, allowed values; or a section's fields) and `launcher schema --markdown` (every field, a table per
section). The words are the fields' own docstrings (pydantic puts them in the schema), so they never drift from
the code.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from typing import Any

from launcher.errors import SpecError

MAX_DEPTH = 6  # sections nest three deep today; a bound keeps a self-referencing schema from looping


@dataclass(frozen=True)
class FieldDoc:
    path: str  # "sampling.top_p", "data.datasets[].name"
    type: str
    default: str  # as YAML would show it; "(required)" or "(none)" where there is none
    allowed: str
    meaning: str
    section: bool  # a mapping of fields of its own (model, data.fields): explain lists them


def field_docs(schema: dict[str, Any]) -> list[FieldDoc]:
    """Every field of the spec, sections first-level first, in the order the schema declares them."""
    defs = schema.get("$defs", {})
    out: list[FieldDoc] = []
    _walk(schema, "", defs, out, 0)
    return out


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return {**defs.get(ref.removeprefix("#/$defs/"), {}), **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _object_of(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The section a field holds (itself, or the non-null branch of an optional one), if it has named fields."""
    node = _resolve(node, defs)
    for branch in [node, *node.get("anyOf", [])]:
        branch = _resolve(branch, defs)
        if branch.get("properties"):
            return branch
    return None


def _walk(node: dict[str, Any], prefix: str, defs: dict[str, Any], out: list[FieldDoc], depth: int) -> None:
    node = _resolve(node, defs)
    required = set(node.get("required", []))
    for name, raw in (node.get("properties") or {}).items():
        path = f"{prefix}{name}"
        field = _resolve(raw, defs)
        section = _object_of(field, defs)
        out.append(
            FieldDoc(
                path,
                _type_text(field, defs),
                _default_text(field, name in required),
                _allowed_text(field, defs),
                " ".join(str(field.get("description") or (section or {}).get("description") or "").split()),
                section is not None,
            )
        )
        if depth >= MAX_DEPTH:
            continue
        if section is not None:
            _walk(section, f"{path}.", defs, out, depth + 1)
        items = _object_of(field.get("items") or {}, defs) if field.get("type") == "array" else None
        if items is not None:
            _walk(items, f"{path}[].", defs, out, depth + 1)


def _type_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    node = _resolve(node, defs)
    if "anyOf" in node:
        kinds = [_type_text(branch, defs) for branch in node["anyOf"]]
        return " | ".join(dict.fromkeys(k for k in kinds if k != "null")) + (" | null" if "null" in kinds else "")
    kind = node.get("type")
    if kind == "array":
        return f"list of {_type_text(node.get('items') or {}, defs)}"
    if kind == "object":
        if node.get("properties"):
            return "section"
        values = node.get("additionalProperties")
        if not isinstance(values, dict):
            values = next(iter((node.get("patternProperties") or {}).values()), None)
        return f"mapping of name to {_type_text(values, defs)}" if isinstance(values, dict) else "mapping"
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    return {"number": "number", "integer": "integer", "string": "string", "boolean": "true/false"}.get(
        str(kind), str(kind) if kind else "any"
    )


def _default_text(node: dict[str, Any], required: bool) -> str:
    if "default" in node:
        return json.dumps(node["default"], ensure_ascii=False)
    return "(required)" if required else "(none)"


def _allowed_text(node: dict[str, Any], defs: dict[str, Any]) -> str:
    parts: list[str] = []
    for branch in [node, *node.get("anyOf", [])]:
        branch = _resolve(branch, defs)
        if "enum" in branch:
            parts.append("one of " + ", ".join(json.dumps(v) for v in branch["enum"]))
        if "const" in branch:
            parts.append(json.dumps(branch["const"]))
        low = next((f"{'>' if k == 'exclusiveMinimum' else '>='} {branch[k]}" for k in ("minimum", "exclusiveMinimum")
                    if k in branch), None)  # fmt: skip
        high = next((f"{'<' if k == 'exclusiveMaximum' else '<='} {branch[k]}" for k in ("maximum", "exclusiveMaximum")
                     if k in branch), None)  # fmt: skip
        if low or high:
            parts.append(" and ".join(p for p in (low, high) if p))
        if "pattern" in branch:
            parts.append(f"matching {branch['pattern']}")
        for key, words in (("minLength", "at least {} character(s)"), ("minItems", "at least {} item(s)")):
            if key in branch:
                parts.append(words.format(branch[key]))
        for pattern in branch.get("patternProperties") or {}:
            parts.append(f"names matching {pattern}")
    return "; ".join(dict.fromkeys(parts))


def explain(schema: dict[str, Any], path: str) -> str:
    """One field in full, or a section and its fields one line each. Unknown: SpecError (exit 2) with the
    closest names."""
    docs = field_docs(schema)
    path = path.strip().removeprefix(".")
    if not path:
        top = [d for d in docs if "." not in d.path.replace("[]", "")]
        return "the job spec's top-level fields (`launcher explain NAME` for one):\n" + _list(top)
    by_path = {d.path: d for d in docs}
    doc = by_path.get(path) or by_path.get(path.replace("[]", "")) or by_path.get(_with_list_marks(path, by_path))
    if doc is None:
        close = difflib.get_close_matches(path, list(by_path), n=5, cutoff=0.6)
        raise SpecError.one(
            "launcher explain",
            path,
            "no such field in the job spec",
            allowed=(f"e.g. {', '.join(close)}" if close else "a dotted field name, e.g. sampling.top_p"),
            fix="`launcher explain` lists the sections; `launcher schema --markdown` every field",
        )
    lines = [
        doc.path,
        f"  type:    {doc.type}",
        f"  default: {doc.default}",
        *([f"  allowed: {doc.allowed}"] if doc.allowed else []),
        "",
        *_wrap(doc.meaning or "(no description)", "  "),
    ]
    if doc.section:
        inner = [d for d in docs if d.path.startswith(doc.path + ".") or d.path.startswith(doc.path + "[].")]
        depth = doc.path.count(".") + 1
        lines += ["", "fields:", _list([d for d in inner if d.path.replace("[]", "").count(".") == depth])]
    return "\n".join(lines)


def _with_list_marks(path: str, by_path: dict[str, FieldDoc]) -> str:
    """data.datasets.name -> data.datasets[].name (a user types the dots, the list is implied)."""
    return next((p for p in by_path if p.replace("[]", "") == path), path)


def _list(docs: list[FieldDoc]) -> str:
    width = max((len(d.path) for d in docs), default=0)
    return "\n".join(
        f"  {d.path:<{width}}  {_first_sentence(d.meaning)}" + (f" (default {d.default})" if d.default not in
                                                               ("(none)", "(required)") and not d.section else "")
        for d in docs
    )  # fmt: skip


def _first_sentence(text: str) -> str:
    head = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", text, maxsplit=1)[0].rstrip(".")
    return head if len(head) <= 100 else head[:97] + "..."


def _wrap(text: str, indent: str, width: int = 100) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent) or [indent]


def markdown(schema: dict[str, Any]) -> str:
    """Every field, a table per section: field, type, default, allowed, meaning."""
    docs = field_docs(schema)
    out = [f"# {schema.get('title', 'job spec')}", "", "`launcher explain FIELD` shows one field.", ""]

    def table(rows: list[FieldDoc]) -> list[str]:
        lines = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for d in rows:
            cells = (f"`{d.path}`", d.type, f"`{d.default}`", d.allowed, d.meaning)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return [*lines, ""]

    top = [d for d in docs if "." not in d.path]
    out += ["## top level", "", *table([d for d in top if not d.section])]
    for section in (d for d in top if d.section):
        inner = [d for d in docs if d.path.startswith(section.path + ".")]
        out += [f"## {section.path}", "", *_wrap(section.meaning, ""), "", *table(inner)]
    return "\n".join(out)


__all__ = ["FieldDoc", "explain", "field_docs", "markdown"]
