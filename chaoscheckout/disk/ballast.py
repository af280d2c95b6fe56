"""The ballast file: where it may live, how much room a filesystem has, how to fill it.

The ballast is always ``<data_dir>/.chaoscheckout-ballast`` on the service's own data
filesystem. Symlinks are refused (the path is opened with O_NOFOLLOW | O_EXCL), and the
root filesystem is refused: filling it would hurt the whole machine, not one service.
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument

__all__ = ["BALLAST_NAME", "FsUsage", "fs_usage", "ballast_path", "check_leave_bytes", "write_ballast",
           "delete_ballast"]

BALLAST_NAME = ".chaoscheckout-ballast"
CHUNK = 1 << 20
MAX_TOPUP_STEPS = 64


@dataclass(frozen=True)
class FsUsage:
    free_bytes: int  # available to unprivileged writers (statvfs f_bavail)
    size_bytes: int
    block_size: int


def fs_usage(path: Path) -> FsUsage:
    st = os.statvfs(path)
    return FsUsage(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, st.f_frsize)


def ballast_path(data_dir: Path) -> Path:
    """The ballast path inside ``data_dir``; refuses symlinks, non-dirs and the root fs."""
    try:
        root = Path(data_dir).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ChaosCheckoutError(f"data_dir {data_dir} cannot be resolved: {exc}") from None
    if not root.is_dir():
        raise ChaosCheckoutError(f"data_dir {root} is not a directory")
    if os.stat(root).st_dev == os.stat("/").st_dev:
        raise InvalidFaultArgument(
            f"refusing to fill {root}: it is on the root filesystem; give the service's data "
            "its own size-capped filesystem (tmpfs size= or a loop image)"
        )
    path = root / BALLAST_NAME
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InvalidFaultArgument(f"refusing {path}: it exists and is not a regular file")
    if os.path.dirname(os.path.realpath(path)) != str(root):
        raise InvalidFaultArgument(f"refusing {path}: it resolves outside {root}")
    return path


def check_leave_bytes(leave_bytes: Any, usage: FsUsage) -> int:
    """``leave_bytes`` as an int in [0, free bytes), else InvalidFaultArgument."""
    value = whole_bytes(leave_bytes)
    if value >= usage.size_bytes:
        raise InvalidFaultArgument(
            f"leave_bytes={value} is not smaller than the filesystem ({usage.size_bytes} bytes)"
        )
    if value >= usage.free_bytes:
        raise InvalidFaultArgument(
            f"leave_bytes={value} is not smaller than the free space ({usage.free_bytes} bytes): "
            "nothing to fill"
        )
    return value


def whole_bytes(leave_bytes: Any) -> int:
    """``leave_bytes`` as an int >= 0 (numbers given as strings parsed), else InvalidFaultArgument."""
    bad = InvalidFaultArgument(f"leave_bytes must be a whole number of bytes, got {leave_bytes!r}")
    if isinstance(leave_bytes, bool) or not isinstance(leave_bytes, int | float | str):
        raise bad
    try:
        value = float(leave_bytes)
    except ValueError:
        raise bad from None
    if not math.isfinite(value) or value != int(value):
        raise bad
    value = int(value)
    if value < 0:
        raise InvalidFaultArgument(f"leave_bytes must be >= 0, got {value}")
    return value


def write_ballast(path: Path, leave_bytes: int) -> int:
    """Create the ballast until ``leave_bytes`` remain free; returns its size in bytes.

    On any error the partial ballast is deleted before the error propagates.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ChaosCheckoutError(f"{path} exists: the disk is already filled (release_disk)") from None
    try:
        _fill(fd, path, leave_bytes)
        os.fsync(fd)
        return os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        fd = -1
        delete_ballast(path)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def delete_ballast(path: Path) -> int:
    """Delete the ballast (only a file named BALLAST_NAME); returns the bytes freed, 0 if absent."""
    path = Path(path)
    if path.name != BALLAST_NAME:
        raise InvalidFaultArgument(f"refusing to delete {path}: not a chaoscheckout ballast")
    try:
        size = path.lstat().st_blocks * 512
        path.unlink()
        return size
    except FileNotFoundError:
        return 0


###############################################################################
# Internals
###############################################################################
def _fill(fd: int, path: Path, leave_bytes: int) -> None:
    usage = fs_usage(path.parent)
    want = usage.free_bytes - leave_bytes
    try:
        os.posix_fallocate(fd, 0, want)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    # top up (block rounding, fallocate unsupported or partial): bounded number of steps
    zeros = bytes(CHUNK)
    for _ in range(MAX_TOPUP_STEPS + want // CHUNK):
        missing = fs_usage(path.parent).free_bytes - leave_bytes
        if missing < usage.block_size:
            return
        try:
            os.lseek(fd, 0, os.SEEK_END)
            os.write(fd, zeros[: min(CHUNK, missing)])
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return
            raise
