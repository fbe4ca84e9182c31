"""Records that carry chat messages, and the spec's choice of chat template (the tokenizer's, none, its own inline
or from a file, with chat_template_kwargs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.spec import load_spec
from launcher.store import read_jsonl

from .conftest import launcher, make_spec, read_samples, write_jsonl

ROWS: list[dict[str, Any]] = [
    {"id": "m1", "messages": [{"role": "user", "content": "Name a film."}]},
    {
        "id": "m2",
        "messages": [{"role": "system", "content": "Own system."}, {"role": "user", "content": "And a song?"}],
    },
    {"id": "m3", "messages": [{"role": "wizard", "content": "abracadabra"}]},
    {"id": "m4", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"id": "m5", "messages": []},
]


def _run(tmp_path: Path, tiny_model: Path, name: str, **data: Any) -> dict[str, dict[str, Any]]:
    rows = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    spec = make_spec(
        tmp_path,
        tiny_model,
        rows,
        name=name,
        data={"fields": {"record_id": "id"}, "system_prompt": "Be brief.", **data},
        output={"dir": str(tmp_path / name)},
    )
    proc = launcher("run", "--spec", str(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / name / "users" / "full"
    return {r["record_id"]: r for r in read_samples(out)} | {
        "_quarantine": {q["row"]: q["reason"] for q in read_jsonl(out / "quarantine.jsonl")}
    }


def test_messages_go_through_the_tokenizers_template(tmp_path: Path, tiny_model: Path) -> None:
    got = _run(tmp_path, tiny_model, "tok")
    assert set(got) == {"m1", "m2", "_quarantine"}
    # The spec's system prompt goes first unless the record brings its own; the record needs no user id.
    assert got["m1"]["prompt"] == "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nName a film.<|end|>\n<|assistant|>\n"
    assert (
        got["m2"]["prompt"].startswith("<|bos|><|system|>\nOwn system.<|end|>")
        and "Be brief" not in got["m2"]["prompt"]
    )
    assert got["m1"]["user_id"] == "m1"
    quarantine = got["_quarantine"]
    assert "messages[0].role is 'wizard'" in quarantine[2]
    assert "'image_url' part; only text parts" in quarantine[3]
    assert "non-empty list" in quarantine[4]


def test_no_template_joins_the_messages(tmp_path: Path, tiny_model: Path) -> None:
    got = _run(tmp_path, tiny_model, "plain", chat_template=False)
    assert got["m2"]["prompt"] == "Own system.\n\nAnd a song?"
    assert got["m1"]["prompt"] == "Be brief.\n\nName a film."


def test_the_specs_own_template_inline_and_from_a_file(tmp_path: Path, tiny_model: Path) -> None:
    inline = "{{ bos_token }}MINE {{ flavour }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}>"
    got = _run(tmp_path, tiny_model, "inline", chat_template=inline, chat_template_kwargs={"flavour": "mint"})
    assert got["m1"]["prompt"] == "<|bos|>MINE mint[system]Be brief.[user]Name a film.>"
    (tmp_path / "tpl.jinja").write_text("FILE{% for m in messages %}|{{ m.content }}{% endfor %}")
    got = _run(tmp_path, tiny_model, "file", chat_template="tpl.jinja")  # relative to the spec's folder
    assert got["m2"]["prompt"] == "FILE|Own system.|And a song?"


def test_template_choice_is_part_of_the_run_id(tmp_path: Path, tiny_model: Path) -> None:
    rows = write_jsonl(tmp_path / "chat.jsonl", ROWS)
    base = load_spec(make_spec(tmp_path, tiny_model, rows, name="a"))
    kw = load_spec(make_spec(tmp_path, tiny_model, rows, name="a", data={"chat_template_kwargs": {"x": 1}}))
    same = load_spec(make_spec(tmp_path, tiny_model, rows, name="a", data={"chat_template_kwargs": {}}))
    assert kw.fingerprint() != base.fingerprint() and same.fingerprint() == base.fingerprint()


def test_an_unreadable_template_file_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    rows = write_jsonl(tmp_path / "chat.jsonl", ROWS[:1])
    spec = make_spec(tmp_path, tiny_model, rows, data={"fields": {"record_id": "id"}, "chat_template": "missing.jinja"})
    proc = launcher("plan", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "data.chat_template" in proc.stderr and "cannot read the chat template file" in proc.stderr
