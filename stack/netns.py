"""A named network namespace joined to the root namespace by a veth pair (root only).

One job: create and remove ``ip netns`` + veth links, idempotently. Used by ``stack up``
(chaos targets in their own namespace, stack/targetns.py) and by the VM guest's host mode
and netem test (tests/vm/guest/), so the namespace a netem fault acts on is built one way.
Stdlib only (the guest runs it from its copy of the repository).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VethLink", "NetnsError", "create", "delete", "present"]

CMD_TIMEOUT_S = 30
NETNS_DIR = Path("/run/netns")


class NetnsError(Exception):
    """An ``ip`` command failed; the message names it and its error."""


@dataclass(frozen=True)
class VethLink:
    """Namespace ``netns`` holding ``ns_if`` (``ns_addr``); the root namespace holds its
    peer ``host_if`` (``host_addr``); both addresses on one ``/prefix`` subnet."""

    netns: str
    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str
    prefix: int


def present(link: VethLink) -> bool:
    """Whether any part of ``link`` (the named namespace, the root-side veth) exists."""
    return (NETNS_DIR / link.netns).exists() or Path("/sys/class/net", link.host_if).exists()


def create(link: VethLink, modules: tuple[str, ...] = ("veth",)) -> None:
    """Create ``link`` from scratch (a leftover of the same name is removed first), with
    both ends and the namespace's loopback up. ``modules`` are loaded first (``modprobe``;
    a module that is built in or absent is the next command's problem)."""
    for module in modules:
        _run(["modprobe", module], check=False)
    delete(link)
    ns = ["ip", "netns", "exec", link.netns]
    try:
        _run(["ip", "netns", "add", link.netns])
        _run(["ip", "link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if])
        _run(["ip", "link", "set", link.ns_if, "netns", link.netns])
        _run(["ip", "addr", "add", f"{link.host_addr}/{link.prefix}", "dev", link.host_if])
        _run(["ip", "link", "set", link.host_if, "up"])
        _run([*ns, "ip", "addr", "add", f"{link.ns_addr}/{link.prefix}", "dev", link.ns_if])
        _run([*ns, "ip", "link", "set", link.ns_if, "up"])
        _run([*ns, "ip", "link", "set", "lo", "up"])
    except BaseException:
        delete(link)
        raise


def delete(link: VethLink) -> bool:
    """Remove the namespace (its veth end goes with it, and so the peer) and a root-side
    veth left without it. True when something was there. Idempotent."""
    removed = False
    if (NETNS_DIR / link.netns).exists():
        _run(["ip", "netns", "delete", link.netns])
        removed = True
    if Path("/sys/class/net", link.host_if).exists():
        _run(["ip", "link", "delete", link.host_if], check=False)  # gone with its peer meanwhile
        removed = True
    return removed


def _run(argv: list[str], check: bool = True) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from None
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} -> exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout
