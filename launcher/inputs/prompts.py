"""inputs/prompts.py: Record + ablation config -> prompt text (jinja2), then the tokenizer's chat template if it has
one: the one place a prompt is made, so that plan's checks and the workers render the same text.

Built-in ablation configs choose which parts of a record the prompt shows; custom ones are jinja2 templates
from the spec. Templates run in a sandbox with StrictUndefined: a typo in a variable name fails at plan time,
not after an hour of generation. Every render is bounded in time and size (bounded.py): a template that loops
without end fails its record (or, at plan's dry render, the spec), it never hangs the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateNotFound

from launcher.errors import SpecError
from launcher.inputs.bounded import BoundedSandbox, BoundExceeded, render
from launcher.inputs.records import Record
from launcher.spec import DataSpec

PARTS = {
    "context_only": ("context",),
    "profile_only": ("profile",),
    "history_only": ("history",),
    "profile_and_history": ("profile", "history"),
    "profile_and_context": ("profile", "context"),
    "history_and_context": ("history", "context"),
    "full": ("profile", "history", "context"),
}
HEADINGS = {"profile": "User profile", "history": "The user's past writing", "context": "Current context"}
INSTRUCTION = "Write the text this user would write next, in their own voice."

BUILTIN_TEMPLATE = """{% if preamble %}{{ preamble }}

{% endif %}{% for part in parts %}{% if values[part] %}## {{ headings[part] }}
{{ values[part] }}

