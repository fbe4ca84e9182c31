"""Safe in a lab's shared folder (issue 27), with real users: OWNER runs the launcher in a setgid group folder under
umask 002; MATE, a member of the same group, tries each attack with a shell, coreutils and python3. Every test asserts
that OWNER's commands and jobs refuse or ignore what MATE planted, finish or fail clearly (exit 2, the file named),
and write nothing outside OWNER's own run and outputs. On the real local executor and the real local Slurm.

Costs about 90-120 s in CI on 2 cores (one local run of 4 records, two held Slurm arrays, one Slurm run; the rest
are launcher commands and short scripts). The compile cache's attacks are in tests/test_shared_compile_cache.py.
docs/security.md lists which test holds which promise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from . import lab_users
from .helpers import in_queue, wait_for
from .lab_users import MATE, OWNER, Lab, group_id, ids, mode, owned_by

pytestmark = pytest.mark.skipif(lab_users.why_not() is not None, reason=str(lab_users.why_not()))

RECORDS = 4
SECRET = "s3cret-lab-token-27"
BOMB = """
import os, pickle, sys
class Bomb:  # loading this pickle runs `touch MARKER` as whoever loads it
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
with open(sys.argv[1], "wb") as f:
    pickle.dump(Bomb(), f)
"""


@dataclass
class OwnerRun:
    spec: Path
    out: Path
    run_dir: Path


@pytest.fixture(scope="module")
def lab(tiny_model: Path) -> Iterator[Lab]:
    made = lab_users.make_lab(tiny_model, records=RECORDS)
    yield made
    subprocess.run(["scancel", "-u", OWNER], capture_output=True)  # held arrays a failed test left behind
    shutil.rmtree(made.base, ignore_errors=True)


def write_spec(lab: Lab, name: str, out: Path, **sections: object) -> Path:
    spec: dict[str, object] = {
        "name": name,
        "model": {"path": str(lab.base / "model"), "backend": "hf"},
        "data": {
            "datasets": [{"name": "users", "path": str(lab.base / "data" / "users.jsonl")}],
            "ablation_configs": ["full"],
            "num_samples": 2,
            "records_per_shard": RECORDS,
        },
        "sampling": {"max_tokens": 4, "seed": 7},
        "output": {"dir": str(out), "chunk_records": 2},
        "executor": "local",
    }
    for key, value in sections.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value  # type: ignore[dict-item]
    folder = lab.base / "specs"
    folder.mkdir(exist_ok=True, mode=0o755)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    path.chmod(0o644)
    return path


def run_dir_of(proc: subprocess.CompletedProcess[str]) -> Path:
    for line in proc.stdout.splitlines():
        if line.startswith("run dir: "):
            return Path(line.removeprefix("run dir: ").strip())
    raise AssertionError(f"no run dir in the output ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def refused(proc: subprocess.CompletedProcess[str], *names: object) -> str:
    """The command exited 2 with a refusal naming each of `names`; returns its stderr."""
    text = proc.stderr + proc.stdout
    assert proc.returncode == 2, f"expected a refusal (exit 2), got {proc.returncode}:\n{text}"
    for name in names:
        assert str(name) in text, f"{name} not named in:\n{text}"
    return text


def as_root(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@pytest.fixture(scope="module")
def owner_run(lab: Lab) -> OwnerRun:
    out = lab.lab / "out"
    spec = write_spec(lab, "lab", out)
    proc = lab.launcher(OWNER, "submit", str(spec), "--wait", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return OwnerRun(spec, out, run_dir_of(proc))


# ---- 2. private state, shared results ----------------------------------------------------------------------------
def test_state_is_private_and_results_group_readable_in_a_setgid_folder_under_umask_002(
    lab: Lab, owner_run: OwnerRun
) -> None:
    runs = owner_run.out / "runs"
    for path in [runs, *runs.rglob("*")]:
        assert path.is_symlink() or mode(path) & 0o077 == 0, f"{path}: {mode(path):o} (the owner's alone)"
    cell = owner_run.out / "users" / "full"
    for path in [owner_run.out, *[p for p in owner_run.out.rglob("*") if runs not in p.parents and p != runs]]:
        assert mode(path) & 0o022 == 0 and mode(path) & 0o040, f"{path}: {mode(path):o}"
        assert path.stat().st_gid == group_id(), f"{path}: not the lab's group"
    assert mode(cell) == 0o2750 and mode(cell / "samples.jsonl") == 0o640
    assert lab.run(MATE, "cat", str(cell / "samples.jsonl")).returncode == 0  # the group reads the results
    assert lab.run(MATE, "ls", str(owner_run.run_dir)).returncode != 0  # but not the run's state
    assert lab.run(MATE, "sh", "-c", f"echo x >> {cell / 'samples.jsonl'}").returncode != 0
    assert lab.run(MATE, "touch", str(cell / "planted")).returncode != 0


# ---- 3. trust only what you wrote: a replaced folder ----------------------------------------------------------
def test_a_replaced_output_folder_is_refused_and_its_planted_pickle_never_loaded(lab: Lab, owner_run: OwnerRun) -> None:
    out, run_dir = owner_run.out, owner_run.run_dir
    marker = lab.base / "loot" / "pickle-ran"
    planted_run = out / "runs" / run_dir.name
    # MATE renames OWNER's output folder away (the lab folder is group-writable) and builds a look-alike
    assert lab.run(MATE, "mv", str(out), str(out) + ".orig").returncode == 0
    plant = (
        f"mkdir -p {planted_run}/logs && chmod -R 777 {out} && "
        f'echo \'{{"container": {{"runtime": "docker", "image": "evil"}}}}\' > {planted_run}/spec.json && '
        f"echo '{{\"units\": []}}' > {planted_run}/plan.json && "
        f'echo \'{{"version": 1, "runtime": "docker", "image": "evil", "binds": []}}\' '
        f"> {planted_run}/container.json && chmod 666 {planted_run}/*.json"
    )
    assert lab.run(MATE, "sh", "-c", plant).returncode == 0
    bomb = lab.run(MATE, "/usr/bin/python3", "-c", BOMB, f"{planted_run}/logs/1_0_submitted.pkl", str(marker))
    assert bomb.returncode == 0, bomb.stderr
    try:
        refused(lab.launcher(OWNER, "status", str(run_dir)), run_dir, "belongs to", MATE)
        refused(lab.launcher(OWNER, "submit", str(owner_run.spec)), run_dir, MATE)
        refused(lab.launcher(OWNER, "gather", str(run_dir)), run_dir, MATE)
        shim = lab.run(OWNER, lab.python, "-m", "launcher.containers.shim", f"{run_dir}/container.json", "--", "true")
        refused(shim, run_dir, MATE)
        load = "import pickle, sys; pickle.load(open(sys.argv[1] + '/1_0_submitted.pkl', 'rb'))"
        guard = lab.run(OWNER, lab.python, "-m", "launcher.store.guard", str(run_dir), "--", lab.python, "-c", load,
                        str(run_dir / "logs"))  # fmt: skip
        assert guard.returncode == 2 and "was not started" in guard.stderr, guard.stderr
        assert not marker.exists(), "OWNER loaded the pickle MATE planted"
        assert owned_by(out, ids(OWNER)[0]) == [], "OWNER wrote into the folder MATE planted"
    finally:
        shutil.rmtree(out)
        os.rename(str(out) + ".orig", out)
    # put back, OWNER's commands work again: nothing of theirs was touched meanwhile
    proc = lab.launcher(OWNER, "gather", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- 3. trust only what you wrote: a run folder an older launcher left group-writable -------------------------
def open_like_before(run_dir: Path) -> None:
    """As a launcher before issue 27 left a run folder made under umask 002 in a setgid group folder: runs/ and the
    run folder group-writable (2775), of the lab's group. Its files keep their modes."""
    for folder in (run_dir.parent, run_dir):
        os.chown(folder, -1, group_id())
        folder.chmod(0o2775)
    for path in run_dir.iterdir():
        os.chown(path, -1, group_id(), follow_symlinks=False)


