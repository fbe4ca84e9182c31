"""spec/load.py: YAML files (+ extends, + --set overrides) -> one merged dict and where each key came from, so that
every error can name file:line.

PyYAML's composer keeps the line of every node; we keep it per dotted key so a validation error can point at
`configs/x.yaml:14`. Paths are made absolute against the folder of the file that set them, because tasks run
elsewhere (another node, inside a container) and must not depend on the submitter's working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import SpecError

Key = tuple[str | int, ...]
MAX_EXTENDS_DEPTH = 8


class SpecYamlLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers: `time: 04:00:00` must stay a Slurm time, not 14400."""


SpecYamlLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if not (tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in regexp.pattern)
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$",
        list("-+0123456789"),
    ),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
        r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+)$",
        list("-+0123456789."),
    ),
):
    SpecYamlLoader.add_implicit_resolver(_tag, __import__("re").compile(_pattern), _first)


@dataclass
class Layers:
    data: dict[str, Any]
    origin: dict[Key, str] = field(default_factory=dict)  # key -> "file:line" or "--set ..."
    base_dir: dict[Key, Path] = field(default_factory=dict)  # key -> folder relative paths are read from
    root: str = "<spec>"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Layers:
        layers = cls(data={}, root=where)
        layers.merge(data, where_of=lambda _k: where, base=Path.cwd())
        return layers

    def where(self, key: Key) -> str:
        """The most precise location known for key (falls back to its parents, then the root file)."""
        for n in range(len(key), -1, -1):
            if key[:n] in self.origin:
                return self.origin[key[:n]]
        return self.root

    def merge(self, new: dict[str, Any], where_of: Any, base: Path, prefix: Key = ()) -> None:
        _merge_into(self.data, new, prefix, self, where_of, base)


def _merge_into(
    dst: dict[str, Any], src: dict[str, Any], prefix: Key, layers: Layers, where_of: Any, base: Path
) -> None:
    for k, v in src.items():
        key = (*prefix, k)
        layers.origin[key] = where_of(key)
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_into(dst[k], v, key, layers, where_of, base)
        else:
            dst[k] = v
            _record_base(v, key, layers, where_of, base)
        layers.base_dir[key] = base


def _record_base(value: Any, key: Key, layers: Layers, where_of: Any, base: Path) -> None:
    layers.base_dir[key] = base
    if isinstance(value, dict):
        for k, v in value.items():
            layers.origin[(*key, k)] = where_of((*key, k))
            _record_base(v, (*key, k), layers, where_of, base)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            layers.origin[(*key, i)] = where_of((*key, i))
            _record_base(v, (*key, i), layers, where_of, base)


MAX_NODES = 100_000  # a spec is a few hundred nodes; this many means aliases nested to blow up (a "billion laughs")


class _TooBig(Exception):
    pass


