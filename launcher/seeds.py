"""seeds.py: (run seed, record id) -> the record's seed. Wide hash, never seed + index.

vLLM gives sample j of a request the seed s + j, so records seeded s, s+1, ... would share random streams.
A 63-bit hash of both makes neighbours' streams disjoint (the chance two of 10^7 records collide within
n=1024 of each other is ~1e-9).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def record_seed(run_seed: int, record_id: str) -> int:
    digest = hashlib.blake2b(f"{run_seed}\x00{record_id}".encode(), digest_size=8).digest()
    # Keep room below 2**63 for vLLM's + j (sample index) without overflow.
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS + 1)


def sample_seed(record_seed_value: int, sample_index: int) -> int:
    """Sample j's seed, the way vLLM derives it for n > 1; the HF backend uses the same so both stream alike."""
    return record_seed_value + sample_index
