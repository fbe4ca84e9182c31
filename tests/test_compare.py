"""`launcher compare` on hand-made output dirs: agreement, first divergence, sampled statistics."""

from __future__ import annotations

from pathlib import Path

from launcher.gather.compare import compare, distinct_n, render

from .conftest import write_jsonl


def _row(rid: str, ids: list[list[int]], texts: list[str]) -> dict:
    return {
        "record_id": rid,
        "generated_samples": texts,
        "sample_tokens": [len(i) for i in ids],
        "sample_token_ids": ids,
    }


def test_token_agreement_and_first_divergence(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a" / "samples.jsonl", [_row("r1", [[1, 2, 3, 4]], ["a b"]), _row("r2", [[5, 6]], ["c"])])
    write_jsonl(
        tmp_path / "b" / "samples.jsonl",
        [_row("r1", [[1, 2, 9, 4]], ["a x"]), _row("r2", [[5, 6]], ["c"]), _row("r3", [[7]], ["d"])],
    )
    cmp = compare(tmp_path / "a", tmp_path / "b")
    assert cmp.common == 2 and cmp.records_b == 3 and cmp.token_level
    assert cmp.tokens_compared == 6 and cmp.tokens_agreeing == 4 and cmp.identical_samples == 1
    first = cmp.first_divergence
    assert first is not None and (first.record_id, first.position) == ("r1", 2)
    shown = render(cmp, tmp_path / "a", tmp_path / "b")
    assert "first divergence: record r1, sample 0, at token 2" in shown and "token agreement: 0.6667" in shown


def test_without_token_ids_it_says_character_agreement(tmp_path: Path) -> None:
    """README's word (token agreement) only where token ids are there; else the measure is named, and the fix."""
    rows = [{k: v for k, v in _row("r1", [[1, 2]], [text]).items() if k != "sample_token_ids"} for text in ("ab", "ax")]
    write_jsonl(tmp_path / "a" / "samples.jsonl", rows[:1])
    write_jsonl(tmp_path / "b" / "samples.jsonl", rows[1:])
    cmp = compare(tmp_path / "a", tmp_path / "b")
    shown = render(cmp, tmp_path / "a", tmp_path / "b")
    assert not cmp.token_level and "character agreement (no token ids" in shown and "output.token_ids" in shown
    assert "token agreement:" not in shown and "at character 1" in shown


def test_distinct_n() -> None:
    assert distinct_n(["a a a", "a b"], 1) == 2 / 5
    assert distinct_n(["a b a b"], 2) == 2 / 3
