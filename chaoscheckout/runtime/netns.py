"""Names for network namespaces of processes on this host (``/run/netns/<name>``).

The one ``ip netns attach`` / ``delete`` and the one "is this name that process's own
namespace" check, shared by the docker runtime (re-pointing a name at a restarted
container) and the docker stack (``stack/docker/host.py``: naming the containers'
namespaces at ``up`` and ``attach``). Names are checked by the registry (safe names only).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from chaoscheckout.errors import ChaosCheckoutError

__all__ = ["NETNS_DIR", "NetnsError", "attach", "detach", "is_own"]

NETNS_DIR = Path("/run/netns")


class NetnsError(ChaosCheckoutError):
    """``ip netns attach`` failed (its message says why)."""


def is_own(netns: str, pid: int) -> bool | None:
    """True when ``/run/netns/<netns>`` is the network namespace of ``pid`` (same nsfs
    inode as ``/proc/<pid>/ns/net``), False when it is another one, None when the name
    or the process does not exist."""
    try:
        named, own = os.stat(NETNS_DIR / netns), os.stat(f"/proc/{pid}/ns/net")
    except FileNotFoundError:
        return None
    return (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def detach(netns: str, timeout_s: float = 10.0) -> None:
    """Remove the name ``netns`` (a no-op when it does not exist)."""
    if (NETNS_DIR / netns).exists():
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=timeout_s,
                       capture_output=True)


def attach(netns: str, pid: int, timeout_s: float = 10.0) -> None:
    """Name the network namespace of ``pid`` ``netns``, replacing a stale name of that name;
    NetnsError when ``ip`` refuses."""
    detach(netns, timeout_s)
    done = subprocess.run(["ip", "netns", "attach", netns, str(pid)], check=False, timeout=timeout_s,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"ip netns attach {netns} {pid}: {done.stderr.strip() or f'exit {done.returncode}'}")
