"""The unprivileged user the stack's app programs run as (catalog, payments, provider,
checkout, prometheus).

Programs that need root keep it: supervisord, the reaper (reverts faults), the fault proxy
and the remediator (they hold or use the root-only control sockets); Postgres runs as
``postgres``. Everything else runs as the system user ``chaoscheckout``, created by
`stack up` when missing (``useradd --system``, no home, no login shell).

Prometheus always runs as that user. The Python programs need it to run the venv's
interpreter and read the project: a venv made from an interpreter under a private home
(``/root/.pyenv/...``, mode 0700) cannot be run by it, and then the Python app programs
run as root and `stack up` says so in one warning line — move the project and its
interpreter where the user can read them (``python3 -m venv`` from the system Python does)
to close that gap.
"""

from __future__ import annotations

import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["APP_USER", "AppUser", "ensure_user", "resolve"]

APP_USER = "chaoscheckout"
PROBE_TIMEOUT_S = 30


@dataclass(frozen=True)
class AppUser:
    name: str | None  # None: the user could not be created, everything runs as root
    uid: int
    gid: int
    python_ok: bool = False  # the Python app programs can run as this user
    reason: str = ""

    @property
    def python_user(self) -> str | None:
        return self.name if self.python_ok else None


def ensure_user(name: str = APP_USER) -> tuple[int, int]:
    """The uid and gid of ``name``, creating it as a system user when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--user-group", name],
                       check=True, capture_output=True, timeout=PROBE_TIMEOUT_S)
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def resolve(project_dir: Path, python: str = sys.executable, name: str = APP_USER) -> AppUser:
    """Who the app programs run as: ``name`` if it can import the stack with ``python``."""
    try:
        uid, gid = ensure_user(name)
    except (OSError, subprocess.SubprocessError) as exc:
        return AppUser(None, 0, 0, reason=f"user {name} could not be created: {exc}")
    try:  # as supervisord does it: setuid, then exec
        probe = subprocess.run(
            [python, "-c", "import stack.services.common"], user=uid, group=gid, extra_groups=[],
            cwd=project_dir, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project_dir)},
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )
        failed, why = probe.returncode != 0, (probe.stderr.strip().splitlines() or [""])[-1]
    except OSError as exc:
        failed, why = True, exc.strerror or str(exc)
    if failed:
        return AppUser(name, uid, gid, False, f"user {name} cannot run {python} in {project_dir} ({why})")
    return AppUser(name, uid, gid, True)
