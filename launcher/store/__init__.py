"""store: the only code that knows the run directory's layout. Atomic writes, checked chunks, claims.

RunDir (a run: spec, plan, units, jobs, workers) -> UnitDir (one unit: chunks, claims, done) -> ClaimBook.
"""

from launcher.store.atomic import (
    read_json,
    sha256_file,
    write_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)
from launcher.store.claims import Claim, ClaimBook, Owner
from launcher.store.jsonl import BadLine, dumps_line, encode_line, encode_lines, parse_lines, read_jsonl
from launcher.store.names import safe_filename
from launcher.store.records import GpuFigures, OutputRow, UnitDone, WorkerReport
from launcher.store.run_dir import JobDir, RunDir
from launcher.store.unit_dir import ChunkScan, UnitDir

__all__ = [
    "BadLine",
    "ChunkScan",
    "Claim",
    "ClaimBook",
    "GpuFigures",
    "JobDir",
    "OutputRow",
    "Owner",
    "RunDir",
    "UnitDir",
    "UnitDone",
    "WorkerReport",
    "dumps_line",
    "encode_line",
    "encode_lines",
    "parse_lines",
    "read_json",
    "read_jsonl",
    "safe_filename",
    "sha256_file",
    "write_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
]
