"""store/failure_records.py: the records a job leaves about its attempts, typed: a unit's failures
(units/<id>/failures/), a job's failed attempts (jobs/<i>/failures/) and its attempts (jobs/<i>/attempts/).

They exist so that the worker, the retries, status, wait and the gather count failures "of this submission" one
way, instead of each filtering `.get("submission")` with its own defaults. Each is a view over the JSON object it
came from (as store/run_record.py's records are): `to_json` gives the object back key for key, `new` builds one with
the keys the file has always had. A file that is not JSON, or not an object, is skipped by the folder's reader
(UnitDir.read_failures, JobDir.read_failures), as it always was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from launcher.store.run_record import dict_or_none, number, text_or_none

Failure = TypeVar("Failure", "UnitFailure", "JobFailure")


@dataclass(frozen=True)
class UnitFailure:
    """One failure of a unit: a worker that held it raised (or refused it: its input changed since submit)."""

    worker: str | None  # the worker's slot, "<job>.<replica>"
    host: str | None
    time: float
    error: str | None  # "<ExceptionType>: <message>", at most 2000 characters; "InputChanged: ..." for a refusal
    submission: str | None  # LAUNCHER_SUBMISSION of the submit it failed under: failures are counted per submission
    job_id: str | None
    json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> UnitFailure:
        return cls(
            text_or_none(obj.get("worker")),
            text_or_none(obj.get("host")),
            number(obj.get("time")),
            text_or_none(obj.get("error")),
            text_or_none(obj.get("submission")),
            text_or_none(obj.get("job_id")),
            obj,
        )

    @classmethod
    def new(
        cls, worker: str, host: str, time: float, error: str, submission: str | None, job_id: str | None
    ) -> UnitFailure:
        return cls.from_json(
            {"worker": worker, "host": host, "time": time, "error": error, "submission": submission, "job_id": job_id}
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.json)


@dataclass(frozen=True)
class JobFailure:
    """One failed attempt of a job (one file per Slurm job and restart, job/retries.py): raised or died."""

    job_id: str | None
    submission: str | None  # the array job id (or LAUNCHER_SUBMISSION of a local job): retries count per submission
    restart: int
    time: float
    kind: str | None  # "exception" (its Python raised) or "died" (the teardown saw srun fail)
    error: str | None
    failures: int  # this submission's failures of the job, this one included
    max_retries: int
    retry: bool  # whether the job gets another attempt
    requeue_by: str | None  # "task" (scontrol from the job) or "teardown" (from the host: no scontrol in the image)
    log: str | None  # the job's stderr
    log_tail: tuple[str, ...]
    json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JobFailure:
        tail = obj.get("log_tail")
        return cls(
            text_or_none(obj.get("job_id")),
            text_or_none(obj.get("submission")),
            int(number(obj.get("restart"))),
            number(obj.get("time")),
            text_or_none(obj.get("kind")),
            text_or_none(obj.get("error")),
            int(number(obj.get("failures"))),
            int(number(obj.get("max_retries"))),
            bool(obj.get("retry")),
            text_or_none(obj.get("requeue_by")),
            text_or_none(obj.get("log")) or None,
            tuple(str(line) for line in tail) if isinstance(tail, list) else (),
            obj,
        )

    @classmethod
    def new(cls, **fields: Any) -> JobFailure:
        """A failure as job/retries.py records it (the keys the file has always had)."""
        return cls.from_json(dict(fields))

    @property
    def requeued_by_host(self) -> bool:
        """It failed inside an image without scontrol and left its retry to the host's teardown."""
        return self.retry and self.requeue_by == "teardown"

    def to_json(self) -> dict[str, Any]:
        return dict(self.json)


def of_submission(failures: Iterable[Failure], submission: str | None) -> list[Failure]:
    """The failures recorded under `submission`; a failure that names none counts for a submission of none."""
    return [f for f in failures if f.submission == submission]


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of a job's workers (jobs/<i>/attempts/): per model in a `models:` sweep; its layout is the run's
    figures' layout (gather/throughput.py)."""

    job: int
    started: float
    ended: float
    layout: dict[str, Any] | None  # ParallelLayout.as_dict()
    model: str
    workers: tuple[str, ...]  # the workers' slots
    job_id: str | None
    restart: int
    json: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AttemptRecord:
        workers = obj.get("workers")
        return cls(
            int(number(obj.get("job"))),
            number(obj.get("started")),
            number(obj.get("ended")),
            dict_or_none(obj.get("layout")) or None,
            str(obj.get("model") or ""),
            tuple(str(w) for w in workers) if isinstance(workers, list) else (),
            text_or_none(obj.get("job_id")),
            int(number(obj.get("restart"))),
            obj,
        )

    @classmethod
    def new(cls, **fields: Any) -> AttemptRecord:
        """An attempt as job/entry.py records it (the keys the file has always had)."""
        return cls.from_json(dict(fields))

    def to_json(self) -> dict[str, Any]:
        return dict(self.json)


__all__ = ["AttemptRecord", "JobFailure", "UnitFailure", "of_submission"]
