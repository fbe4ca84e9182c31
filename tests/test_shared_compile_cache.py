"""A compile cache others can share but not poison (issue 27), with real users: MATE, a member of OWNER's group,
publishes to a shared cache root in the lab's setgid folder and changes files; OWNER's engine starts use an entry
only when LAUNCHER_COMPILE_CACHE_TRUST trusts its publisher and every file matches its manifest, else compile
(store/cache_entry.py). No engine is started: a short script plays the compiler, writing what vLLM would, through
the real CompileCache. About 10 s in CI.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import lab_users
from .lab_users import GROUP, MATE, OWNER, Lab, ids, owned_by

pytestmark = pytest.mark.skipif(lab_users.why_not() is not None, reason=str(lab_users.why_not()))


@pytest.fixture(scope="module")
def lab(tiny_model: Path) -> Iterator[Lab]:
    made = lab_users.make_lab(tiny_model)
    yield made
    shutil.rmtree(made.base, ignore_errors=True)


COMPILE = """
import json, logging, os, sys
from pathlib import Path
from launcher.engines.compile_cache import CompileCache, cache_key
from launcher.store.cache_entry import Trust
logging.basicConfig(level=logging.INFO)
root, scratch, model, payload = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
key = cache_key(model, {"max_model_len": 256}, "H100", {"vllm": "x"}, Path("/tmp/launcher-lab-node"))
cache = CompileCache(root, key, scratch, Trust.from_env())
env = {}
cache.activate(env)
folder = Path(env["VLLM_CACHE_ROOT"])
if not cache.hit:  # "compile": what vLLM would write, naming its writer
    (folder / "torch_compile_cache").mkdir(parents=True, exist_ok=True)
    (folder / "torch_compile_cache" / "graph.py").write_text(payload)
    cache.publish(background=False)
print(json.dumps({"source": cache.source, "code": (folder / "torch_compile_cache" / "graph.py").read_text()}))
cache.close()
"""


def compile_as(
    lab: Lab, user: str, scratch: str, payload: str, trust: str = "", root: Path | None = None
) -> dict[str, str]:
    """One engine start's use of the compile cache as `user` (COMPILE), with its own node folder `scratch`."""
    root = root or lab.lab / "compile-cache"
    env = {"LAUNCHER_COMPILE_CACHE_TRUST": trust} if trust else {}
    proc = lab.run(user, lab.python, "-c", COMPILE, str(root), str(lab.base / "loot" / scratch), str(lab.base /
                   "model"), payload, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    result["log"] = proc.stderr
    return result


def test_a_shared_compile_cache_is_used_only_when_trusted_and_intact(lab: Lab) -> None:
    root = lab.lab / "compile-cache"
    theirs = compile_as(lab, MATE, "mate-node", "MATE's code")
    assert theirs["source"] == "none"  # MATE compiled and published first
    mine = compile_as(lab, OWNER, "owner-node-1", "OWNER's code")
    assert mine["source"] == "none" and mine["code"] == "OWNER's code"  # not trusted: ignored, compiled
    assert "not trusted" in mine["log"]
    trusted = compile_as(lab, OWNER, "owner-node-2", "unused", trust=f"user:{MATE}")
    assert trusted["source"] == "shared" and trusted["code"] == "MATE's code"  # trusted and intact: used
    by_group = compile_as(lab, OWNER, "owner-node-3", "unused", trust=f"group:{GROUP}")
    assert by_group["source"] == "shared"
    # MATE changes a file of the published entry (their own: they may): the manifest no longer matches
    entry = next(p for p in root.iterdir() if not p.name.startswith("."))
    graph = entry / "vllm" / "torch_compile_cache" / "graph.py"
    change = f"chmod u+w {graph.parent} {graph} && echo 'import os  # changed after publishing' > {graph}"
    assert lab.run(MATE, "sh", "-c", change).returncode == 0
    changed = compile_as(lab, OWNER, "owner-node-4", "OWNER's code again", trust=f"user:{MATE}")
    assert changed["source"] == "none" and changed["code"] == "OWNER's code again"
    assert "does not match the manifest" in changed["log"]
    assert owned_by(entry, ids(OWNER)[0]) == []


def test_a_file_replaced_inside_the_owners_entry_is_never_copied_in(lab: Lab) -> None:
    root = lab.lab / "compile-cache-own"
    first = compile_as(lab, OWNER, "owner-a", "OWNER's code", root=root)
    assert first["source"] == "none"
    entry = next(p for p in root.iterdir() if not p.name.startswith("."))
    inner = entry / "vllm" / "torch_compile_cache"
    inner.chmod(0o2775)  # as a launcher before issue 27 published it under umask 002
    swap = f"rm -f {inner}/graph.py && echo 'import os; os.system(\"id\")' > {inner}/graph.py"
    assert lab.run(MATE, "sh", "-c", swap).returncode == 0
    second = compile_as(lab, OWNER, "owner-b", "OWNER's code", root=root)
    assert second["source"] == "none" and second["code"] == "OWNER's code"
    assert "can be written by its group" in second["log"] or MATE in second["log"]
