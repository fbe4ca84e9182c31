"""spec/common.py: what every section of the job spec shares: names, patterns, the section base class, field errors."""

from __future__ import annotations

import difflib
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

SLUG = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Slug = Annotated[str, Field(pattern=SLUG)]
SLUG_RE = re.compile(SLUG)
# Control characters (newline above all) end an #SBATCH line and start a script line: never allowed in a value
# that reaches the batch script, a path or an argv.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Slurm partition/account/QOS names (partition may be a comma list) and the feature expression of --constraint.
SLURM_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,+-]{0,127}")
CONSTRAINT_RE = re.compile(r"[A-Za-z0-9_.,:&|!*()\[\]=-]{1,512}")
SBATCH_VALUE_MAX = 1024
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_VALUE_MAX = 32 * 1024  # one argv item must stay far below Linux's 128 KiB MAX_ARG_STRLEN

BUILTIN_ABLATIONS = (
    "context_only",
    "profile_only",
    "history_only",
    "profile_and_history",
    "profile_and_context",
    "history_and_context",
    "full",
)


class _Section(BaseModel):
    # Unknown keys are errors: a misspelled `temprature:` must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, validate_default=True)


def _plain_path(value: str, what: str) -> str:
    if CONTROL_RE.search(value):
        raise ValueError(f"{what} contains a control character (newline, tab, NUL, ...): {value!r}; rename the folder")
    return value


class _FieldError(ValueError):
    """Raised inside validators when the location is deeper than the validator's own field."""

    def __init__(self, loc: tuple[str | int, ...], message: str, allowed: str, fix: str) -> None:
        super().__init__(message)
        self.loc, self.message, self.allowed, self.fix = loc, message, allowed, fix


def _slugify(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip("._-")[:64]
    return clean or "custom"


def _did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""
