"""Chaos targets in their own network namespaces (local runtime; ``CHAOSCHECKOUT_TARGET_NETNS``).

With ``on`` (or ``auto`` on a kernel with sch_netem, as root) ``stack up`` runs catalog
and payments each in a namespace of its own, ``cc<port base>-local-<service>`` (the docker
stack's are ``cc<port base>-<service>``), joined to this machine by a veth pair on a
link-local /30 (``169.254.0.0/16``, derived from the port base so concurrent stacks never
share one). The service listens on its namespace address; a relay in the root namespace
keeps its usual ``127.0.0.1:<port>`` (the fault proxy's route, health checks and
Prometheus go through it unchanged), and payments reaches the provider path through a
relay on the root side of its veth. The registry names each namespace (``netns``), so the
latency backend ``auto`` picks tc netem there: netem on the namespace's veth delays
everything the service sends, and nothing of the other services.
``off`` (and ``auto`` without sch_netem or root) is the plain stack: every service on
127.0.0.1 in the root namespace.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from dataclasses import dataclass

from stack.netns import VethLink
from stack.settings import TARGET_NETNS_MODES as MODES
from stack.settings import StackSettings

__all__ = ["MODES", "SERVICES", "Placement", "resolve", "placements", "all_links", "local_targets"]

# the chaos targets that can run in a namespace: HTTP services behind a proxy route
SERVICES = ("catalog", "payments")
LINK_NET = ipaddress.ip_network("169.254.0.0/16")
# two stacks whose port bases differ by more than the highest port offset (60) never
# overlap, so base // 61 is distinct for any two stacks that can run at once
BASE_SLOT = 61


@dataclass(frozen=True)
class Placement:
    """Where a service runs when it has its own namespace."""

    service: str
    link: VethLink

    @property
    def netns(self) -> str:
        return self.link.netns


def resolve(settings: StackSettings, kernel_has_netem=None) -> tuple[bool, str]:
    """``(use namespaces, why)`` for ``settings.target_netns``."""
    mode = settings.target_netns
    if mode == "off":
        return False, "CHAOSCHECKOUT_TARGET_NETNS=off"
    missing = [tool for tool in ("ip", "setpriv") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = "not root" if os.geteuid() != 0 else f"{' and '.join(missing)} not found"
        if mode == "on":
            return True, f"asked for, but {why}"  # up fails with the namespace commands' error
        return False, f"auto: {why}"
    if mode == "on":
        return True, "CHAOSCHECKOUT_TARGET_NETNS=on"
    if kernel_has_netem is None:
        from chaoscheckout.network.netem import kernel_has_netem
    ok, why = kernel_has_netem()
    return (True, f"auto: {why}") if ok else (False, f"auto: {why}")


def placements(settings: StackSettings) -> tuple[Placement, ...]:
    """The services of this stack in their own namespace (empty unless ``netns_services``)."""
    links = all_links(settings)
    return tuple(Placement(name, links[name]) for name in settings.netns_services)


def all_links(settings: StackSettings) -> dict[str, VethLink]:
    """Every link this stack could use (``stack down`` removes whatever of them exists)."""
    slot = settings.port_base // BASE_SLOT
    out = {}
    for index, name in enumerate(SERVICES):
        first = int(LINK_NET.network_address) + slot * 4 * len(SERVICES) + index * 4
        tag = f"cc{settings.port_base}{name[:3]}"
        out[name] = VethLink(
            netns=f"cc{settings.port_base}-local-{name}", host_if=f"{tag}h", ns_if=f"{tag}n",
            host_addr=str(ipaddress.ip_address(first + 1)), ns_addr=str(ipaddress.ip_address(first + 2)),
            prefix=30)
    return out


def local_targets(settings: StackSettings) -> tuple[str, ...]:
    """The services ``on`` places: catalog and payments, less a payments run elsewhere."""
    return tuple(s for s in SERVICES if not (s == "payments" and settings.remote_payments))
