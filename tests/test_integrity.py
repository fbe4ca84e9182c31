"""A run that cannot drift, rot or be hijacked (issue 17): a stable run id, inputs checked by content, refusals up
front (exit 2, nothing written), and a run that says what happened. Real CLI processes on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.store.claims import process_start

from .conftest import ROOT, USERS, launcher, make_spec, write_jsonl


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").iterdir() if p.is_dir()) if (out / "runs").is_dir() else []


# -- run identity ----------------------------------------------------------------------------------------------


def test_touched_dataset_keeps_its_run(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", USERS[:4])
    spec = make_spec(tmp_path, tiny_model, data)
    assert launcher("submit", str(spec), "--wait").returncode == 0
    (run,) = _runs(tmp_path / "out")
    os.utime(data, (time.time() + 3600, time.time() + 3600))  # touched: a new date, the same bytes
    again = launcher("submit", str(spec), "--wait")
    assert again.returncode == 0 and "0 unit(s) to do" in again.stdout, again.stdout + again.stderr
    assert _runs(tmp_path / "out") == [run]
    status = launcher("status", str(spec), "--json")  # by the spec's path: the same run, all done
    assert json.loads(status.stdout)["run_dir"] == str(run) and json.loads(status.stdout)["counts"] == {"DONE": 1}


def test_changed_dataset_asks_for_a_choice(tmp_path: Path, tiny_model: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", USERS[:4])
    spec = make_spec(tmp_path, tiny_model, data)
    assert launcher("submit", str(spec), "--wait").returncode == 0
    (run,) = _runs(tmp_path / "out")
    before = (run / "run.json").read_text()
    write_jsonl(data, [*USERS[:3], {**USERS[3], "context": "edited"}])  # same rows, other content
    proc = launcher("submit", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "the inputs changed since run" in message and "dataset 'users' holds other content" in message
    assert "--new-run" in message and "--resume" in message and "nothing was submitted" in message
    assert _runs(tmp_path / "out") == [run] and (run / "run.json").read_text() == before  # nothing written
    resumed = launcher("submit", str(spec), "--resume", "--wait")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = json.loads((run / "run.json").read_text())
    assert record["input_changes"] and "holds other content" in record["input_changes"][0]["changes"][0]
    assert launcher("submit", str(spec)).returncode == 0  # recorded: the same inputs now resume quietly
    write_jsonl(data, USERS[:5])
    fresh = launcher("submit", str(spec), "--new-run", "--wait")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    runs = _runs(tmp_path / "out")
    assert len(runs) == 2 and any(r.name.startswith(run.name + "-") for r in runs)


def test_weights_replaced_at_the_same_path_are_a_new_model(tmp_path: Path, tiny_model: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = write_jsonl(tmp_path / "d.jsonl", USERS[:3])
    spec = make_spec(tmp_path, model, data)
    assert launcher("submit", str(spec), "--wait").returncode == 0
    weights = next(model.glob("*.safetensors"))
    tensors = load_file(weights)
    size = weights.stat().st_size
    save_file({k: v + torch.full_like(v, 0.01) for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == size  # same names, shapes, size: only the numbers changed
    proc = launcher("submit", str(spec))
    assert proc.returncode == 2 and "model:" in proc.stderr and weights.name in proc.stderr, proc.stderr
    resume = launcher("submit", str(spec), "--resume")
    assert resume.returncode == 2 and "would be presented as the new model's" in " ".join(resume.stderr.split())
    assert launcher("submit", str(spec), "--new-run", "--wait").returncode == 0


# -- refused up front -------------------------------------------------------------------------------------------


def test_extends_pointed_at_a_non_spec_echoes_nothing(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$j9T$SECRETHASH:19000:0:99999:7:::\napi_key: hunter2-SECRET\n")
    spec = make_spec(tmp_path, tiny_model, users_file)
    text = spec.read_text()
    spec.write_text(f"extends: {secret}\n{text}")
    proc = launcher("plan", str(spec))
    assert proc.returncode == 2 and "is not a job spec or cluster profile" in proc.stderr
    assert "SECRET" not in proc.stderr + proc.stdout and "api_key" not in proc.stderr


@pytest.mark.parametrize(
    "template", ["{% for i in range(10**8) %}x{% endfor %}", "{% include '/etc/passwd' %}", "{{ 1 / 0 }}"]
)
def test_template_errors_exit_2_naming_the_template(
    tmp_path: Path, tiny_model: Path, users_file: Path, template: str
) -> None:
    spec = make_spec(
        tmp_path, tiny_model, users_file, data={"ablation_configs": ["mine"], "templates": {"mine": {"text": template}}}
    )
    proc = launcher("plan", str(spec))
    assert proc.returncode == 2, proc.stderr
    assert "data.templates.mine.text" in proc.stderr and "Traceback" not in proc.stderr
    assert "root:" not in proc.stderr


def test_bad_engine_values_output_inside_an_input_and_splits(
    tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    for section, field, value, words in (
        ("model", "quantization", "int3", "unknown quantization 'int3'"),
        ("model", "engine_args", {"kv_cache_dtype": "fp9"}, "did you mean 'fp8'"),
    ):
        proc = launcher("plan", str(make_spec(tmp_path, tiny_model, users_file, **{section: {field: value}})))
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    inside = make_spec(tmp_path, tiny_model, users_file, output={"dir": str(tiny_model / "outputs")})
    proc = launcher("submit", str(inside))
    assert proc.returncode == 2 and "is inside the model folder" in proc.stderr
    assert not (tiny_model / "outputs").exists()
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(USERS[:4]), "test": datasets.Dataset.from_list(USERS[4:6])}
    )
    dd.save_to_disk(str(tmp_path / "hf"))
    proc = launcher("plan", str(make_spec(tmp_path, tiny_model, tmp_path / "hf")))
    assert proc.returncode == 2 and "2 splits and none named" in proc.stderr and "train, test" in proc.stderr
    hf = {"name": "hf", "path": str(tmp_path / "hf"), "split": "test"}
    ok = make_spec(tmp_path, tiny_model, tmp_path / "hf", data={"datasets": [hf]})
    plan = launcher("plan", str(ok), "--json")
    assert plan.returncode == 0 and json.loads(plan.stdout)["records"] == 2, plan.stderr


def test_plan_counts_repeated_record_ids(tmp_path: Path, tiny_model: Path) -> None:
    rows = [
        {"id": 1, "user_id": "a", "context": "x"},
        {"id": "1", "user_id": "b", "context": "y"},
        {"id": 2, "user_id": "c", "context": "z"},
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    spec = make_spec(tmp_path, tiny_model, data, data={"fields": {"record_id": "id"}})
    proc = launcher("plan", str(spec))
    assert proc.returncode == 0
    line = " ".join(proc.stdout.split())
    assert "1 record id(s) repeat (1 row(s) will be quarantined as duplicates)" in line and "'1' x2" in line


@pytest.mark.slurm
def test_a_job_no_node_can_hold_is_refused(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file, executor="slurm", slurm={"gpus_per_node": 2, "cpus_per_gpu": 8})
    proc = launcher("submit", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "16 CPUs per job" in message and "the most is 8, on vm" in message and "cpus_per_gpu: 4" in message
    assert not (tmp_path / "out").exists()


# -- say what happened --------------------------------------------------------------------------------------------


def test_local_crash_shows_failed_with_its_error(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file, data={"records_per_shard": 5})
    proc = launcher("submit", str(spec), "--wait", env={"LAUNCHER_FAULT_CRASH": "users.full.0000:9:1"})
    assert proc.returncode == 1
    status = json.loads(launcher("status", str(tmp_path / "out"), "--json").stdout)
    (job,) = status["jobs"]
    assert job["state"] == "FAILED" and "injected fault" in job["last_error"]
    unit = next(u for u in status["units"] if u["unit_id"] == "users.full.0000")
    assert unit["failures"] >= 1 and "injected fault" in unit["last_error"]


def test_status_in_a_pipe_prints_plain_lines_and_survives_head(
    tmp_path: Path, tiny_model: Path, users_file: Path
) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file)
    assert launcher("submit", str(spec), "--wait").returncode == 0
    watch = launcher("status", str(tmp_path / "out"), "--watch")
    assert watch.returncode == 0 and "\x1b[" not in watch.stdout and "units 1 done; records 10/10" in watch.stdout
    piped = subprocess.run(
        f"{sys.executable} -m launcher status {tmp_path / 'out'} --json | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "BrokenPipeError" not in piped.stderr and "Traceback" not in piped.stderr


def test_local_submit_without_wait_gathers_by_itself(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file)
    with open(tmp_path / "log", "w") as log:  # not a pipe: the local job inherits it
        proc = subprocess.run(
            [sys.executable, "-m", "launcher", "submit", str(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            timeout=120,
        )
    assert proc.returncode == 0 and "the last one to finish gathers" in (tmp_path / "log").read_text()
    samples = tmp_path / "out" / "users" / "full" / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not samples.exists():
        time.sleep(0.5)
    assert samples.exists() and len(samples.read_text().splitlines()) == len(USERS)


def test_ctrl_c_on_submit_wait_says_what_is_kept(tmp_path: Path, tiny_model: Path, users_file: Path) -> None:
    spec = make_spec(tmp_path, tiny_model, users_file, output={"chunk_records": 1}, model={"hf_batch_size": 1})
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "submit", str(spec), "--wait"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "LAUNCHER_FAULT_SLOW_S": "2"},
        # As a terminal's shell starts it: a test runner started in the background (`cmd &` in a script) ignores
        # SIGINT, the child inherits that, and Python then never raises KeyboardInterrupt (measured: CI rehearsal).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "out").rglob("chunks/*.jsonl")) and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before Ctrl-C could land mid-run"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + errs
    assert "interrupted:" in errs and "launcher submit" in errs and "is kept" in errs
    assert "Traceback" not in errs and "KeyboardInterrupt" not in errs, errs  # no background process's traceback
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    jobs = [int(p["pid"]) for p in json.loads((run_dir / "submit.lock").read_text())["local"]]
    assert jobs and all(process_start(pid) is None for pid in jobs), "Ctrl-C must stop the local jobs"
    logs = "".join(p.read_text(errors="replace") for p in (run_dir / "logs").glob("*_log.*"))
    assert "Traceback" not in logs and "KeyboardInterrupt" not in logs, logs[-3000:]
    status = json.loads(launcher("status", str(tmp_path / "out"), "--json").stdout)
    assert status["jobs"][0]["state"] == "INTERRUPTED"
    run_dir = next((tmp_path / "out" / "runs").iterdir())
    assert not list(run_dir.glob("units/*/failures/*.json"))  # Ctrl-C is the user's, never a unit's failure
    again = launcher("submit", str(spec), "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len((tmp_path / "out" / "users" / "full" / "samples.jsonl").read_text().splitlines()) == len(USERS)
