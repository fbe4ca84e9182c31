"""spec/data.py: the data section: datasets, ablation configs and templates, samples per record, columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from launcher.errors import SpecError
from launcher.spec.common import (
    BUILTIN_ABLATIONS,
    SLUG_RE,
    Slug,
    _did_you_mean,
    _FieldError,
    _plain_path,
    _Section,
    _slugify,
)


class DatasetSpec(_Section):
    """One input file (or a catalog name) and its format."""

    name: Slug
    """Short name; used in task ids and as the output folder <output.dir>/<name>/<ablation>/."""
    path: str | None = Field(default=None, min_length=1)
    """JSONL, Parquet, CSV file, or a folder saved by HF datasets' save_to_disk. Unset: found by `name` in the
    dataset catalog (the top-level `datasets:` map of this spec, its profile or launcher.yaml), else under
    `data_root`."""
    split: str | None = None
    """For a saved HF DatasetDict with several splits: which one (train, test, ...). Unset: its only split."""
    format: Literal["auto", "openai-batch"] = "auto"
    """auto: rows of the columns in data.fields (a JSONL line with custom_id and body is read as an OpenAI batch
    request). openai-batch: every line is an OpenAI Batch API request ({custom_id, method, url, body}); custom_id is
    the record id, the body's sampling fields override the spec's for that request; any other line is quarantined."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _plain_path(value, "the dataset path")

    @property
    def file(self) -> Path:
        """The records' path (set by the spec, or found in the catalog when the spec was loaded)."""
        if self.path is None:
            raise SpecError.one(
                "<spec>",
                f"data.datasets.{self.name}.path",
                f"dataset {self.name!r} has no path",
                fix="give its path, or add it to the catalog (`datasets:` in launcher.yaml)",
            )
        return Path(self.path)


class FieldNames(_Section):
    """Which column of a record holds which part (user id, profile, history, context)."""

    user_id: str = "user_id"
    """Column holding the user id (one output JSON per user)."""
    record_id: str | None = None
    """Column holding a unique record id. Unset: the user id, so one record per user: a second row of the same user
    is quarantined as a duplicate (`launcher plan` counts them). Set it when a user has several records. A record's
    samples depend on (sampling.seed, this id); ids are compared as text (1 and "1" are the same record)."""
    profile: str = "profile"
    """Column with the user's profile (text or a mapping)."""
    history: str = "history"
    """Column with the user's history (text or a list of items)."""
    context: str = "context"
    """Column with the current context / query the generation answers."""
    messages: str = "messages"
    """Column with OpenAI-style chat messages ([{role, content}, ...]). A record that has them is sent as those
    messages (through the chat template), under every ablation config; it needs no profile/history/context, and
    without a user id column it is named by its record id."""


class TemplateSpec(_Section):
    """A custom ablation config: a jinja2 template, inline or in a file."""

    text: str | None = None
    """A jinja2 template. Variables: profile, history, context, preamble, record (the whole row), user_id, record_id."""
    file: str | None = None
    """A file holding the jinja2 template (relative to the spec's folder)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> TemplateSpec:
        if (self.text is None) == (self.file is None):
            both = self.text is not None
            raise _FieldError(
                (),
                f"{'both' if both else 'neither of'} `text` and `file` given",
                "exactly one of text: (the jinja2 template) or file: (a path to one)",
                "remove one of them" if both else "add text: or file:",
            )
        return self


class DataSpec(_Section):
    """What to generate for: datasets, ablation configs (the parts of a record a prompt shows), samples per record."""

    datasets: list[DatasetSpec] = Field(min_length=1)
    """Inputs. Each dataset x ablation config x shard is one unit of work."""
    ablation_configs: list[str] = Field(default_factory=lambda: ["full"], min_length=1)
    """Which parts of a record the prompt shows: built-in names (see BUILTIN_ABLATIONS) or keys of `templates`."""
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    """Custom ablation configs as jinja2 templates, by name."""
    num_samples: int = Field(default=5, ge=1, le=1024)
    """Samples generated per record (vLLM's n)."""
    records_per_shard: int | None = Field(default=None, ge=1)
    """Records per unit of work (a shard of one dataset x ablation config). Workers claim units one after another,
    so this only sets how work is cut, not how many engines start. Unset: at least 4 units per worker, at most
    2000 records each. Fixed for a run at its first submit."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N records of each dataset (quick tests)."""
    fields: FieldNames = Field(default_factory=FieldNames)
    """Names of the record's columns."""
    preamble: str | None = None
    """Optional text file every prompt starts with (a task description); templates see it as {{ preamble }}.
    Not the old --scenario_path, which named the records (`launcher run --scenario_path` still does)."""
    system_prompt: str | None = None
    """System message put before the prompt when the tokenizer has a chat template."""
    chat_template: bool | str = True
    """true: wrap each prompt in the tokenizer's chat template when it has one. false: no template (the prompt text
    as is; messages are joined by blank lines). Text: a jinja2 chat template to use instead of the tokenizer's,
    inline or a file (*.jinja, *.j2, relative to the spec's folder)."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra variables for the chat template (e.g. {enable_thinking: false} for Qwen3)."""

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and "{" not in value and not value.endswith((".jinja", ".j2", ".jinja2")):
            raise ValueError(
                f"{value!r} is neither a jinja2 chat template nor a template file; allowed: true, false, an inline "
                "template (it holds {% %} / {{ }}), or a *.jinja / *.j2 file"
            )
        return value

    @field_validator("templates")
    @classmethod
    def _template_names(cls, value: dict[str, TemplateSpec]) -> dict[str, TemplateSpec]:
        for name in value:  # the name becomes a folder (<output.dir>/<dataset>/<name>/) and part of task ids
            if not SLUG_RE.fullmatch(name):
                raise _FieldError(
                    (name,),
                    f"template name {name!r} cannot be a folder name",
                    "1-64 of letters, digits, '_', '.', '-', starting with a letter or digit",
                    f"rename it, e.g. {_slugify(name)!r}",
                )
        return value

    @field_validator("ablation_configs")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise _FieldError(
                (),
                f"listed twice: {', '.join(dupes)}",
                "each name once",
                "remove the repeated name (each config already runs once per dataset)",
            )
        return value

    @model_validator(mode="after")
    def _known_ablations(self) -> DataSpec:
        for i, name in enumerate(self.ablation_configs):
            if name not in BUILTIN_ABLATIONS and name not in self.templates:
                raise _FieldError(
                    ("ablation_configs", i),
                    f"unknown ablation config {name!r}",
                    allowed=f"one of {', '.join(BUILTIN_ABLATIONS)} or a key of data.templates",
                    fix=_did_you_mean(name, [*BUILTIN_ABLATIONS, *self.templates])
                    or "add it under data.templates with a jinja2 `text:` or `file:`",
                )
        names = [d.name for d in self.datasets]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _FieldError(
                    ("datasets", i, "name"),
                    f"dataset name {name!r} used twice",
                    "unique names",
                    "give each dataset its own name",
                )
        return self
