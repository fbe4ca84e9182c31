"""store/run_record.py: run.json as a typed object, so that submit, status, cancel, reproduce and gather read one
shape instead of each walking the JSON with its own `.get(...)` chain and its own defaults.

Each record is a view over the JSON object it came from: the typed fields are parsed once (`from_json`), tolerant
of older files (a key an older launcher did not write reads as its default), and `to_json` gives back the object
as it was read or built, key for key, so that rewriting a record (a reproduction adds `reproduces`) changes no
other byte. A record is built for writing with `RunRecord.new` / `Submission.new`, with the keys the file has
always had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def text_or_none(value: object) -> str | None:
    """A string field as the readers took it: None when absent or null, any other value as its text."""
    return None if value is None else str(value)


def dict_or_none(value: object) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def number(value: object) -> float:
    """A number field, 0 when absent, null or not a number (the readers' `x or 0`)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


@dataclass(frozen=True)
class Submission:
    """One submit of a run (run.json's `submissions`, oldest first)."""

    executor: str | None  # "slurm" (also when an older file does not say), "local"; None: recorded as null
    job_ids: tuple[str, ...]  # "<array>_<index>" or "<job>": Slurm's ids of the task jobs
    job_indices: tuple[int, ...]  # the job index of each of job_ids (an older file: 0..)
    gather_job_id: str | None
    jobs: int  # job indices 0..jobs-1
    submission: str | None  # LAUNCHER_SUBMISSION: what failure records of this submit carry
    submitted_at: str  # "%Y-%m-%dT%H:%M:%S%z"; "" when not recorded
    submitted_epoch: float  # 0 when not recorded
    json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Submission:
        job_ids, indices = obj.get("job_ids"), obj.get("job_indices")
        return cls(
            text_or_none(obj.get("executor", "slurm")),
            tuple(str(j) for j in job_ids) if isinstance(job_ids, list) else (),
            tuple(i for i in indices if isinstance(i, int)) if isinstance(indices, list) else (),
            text_or_none(obj.get("gather_job_id")) or None,
            int(number(obj.get("jobs"))),
            text_or_none(obj.get("submission")),
            str(obj.get("submitted_at") or ""),
            number(obj.get("submitted_epoch")),
            obj,
        )

    @classmethod
    def new(cls, **fields: Any) -> Submission:
        """A submission as submit/provenance.py records it (the keys the file has always had)."""
        return cls.from_json(dict(fields))

    @classmethod
    def none(cls) -> Submission:
        """What a run without any submission reads as (no jobs, no executor)."""
        return cls(None, (), (), None, 0, None, "", 0.0, {})

    @property
    def on_slurm(self) -> bool:
        return self.executor == "slurm"

    @property
    def array_ids(self) -> list[str]:
        """The Slurm job ids without the array index: the arrays (or single jobs) this submit made."""
        return [j.split("_")[0] for j in self.job_ids]

    def elements(self) -> list[tuple[int, str]]:
        """(job index, Slurm job or array element id) of each task job this submit made."""
        return list(zip(self.job_indices or range(len(self.job_ids)), self.job_ids, strict=False))

    def to_json(self) -> dict[str, Any]:
        return dict(self.json)


@dataclass(frozen=True)
class RunRecord:
    """run.json: what ran, from which spec, with which launcher and image, and every submission of the run.
    Empty (`exists` False) when the run was never submitted, or when run.json is not JSON (RunDir.read_run)."""

    fingerprint: str | None = None
    inputs: dict[str, Any] | None = None  # the inputs' identity at submit (inputs/identity.py)
    input_changes: tuple[dict[str, Any], ...] = ()
    launcher_version: str | None = None
    git_sha: str | None = None
    git_dirty: bool | None = None
    image: dict[str, Any] | None = None
    submissions: tuple[Submission, ...] = ()
    resume_with: str | None = None  # the command that goes on with this run
    reproduces: dict[str, Any] | None = None  # set on a reproduction: what it reproduces (submit/reproduce.py)
    json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: object) -> RunRecord:
        if not isinstance(obj, dict):
            return cls()
        subs, changes = obj.get("submissions"), obj.get("input_changes")
        dirty = obj.get("git_dirty")
        return cls(
            text_or_none(obj.get("fingerprint")),
            dict_or_none(obj.get("inputs")),
            tuple(c for c in changes if isinstance(c, dict)) if isinstance(changes, list) else (),
            text_or_none(obj.get("launcher_version")),
            text_or_none(obj.get("git_sha")),
            dirty if isinstance(dirty, bool) else None,
            dict_or_none(obj.get("image")),
            tuple(Submission.from_json(s) for s in subs if isinstance(s, dict)) if isinstance(subs, list) else (),
            obj["resume_with"] if isinstance(obj.get("resume_with"), str) else None,
            dict_or_none(obj.get("reproduces")),
            obj,
        )

    @classmethod
    def new(cls, **fields: Any) -> RunRecord:
        """A run.json as submit/provenance.py writes it (the keys the file has always had)."""
        return cls.from_json(dict(fields))

    @property
    def exists(self) -> bool:
        return bool(self.json)

    @property
    def first(self) -> Submission:
        return self.submissions[0] if self.submissions else Submission.none()

    @property
    def latest(self) -> Submission:
        return self.submissions[-1] if self.submissions else Submission.none()

    def on_slurm(self) -> list[Submission]:
        return [s for s in self.submissions if s.on_slurm]

    def task_job_ids(self) -> list[str]:
        """The Slurm job ids (array ids, or single job ids) of every submission of the run, sorted."""
        return sorted({j for s in self.on_slurm() for j in s.array_ids}, key=int)

    def gather_job_ids(self) -> list[str]:
        return [s.gather_job_id for s in self.submissions if s.gather_job_id]

    @property
    def inputs_digest(self) -> str | None:
        return text_or_none((self.inputs or {}).get("digest"))

    def with_reproduction(self, reproduces: dict[str, Any]) -> RunRecord:
        """The same record with `reproduces` set (last, as a reproduction has always added it)."""
        return RunRecord.from_json({**self.json, "reproduces": reproduces})

    def to_json(self) -> dict[str, Any]:
        return dict(self.json)


__all__ = ["RunRecord", "Submission"]
