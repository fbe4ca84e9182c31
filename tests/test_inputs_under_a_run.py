"""Inputs cannot change under a run (issue 26, part 3): every unit checks the files it reads against the identity
recorded at submit, a changed one is refused as the unit's failure (naming the file and a fix the command accepts),
`launcher batch` builds its output from what the run generated, keyed by custom_id, and a chat template's clock reads
the recorded date. Real runs of the tiny model on HF in this process, and `launcher batch` as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import LauncherError
from launcher.gather import GatherError, gather
from launcher.inputs.guard import InputChanged, InputGuard, PromptClock, read_record, write_record
from launcher.inputs.identity import changes, identify, matches
from launcher.job.entry import run_job
from launcher.plan import expand
from launcher.plan.persist import load_plan, resolve_run, save_plan
from launcher.spec import load_spec

from .conftest import USERS, launcher, make_spec, read_samples, write_jsonl

COMMAND = "launcher submit t.yaml"


def rewrite_keeping_size_and_mtime(path: Path, old: str, new: str) -> None:
    """Other bytes, the same size, the old mtime put back: only the ctime (which nobody can set) tells."""
    st = path.stat()
    text = path.read_text()
    assert len(old) == len(new) and old in text
    path.write_text(text.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def submitted(tmp_path: Path, tiny_model: Path, **data_fields: Any) -> Any:
    """A run planned and recorded as `launcher submit` does before its jobs start (plan.json, inputs.json)."""
    data = write_jsonl(tmp_path / "data" / "users.jsonl", USERS[:8])
    spec = load_spec(make_spec(tmp_path, tiny_model, data, data={"records_per_shard": 4, **data_fields}))
    resolved = resolve_run(spec, command=COMMAND)
    plan = expand(spec, run=resolved.run)
    save_plan(plan)
    write_record(plan.run, resolved.inputs, resolved.command, resolved.new_run, PromptClock.from_submitted_at(
        "2001-02-03T04:05:06+0000"))  # fmt: skip
    return plan, data


def test_a_dataset_changed_mid_run_refuses_the_units_read_after_it(tmp_path: Path, tiny_model: Path) -> None:
    chat = tmp_path / "chat.jinja"
    chat.write_text("{{ strftime_now('%Y') }}|{% for m in messages %}{{ m.content }}{% endfor %}")
    plan, data = submitted(tmp_path, tiny_model, chat_template=str(chat))
    first, second = (u.unit_id for u in plan.units)
    run_job(plan.run.root, 0, (first,))
    original = data.read_bytes()
    rewrite_keeping_size_and_mtime(data, "Write about item 5.", "Write about item 9.")
    run_job(plan.run.root, 0)
    udir = plan.run.unit(second)
    assert not udir.is_done()
    refusal = udir.read_failures()[-1].error
    assert refusal.startswith("InputChanged: ") and str(data) in refusal and "dataset 'users' changed" in refusal
    assert f"`{COMMAND}` again resumes it" in refusal and f"`{COMMAND} --new-run`" in refusal
    with pytest.raises(GatherError, match=r"refused: .*dataset 'users' changed"):
        gather(plan)
    data.write_bytes(original)  # put back: the same run resumes, and its rows are the ones it recorded
    run_job(plan.run.root, 0)
    rows = {r["row"]: r for report in gather(plan) for r in read_samples(report.out_dir)}
    assert sorted(rows) == list(range(8)) and "Write about item 5." in rows[5]["prompt"]
    assert all(r["prompt"].startswith("2001|") for r in rows.values())  # the recorded date, not today's


def test_what_counts_as_a_changed_input(tmp_path: Path, tiny_model: Path) -> None:
    """Symlinks, renames and copies of the same bytes are no change; other bytes are, wherever they come from:
    the dataset, the preamble, the spec's template files, the model's tokenizer and chat template."""
    model = shutil.copytree(tiny_model, tmp_path / "model")
    chat, preamble = tmp_path / "chat.jinja", tmp_path / "preamble.txt"
    chat.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    preamble.write_text("You write reviews.")
    plan, data = submitted(tmp_path, model, chat_template=str(chat), preamble=str(preamble))
    unit = plan.units[0]

    def check() -> str | None:
        try:
            InputGuard(plan.spec, read_record(plan.run)).check_unit(unit)
        except InputChanged as exc:
            return str(exc)
        return None

    assert check() is None
    same = tmp_path / "copy.jsonl"
    shutil.copyfile(data, same)
    original = data.read_bytes()
    data.unlink()
    data.symlink_to(same)  # a symlink to the same bytes: no change
    assert check() is None
    other = tmp_path / "other.jsonl"
    other.write_bytes(original.replace(b"item 1.", b"item 7."))
    data.unlink()
    data.symlink_to(other)  # the dataset replaced by a symlink to other bytes
    assert "dataset 'users' changed" in (check() or "")
    data.unlink()
    data.write_bytes(original)
    for path, old, new, what in (
        (preamble, "reviews", "poems!!", "preamble file changed"),
        (chat, "m.content", "m.role   ", "chat template file changed"),
        (model / "chat_template.jinja", "{", "{", "model folder changed"),
        (model / "tokenizer_config.json", "{", "{", "model folder changed"),
    ):
        saved = path.read_bytes()
        path.write_bytes(saved.replace(old.encode(), new.encode(), 1) + (b" " if old == new else b""))
        assert what in (check() or ""), path
        path.write_bytes(saved)
        assert check() is None
    # the identity itself: the files that shape prompts are in it, and a run recorded before they were is still
    # recognised (upgrading the launcher does not refuse the runs in progress)
    now = identify(plan.spec)
    assert "chat_template.jinja" in now.model and "chat_template" in now.prompts
    v1 = {k: v for k, v in now.as_recorded({}).as_json().items() if k not in ("version", "prompts")}
    assert matches(v1, now) and not changes(v1, now)
    chat.write_text("{{ messages[0].content }}")
    assert changes(read_record(plan.run)["identity"], identify(plan.spec)) == ["data: the chat_template file changed"]


def batch_line(custom_id: str, text: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {"messages": messages}}


def test_batch_answers_stay_under_their_custom_ids(tmp_path: Path, tiny_model: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000  # a line nested without end: an error line, never a crash
    requests = write_jsonl(tmp_path / "r.jsonl", [batch_line(f"q{i}", f"question {i}") for i in range(3)] + [deep])
    out = tmp_path / "out.jsonl"
    argv = ["batch", "-i", str(requests), "-o", str(out), "--model", str(tiny_model), "--set", "model.backend=hf",
            "--set", "sampling.max_tokens=3"]  # fmt: skip
    assert launcher(*argv).returncode == 0
    first = out.read_bytes()
    assert "nested deeper than" in json.loads(first.splitlines()[-1])["error"]["message"]
    original = requests.read_bytes()
    requests.write_bytes(json.dumps(batch_line("new", "inserted first")).encode() + b"\n" + original)
    # the output is never re-read by position: a changed input is refused, with fixes `launcher batch` takes
    plan = load_plan(next((tmp_path / "out.jsonl.run" / "runs").iterdir()))
    from launcher.submit.openai_batch import write_output

    with pytest.raises(LauncherError) as exc:
        write_output(plan, requests, out, "launcher batch -i r.jsonl -o out.jsonl")
    assert "changed since the run read it" in str(exc.value) and "-o out.jsonl --new-run" in str(exc.value)
    assert out.read_bytes() == first
    again = launcher(*argv)
    assert again.returncode == 2 and "--resume" not in again.stderr, again.stderr
    assert f"-o {out} --model {tiny_model} --set model.backend=hf --set sampling.max_tokens=3 --new-run" in again.stderr
    new = launcher(*argv, "--new-run")
    assert new.returncode == 0, new.stderr[-2000:]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["custom_id"] for g in got] == ["new", "q0", "q1", "q2", None]
    new_run = next(p for p in (tmp_path / "out.jsonl.run" / "runs").iterdir() if p != plan.run.root)
    prompts = {r["record_id"]: r["prompt"] for r in read_samples(load_plan(new_run).run.output_dir / "batch" / "full")}
    assert "inserted first" in prompts["new"] and all(f"question {i}" in prompts[f"q{i}"] for i in range(3))
    # (the original put back resumes the first run: test_openai_batch.py's rerun writes the same bytes)


def test_batch_refuses_an_output_it_cannot_write_before_running(tmp_path: Path, tiny_model: Path) -> None:
    requests = write_jsonl(tmp_path / "r.jsonl", [batch_line("q", "hi")])
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    for target, said in ((tmp_path / "folder", "is a folder"), (tmp_path / "afile" / "o.jsonl", "is a file")):
        proc = launcher("batch", "-i", str(requests), "-o", str(target), "--model", str(tiny_model))
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder", "r.jsonl"]  # nothing ran, nothing written
