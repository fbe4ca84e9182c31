"""errors.py: the errors users see, so that every stage fails the same way. Each names where (file:line, a path),
which field, what was given, what is allowed and the fix. One root, LauncherError, raised by every stage; the CLI's
one handler (cli/__init__.py: report) prints any of them the same way and exits with its `exit_code`:

  0    ok
  1    a run failed or is incomplete (GatherError), or was written by a launcher this one cannot read (UnreadableRun)
  2    bad input or a refusal; nothing submitted or written (SpecError, Refused, NoRun, NoSamples, NoSlurm,
       UntrustedFile, ContainerError)
  130  Ctrl-C
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

_UNSET = object()


@dataclass(frozen=True)
class Problem:
    where: str  # "configs/llama8b.yaml:14", "--set sampling.top_p=2", "--top_p", a file or a job
    field: str  # "sampling.top_p"
    message: str  # "must be in (0, 1], got 1.5"
    allowed: str = ""
    fix: str = ""
    got: str = ""  # the value given, as shown (repr); "" when the message already says it

    def render(self) -> str:
        head = f"{self.where}: {self.field}: {self.message}" if self.field else f"{self.where}: {self.message}"
        head = head if self.where else head.removeprefix(": ")
        lines = [head]
        if self.got:
            lines.append(f"  got:     {self.got}")
        if self.allowed:
            lines.append(f"  allowed: {self.allowed}")
        if self.fix:
            lines.append(f"  fix:     {self.fix}")
        return "\n".join(lines)


class LauncherError(Exception):
    """Something the user can act on. `exit_code` is what the CLI exits with; `headline` what it prints first."""

    exit_code: ClassVar[int] = 1
    headline: ClassVar[str] = "error"

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems)
        self.problems = list(problems)

    @classmethod
    def one(
        cls, where: str, field: str, message: str, allowed: str = "", fix: str = "", got: object = _UNSET
    ) -> LauncherError:
        return cls([Problem(where, field, message, allowed, fix, "" if got is _UNSET else repr(got))])

    @property
    def first(self) -> Problem:
        return self.problems[0]

    def __str__(self) -> str:
        return "\n".join(p.render() for p in self.problems)

    def __reduce__(self) -> tuple[object, ...]:
        # Rebuilt from its problems whatever a subclass's __init__ takes: a gather job's error crosses submitit's
        # pickle back to the login side.
        return (_rebuild, (type(self), self.problems))


def _rebuild(cls: type[LauncherError], problems: list[Problem]) -> LauncherError:
    exc = cls.__new__(cls)
    LauncherError.__init__(exc, problems)
    return exc


class SpecError(LauncherError):
    """A bad job spec or bad flags. Exit code 2; nothing is submitted or written."""

    exit_code = 2
    headline = "error in the job spec (nothing was submitted or written)"

    @classmethod
    def one(
        cls, where: str, field: str, message: str, allowed: str = "", fix: str = "", got: object = _UNSET
    ) -> SpecError:
        return cls([Problem(where, field, message, allowed, fix, "" if got is _UNSET else repr(got))])


class Refused(LauncherError):
    """A submit refused as things stand (another submit holds the run, its jobs still run). Exit code 2."""

    exit_code = 2
    headline = "refused"


class NoRun(LauncherError, FileNotFoundError):
    """A path given as a run (status, cancel, reproduce, resume) that holds no run. Exit code 2."""

    exit_code = 2
    headline = "no run there"


class NoSamples(LauncherError, FileNotFoundError):
    """A folder given for its gathered samples (compare) that holds none. Exit code 2."""

    exit_code = 2
    headline = "no samples there"


class NoSlurm(LauncherError):
    """`--executor slurm` where Slurm's commands are not on PATH. Exit code 2; nothing is submitted or written."""

    exit_code = 2
    headline = "Slurm is not reachable from here (nothing was submitted or written)"


class UnreadableRun(LauncherError):
    """A run folder written by a launcher version this one cannot read or resume. Exit code 1: the run is fine, this
    launcher is the wrong one; the fix names which one wrote it."""

    headline = "a run this launcher cannot read"


class ContainerError(LauncherError, ValueError):
    """A container request that cannot be built or run (a bind, an env name, a runtime): the spec names it. Exit code
    2 (spec loading and `plan` turn it into a SpecError naming the spec's line; the in-job shim exits 2 with it)."""

    exit_code = 2
    headline = "error in the container request (nothing was started)"

    def __init__(self, message: str, fix: str = "", allowed: str = "", where: str = "", field: str = "") -> None:
        super().__init__([Problem(where, field, message, allowed, fix)])


class GatherError(LauncherError):
    """Gather found outputs missing or damaged: each line names the cell, the units or file, and what to run next.
    Exit code 1 (the run is incomplete; the spec was fine)."""

    exit_code = 1
    headline = "incomplete"

    def __init__(self, message: str) -> None:
        super().__init__([Problem("", "", message)])


class UntrustedFile(LauncherError):
    """A file or folder the launcher would act on that is not provably the user's own: a link, a FIFO or folder
    where a file belongs, another user's, writable by others, hard-linked. Nothing is read from it or written into
    it. Exit code 2 where a command; a failure record where a job (store/fs.py says why)."""

    exit_code = 2
    headline = "refused (a file or folder that is not provably yours; nothing was read from it or written to it)"
