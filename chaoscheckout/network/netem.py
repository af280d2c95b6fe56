"""The tc netem backend: delay a service's egress inside its own network namespace.

Netem runs on every non-loopback interface of the service's namespace (its veth to the
callers), so it slows that service only; never on the host's ``lo``. It delays the
service's egress, so each request/response exchange gains ``delay`` once (like the fault
proxy, which delays the request direction); a new connection's handshake (SYN-ACK) is
delayed too. Jitter is uniform (netem's default without a distribution table), the same
as the fault proxy's.

Every call is ``tc``/``ip`` with an argument list and a timeout. :func:`kernel_has_netem`
proves the kernel can run netem by adding a netem qdisc in a throwaway namespace (which
also autoloads ``sch_netem``) and deleting the namespace again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaoscheckout.errors import BackendUnavailable, ChaosCheckoutError

__all__ = [
    "NetemQdisc",
    "kernel_has_netem",
    "netns_exists",
    "netns_devices",
    "show_netem",
    "add_netem",
    "remove_netem",
    "netem_stats",
    "check_netns_name",
]

logger = logging.getLogger("chaostoolkit")

NETNS_DIR = Path("/run/netns")
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")
_kernel_ok: bool = False  # a positive answer cannot become false while the kernel runs


@dataclass(frozen=True)
class NetemQdisc:
    netns: str
    device: str
    handle: str
    options: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"netns": self.netns, "device": self.device, "handle": self.handle,
                "kind": "netem", "options": self.options}


def check_netns_name(netns: str) -> str:
    """``netns`` if it is a safe name under /run/netns (never ``.``, ``..`` or a path)."""
    if not isinstance(netns, str) or not _NETNS_NAME.fullmatch(netns) or netns in (".", ".."):
        raise ChaosCheckoutError(f"invalid network namespace name {netns!r}")
    return netns


def kernel_has_netem(timeout_s: float = 5.0) -> tuple[bool, str]:
    """``(True, how)`` if a netem qdisc can be created on this kernel, else ``(False, why)``."""
    global _kernel_ok
    if _kernel_ok:
        return True, "sch_netem worked earlier in this process"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"{' and '.join(missing)} not found (install iproute2)"
    if Path("/sys/module/sch_netem").exists():
        _kernel_ok = True
        return True, "sch_netem is loaded (/sys/module/sch_netem)"
    probe = f"cc-netem-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    created = _run(["ip", "netns", "add", probe], timeout_s)
    if created.returncode != 0:
        return False, f"cannot create a network namespace to probe netem: {created.stderr.strip()}"
    try:
        added = _run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                     timeout_s)
    finally:
        _run(["ip", "netns", "del", probe], timeout_s)
    if added.returncode != 0:
        return False, (f"the kernel has no sch_netem (tc qdisc add ... netem: "
                       f"{added.stderr.strip() or 'exit ' + str(added.returncode)})")
    _kernel_ok = True
    return True, "a probe netem qdisc was created in a throwaway namespace"


def netns_exists(netns: str) -> bool:
    return (NETNS_DIR / check_netns_name(netns)).exists()


def netns_devices(netns: str, timeout_s: float = 5.0) -> list[str]:
    """The non-loopback interfaces of ``netns`` (where netem goes)."""
    out = _checked(["ip", "-n", check_netns_name(netns), "-j", "link", "show"], timeout_s)
    return [link["ifname"] for link in json.loads(out or "[]")
            if link.get("ifname") != "lo" and "LOOPBACK" not in link.get("flags", [])]


def show_netem(netns: str, timeout_s: float = 5.0) -> list[NetemQdisc]:
    """Every root netem qdisc in ``netns`` (empty if the namespace does not exist)."""
    if not netns_exists(netns):
        return []
    out = _checked(["tc", "-n", netns, "-j", "qdisc", "show"], timeout_s)
    return [NetemQdisc(netns, q["dev"], q.get("handle", ""), q.get("options", {}))
            for q in json.loads(out or "[]") if q.get("kind") == "netem" and q.get("root")]


def add_netem(netns: str, delay_ms: float, jitter_ms: float, timeout_s: float = 5.0) -> list[str]:
    """Add a root netem qdisc on every device of ``netns``; all or nothing. Returns devices."""
    if not netns_exists(netns):
        raise BackendUnavailable(f"network namespace {netns!r} does not exist ({NETNS_DIR / netns})")
    devices = netns_devices(netns, timeout_s)
    if not devices:
        raise BackendUnavailable(
            f"network namespace {netns!r} has no interface besides lo: nothing for netem to delay"
        )
    delay = ["delay", f"{delay_ms:g}ms"] + ([f"{jitter_ms:g}ms"] if jitter_ms > 0 else [])
    done: list[str] = []
    for device in devices:
        # "add", not "replace": a foreign root qdisc makes this fail instead of being clobbered
        result = _run(["tc", "-n", netns, "qdisc", "add", "dev", device, "root", "netem", *delay],
                      timeout_s)
        if result.returncode != 0:
            for undo in done:
                _run(["tc", "-n", netns, "qdisc", "del", "dev", undo, "root"], timeout_s)
            raise ChaosCheckoutError(
                f"tc qdisc add netem on {netns}/{device} failed: {result.stderr.strip()} "
                f"(undone on {', '.join(done) or 'no other device'})"
            )
        done.append(device)
    logger.info("netem delay %s on %s: %s", delay[1:], netns, ", ".join(done))
    return done


def remove_netem(netns: str, timeout_s: float = 5.0) -> list[str]:
    """Delete every root netem qdisc in ``netns`` (idempotent). Returns the devices cleaned."""
    removed = []
    for qdisc in show_netem(netns, timeout_s):
        result = _run(["tc", "-n", netns, "qdisc", "del", "dev", qdisc.device, "root"], timeout_s)
        if result.returncode != 0 and _netem_on(netns, qdisc.device, timeout_s):
            raise ChaosCheckoutError(
                f"could not delete netem on {netns}/{qdisc.device}: {result.stderr.strip()}"
            )
        removed.append(qdisc.device)
    return removed


def netem_stats(netns: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """``tc -s`` statistics of the root netem qdiscs of ``netns``.

    Returns ``{"qdiscs": [{device, packets, bytes, drops}], "reason": None}``, or
    ``{"qdiscs": None, "reason": why}`` when they cannot be read. Never raises.
    """
    try:
        if not netns_exists(netns):
            return {"qdiscs": None, "reason": f"network namespace {netns!r} does not exist"}
        out = _checked(["tc", "-s", "-n", check_netns_name(netns), "-j", "qdisc", "show"], timeout_s)
        qdiscs = [{"device": q.get("dev"), "packets": q.get("packets"), "bytes": q.get("bytes"),
                   "drops": q.get("drops")}
                  for q in json.loads(out or "[]") if q.get("kind") == "netem" and q.get("root")]
    except (ChaosCheckoutError, ValueError) as exc:
        return {"qdiscs": None, "reason": f"tc -s qdisc show: {exc}"}
    if not qdiscs:
        return {"qdiscs": None, "reason": f"no netem qdisc in {netns!r}"}
    return {"qdiscs": qdiscs, "reason": None}


###############################################################################
# Internals
###############################################################################
def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ChaosCheckoutError(f"{' '.join(args)} timed out after {timeout_s:g} s") from None
    except FileNotFoundError:
        raise BackendUnavailable(f"{args[0]} not found (install iproute2)") from None


def _checked(args: list[str], timeout_s: float) -> str:
    result = _run(args, timeout_s)
    if result.returncode != 0:
        raise ChaosCheckoutError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _netem_on(netns: str, device: str, timeout_s: float = 5.0) -> bool:
    return any(q.device == device for q in show_netem(netns, timeout_s))
