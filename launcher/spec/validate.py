"""spec/validate.py: merged spec dict -> JobSpec, so that pydantic's errors become ones that name file:line and the
fix."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, ValidationError

from launcher.errors import Problem, SpecError
from launcher.spec.common import SLUG, _slugify
from launcher.spec.load import Key, Layers, resolve_path

M = TypeVar("M", bound=BaseModel)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
MAX_PROBLEMS = 12
# Fields holding paths, made absolute against the folder of the file that set them.
PATH_KEYS: tuple[Key, ...] = (
    ("model", "path"),
    ("data", "preamble"),
    ("output", "dir"),
    ("output", "scratch_dir"),
    ("data_root",),
)
CHAT_TEMPLATE_SUFFIXES = (".jinja", ".j2", ".jinja2")
RENAMED: dict[Key, tuple[str, str]] = {  # key -> (its new name, what it means now)
    ("data", "scenario"): (
        "data.preamble",
        "a text file every prompt starts with; the old --scenario_path named the "
        "records, which `launcher run --scenario_path` does again",
    ),
}


def validate(layers: Layers, model: type[M]) -> M:
    _refuse_renamed(layers)
    _resolve_paths(layers)
    from launcher.spec.catalog import resolve_dataset_paths

    resolve_dataset_paths(layers)
    try:
        obj = model.model_validate(layers.data)
    except ValidationError as exc:
        problems = [_problem(err, layers, model) for err in exc.errors()[:MAX_PROBLEMS]]
        raise SpecError(problems) from None
    if "_origin" in (obj.__private_attributes__ or {}):  # JobSpec: later checks (plan) point at file:line too
        obj._origin = dict(layers.origin)  # type: ignore[attr-defined]
        obj._root = layers.root  # type: ignore[attr-defined]
    return obj


def _resolve_paths(layers: Layers) -> None:
    data = layers.data
    keys: list[Key] = list(PATH_KEYS)
    datasets = data.get("data", {}).get("datasets") if isinstance(data.get("data"), dict) else None
    if isinstance(datasets, list):
        keys += [("data", "datasets", i, "path") for i in range(len(datasets))]
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("adapters"), dict):
        keys += [("model", "adapters", name) for name in model["adapters"]]
    if isinstance(data.get("models"), dict):
        keys += [("models", name) for name in data["models"]]
    catalog = data.get("datasets")
    if isinstance(catalog, dict):
        keys += [("datasets", name) for name in catalog]
    templates = data.get("data", {}).get("templates") if isinstance(data.get("data"), dict) else None
    if isinstance(templates, dict):
        keys += [("data", "templates", name, "file") for name in templates]
    chat = data.get("data", {}).get("chat_template") if isinstance(data.get("data"), dict) else None
    if isinstance(chat, str) and chat.endswith(CHAT_TEMPLATE_SUFFIXES) and "{" not in chat:
        keys.append(("data", "chat_template"))  # a file; inline templates hold {% %} / {{ }}
    for key in keys:
        parent: Any = data
        for part in key[:-1]:
            if isinstance(parent, dict):
                parent = parent.get(part)
            elif isinstance(parent, list) and isinstance(part, int) and part < len(parent):
                parent = parent[part]
            else:
                parent = None
        last = key[-1]
        if isinstance(parent, dict) and isinstance(parent.get(last), str) and parent[last]:
            base = layers.base_dir.get(key) or layers.base_dir.get(key[:-1])
            if base is not None:
                parent[last] = resolve_path(parent[last], base)


def _refuse_renamed(layers: Layers) -> None:
    for key, (new, meaning) in RENAMED.items():
        parent: Any = layers.data
        for part in key[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and key[-1] in parent:
            raise SpecError.one(
                layers.where(key),
                _dotted(key),
                f"{_dotted(key)} was renamed {new}",
                allowed=f"{new}: {meaning}",
                fix=f"rename the key to {new.split('.')[-1]}",
            )


def _problem(err: Any, layers: Layers, root: type[BaseModel]) -> Problem:
    loc: Key = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if inner is not None and hasattr(inner, "loc"):  # a validator that pointed at a deeper field
        loc = (*loc, *inner.loc)
        return Problem(layers.where(loc), _dotted(loc), inner.message, inner.allowed, inner.fix)
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"literal", "function-after"})))
    field_info, owner = _field_at(root, loc)
    where = layers.where(loc)
    got = err.get("input")
    if kind == "extra_forbidden":
        section = owner if owner is not None else root
        known = list(section.model_fields)
        name = str(loc[-1])
        hint = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        fix = f"did you mean {hint[0]!r}?" if hint else "remove it"
        return Problem(where, _dotted(loc), f"unknown key {name!r}", f"one of: {', '.join(known)}", fix)
    if kind == "missing":
        doc = (field_info.description or "").split("\n")[0] if field_info else ""
        parent = _dotted(loc[:-1]) or "top"
        return Problem(where, _dotted(loc), "required, but missing", doc, f"add `{loc[-1]}:` to the {parent} section")
    allowed = _allowed(field_info) if field_info else ""
    message = _message(err["msg"], got)
    fix = ""
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == SLUG:
        return Problem(
            where,
            _dotted(loc),
            f"{got!r} cannot be used as a name (it becomes part of folder names and Slurm job names)",
            "1-64 of letters, digits, '_', '.', '-'; first a letter or digit",
            f"e.g. {_slugify(str(got))!r}",
        )
    if kind in {"literal_error", "enum"} and isinstance(got, str) and field_info is not None:
        choices = _literal_choices(field_info.annotation)
        hint = difflib.get_close_matches(got, [str(c) for c in choices], n=1, cutoff=0.5)
        fix = f"did you mean {hint[0]!r}?" if hint else f"use one of: {', '.join(map(str, choices))}"
    else:
        doc = (field_info.description or "").split("\n")[0] if field_info is not None else ""
        want = allowed or (_TYPE_WORDS.get(kind.split("_")[0], "") if kind.endswith(("_type", "_parsing")) else "")
        fix = f"use {want}" + (f" ({doc})" if doc else "") if want else doc
    return Problem(where, _dotted(loc), message, allowed, fix)


# pydantic's error kinds (string_type, int_parsing, ...) -> what to write instead
_TYPE_WORDS = {
    "string": "text (quote it if it looks like a number)",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list, e.g. [a, b] or one '- item' per line",
    "dict": "a mapping of key: value lines",
    "model": "a section of key: value lines",
}


def _message(msg: str, got: Any) -> str:
    msg = msg.replace("Value error, ", "").replace("Input should be", "must be")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return f"{msg}, got {shown}" if len(shown) < 200 else f"{msg}, got {shown[:200]}..."


def _dotted(loc: Key) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int) or not _PLAIN_KEY.fullmatch(str(part)):  # odd keys shown quoted: a.b['x\ny']
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _field_at(root: type[BaseModel], loc: Key) -> tuple[Any, type[BaseModel] | None]:
    """The FieldInfo at loc and the model that owns it (for 'did you mean' over its siblings)."""
    model: type[BaseModel] | None = root
    info = None
    owner: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if part not in model.model_fields:
            return None, model
        info = model.model_fields[part]
        owner = model
        model = _inner_model(info.annotation)
    return info, owner


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _literal_choices(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    out: list[Any] = []
    if get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            out += _literal_choices(arg)
    return out


def _is_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    args = get_args(annotation)
    return bool(args) and any(_is_int(a) for a in args) and float not in args


def _allowed(info: Any) -> str:
    lo: Any = None
    hi: Any = None
    lo_open = hi_open = False
    for meta in info.metadata:
        if isinstance(meta, at.Gt):
            lo, lo_open = meta.gt, True
        elif isinstance(meta, at.Ge):
            lo = meta.ge
        elif isinstance(meta, at.Lt):
            hi, hi_open = meta.lt, True
        elif isinstance(meta, at.Le):
            hi = meta.le
    choices = _literal_choices(info.annotation)
    parts = []
    if choices:
        parts.append("one of " + ", ".join(map(str, choices)))
    if lo is not None or hi is not None:
        left = ("(" if lo_open else "[") + (str(lo) if lo is not None else "-inf")
        right = (str(hi) if hi is not None else "inf") + (")" if hi_open else "]")
        parts.append(f"{'a whole number' if _is_int(info.annotation) else 'a number'} in {left}, {right}")
    return " or ".join(parts)
