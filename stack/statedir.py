"""The state dir is trusted only if it is trustworthy; its layout is created with explicit modes.

`stack up` runs as root and mounts, chowns and deletes inside the state dir, so a dir that
another user can write to (or a symlink they planted) would let them steer root. Rules,
checked before anything is started (:func:`check`):

- no component of the state dir's path is a symlink, nor any entry of its layout
  (``pgdisk``, ``run``, ``ctl``, ``leases``, ``secrets``, ...);
- the state dir, if it exists, is a directory owned by the user running the stack, and
  neither group- nor other-writable;
- every ancestor is owned by root or by that user, and is not group/other-writable unless
  it is root-owned with the sticky bit (``/tmp``, ``/var/tmp``: mode 1777). With the
  sticky bit others cannot rename or delete our entry, and if they created it first the
  owner check above refuses it.

:func:`prepare` then creates what is missing and sets every mode and owner explicitly,
whatever the umask and whatever an earlier run left.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from stack.settings import StackSettings

__all__ = ["StateDirError", "check", "prepare", "LAYOUT"]

# entry -> (mode, owner): "root" = the user running the stack, "app" = the unprivileged
# stack user, "postgres" = the postgres system user.
LAYOUT: dict[str, tuple[int, str]] = {
    "logs": (0o700, "root"),
    "ctl": (0o700, "root"),  # control sockets: supervisord, fault proxy
    "leases": (0o700, "root"),
    "secrets": (0o711, "root"),  # each file 0600, owned by the one user that reads it
    "run": (0o755, "postgres"),  # the Postgres unix socket
    "provider": (0o700, "app"),
    "prometheus": (0o700, "app"),
    "pgdisk": (0o700, "root"),  # mount point (the tmpfs itself is postgres-owned 0700)
}
STATE_DIR_MODE = 0o755  # user postgres must traverse it to reach run/ and pgdisk/


class StateDirError(Exception):
    """The state dir cannot be trusted; the message is one line saying why and what to do."""


def check(state_dir: Path, uid: int | None = None) -> None:
    """Raise StateDirError unless ``state_dir`` (existing or not) can be trusted by ``uid``."""
    uid = os.geteuid() if uid is None else uid
    if not state_dir.is_absolute():
        raise StateDirError(f"state dir {state_dir} must be an absolute path")
    parts = state_dir.parts
    current = Path(parts[0])
    for name in parts[1:]:
        if name in (".", ".."):
            raise StateDirError(f"state dir {state_dir}: no '.' or '..' components")
        _check_ancestor(current, uid, state_dir)
        current = current / name
        try:
            st = current.lstat()
        except FileNotFoundError:
            return  # the rest will be created by prepare(), under trusted ancestors
        if stat.S_ISLNK(st.st_mode):
            raise StateDirError(f"state dir {state_dir}: {current} is a symlink; use the real path")
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"state dir {state_dir}: {current} is not a directory")
    st = state_dir.lstat()
    if st.st_uid != uid:
        raise StateDirError(
            f"state dir {state_dir} is owned by uid {st.st_uid}, not by uid {uid} running the stack: "
            "remove it or pick another CHAOSCHECKOUT_STATE_DIR"
        )
    if st.st_mode & 0o022:
        raise StateDirError(
            f"state dir {state_dir} is group/other writable (mode {stat.S_IMODE(st.st_mode):04o}): "
            "chmod go-w it or pick another CHAOSCHECKOUT_STATE_DIR"
        )
    for name in LAYOUT:
        entry = state_dir / name
        try:
            est = entry.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(est.st_mode) or not stat.S_ISDIR(est.st_mode):
            raise StateDirError(f"{entry} is a symlink or not a directory: remove it")


def prepare(settings: StackSettings, app_uid: int, postgres_uid: int) -> None:
    """Create the state dir and its layout with explicit modes and owners (after check())."""
    check(settings.state_dir)
    _mkdir_chain(settings.state_dir)
    _set(settings.state_dir, STATE_DIR_MODE, os.geteuid())
    owners = {"root": os.geteuid(), "app": app_uid, "postgres": postgres_uid}
    for name, (mode, owner) in LAYOUT.items():
        path = settings.state_dir / name
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        _set(path, mode, owners[owner])


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _check_ancestor(path: Path, uid: int, state_dir: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"state dir {state_dir}: {path} is a symlink; use the real path")
    if st.st_uid not in (0, uid):
        raise StateDirError(
            f"state dir {state_dir}: its parent {path} is owned by uid {st.st_uid}, who could "
            "replace the state dir: pick a CHAOSCHECKOUT_STATE_DIR under a root-owned dir"
        )
    writable = st.st_mode & 0o022
    sticky = st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if writable and not sticky:
        raise StateDirError(
            f"state dir {state_dir}: its parent {path} is group/other writable without the sticky "
            f"bit (mode {stat.S_IMODE(st.st_mode):04o}): pick a CHAOSCHECKOUT_STATE_DIR such as "
            "/var/lib/chaoscheckout"
        )


def _mkdir_chain(path: Path) -> None:
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        _set(directory, 0o755, os.geteuid())


def _set(path: Path, mode: int, uid: int) -> None:
    """chown + chmod through a descriptor opened without following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StateDirError(f"{path} is a symlink or not a directory ({exc.strerror}): remove it") from None
    try:
        os.fchown(fd, uid, -1)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
