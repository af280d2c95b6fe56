"""Probes on a service's data filesystem."""

from __future__ import annotations

import logging
from typing import Any

from chaoslib.types import Configuration

from chaoscheckout.context import activity_context
from chaoscheckout.disk.ballast import BALLAST_NAME, fs_usage

__all__ = ["disk_free_bytes", "disk_usage"]

logger = logging.getLogger("chaostoolkit")


def disk_free_bytes(service: str, configuration: Configuration = None) -> int:
    """
    Free bytes (for unprivileged writers) on the filesystem holding `service`'s
    `data_dir`. Use a range tolerance, e.g. `[1048576, 1e15]` for "at least 1 MiB
    free". Changes nothing.
    """
    return fs_usage(activity_context(configuration).runtime.data_dir(service)).free_bytes


def disk_usage(service: str, configuration: Configuration = None) -> dict[str, Any]:
    """
    `{free_bytes, size_bytes, ballast_bytes}` of the filesystem holding `service`'s
    `data_dir` (`ballast_bytes` is 0 when no fill_disk ballast is present). Changes
    nothing.
    """
    data_dir = activity_context(configuration).runtime.data_dir(service)
    usage = fs_usage(data_dir)
    ballast = data_dir / BALLAST_NAME
    size = ballast.lstat().st_size if ballast.is_file() and not ballast.is_symlink() else 0
    return {"free_bytes": usage.free_bytes, "size_bytes": usage.size_bytes, "ballast_bytes": size}
