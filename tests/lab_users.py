"""A lab on this machine, for tests/test_shared_folder.py: two real users of one group and a setgid group folder.

OWNER submits runs; MATE, a member of the same group, attacks them with what any member has: a shell, coreutils and
/usr/bin/python3. Made with useradd/groupadd as root (CI runs as root on a fresh machine) and idempotent: users and
the group from an earlier run are reused. Neither user can read /root, so they run this checkout's launcher from a
copy under a world-readable base folder, with a venv of the system Python that also sees the test venv's packages
(the packages, not its interpreter, which lives under /root here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OWNER = "labowner"
MATE = "labmate"
GROUP = "launchlab"
ROOT = Path(__file__).resolve().parent.parent
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


def why_not() -> str | None:
    """None when real users can be made and switched to here; else the reason, for the skip."""
    if os.geteuid() != 0:
        return "needs root to create users and switch to them (CI runs as root)"
    for tool in ("useradd", "groupadd", "usermod", "getent"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"no {tool} here"
    if not Path("/usr/bin/python3").exists():
        return "no /usr/bin/python3 for the other users"
    return None


def _sbin(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def _exists(kind: str, name: str) -> bool:
    return subprocess.run(["getent", kind, name], capture_output=True).returncode == 0


def ensure_users() -> None:
    """The group and both users, each a member of the group (again: an earlier run may have left them)."""
    if not _exists("group", GROUP):
        subprocess.run([_sbin("groupadd"), GROUP], check=True, capture_output=True)
    for user in (OWNER, MATE):
        if not _exists("passwd", user):
            own_group = ["-g", user] if _exists("group", user) else ["-U"]
            subprocess.run([_sbin("useradd"), "-m", "-s", "/bin/bash", *own_group, user], check=True)
        subprocess.run([_sbin("usermod"), "-a", "-G", GROUP, user], check=True)
    if shutil.which("sacctmgr"):  # an account shows in sacct; AccountingStorageEnforce is off here
        for user in (OWNER, MATE):
            subprocess.run(["sacctmgr", "-i", "-Q", "add", "user", user, "DefaultAccount=default"], capture_output=True)


def ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def group_id() -> int:
    import grp

    return grp.getgrnam(GROUP).gr_gid


@dataclass
class Lab:
    base: Path  # world-readable: model, data, code, venv
    lab: Path  # the group's folder: group launchlab, 2775
    python: str  # the users' interpreter

    def env(self, user: str, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": f"/home/{user}",
            "USER": user,
            "LOGNAME": user,
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.base / "src"),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "LAUNCHER_HISTORY": f"/home/{user}/.launcher-history.json",
            **extra,
        }

    def run(
        self, user: str, *argv: str, umask: str = "002", timeout: float = 300, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """argv as `user`, with the lab's umask (002: a shared folder's usual one), in the base folder."""
        cmd = [RUNUSER, "-u", user, "--", "/bin/sh", "-c", f'umask {umask}; exec "$@"', "sh", *argv]
        return subprocess.run(
            cmd, cwd=self.base, env=self.env(user, **(env or {})), capture_output=True, text=True, timeout=timeout
        )

    def launcher(self, user: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(user, self.python, "-m", "launcher", *args, **kw)

    def py(self, user: str, code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Python as `user`: the attacker's is the system one, with nothing of ours needed."""
        return self.run(user, self.python, "-c", code, *args, **kw)


def make_lab(tiny_model: Path, records: int = 4) -> Lab:
    """The users and group, a world-readable base folder (model, data, this checkout's launcher, a venv, loot/: a
    folder anyone may write, where a write redirected by an attack would land) and the lab's setgid folder."""
    ensure_users()
    base = Path(tempfile.mkdtemp(prefix="launcher-lab-", dir="/tmp"))
    base.chmod(0o755)
    shutil.copytree(tiny_model, base / "model")
    shutil.copytree(ROOT / "launcher", base / "src" / "launcher", ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(Path(sys.prefix, "lib").glob("python3*/site-packages"))
    (site / "test-venv-packages.pth").write_text(f"import site; site.addsitedir({str(ours)!r})\n")
    rows = [
        {"user_id": f"u{i}", "profile": {"age": 20 + i}, "history": ["fine"], "context": "x"} for i in range(records)
    ]
    (base / "data").mkdir()
    (base / "data" / "users.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in [base, *base.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))
    (base / "loot").mkdir()
    (base / "loot").chmod(0o1777)
    lab = base / "lab"
    lab.mkdir()
    os.chown(lab, 0, group_id())
    lab.chmod(0o2775)  # after chown: chown clears setgid
    return Lab(base, lab, str(venv / "bin" / "python"))


def owned_by(folder: Path, uid: int) -> list[Path]:
    """Every path under `folder` (itself included) that belongs to `uid`, links not followed."""
    found = []
    for path in [folder, *folder.rglob("*")]:
        try:
            if path.lstat().st_uid == uid:
                found.append(path)
        except OSError:
            continue
    return found


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777
