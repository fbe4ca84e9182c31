"""store/run_dir.py: the run directory's paths, computed in one place, and the checked way in. Nothing else spells them.

<output.dir>/runs/<run id>/    yours alone: 0700 whatever the parent's mode, umask or setgid; reached without
                               following a link below <output.dir> and checked before anything in it is used
    spec.json  plan.json       what every job reads (written at submit; the run id is read from here, never
                               recomputed: a touched input mid-run must not move a job's outputs)
    run.json                   identity, submissions, image, versions (RunRecord: run_record.py)
    inputs.json                what every unit's inputs are checked against, the prompt clock (inputs/guard.py)
    container.json             the container request (0600: it may hold secrets)
    prompt_stats.json          prompt lengths per unit, measured once by one worker (engine admission)
    prompt_stats.claims/       which worker measures them (a claim, as a unit's: the others do not wait)
    units/<unit id>/           chunks, claims, done marker (unit_dir.py)
    units.log                  every unit's claims, done markers, give-backs, reopenings, in order (unit_log.py)
    jobs/<array index>/        live.json, failures/, requeues/, attempts/: one Slurm array element's history
    workers/<slot>-r<restart>-<pid>.json   one worker process: host, GPUs, units, rates, engine settings
    multinode/<job>-r<restart>/   one multi-node engine's rendezvous: rank 0's engine arguments, ranks, done mark
    logs/                      submitit's logs and pickles (a pickle is code: store/guard.py checks before loading)
    submit.lock  gather.lock   one submit, one gather at a time
    inputs.lock                one worker at a time writes the prompt clock of a run submitted without inputs.json
    interrupted.json           a local run stopped by the user (Ctrl-C on --wait, SIGTERM, `launcher cancel`)
    summary.json               the run's wall-clock figures, written by gather

Files a job decides what to run from (spec, plan, inputs.json, container request, run.json, a rank's engine
arguments) are read with `read_trusted`: yours, writable by nobody else, one link (store/fs.py); anything else refuses
(UntrustedFile).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from launcher.errors import UntrustedFile
from launcher.store.atomic import json_bytes, read_json, write_atomic, write_json_atomic
from launcher.store.claims import ClaimBook
from launcher.store.failure_records import AttemptRecord, JobFailure
from launcher.store.fs import PRIVATE, Folder, Opener, plain_folder, plain_modes, share_modes
from launcher.store.kept import Holding, keep_run, kept_run
from launcher.store.records import WorkerReport
from launcher.store.run_record import RunRecord
from launcher.store.unit_dir import UnitDir
from launcher.store.unit_log import UnitLog, UnitView

if TYPE_CHECKING:
    from launcher.store.outputs import CellDir, OutputDir

RUNS = "runs"


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.abspath(self.root)))  # folder_at compares paths lexically

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def output_dir(self) -> Path:
        """<output.dir>: the run dir is <output.dir>/runs/<run id>."""
        return self.root.parent.parent

    def final_dir(self, dataset: str, ablation: str) -> Path:
        return self.output_dir / dataset / ablation

    def outputs(self, share: str | None = None) -> OutputDir:
        from launcher.store.outputs import OutputDir

        return OutputDir(self.output_dir, share)

    def cell(self, rel_dir: PurePath | str) -> CellDir:
        """One gathered cell of this run's outputs ([<model>/]<dataset>/<ablation>, plan.Cell.rel_dir)."""
        return self.outputs().cell(rel_dir)

    # ---- the checked way in ---------------------------------------------------------------------------------
    def folder(self, *parts: str, create: bool = False, seal: bool = False) -> Folder:
        """This run's folder, or one inside it, opened as store/fs.py says: never through a link below the output
        folder; the run's own folder and everything in it yours, else UntrustedFile. With `create` (writing) the
        folders inside are made as needed and the run's folder is made 0700 again if an older launcher or a umask
        left it open; the run's folder itself is made only by create() (a submit): a job whose run folder was moved
        away fails (FileNotFoundError) instead of writing into a new one. With `seal` (about to trust a file in
        it) every folder from the run's down to `parts` is made 0700 first: nobody else can swap what is checked."""
        if (kept := None if seal else kept_run(self.root)) is not None:  # a worker's, held open (store/kept.py)
            return kept.folder(parts, create)
        top = self._open_root(make=False, tighten=create or seal)
        if not parts:
            return top
        try:
            return top.walk(parts, create=create, private=seal)
        finally:
            top.close()

    def _open_root(self, make: bool, tighten: bool) -> Folder:
        parent = self.root.parent
        if parent.name == RUNS:  # <output.dir>/runs/<id>: a link planted at `runs` is not followed either
            with Folder.anchor(parent.parent, share_modes(parent.parent), make) as out:
                runs = out.child(RUNS, create=make, owned=False, modes=PRIVATE)
        else:
            runs = Folder.anchor(parent, plain_modes(), make)
        with runs:
            return runs.child(self.root.name, create=make, private=tighten or make, owned=True)

    def keep_open(self) -> Holding:  # this run's folder held open from now on, or in a `with` (store/kept.py)
        return keep_run(self.root, lambda: self._open_root(make=False, tighten=True))

    def folder_at(self, path: Path, create: bool = False, seal: bool = False) -> Folder:
        """The folder `path` inside this run: the opener its files are written and read with."""
        rel = Path(os.path.abspath(path)).relative_to(self.root)
        return self.folder(*rel.parts, create=create, seal=seal)

    def create(self) -> None:
        """The run's folder (0700; the output folder too when missing) and its logs folder, before submitit or
        anything else writes into them. A submit's, only."""
        with self._open_root(make=True, tighten=True) as root:
            root.child("logs", create=True).close()

    def read_json(self, path: Path) -> dict[str, Any]:
        """A file of this run for display and bookkeeping: {} when missing, unreadable or not yours (logged)."""
        return read_json(path, self.folder_at)

    def read_trusted(self, path: Path) -> Any:
        """A file a job decides what to run from: yours, writable by nobody else, one link, reached without links,
        in folders sealed first (0700: a run folder an older launcher left open is closed before it is trusted).
        FileNotFoundError when missing, UntrustedFile when not provably yours, ValueError when not JSON."""
        with self.folder_at(path.parent, seal=True) as folder:
            return json.loads(folder.read_bytes(path.name, trusted=True))

    def read_bytes(self, path: Path) -> bytes:
        with self.folder_at(path.parent) as folder:
            return folder.read_bytes(path.name)

    def write_json(self, path: Path, obj: Any, wait_s: float | None = None, durable: bool = True) -> None:
        """`path` holds `obj`, written whole through the checked folder; `durable` False: no fsync (store/atomic.py)."""
        write_json_atomic(path, obj, wait_s, opener=self.folder_at, durable=durable)

    def write_json_once(self, path: Path, obj: Any, lock: Path) -> bool:
        """`path` holds `obj` unless it is there already (the first writer wins; False then). Decided under the flock
        of `lock` (beside it) and written whole by a rename: a reader never sees it half-written or hard-linked."""
        with self.folder_at(path.parent, create=True) as folder, folder.open_lock(lock.name) as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # released when `held` is closed
            if folder.exists(path.name):
                return False
            folder.write_atomic(path.name, json_bytes(obj))
            return True

    def write_bytes(self, path: Path, data: bytes, mode: int | None = None) -> None:
        write_atomic(path, data, mode=mode, opener=self.folder_at)

    def exists(self, path: Path) -> bool:
        try:
            with self.folder_at(path.parent) as folder:
                return folder.exists(path.name)
        except (OSError, UntrustedFile):
            return False

    def json_files(self, folder: Path) -> list[tuple[str, dict[str, Any]]]:
        """(name, content) of every *.json file in a folder of this run, by name; unreadable ones left out."""
        try:
            with self.folder_at(folder) as f:
                names = [n for n in f.names() if n.endswith(".json")]
        except (OSError, UntrustedFile):
            return []
        found = [(n, self.read_json(folder / n)) for n in names]
        return [(n, obj) for n, obj in found if obj]

    # ---- the layout ------------------------------------------------------------------------------------------
    @property
    def spec_json(self) -> Path:
        return self.root / "spec.json"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def inputs_record(self) -> Path:
        return self.root / "inputs.json"

    @property
    def inputs_lock(self) -> Path:
        """Held while a worker writes the prompt clock of a run submitted without inputs.json (inputs/guard.py)."""
        return self.root / "inputs.lock"

    @property
    def container_json(self) -> Path:
        return self.root / "container.json"

    @property
    def prompt_stats(self) -> Path:
        return self.root / "prompt_stats.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def job_log(self, job_id: str, stream: str = "err") -> Path:
        """submitit's log of a job (task 0): stream "err" or "out"."""
        from submitit.core.utils import JobPaths

        paths = JobPaths(self.logs, job_id=job_id, task_id=0)
        return paths.stderr if stream == "err" else paths.stdout

    def submitted_pickle(self, job_id: str) -> Path:
        from submitit.core.utils import JobPaths

        return JobPaths(self.logs, job_id=job_id, task_id=0).submitted_pickle

    @property
    def submit_lock(self) -> Path:
        return self.root / "submit.lock"

    @property
    def interrupted(self) -> Path:
        """Written when the user stopped a local run (Ctrl-C, SIGTERM, `launcher cancel`): status says INTERRUPTED."""
        return self.root / "interrupted.json"

    @property
    def gather_lock(self) -> Path:
        return self.root / "gather.lock"

    @property
    def units(self) -> Path:
        return self.root / "units"

    def unit(self, unit_id: str) -> UnitDir:
        return UnitDir(self.units / unit_id, self.folder_at, self.unit_events())

    @property
    def unit_log(self) -> Path:
        return self.root / "units.log"

    def unit_events(self) -> UnitLog:
        return UnitLog(self.unit_log, self.folder_at)  # through the checked run folder: 0600, never a link

    def unit_view(self) -> UnitView:  # what units.log says of every unit, read once (refresh() reads what came since)
        return UnitView(self.unit_events()).read()

    def prompt_stats_book(self) -> ClaimBook:
        """Who measures the run's prompt statistics (one worker), checked as a unit's claims are."""
        return ClaimBook(self.root / "prompt_stats.claims", self.folder_at)

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def job(self, index: int) -> JobDir:
        return JobDir(self.jobs / str(index), self.folder_at)

    def job_dirs(self) -> list[JobDir]:
        try:
            with self.folder_at(self.jobs) as f:
                names = [n for n in f.names() if n.isdigit()]
        except (OSError, UntrustedFile):
            return []
        return [self.job(int(n)) for n in sorted(names, key=int)]

    def multinode(self, tag: str) -> RendezvousDir:
        """One multi-node engine's rendezvous folder (engines/multinode.py), named by job and restart."""
        return RendezvousDir(self.root / "multinode" / tag)

    @property
    def workers(self) -> Path:
        return self.root / "workers"

    def worker_report(self, slot: str, restart: int, pid: int, model: str = "") -> Path:
        """One per worker process and model (a job of a `models:` sweep runs one engine per model, in turn)."""
        return self.workers / f"{slot}-r{restart}-{pid}{f'-{model}' if model else ''}.json"

    def worker_reports(self) -> list[WorkerReport]:
        """Every worker process's last report, oldest first."""
        reports = [WorkerReport(**r) for _, r in self.json_files(self.workers)]  # type: ignore[typeddict-item]
        return sorted(reports, key=lambda r: r.get("started") or 0.0)

    def read_run(self) -> RunRecord:
        """run.json, checked as a file a submit decides from (empty when there is none yet, or it is not JSON)."""
        try:
            return RunRecord.from_json(self.read_trusted(self.run_json))
        except (FileNotFoundError, ValueError):
            return RunRecord()

    def is_run(self) -> bool:
        return self.exists(self.plan_json) and self.exists(self.spec_json)

    @classmethod
    def of(cls, output_dir: str | Path, run_id: str) -> RunDir:
        return cls(Path(output_dir) / RUNS / run_id)


