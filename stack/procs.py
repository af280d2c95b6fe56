"""Host process checks shared by the local stack (supervisord) and the docker stack's host
reaper: is a pid alive (a zombie is not), and is it the program we think it is."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["alive", "cmdline_has"]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (not a zombie); a process we may not signal counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline_has(pid: int, marker: bytes) -> bool:
    """True when ``pid``'s command line contains ``marker`` (guards against pid reuse)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