def _line_map(node: yaml.Node, prefix: Key, out: dict[Key, int], shown: str, budget: list[int]) -> None:
    """Line of every key (for errors), refusing duplicate keys: YAML would silently keep only the last one."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for k_node, v_node in node.value:
            key = (*prefix, k_node.value)
            line = k_node.start_mark.line + 1
            if isinstance(k_node, yaml.ScalarNode) and k_node.value in first_line:
                raise SpecError.one(
                    f"{shown}:{line}",
                    _dotted_key(key),
                    f"duplicate key {k_node.value!r}, first "
                    f"set at line {first_line[k_node.value]}; YAML would silently keep only this one",
                    fix="remove one of the two (or merge them)",
                )
            first_line[k_node.value] = line
            out[key] = line
            _line_map(v_node, key, out, shown, budget)
            out[key] = line  # the key's own line beats its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*prefix, i), out, shown, budget)


def _dotted_key(key: Key) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if n else str(k)) for n, k in enumerate(key))


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[Key, int]]:
    shown = _shown(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError.one(
            shown, "", "file not found", fix=f"check the path; the working directory is {Path.cwd()}"
        ) from None
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise SpecError.one(
            f"{shown}:{bad_line}",
            "",
            f"not UTF-8 text: byte {exc.object[exc.start]:#04x} cannot be decoded",
            fix="save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise SpecError.one(
            shown, "", f"cannot read: {exc.strerror or exc}", fix="check the path and the file's permissions"
        ) from None
    lines: dict[Key, int] = {}
    try:
        node = yaml.compose(text, Loader=SpecYamlLoader)
        if node is not None:
            _line_map(node, (), lines, shown, [MAX_NODES])
        data = yaml.load(text, Loader=SpecYamlLoader)  # a SafeLoader: tags such as !!python/object are refused
    except _TooBig:
        raise SpecError.one(
            shown,
            "",
            f"more than {MAX_NODES} YAML nodes once aliases are expanded",
            fix="a job spec needs no nested aliases (*name); write the values out",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and opened is not None:  # "while scanning a quoted scalar": point where it was opened
            problem = f"{problem} ({context} that starts at line {opened.line + 1})"
            if "end of stream" in problem:
                mark = opened
        line = f":{mark.line + 1}" if mark is not None else ""
        fix = (
            "remove the tag: a job spec holds plain values (no !!python/... or other tags)"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else "check indentation (spaces, not tabs) and quote values that contain ': ' or '#'"
        )
        raise SpecError.one(f"{shown}{line}", "", f"YAML syntax error: {problem}", fix=fix) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError.one(
            f"{shown}:1",
            "",
            f"the spec must be a mapping of sections, got {type(data).__name__}",
            allowed=", ".join(SPEC_SECTIONS),
            fix="start from configs/demo.yaml",
        )
    return data, lines


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_layers(path: Path, overrides: list[str]) -> Layers:
    layers = Layers(data={}, root=f"{_shown(path)}:1")  # a key missing from the file belongs at its top
    _load_file(path, layers, chain=[])
    apply_overrides(layers, overrides)
    return layers


def apply_overrides(layers: Layers, overrides: list[str]) -> None:
    """--set key.path=value, each merged over what the files said (and remembered as where the value came from)."""
    for text in overrides:
        key, value = parse_override(text)
        where = f"--set {text}"
        node: Any = {}
        cur = node
        for part in key[:-1]:
            cur[part] = {}
            cur = cur[part]
        cur[key[-1]] = value
        layers.merge(node, where_of=lambda _k, w=where: w, base=Path.cwd())


def _load_file(path: Path, layers: Layers, chain: list[Path]) -> None:
    resolved = path.resolve()
    if resolved in chain:
        raise SpecError.one(
            _shown(path),
            "extends",
            "extends loops back to a file already in the chain: " + " -> ".join(_shown(p) for p in [*chain, resolved]),
            fix="remove one of the extends",
        )
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError.one(
            _shown(path), "extends", f"more than {MAX_EXTENDS_DEPTH} levels of extends", fix="flatten the profiles"
        )
    try:
        data, lines = read_yaml(path)
    except SpecError as exc:
        if not chain:
            raise
        # A file reached through `extends` may be anything (a typo, /etc/shadow): say it is not a spec, and never
        # echo its lines, keys or values, which a YAML or validation error would quote.
        raise _not_a_spec(path, chain, "it is not YAML a spec could be read from") from exc
    shown = _shown(path)
    if chain:
        unknown = [k for k in data if k not in SPEC_SECTIONS]
        if unknown:
            raise _not_a_spec(path, chain, f"{len(unknown)} of its top-level keys are not spec sections")
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise SpecError.one(
                f"{shown}:{lines.get(('extends',), 1)}",
                "extends",
                f"must be a file path, got {parent!r}",
                fix="extends: profiles/mycluster.yaml",
            )
        parent_path = Path(os.path.expandvars(os.path.expanduser(parent)))
        if not parent_path.is_absolute():
            parent_path = resolved.parent / parent_path
        if not parent_path.exists():
            raise SpecError.one(
                f"{shown}:{lines.get(('extends',), 1)}",
                "extends",
                f"file not found: {parent_path}",
                fix="extends takes a path relative to this spec's folder",
            )
        _load_file(parent_path, layers, [*chain, resolved])

    def where_of(key: Key) -> str:
        for n in range(len(key), -1, -1):
            if key[:n] in lines:
                return f"{shown}:{lines[key[:n]]}"
        return shown

    layers.merge(data, where_of=where_of, base=resolved.parent)


SPEC_SECTIONS = (
    "name",
    "model",
    "models",
    "data",
    "sampling",
    "slurm",
    "container",
    "output",
    "executor",
    "cost",
    "scheduling",
    "extends",
)


def _not_a_spec(path: Path, chain: list[Path], why: str) -> SpecError:
    return SpecError.one(
        f"{_shown(chain[-1])}",
        "extends",
        f"{_shown(path)} is not a job spec or cluster profile: {why} (its content is not shown)",
        allowed=f"a YAML file of spec sections: {', '.join(SPEC_SECTIONS)}",
        fix="point extends at a cluster profile, e.g. configs/slurm-local.yaml",
    )


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`a.b=c` -> (("a", "b"), c); the value is read as YAML, so `1.5`, `true`, `[a, b]` get their types."""
    if "=" not in text:
        raise SpecError.one(
            f"--set {text}",
            "",
            "an override needs the form section.field=value",
            fix="e.g. --set sampling.temperature=0.8",
        )
    key_text, _, raw = text.partition("=")
    key = tuple(key_text.strip().split("."))
    if not all(k and k.replace("_", "").isalnum() for k in key):
        raise SpecError.one(f"--set {text}", key_text, "not a dotted field name", fix="e.g. --set slurm.partition=gpu")
    try:
        value = yaml.load(raw, Loader=SpecYamlLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_path(value: str, base: Path) -> str:
    """~ and $VARS expanded; relative paths read from the folder of the file that set them."""
    expanded = Path(os.path.expandvars(os.path.expanduser(value)))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())
