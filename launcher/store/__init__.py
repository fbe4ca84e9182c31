"""store: the only code that knows the run directory's layout. Atomic writes, checked chunks, claims.

RunDir (a run: spec, plan, units, jobs, workers) -> UnitDir (one unit: chunks, claims, done) -> ClaimBook.
"""

from .atomic import (
    dumps_line,
    read_json,
    read_jsonl,
    safe_filename,
    sha256_file,
    write_atomic,
    write_json_atomic,
    write_jsonl_atomic,
)
from .claims import Claim, ClaimBook, Owner
from .run_dir import JobDir, RunDir
from .unit_dir import ChunkScan, UnitDir

__all__ = [
    "ChunkScan",
    "Claim",
    "ClaimBook",
    "JobDir",
    "Owner",
    "RunDir",
    "UnitDir",
    "dumps_line",
    "read_json",
    "read_jsonl",
    "safe_filename",
    "sha256_file",
    "write_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
]
