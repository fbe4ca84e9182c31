"""store/__init__.py: the only code that knows the run directory's and the outputs' layout, and the only way into
them. Atomic writes, checked chunks, claims; every folder reached without following links and checked (store/fs.py).

RunDir (a run: spec, plan, units, jobs, workers) -> UnitDir (one unit: chunks, claims, done) -> ClaimBook.
OutputDir (the output folder: runs, report) -> CellDir (one gathered cell). CacheRoot (compiled graphs).
What the run folder holds as JSON is read and written as typed records: RunRecord (run.json, store/run_record.py),
UnitFailure, JobFailure, AttemptRecord (store/failure_records.py), WorkerReport and UnitDone (store/records.py).
"""

from launcher.store.atomic import (
    json_bytes,
    read_json,
    sha256_file,
    write_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)
from launcher.store.claims import Claim, ClaimBook, Owner
from launcher.store.failure_records import AttemptRecord, JobFailure, UnitFailure, of_submission
from launcher.store.fs import Folder, Modes, plain_folder
from launcher.store.jsonl import BadLine, dumps_line, encode_line, encode_lines, parse_lines, read_jsonl
from launcher.store.names import safe_filename
from launcher.store.outputs import SAMPLE_FILES, CellDir, OutputDir
from launcher.store.records import GpuFigures, OutputRow, UnitDone, WorkerReport
from launcher.store.run_dir import JobDir, RunDir
from launcher.store.run_record import RunRecord, Submission
from launcher.store.unit_dir import ChunkScan, UnitDir

__all__ = [
    "SAMPLE_FILES",
    "AttemptRecord",
    "BadLine",
    "CellDir",
    "ChunkScan",
    "Claim",
    "ClaimBook",
    "Folder",
    "GpuFigures",
    "JobDir",
    "JobFailure",
    "Modes",
    "OutputDir",
    "OutputRow",
    "Owner",
    "RunDir",
    "RunRecord",
    "Submission",
    "UnitDir",
    "UnitDone",
    "UnitFailure",
    "WorkerReport",
    "dumps_line",
    "encode_line",
    "encode_lines",
    "json_bytes",
    "of_submission",
    "parse_lines",
    "plain_folder",
    "read_json",
    "read_jsonl",
    "safe_filename",
    "sha256_file",
    "write_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
]
