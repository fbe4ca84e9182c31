"""inputs/guard.py: the inputs a run was submitted with -> checked again whenever a unit reads them; the prompt clock.

At submit, before any job starts, <run>/inputs.json (RunDir.inputs_record) records the inputs' identity
(identity.py), the command that submits the run again (what a refusal tells the user to run) and the prompt clock.
It decides which units are refused, so it is written and read through the checked run folder and trusted only as a
file of yours that nobody else can write (RunDir.read_trusted, store/fs.py), as spec.json is. A worker checks,
before it prepares a unit and again once it has read the unit's rows, that every file the unit's prompts come from
still holds what was recorded: its dataset, the preamble, the spec's template files, and the model's files
(tokenizer, chat templates, generation_config.json, weights). A file that changed refuses the unit (InputChanged: the
worker records it as the unit's failure, naming the file and the fix), so no unit mixes two
versions of an input and the samples always answer the rows the run recorded.

Cost: a file's content is hashed (identity.py: whole up to 1 GiB, sampled beyond) once per worker, then only stat()ed:
its inode, size, mtime and ctime are remembered, and only a change in them hashes it again. A file rewritten with the
same size and its old mtime put back still has a new ctime (no user can set it), and one replaced by a symlink, a
copy or a rename has another inode (or the same content, which is no change).

The prompt clock: transformers lets a chat template read the time (`strftime_now`, e.g. "Today is 26 Jul 2024"). A
run's prompts read the time recorded at its first submit instead (a reproduction: the original's), so a unit run on
another day, a resumed run or `launcher reproduce` builds the same prompts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.inputs.identity import InputIdentity, dataset_identity, file_identity, model_identity, prompt_files
from launcher.store import RunDir


class InputChanged(RuntimeError):
    """An input of a running run no longer holds what the run was submitted with (the message names it and the fix)."""


@dataclass(frozen=True)
class PromptClock:
    """The time chat templates read: the run's first submit, in the time zone of the machine that submitted it."""

    epoch: float
    utc_offset_s: int

    @classmethod
    def now(cls) -> PromptClock:
        t = time.time()
        return cls(t, int(dt.datetime.fromtimestamp(t).astimezone().utcoffset().total_seconds()))  # type: ignore[union-attr]

    @classmethod
    def from_json(cls, obj: Any) -> PromptClock | None:
        try:
            return cls(float(obj["epoch"]), int(obj["utc_offset_s"]))
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_submitted_at(cls, text: str) -> PromptClock | None:
        """From run.json's "submitted_at" (2026-01-31T12:00:00+0100): runs recorded before inputs.json."""
        try:
            when = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
        except (TypeError, ValueError):
            return None
        return cls(when.timestamp(), int(when.utcoffset().total_seconds()))  # type: ignore[union-attr]

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "utc_offset_s": self.utc_offset_s, "iso": self.datetime().isoformat()}

    def datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.epoch, dt.timezone(dt.timedelta(seconds=self.utc_offset_s)))

    def strftime_now(self) -> Callable[[str], str]:
        """transformers' strftime_now(format), reading this clock."""
        when = self.datetime()
        return lambda fmt: when.strftime(fmt)


# ---- the record ------------------------------------------------------------------------------------------------
def record_path(run: RunDir) -> Path:
    return run.inputs_record