{% endif %}{% endfor %}{{ instruction }}"""

_ENV = BoundedSandbox(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


@lru_cache(maxsize=64)
def _compiled(text: str) -> Template:
    return _ENV.from_string(text)


ChatFormatter = Callable[[list[dict[str, str]]], str]


def render_part(value: Any) -> str:
    """A profile/history/context value as text: lists become bullet lines, mappings `key: value` lines.

    Walked with a stack of its own, not by recursion: a record may nest MAX_DEPTH levels (inputs/records.py), and a
    worker renders it with the frames of submitit, the job and the prep thread already below it (issue 26)."""
    done: list[str] = []  # rendered values, in order; a container's join takes its children's off the end
    work: list[tuple[bool, Any]] = [(False, value)]  # (True, prefixes): join that many rendered children
    while work:
        joining, item = work.pop()
        if joining:
            n = len(item)
            children = done[len(done) - n :]
            del done[len(done) - n :]
            done.append("\n".join(prefix + text for prefix, text in zip(item, children, strict=True)))
        elif isinstance(item, Mapping):
            pairs = list(item.items())
            work.append((True, [f"{k}: " for k, _ in pairs]))
            work.extend((False, v) for _, v in reversed(pairs))
        elif isinstance(item, (list, tuple)):
            work.append((True, ["- "] * len(item)))
            work.extend((False, v) for v in reversed(item))
        else:
            done.append(_scalar_text(item))
    return done[0]


def _scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Prompt:
    text: str
    templated: bool  # the chat template wrote the special tokens (BOS...) itself: the tokenizer must not add them


@dataclass(frozen=True)
class PromptBuilder:
    """Compiled once per task; build() per record."""

    ablation: str
    template_text: str
    preamble: str
    system_prompt: str | None
    chat: ChatFormatter | None

    def user_text(self, record: Record) -> str:
        values = {
            "profile": render_part(record.profile),
            "history": render_part(record.history),
            "context": render_part(record.context),
        }
        variables = {
            **values,
            "values": values,
            "parts": PARTS.get(self.ablation, ()),
            "headings": HEADINGS,
            "instruction": INSTRUCTION,
            "preamble": self.preamble,
            "scenario": self.preamble,
            "record": record.raw,
            "user_id": record.user_id,
            "record_id": record.record_id,
        }
        return render(_compiled(self.template_text), variables).strip()

    def prompt(self, record: Record) -> Prompt:
        """The record's prompt: a raw one as is; messages, or the ablation's text, through the chat template."""
        if record.prompt is not None:  # an OpenAI /v1/completions request: the client formatted it
            return Prompt(record.prompt, templated=False)
        if record.messages is not None:
            messages = [dict(m) for m in record.messages]
            if self.system_prompt and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            if self.chat is None:
                return Prompt("\n\n".join(m["content"] for m in messages), templated=False)
            return Prompt(self.chat(messages), templated=True)
        text = self.user_text(record)
        if self.chat is None:
            return Prompt(text, templated=False)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return Prompt(self.chat([*system, {"role": "user", "content": text}]), templated=True)

    def build(self, record: Record) -> str:
        return self.prompt(record).text


def template_for(data: DataSpec, ablation: str) -> str:
    if ablation in data.templates:
        tpl = data.templates[ablation]
        if tpl.text is not None:
            return tpl.text
        assert tpl.file is not None
        try:
            return Path(tpl.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError.one(
                tpl.file,
                f"data.templates.{ablation}.file",
                f"cannot read the template: {exc}",
                fix="check the path (relative to the spec's folder)",
            ) from None
    if ablation in PARTS:
        return BUILTIN_TEMPLATE
    raise SpecError.one(
        "<spec>",
        "data.ablation_configs",
        f"unknown ablation config {ablation!r}",
        allowed=", ".join(PARTS),
        fix="add it under data.templates",
    )


def read_preamble(data: DataSpec) -> str:
    if not data.preamble:
        return ""
    try:
        return Path(data.preamble).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SpecError.one(data.preamble, "data.preamble", f"cannot read: {exc}", fix="check the path") from None


def read_chat_template(data: DataSpec) -> str | None:
    """The spec's own chat template (inline, or the file it names); None: the tokenizer's, or none."""
    value = data.chat_template
    if not isinstance(value, str):
        return None
    if "{" in value:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError.one(
            value,
            "data.chat_template",
            f"cannot read the chat template file: {exc}",
            allowed="true, false, an inline jinja2 chat template, or a *.jinja / *.j2 file",
            fix="check the path (relative to the spec's folder)",
        ) from None


def make_builder(data: DataSpec, ablation: str, chat: ChatFormatter | None) -> PromptBuilder:
    text = template_for(data, ablation)
    check_template(text, f"data.templates.{ablation}")
    return PromptBuilder(ablation, text, read_preamble(data), data.system_prompt, chat if data.chat_template else None)


class _AnyRow(dict[str, Any]):
    """Stands in for a record in the dry render: any column name resolves."""

    def __missing__(self, key: object) -> str:
        return "x"


def check_template(text: str, field: str, where: str = "template") -> None:
    """Compile and dry-render the template so syntax errors, unknown variables and what the sandbox forbids fail
    before submission. `where` is the spec's file:line (or the template file) that the error points at."""
    probe = Record(0, "r", "u", "p", ["h"], "c", _AnyRow())
    try:
        PromptBuilder("full", text, "", None, None).user_text(probe)
    except TemplateSyntaxError as exc:
        raise SpecError.one(
            where,
            field,
            f"jinja2 syntax error at template line {exc.lineno}: {exc.message}",
            fix="check {{ }} and {% %} pairs",
        ) from None
    except UndefinedError as exc:
        raise SpecError.one(
            where,
            field,
            f"unknown variable: {exc.message}",
            allowed="profile, history, context, preamble, record, user_id, record_id, values, parts",
            fix="use one of the allowed variables; record['column'] reads any column",
        ) from None
    except SecurityError as exc:  # e.g. {{ ''.__class__ }}: templates may read the record, not reach Python
        raise SpecError.one(
            where,
            field,
            f"the template sandbox forbids this: {exc}",
            allowed="variables, filters and tests on the record's values",
            fix="read columns with record['column']; no attributes starting with '_', no methods that change state",
        ) from None
    except BoundExceeded as exc:
        raise SpecError.one(
            where,
            field,
            f"the template is unbounded: {exc}",
            allowed="a template that renders a record in well under a second, to at most a few MB of text",
            fix="check the template's loops, repetitions (`*`) and filter widths",
        ) from None
    except TemplateNotFound as exc:  # {% include %}/{% import %}: templates have no loader, on purpose
        raise SpecError.one(
            where,
            field,
            f"the template includes or imports {exc.name!r}; templates cannot read other files",
            allowed="one self-contained template",
            fix="paste what you meant to include into the template, or use data.templates.NAME.file "
            "for a template kept in a file",
        ) from None
    except Exception as exc:  # OverflowError from range(10**8), ZeroDivisionError, TypeError...: exit 2, not a trace
        if "no loader" in str(exc):  # {% include %} in an environment without a loader (ours, on purpose)
            raise SpecError.one(
                where,
                field,
                "the template includes, imports or extends another file; templates cannot read files",
                allowed="one self-contained template",
                fix="paste what you meant to include into the template, or use data.templates.NAME.file "
                "for a template kept in a file",
            ) from None
        raise SpecError.one(
            where,
            field,
            f"the template fails when rendered: {type(exc).__name__}: {exc}"[:400],
            allowed="a template that renders a record to text",
            fix="check the expressions in the template (the sandbox allows ranges of at most 100,000 items)",
        ) from None
