"""benchmarks/report.py and the bench's option parsing: pure code, no GPU. The ratios are what issue 9/7/11 read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from launcher.bench.report import analyse, markdown
from launcher.bench.toolkit_systems import parse_layouts
from launcher.errors import SpecError


def m(system: str, shape: str, spm: float, startup: float = 10.0) -> dict[str, Any]:
    return {
        "system": system,
        "shape": shape,
        "samples": 1000,
        "output_tokens": 1,
        "samples_per_min": spm,
        "output_tok_per_s": 1.0,
        "generation_s": 1.0,
        "startup": {"total_s": startup},
        "wall_s": 60.0,
    }


def test_ratios_and_targets_from_one_run() -> None:
    ms = [
        m("raw-defaults", "1000x256", 1000),
        m("toolkit", "1000x256", 900, startup=100),
        m("toolkit-warm", "1000x256", 1600, startup=30),
        m("sweep:max_num_seqs=1024", "1000x256", 1650),
        m("toolkit-fp8", "1000x256", 1300),
        m("toolkit-bf16-pair", "1000x256", 1000),
    ]
    out = analyse(ms)
    r = out["ratios"]["1000x256"]
    assert r["toolkit_vs_raw"] == 1.6 and r["toolkit_cold_vs_raw"] == 0.9
    assert r["toolkit_vs_sweep_best"] == round(1600 / 1650, 3)
    assert r["warm_vs_cold_startup"] == 0.3
    # fp8 is compared with the bf16 run taken beside it, not with the main run's cold task
    assert (r["fp8_vs_bf16"], r["fp8_compared_with"]) == (1.3, "toolkit-bf16-pair")
    t = out["targets"]
    assert t["toolkit >= 1.5x raw at 1000x256"]["met"] is True
    assert t["warm start-up <= 35% of cold at 1000x256"]["met"] is True


def test_layout_auto_against_tp4() -> None:
    ms = [m("layout:tp4", "4000x512", 2000), m("layout:tpauto", "4000x512", 2500), m("layout:tp1", "4000x512", 2500)]
    out = analyse(ms)
    assert out["ratios"]["4000x512"]["layout_auto_vs_tp4"] == 1.25
    assert out["targets"]["layout auto >= 1.3x TP=4 at 4000x512"]["met"] is False
    table = markdown(
        {
            "date": "d",
            "host": {"gpu": "g", "versions": {}},
            "workload": {"model": "x", "prompt_tokens": 1, "n": 5},
            "measurements": ms,
            "analysis": out,
        }
    )
    assert "layout:tpauto" in table and "NOT MET: layout auto >= 1.3x TP=4" in table


def test_layouts_option() -> None:
    assert parse_layouts("auto, 4,2,1,all") == ["auto", 4, 2, 1, "all"]
    with pytest.raises(SpecError, match="--layouts: item 'tp4' is not a layout"):
        parse_layouts("auto,tp4")


def test_prefix_order_gains_and_how_the_runs_started() -> None:
    long, short = "cells-1x3x216x256-p2048+128", "cells-4x3x100x256"

    def run(system: str, shape: str, gen_s: float, cache: str, hit: float, prefix: int) -> dict[str, Any]:
        row = m(system, shape, 1000)
        active = system != "cells-plan-order" and prefix > 0
        row.update(generation_s=gen_s, compile_cache=[f"{cache} (compiler)"], prefix_cache_hit_rate=hit)
        row.update(prefix_tokens=prefix, prefix_order={"active": active, "reason": "auto: on" if active else "off"})
        return row

    ms = [
        run("cells-prefix-order", long, 100.0, "miss", 0.91, 2048),
        run("cells-plan-order", long, 140.0, "miss", 0.78, 2048),
        run("cells-prefix-order", short, 82.0, "miss", 0.8, 0),
        run("cells-plan-order", short, 80.0, "hit", 0.8, 0),  # found a cache: not started like the other
    ]
    out = analyse(ms)
    r, s = out["ratios"][long], out["ratios"][short]
    assert r["prefix_order_gain"] == 1.4 and r["prefix_order_gain_basis"].endswith("compile cache miss vs miss")
    assert (r["prefix_cache_hit_rate_prefix_order"], r["prefix_cache_hit_rate_plan_order"]) == (0.91, 0.78)
    assert r["prefix_order_active"] is True
    assert out["targets"][f"prefix_order_gain >= 1.25 (wall clock) at {long}"]["met"] is True
    assert (
        s["prefix_order_gain_short"] == round(80 / 82, 3) and "compare with care" in s["prefix_order_gain_short_basis"]
    )
    assert out["targets"][f"prefix_order_gain_short >= 0.98 (wall clock) at {short}"]["met"] is False
    table = markdown(
        {
            "date": "d",
            "host": {"gpu": "g", "versions": {}},
            "workload": {"model": "x", "prompt_tokens": 1, "n": 5},
            "measurements": ms,
            "analysis": out,
        }
    )
    assert "## Prefix order (issue 31)" in table and "| cells-prefix-order | " + long in table
    assert "NOT MET: prefix_order_gain_short" in table and "MET: prefix_order_gain >= 1.25" in table


def test_budget_zero_writes_the_report_from_what_was_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`launcher bench --budget-s 0` runs nothing: what WORKDIR holds is reported, the rest is skipped (the GPU
    scripts end each call with it, so a call cut short still leaves results.json)."""
    from launcher.bench.cli import main

    shape = "cells-1x3x4x8-p32+8"  # two runs: cells-prefix-order, cells-plan-order
    runs = tmp_path / "w" / "runs"
    runs.mkdir(parents=True)
    (runs / f"cells-plan-order@{shape}.json").write_text(json.dumps([m("cells-plan-order", shape, 100)]))
    args = ["--preset", "tiny", "--no-plot", "--budget-s", "0", "--systems", "prefix-order", "--shapes", "10x8"]
    args += ["--prefix-cells", "1x3x4x8", "--prefix-tokens", "32", "--prefix-context-tokens", "8"]
    assert main([*args, "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert f"cells-plan-order@{shape}: already measured" in out
    assert f"cells-prefix-order@{shape}: skipped" in out
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert [r["system"] for r in results["measurements"]] == ["cells-plan-order"]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--systems", "raw,nope"], "--systems: unknown system(s) nope"),
        (["--preset", "llama9"], "--preset: unknown preset 'llama9'"),
        (["--layouts", "auto,tp4"], "--layouts: item 'tp4' is not a layout"),
        (["--systems", "scale", "--scale-units", "15"], "--scale-units: 15 is not a multiple of --scale-ablations 10"),
    ],
)
def test_bad_bench_flags_exit_2_printed_like_every_launcher_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    from launcher.bench.cli import main

    assert main([*flags, "--workdir", str(tmp_path / "w"), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{SpecError.headline}:\n{said}") and ("allowed:" in err or "fix:" in err)
    assert not (tmp_path / "res").exists()  # nothing measured, no report written