@pytest.fixture
def legacy_open(lab: Lab, owner_run: OwnerRun) -> Iterator[Path]:
    """OWNER's run folder, opened as open_like_before says; restored afterwards."""
    run_dir = owner_run.run_dir
    snapshot = run_dir.with_name(run_dir.name + ".snapshot")
    runs_mode = mode(run_dir.parent)
    as_root("cp", "-a", str(run_dir), str(snapshot))
    open_like_before(run_dir)
    yield run_dir
    shutil.rmtree(run_dir)
    os.rename(snapshot, run_dir)
    run_dir.parent.chmod(runs_mode)


@pytest.mark.parametrize(
    ("attack", "named", "why"),
    [
        ("replace spec.json", "spec.json", MATE),
        ("link plan.json", "plan.json", "symbolic link"),
        ("edit spec.json in place", "spec.json", "can be written by its group"),
    ],
)
def test_a_planted_spec_or_plan_is_refused(lab: Lab, legacy_open: Path, attack: str, named: str, why: str) -> None:
    run_dir = legacy_open
    evil = lab.base / "loot" / f"evil-{named}"
    if attack == "replace spec.json":
        script = f"rm -f {run_dir}/spec.json && echo '{{}}' > {run_dir}/spec.json"
    elif attack == "link plan.json":
        script = f"echo '{{\"units\": []}}' > {evil} && rm -f {run_dir}/plan.json && ln -s {evil} {run_dir}/plan.json"
    else:  # OWNER's own file, left group-writable: MATE rewrites it in place (same file, still OWNER's)
        (run_dir / "spec.json").chmod(0o664)
        rewrite = "import sys; p = sys.argv[1]; t = open(p).read(); open(p, 'w').write(t)"
        script = f'python3 -c "{rewrite}" {run_dir}/spec.json'
    done = lab.run(MATE, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    refused(lab.launcher(OWNER, "status", str(run_dir)), run_dir / named, why)
    refused(lab.launcher(OWNER, "run", "--spec", str(run_dir)), run_dir / named)  # a job here: refused too


@pytest.mark.parametrize("plant", ["MATE's own file", "OWNER's file left group-writable"])
def test_a_planted_container_request_is_refused(lab: Lab, legacy_open: Path, plant: str) -> None:
    request = legacy_open / "container.json"
    evil = {"version": 1, "runtime": "docker", "image": "evil:latest", "binds": [{"host": "/home", "container":
            "/home", "read_only": False}], "env": {}, "workdir": None, "user": None}  # fmt: skip
    if plant == "OWNER's file left group-writable":
        assert lab.py(OWNER, f"open({str(request)!r}, 'w').write('{{}}')").returncode == 0
        request.chmod(0o664)
        write = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"  # in place: still OWNER's file
    else:
        write = "import os, sys; os.path.lexists(sys.argv[1]) and os.unlink(sys.argv[1]); " + (
            "open(sys.argv[1], 'w').write(sys.argv[2])"
        )  # a new file: MATE's
    assert lab.run(MATE, "/usr/bin/python3", "-c", write, str(request), json.dumps(evil)).returncode == 0
    shim = lab.run(OWNER, lab.python, "-m", "launcher.containers.shim", "--print", str(request), "--", "python3")
    refused(shim, request, MATE if plant == "MATE's own file" else "can be written by its group")
    assert "evil" not in shim.stdout


@pytest.mark.parametrize("plant", ["hard link", "symlink"])
def test_the_submit_lock_never_truncates_a_file_through_a_planted_name(
    lab: Lab, owner_run: OwnerRun, legacy_open: Path, plant: str
) -> None:
    notes = lab.lab / "notes.txt"  # OWNER's own file, group-writable as a lab's files are: hard-linkable by MATE
    lab.py(OWNER, f"open({str(notes)!r}, 'w').write('precious notes\\n')")
    link = "ln" if plant == "hard link" else "ln -s"
    done = lab.run(MATE, "sh", "-c", f"rm -f {legacy_open}/submit.lock && {link} {notes} {legacy_open}/submit.lock")
    assert done.returncode == 0, done.stderr
    refused(lab.launcher(OWNER, "submit", str(owner_run.spec)), legacy_open / "submit.lock")
    assert notes.read_text() == "precious notes\n"
    assert mode(legacy_open) == 0o700  # the submit closed the run folder again before anything else


# ---- 1. one owner: secrets never reach a planted temporary name (live Slurm: the jobs are held, then cancelled)
@pytest.mark.slurm
def test_secrets_never_reach_a_link_planted_at_a_temporary_name(lab: Lab) -> None:
    spec = write_spec(
        lab,
        "secrets",
        lab.lab / "out-secrets",
        executor="slurm",
        slurm={"time": "00:05:00", "gather": False, "extra_args": {"hold": True}, "cpus_per_gpu": 1, "mem": "1G"},
        container={"runtime": "docker", "image": "launcher-lab/none:1", "env": {"LAB_API_TOKEN": SECRET}},
    )
    first = lab.launcher(OWNER, "submit", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = run_dir_of(first)
    cancel_held(lab, run_dir)
    open_like_before(run_dir)  # MATE may plant names in it now
    loot = lab.base / "loot" / "secrets.txt"
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    plant = """
import os, sys, socket
run, loot, last = sys.argv[1], sys.argv[2], int(sys.argv[3])
open(loot, "w").close(); os.chmod(loot, 0o666)
names = [".container.json.tmp", "container.json"]
names += [f".container.json.{pid}.tmp" for pid in range(last, last + 4000)]  # the old writer's pid-based names
for name in names:
    path = os.path.join(run, name)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(loot, path)
"""
    done = lab.run(MATE, "/usr/bin/python3", "-c", plant, str(run_dir), str(loot), str(last))
    assert done.returncode == 0, done.stderr
    again = lab.launcher(OWNER, "submit", str(spec))
    assert again.returncode == 0, again.stdout + again.stderr
    cancel_held(lab, run_dir)
    assert loot.read_text() == "", "the secrets went into MATE's file"
    request = run_dir / "container.json"
    st = request.lstat()
    assert not request.is_symlink() and st.st_uid == ids(OWNER)[0] and mode(request) == 0o600
    assert SECRET in request.read_text()
    assert mode(run_dir) == 0o700


def cancel_held(lab: Lab, run_dir: Path) -> None:
    array = held_array(run_dir)
    subprocess.run(["scancel", array], check=True)
    wait_for(f"array {array} gone", lambda: not in_queue(array), 60)


def held_array(run_dir: Path) -> str:
    run = json.loads((run_dir / "run.json").read_text())
    return str(run["submissions"][-1]["array_job_id"])


# ---- 1 + 3 on the live Slurm: a job started in a replaced folder loads nothing from it ---------------------------
@pytest.mark.slurm
def test_a_slurm_job_started_in_a_replaced_folder_refuses_and_a_resubmit_finishes(lab: Lab) -> None:
    out = lab.lab / "out-slurm"
    sections = {"time": "00:05:00", "gather": False, "cpus_per_gpu": 1, "mem": "1G"}
    held = write_spec(lab, "held", out, executor="slurm", slurm={**sections, "extra_args": {"hold": True}})
    proc = lab.launcher(OWNER, "submit", str(held))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = run_dir_of(proc)
    array = held_array(run_dir)
    marker = lab.base / "loot" / "slurm-pickle-ran"
    planted = out / "runs" / run_dir.name
    assert lab.run(MATE, "mv", str(out), str(out) + ".orig").returncode == 0
    assert lab.run(MATE, "sh", "-c", f"mkdir -p {planted}/logs && chmod -R 777 {out}").returncode == 0
    bomb = lab.run(MATE, "/usr/bin/python3", "-c", BOMB, f"{planted}/logs/{array}_0_submitted.pkl", str(marker))
    assert bomb.returncode == 0, bomb.stderr
    subprocess.run(["scontrol", "release", array], check=True, capture_output=True)
    wait_for(f"array {array} to end", lambda: not in_queue(array), 120)
    log = planted / "logs" / f"{array}_0_log.err"  # Slurm opened it by path, in MATE's folder (docs/security.md)
    assert not marker.exists(), "the job loaded the pickle MATE planted"
    assert "was not started" in (log.read_text() if log.exists() else ""), "the job did not say why it stopped"
    assert [p for p in owned_by(out, ids(OWNER)[0]) if p.parent != planted / "logs"] == []
    shutil.rmtree(out)
    os.rename(str(out) + ".orig", out)
    plain = write_spec(lab, "held", out, executor="slurm", slurm=sections)  # same run, no hold: it finishes
    done = lab.launcher(OWNER, "submit", str(plain), "--wait", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_dir_of(done) == run_dir
    samples = out / "users" / "full" / "samples.jsonl"
    assert len(samples.read_text().splitlines()) == RECORDS and mode(samples) == 0o640
    loose = {str(p): oct(mode(p)) for p in [run_dir, *run_dir.rglob("*")] if mode(p) & 0o077 and not p.is_symlink()}
    assert not loose, f"run state open to others (the job's logs too: SLURM_UMASK): {loose}"


# ---- 3. gather refuses a planted cell folder --------------------------------------------------------------------
@pytest.mark.parametrize("plant", ["symlink", "MATE's folder"])
def test_gather_refuses_a_planted_cell_folder(lab: Lab, owner_run: OwnerRun, plant: str) -> None:
    out, run_dir = owner_run.out, owner_run.run_dir
    drop = lab.base / "loot" / f"drop-{plant.replace(' ', '-').replace(chr(39), '')}"
    out.chmod(0o2775)  # OWNER made the folder with `mkdir` under umask 002: group-writable, as lab folders are
    try:
        make = f"ln -s {drop} {out}/users" if plant == "symlink" else f"mkdir -p {out}/users/full"
        script = f"mkdir -m 777 {drop} && mv {out}/users {out}/users.moved && {make} && chmod -R 777 {out}/users/"
        assert lab.run(MATE, "sh", "-c", script).returncode == 0
        text = refused(lab.launcher(OWNER, "gather", str(run_dir)), out / "users")
        assert ("symbolic link" if plant == "symlink" else MATE) in text
        assert list(drop.iterdir()) == [] and owned_by(out / "users", ids(OWNER)[0]) == []
    finally:
        as_root("rm", "-rf", str(out / "users"))
        os.rename(out / "users.moved", out / "users")
        out.chmod(0o2750)
    proc = lab.launcher(OWNER, "gather", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- 1 + 3: a rename race: the folder is swapped back and forth while OWNER writes ------------------------------
def test_a_folder_swapped_back_and_forth_never_receives_a_write(lab: Lab, owner_run: OwnerRun) -> None:
    out, run_dir = owner_run.out, owner_run.run_dir
    evil = lab.lab / "out-evil"
    build = f"mkdir -p {evil}/runs/{run_dir.name}/units {evil}/users/full && chmod -R 777 {evil}"
    assert lab.run(MATE, "sh", "-c", build).returncode == 0
    swap = """
import os, sys, time
real, evil, spare, stop = sys.argv[1], sys.argv[2], sys.argv[2] + ".spare", sys.argv[3]
end = time.time() + 120
swaps = 0
while not os.path.exists(stop) and time.time() < end:  # real <-> evil, as fast as rename(2) goes
    os.rename(real, spare); os.rename(evil, real); os.rename(real, evil); os.rename(spare, real)
    swaps += 1
print(swaps)
"""
    write = """
import sys
from pathlib import Path
from launcher.errors import UntrustedFile
from launcher.store import OutputDir, RunDir, write_atomic
run, out = RunDir(Path(sys.argv[1])), OutputDir(Path(sys.argv[2]))
done = refused = 0
for i in range(400):
    try:
        run.write_json(run.units / f"race-{i}.json", {"i": i})
        write_atomic(out.cell("users/full").root / f"race-{i}.txt", b"x", opener=out.opener)
        done += 1
    except (UntrustedFile, OSError):
        refused += 1
print(done, refused)
"""
    stop = lab.base / "loot" / "stop-swapping"
    racer = subprocess.Popen(
        lab_users_cmd(lab, MATE, "/usr/bin/python3", "-c", swap, str(out), str(evil), str(stop)),
        env=lab.env(MATE), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.3)
    try:
        writes = lab.run(OWNER, lab.python, "-c", write, str(run_dir), str(out))
    finally:
        stop.touch()
    swaps = racer.communicate(timeout=60)[0]
    assert writes.returncode == 0, writes.stderr
    done, failed = map(int, writes.stdout.split())
    assert int(swaps) > 0 and done + failed == 400
    assert owned_by(evil, ids(OWNER)[0]) == [], "a write of OWNER's landed in MATE's folder"
    assert out.lstat().st_uid == ids(OWNER)[0]  # the real folder is back in place
    for path in list(run_dir.glob("units/race-*.json")) + list((out / "users" / "full").glob("race-*.txt")):
        path.unlink()


def lab_users_cmd(lab: Lab, user: str, *argv: str) -> list[str]:
    return [lab_users.RUNUSER, "-u", user, "--", *argv]
