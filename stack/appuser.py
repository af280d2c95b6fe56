"""The unprivileged user the stack's app programs run as (catalog, payments, provider,
checkout, prometheus).

Programs that need root keep it: supervisord, the reaper (reverts faults), the fault proxy
and the remediator (they hold or use the root-only control sockets); Postgres runs as
``postgres``. Everything else runs as the system user ``chaoscheckout``, created by
`stack up` when missing (``useradd --system``, no home, no login shell).

Prometheus always runs as that user. The Python app programs run from a runtime copy
(stack/appstage.py: the service sources and the site-packages they import, in a
root-owned 0755 tree keyed by content hashes), so a project or venv where that user
cannot go (under ``/root``, 0700) does not matter. They need an interpreter of the venv's
Python version that the user can execute: the venv's own base interpreter when it can,
else ``/usr/bin/python3.X`` / ``/usr/local/bin/python3.X`` / ``python3.X`` on PATH (same
X.Y: the same C extension ABI). :func:`resolve` checks the candidate by running it as the
user and importing every service from the copy. Only when no copy can be made or no
candidate works do the Python app programs run as root, and `stack up` says why in one
warning line.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stack import appstage

__all__ = ["APP_USER", "AppUser", "ensure_user", "resolve", "interpreters"]

APP_USER = "chaoscheckout"
PROBE_TIMEOUT_S = 30
PROBE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class AppUser:
    name: str | None  # None: the user could not be created, everything runs as root
    uid: int
    gid: int
    python_ok: bool = False  # the Python app programs can run as this user
    reason: str = ""
    python: str | None = None  # the interpreter they run with (python_ok)
    pythonpath: str | None = None  # the runtime copy: sources, then site-packages
    cwd: str | None = None  # the copy's source dir
    staged_bytes: int = 0  # what this `up` copied (0: the copy was already there)

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


def interpreters(python: str, version: str) -> list[str]:
    """Candidate interpreters of Python ``version`` (X.Y), the venv's base one first."""
    found = [getattr(sys, "_base_executable", None) if python == sys.executable else None, python,
             f"/usr/bin/python{version}", f"/usr/local/bin/python{version}",
             shutil.which(f"python{version}", path=PROBE_PATH)]
    out: list[str] = []
    for candidate in found:
        if candidate and os.path.realpath(candidate) not in out:
            out.append(os.path.realpath(candidate))
    return out


def resolve(project_dir: Path, python: str = sys.executable, name: str = APP_USER,
            stage_dir: Path | None = None, candidates: list[str] | None = None) -> AppUser:
    """Who the Python app programs run as: ``name``, from a runtime copy, with an
    interpreter it can run; else root, with the reason."""
    try:
        uid, gid = ensure_user(name)
    except (OSError, subprocess.SubprocessError) as exc:
        return AppUser(None, 0, 0, reason=f"user {name} could not be created: {exc}")
    try:
        staged = appstage.stage(project_dir, stage_dir, python)
    except (appstage.StageError, OSError) as exc:
        return AppUser(name, uid, gid, False, f"no runtime copy of the app services for user {name}: {exc}")
    tried = []
    for candidate in candidates if candidates is not None else interpreters(python, staged.version):
        why = _probe(candidate, staged, uid, gid)
        if why is None:
            return AppUser(name, uid, gid, True, python=candidate, pythonpath=staged.pythonpath,
                           cwd=str(staged.src), staged_bytes=staged.copied_bytes)
        tried.append(f"{candidate}: {why}")
    return AppUser(name, uid, gid, False,
                   f"user {name} can run no Python {staged.version} interpreter with the services' runtime "
                   f"copy in {staged.src.parent} (tried {'; '.join(tried) or 'none'}); install "
                   f"python{staged.version} (Debian: python3) to close that gap")


def _probe(python: str, staged: appstage.StagedApp, uid: int, gid: int) -> str | None:
    """None when ``python`` run as the user (setuid then exec, as supervisord does)
    imports every service from the copy, else why not. A success is remembered (a marker
    in the stage root keyed by the interpreter's path, size and mtime, the copy and the
    user), so an unchanged set-up is not probed again."""
    try:
        info = os.stat(python)
    except OSError as exc:
        return exc.strerror or str(exc)
    key = hashlib.sha256(f"{python}\0{info.st_size}\0{info.st_mtime_ns}\0{staged.src}\0{staged.site}"
                         f"\0{uid}\0{gid}".encode()).hexdigest()[:16]
    marker = staged.src.parent / f"probed-{key}"
    if marker.is_file():
        return None
    why = _run_probe(python, staged, uid, gid)
    if why is None:
        marker.touch(mode=0o644)
    return why


def _run_probe(python: str, staged: appstage.StagedApp, uid: int, gid: int) -> str | None:
    code = (f"import sys; v = '%d.%d' % sys.version_info[:2]; assert v == {staged.version!r}, 'Python ' + v; "
            + "; ".join(f"import {module}" for module in appstage.SERVICE_MODULES))
    try:
        probe = subprocess.run(
            [python, "-s", "-c", code], user=uid, group=gid, extra_groups=[], cwd=staged.src,
            env={"PATH": PROBE_PATH, "PYTHONPATH": staged.pythonpath},
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )
    except OSError as exc:
        return exc.strerror or str(exc)
    except subprocess.SubprocessError as exc:
        return str(exc)
    return None if probe.returncode == 0 else ((probe.stderr.strip().splitlines() or ["failed"])[-1])