def read_record(run: RunDir) -> dict[str, Any]:
    """inputs.json, read as a file a job decides what to run from (it decides which units are refused, and the time
    prompts read): yours, writable by nobody else, one link, never through a link (RunDir.read_trusted), else
    UntrustedFile. {} when there is none (a run recorded before it) or it is not a JSON object."""
    try:
        data = run.read_trusted(record_path(run))
    except (FileNotFoundError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(
    run: RunDir, identity: InputIdentity | None, command: str, new_run: str | None, clock: PromptClock | None = None
) -> None:
    """What the run's workers check their inputs against, and the commands a refusal names: `command` submits this
    run again (it resumes), `new_run` makes a run of its own for changed inputs (None: the command has no such
    thing). The prompt clock is the first submission's: kept unless `clock` (a reproduction's: the original's)."""
    previous = read_record(run)
    kept = clock or PromptClock.from_json(previous.get("prompt_clock")) or PromptClock.now()
    run.write_json(
        record_path(run),
        {
            "identity": identity.as_json() if identity is not None else previous.get("identity"),
            "command": command,
            "new_run": new_run,
            "prompt_clock": kept.as_json(),
        },
    )


def run_clock(run: RunDir) -> PromptClock:
    """The run's prompt clock; a run submitted without one (`launcher run`, a run_job of a saved plan) gets one now,
    once: the first worker to ask writes it (create-if-absent under a lock, through the checked run folder), the
    others read that."""
    found = PromptClock.from_json(read_record(run).get("prompt_clock"))
    if found is not None:
        return found
    clock = PromptClock.now()
    with contextlib.suppress(OSError):  # a read-only run folder: this worker's clock, as before
        run.write_json_once(record_path(run), {"prompt_clock": clock.as_json()}, run.inputs_lock)
    return PromptClock.from_json(read_record(run).get("prompt_clock")) or clock


# ---- the guard -------------------------------------------------------------------------------------------------
def _stat_key(paths: list[Path]) -> tuple[Any, ...]:
    out: list[tuple[Any, ...]] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            out.append((str(p), None))
    return tuple(out)


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def _file_identity_of(path: Path) -> Callable[[], Any]:
    return lambda: file_identity(path)


class InputGuard:
    """One worker's check of the files its units read, against the run's record (or, without one, against what this
    worker read first)."""

    def __init__(self, spec: Any, record: dict[str, Any] | None) -> None:
        self.spec = spec
        record = record or {}
        self.recorded: dict[str, Any] = record.get("identity") or {}
        self.command = str(record.get("command") or "launcher submit SPEC")
        self.new_run: str | None = record.get("new_run", f"{self.command} --new-run")
        self._seen: dict[str, tuple[tuple[Any, ...], Any]] = {}  # what -> (stat key, identity then)
        self._baseline: dict[str, Any] = {}  # without a record: what this worker saw first

    def _identity(self, what: str, path: Path, compute: Callable[[], Any]) -> Any:
        key = _stat_key(_files_of(path))
        cached = self._seen.get(what)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            value = compute()
        except OSError as exc:
            value = {"unreadable": f"{type(exc).__name__}: {exc}"}
        self._seen[what] = (key, value)
        return value

    def _expect(self, what: str, recorded: Any, now: Any, path: Path) -> None:
        if not self.recorded:
            recorded = self._baseline.setdefault(what, now)
        if recorded is None or now == recorded:
            return
        raise InputChanged(self.refusal(what, path, recorded, now))

    def refusal(self, what: str, path: Path, recorded: Any, now: Any) -> str:
        def size(x: Any) -> str:
            return f"{x.get('size')} bytes" if isinstance(x, dict) and "size" in x else "other files"

        was, isnow = size(recorded), size(now)
        how = f"{was} then, {isnow} now" if was != isnow else "the same size, other content"
        back = f"put back the {what} this run was submitted with, then `{self.command}` again resumes it"
        new = f", or `{self.new_run}` runs the changed input as a run of its own" if self.new_run else ""
        return (
            f"{path}: the {what} changed since this run was submitted ({how}); a unit read now would not match "
            f"the rows and prompts the run recorded, so it is refused. fix: {back} (finished records are kept){new}"
        )

    def check_unit(self, unit: Any) -> None:
        """Raises InputChanged when a file `unit` reads differs from the run's record."""
        spec = self.spec
        ds = next(d for d in spec.data.datasets if d.name == unit.dataset)
        recorded_data = (self.recorded.get("data") or {}).get(ds.name)
        self._expect(f"dataset {ds.name!r}", recorded_data, self._dataset(ds.name, ds.file), ds.file)
        if spec.data.preamble:
            path = Path(spec.data.preamble)
            now = self._identity("preamble", path, _file_identity_of(path))
            self._expect("preamble file", self.recorded.get("preamble"), now, path)
        recorded_prompts = self.recorded.get("prompts") or {}
        for key, path in prompt_files(spec).items():
            now = self._identity(key, path, _file_identity_of(path))
            old = recorded_prompts.get(key) if self.recorded.get("version", 1) >= 2 else None
            self._expect(key.replace("templates.", "template file ").replace("chat_template", "chat template file"),
                         old, now, path)  # fmt: skip
        self._check_model(unit)

    def _dataset(self, name: str, path: Path) -> Any:
        return self._identity(f"data:{name}", path, lambda: dataset_identity(path))

    def _check_model(self, unit: Any) -> None:
        spec = self.spec
        model_name = getattr(unit, "model", "") or ""
        path = Path(spec.models[model_name]) if model_name and spec.models else Path(spec.model.path)
        if spec.model.load_format == "dummy":
            return
        now = self._identity(f"model:{model_name}", path, lambda: model_identity(path))
        recorded = self.recorded.get("model") or {}
        if model_name and spec.models:
            recorded = recorded.get(model_name)
        elif recorded:
            recorded = {k: v for k, v in recorded.items() if k != "adapters"}
        if self.recorded and self.recorded.get("version", 1) < 2:
            now = InputIdentity(now, {}, None).as_recorded(self.recorded).model
        self._expect("model folder" + (f" {model_name!r}" if model_name else ""), recorded or None, now, path)
        adapter = getattr(unit, "adapter", "") or ""
        folder = spec.model.adapters.get(adapter) if adapter else None
        if folder:
            apath = Path(folder)
            now = self._identity(f"adapter:{adapter}", apath, lambda: model_identity(apath))
            old = ((self.recorded.get("model") or {}).get("adapters") or {}).get(adapter)
            self._expect(f"adapter {adapter!r}", old, now, apath)


__all__ = [
    "InputChanged",
    "InputGuard",
    "PromptClock",
    "read_record",
    "record_path",
    "run_clock",
    "write_record",
]
