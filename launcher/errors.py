"""errors.py: the errors users see. Each names where (file:line), which field, what was given, what is allowed
and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    where: str  # "configs/llama8b.yaml:14", "--set sampling.top_p=2", "--top_p"
    field: str  # "sampling.top_p"
    message: str  # "must be in (0, 1], got 1.5"
    allowed: str = ""
    fix: str = ""

    def render(self) -> str:
        head = f"{self.where}: {self.field}: {self.message}" if self.field else f"{self.where}: {self.message}"
        lines = [head]
        if self.allowed:
            lines.append(f"  allowed: {self.allowed}")
        if self.fix:
            lines.append(f"  fix:     {self.fix}")
        return "\n".join(lines)


@dataclass
class SpecError(Exception):
    """A bad job spec or bad flags. The CLI prints it and exits with code 2; nothing is submitted or written."""

    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def one(cls, where: str, field: str, message: str, allowed: str = "", fix: str = "") -> SpecError:
        return cls([Problem(where, field, message, allowed, fix)])

    def __str__(self) -> str:
        return "\n".join(p.render() for p in self.problems)


class TaskError(RuntimeError):
    """A task failed at run time; the message says which task, which path and what to run next."""
