"""The HF backend seeds each sample by seeds.py's rule (sample_seed: the one vLLM applies to n > 1), not a copy of it:
sample j of a record is drawn from sample_seed(record_seed(run seed, record id), j)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from launcher.engines.base import GenerationRequest, Workload
from launcher.job.prepare import load_tokenizer
from launcher.plan.layout import ParallelLayout
from launcher.seeds import record_seed, sample_seed
from launcher.spec import load_spec

from .conftest import USERS, make_spec, write_jsonl


def test_hf_sample_seeds_are_seeds_py(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import launcher.engines.hf.engine as hf_engine
    from launcher.engines.hf.sampler import SeededSampler

    seen: list[list[int]] = []

    class RecordingSampler(SeededSampler):
        def __init__(self, seeds: list[int], *args: Any) -> None:
            seen.append(list(seeds))
            super().__init__(seeds, *args)

    monkeypatch.setattr(hf_engine, "SeededSampler", RecordingSampler)
    spec = load_spec(make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:1])))
    tokenizer = load_tokenizer(spec)
    n = 3
    engine = hf_engine.HFEngine(spec.model, spec.sampling, n)
    engine.load(Workload(2, 4.0, 4, 8, n), tokenizer, ParallelLayout(1, 1, (), "CPU"))
    ids = tokenizer("hello there", add_special_tokens=True)["input_ids"]
    records = ["u00", "user with a long id \u2028 and more"]
    seeds = [record_seed(spec.sampling.seed, rid) for rid in records]
    done = {c.key: c for c in engine.generate([GenerationRequest(k, ids, s) for k, s in enumerate(seeds)])}
    assert sorted(done) == [0, 1] and all(len(c.samples) == n for c in done.values())
    assert seen == [[sample_seed(s, j) for s in seeds for j in range(n)]]
    # the rule shows in the samples too: sample j of a record is the sample its own seed gives alone
    alone = next(iter(engine.generate([GenerationRequest(0, ids, sample_seed(seeds[0], 2), n=1)])))
    assert alone.samples[0] == done[0].samples[2]
    # one rule, in seeds.py: were it to change, the HF backend would follow it (it keeps no copy of its own)
    import launcher.seeds

    monkeypatch.setattr(launcher.seeds, "sample_seed", lambda s, j: s * 31 + j)
    seen.clear()
    list(engine.generate([GenerationRequest(0, ids, seeds[0])]))
    assert seen == [[seeds[0] * 31 + j for j in range(n)]]