@dataclass(frozen=True)
class RendezvousDir:
    """multinode/<job>-r<restart>/: rank 0's engine arguments, each rank's view, rank 0's done mark."""

    root: Path

    @property
    def engine_file(self) -> Path:
        return self.root / "engine.json"

    @property
    def done_file(self) -> Path:
        return self.root / "done.json"

    def rank_file(self, rank: int) -> Path:
        return self.root / f"rank{rank}.json"

    def is_rank_file(self, name: str) -> bool:
        return name.startswith("rank") and name.endswith(".json")


@dataclass(frozen=True)
class JobDir:
    """One Slurm array element (or local job) across its requeues."""

    root: Path
    opener: Opener = field(default=plain_folder, compare=False, repr=False)

    @property
    def index(self) -> int:
        return int(self.root.name)

    @property
    def live(self) -> Path:
        return self.root / "live.json"

    @property
    def failures(self) -> Path:
        return self.root / "failures"

    @property
    def requeues(self) -> Path:
        return self.root / "requeues"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def attempt_file(self, started: float, pid: int, model: str = "") -> Path:
        """One attempt of this job's workers: per model in a `models:` sweep (each its own engine or swap)."""
        return self.attempts / f"{int(started * 1000)}-{pid}{'-' + model if model else ''}.json"

    def failure_file(self, key: str) -> Path:
        """One failed attempt: `key` is `<job id>-r<restart>` (job/retries.py: Attempt.key)."""
        return self.failures / f"{key}.json"

    def requeue_file(self, key: str) -> Path:
        return self.requeues / f"{key}.json"

    def write(self, path: Path, obj: Any) -> None:
        write_json_atomic(path, obj, opener=self.opener)

    def read(self, path: Path) -> dict[str, Any]:
        return read_json(path, self.opener)

    def has(self, path: Path) -> bool:
        try:
            with self.opener(path.parent, False) as folder:
                return folder.exists(path.name)
        except (OSError, UntrustedFile):
            return False

    def _read_all(self, folder: Path) -> list[dict[str, Any]]:
        try:
            with self.opener(folder, False) as f:
                names = [n for n in f.names() if n.endswith(".json")]
        except (OSError, UntrustedFile):
            return []
        return [r for r in (self.read(folder / n) for n in names) if r]

    def attempt_files(self) -> list[Path]:
        try:
            with self.opener(self.attempts, False) as f:
                return [self.attempts / n for n in f.names() if n.endswith(".json")]
        except (OSError, UntrustedFile):
            return []

    def read_attempts(self) -> list[AttemptRecord]:
        return [AttemptRecord.from_json(a) for a in self._read_all(self.attempts)]

    def read_failures(self) -> list[JobFailure]:
        """Every failed attempt of the job, oldest first."""
        return sorted((JobFailure.from_json(f) for f in self._read_all(self.failures)), key=lambda f: f.time)


__all__ = ["RUNS", "JobDir", "RendezvousDir", "RunDir"]
