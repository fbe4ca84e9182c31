"""store/outputs.py: the output folder's layout (<output.dir>/...) and the checked way its cells are written.

<output.dir>/                     the folder the spec names; it may be a lab's shared (group-writable, setgid) one
    runs/<run id>/                each run's private state (run_dir.py)
    report/                       `launcher report`'s table and plot
    [<model or adapter>/]<dataset>/<ablation>/     one cell, written by gather:
        samples.jsonl | samples.parquet   quarantine.jsonl   inference_summary.json   manifest.json
        users/<user id>.json      with output.per_user_json

The outputs may be readable by the group (output.share: group | private; unset: group when <output.dir> is a shared
folder, store/fs.py: share_modes), but are never writable by anyone else. A cell's folders are reached without
following links below <output.dir> and must be yours: gather refuses one that is a link or another user's
(UntrustedFile) rather than writing where someone else chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from launcher.errors import UntrustedFile
from launcher.store.fs import Folder, Modes, plain_modes, share_modes
from launcher.store.run_dir import RUNS, RunDir

SAMPLE_FILES = {"jsonl": "samples.jsonl", "parquet": "samples.parquet"}  # output.format -> the file the gather writes
QUARANTINE = "quarantine.jsonl"
SUMMARY = "inference_summary.json"
MANIFEST = "manifest.json"
USERS = "users"
REPORT = "report"


@dataclass(frozen=True)
class CellDir:
    """One gathered cell: [<model>/]<dataset>/<ablation>/ (or the folder `launcher run --output_dir` names)."""

    root: Path

    def samples(self, fmt: str = "jsonl") -> Path:
        return self.root / SAMPLE_FILES[fmt]

    @property
    def quarantine(self) -> Path:
        return self.root / QUARANTINE

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def users(self) -> Path:
        return self.root / USERS

    def samples_file(self) -> Path | None:
        """The gathered samples file, whichever format wrote it; None when there is none."""
        return next((self.root / n for n in SAMPLE_FILES.values() if (self.root / n).is_file()), None)


@dataclass(frozen=True)
class ReportDir:
    """`launcher report`'s folder: <output.dir>/report/, or the one --out names."""

    root: Path

    @property
    def table_json(self) -> Path:
        return self.root / "report.json"

    @property
    def table_md(self) -> Path:
        return self.root / "report.md"

    @property
    def plot_png(self) -> Path:
        return self.root / "report.png"


@dataclass(frozen=True)
class OutputDir:
    """<output.dir>: the runs' state folder, the report folder and the cells."""

    root: Path
    share: str | None = None
    """spec output.share: "group", "private", or None (group when the folder is a shared one)."""

    @property
    def modes(self) -> Modes:
        return share_modes(self.root, self.share)

    @property
    def runs_root(self) -> Path:
        return self.root / RUNS

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.runs_root / run_id)

    def runs(self) -> list[RunDir]:
        """The runs in this folder that have a plan, oldest plan first. Found without following links; a run folder
        of another user is listed (opening it refuses, naming it)."""
        try:
            with Folder.anchor(self.root, plain_modes()) as out, out.child(RUNS, owned=False) as runs:
                found = []
                for name in runs.names():
                    try:
                        with runs.child(name, owned=False) as run:
                            st = run.stat("plan.json")
                    except (OSError, UntrustedFile):
                        continue
                    if st is not None:
                        found.append((st.st_mtime, name))
        except (OSError, UntrustedFile):
            return []
        return [self.run(name) for _, name in sorted(found)]

    def create(self) -> None:
        """<output.dir> itself, made with the share's modes when it does not exist yet (before anything in it)."""
        Folder.anchor(self.root, self.modes, create=True).close()

    def cell(self, rel_dir: PurePath | str) -> CellDir:
        return CellDir(self.root / rel_dir)

    @property
    def report(self) -> Path:
        return self.root / REPORT

    def folder(self, rel_dir: PurePath | str, create: bool = False) -> Folder:
        """A folder of the outputs (a cell, its users/, the report folder): each name below <output.dir> reached
        without a link, and yours; made with the share's modes. <output.dir> itself is made only by create() (a
        submit): a gather whose output folder was moved away fails instead of writing into a new one."""
        with Folder.anchor(self.root, self.modes, owned=True) as out:
            return out.walk(PurePath(rel_dir).parts, create=create)

    def opener(self, path: Path, create: bool = False) -> Folder:
        """Opener for store/atomic.py: a folder inside the outputs, checked as folder() does."""
        return self.folder(Path(path).relative_to(self.root), create)


def out_folder(base: Path, rel_dir: PurePath | str, share: str | None, create: bool = False) -> Folder:
    """A cell folder below `base` (the output dir, or a folder `launcher run --output_dir` names), checked as
    OutputDir.folder does."""
    return OutputDir(base, share).folder(rel_dir, create)


__all__ = [
    "MANIFEST",
    "QUARANTINE",
    "REPORT",
    "SAMPLE_FILES",
    "SUMMARY",
    "USERS",
    "CellDir",
    "OutputDir",
    "ReportDir",
    "out_folder",
]
