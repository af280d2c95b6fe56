"""The qdiscs of a service's network namespace with their own ``tc -s`` counters.

Evidence that a netem fault bit, read where the qdisc lives: on this host
(:func:`qdisc_stats`), or on a remote service's host, where the probe
``chaoscheckout.network.probes.netem_qdisc_stats`` runs this module over ssh::

    python -m chaoscheckout.network.qdisc_stats --state-dir DIR --service NAME

It resolves the service's namespace from that host's own registry and prints one JSON
line ``{"result": {...}}`` (or ``{"error": {"type", "message"}}``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from chaoscheckout.network import netem
from chaoscheckout.runtime.registry import ServiceEntry, load_registry

__all__ = ["qdisc_stats", "service_qdisc_stats", "entry_qdisc_stats", "COUNTERS"]

COUNTERS = ("bytes", "packets", "drops", "overlimits", "requeues", "backlog", "qlen")
TC_TIMEOUT_S = 10.0


def qdisc_stats(netns: str, timeout_s: float = TC_TIMEOUT_S) -> list[dict[str, Any]]:
    """Every qdisc of ``netns`` (``tc -s -j qdisc show``): device, kind, handle, root, the
    counters of :data:`COUNTERS` and the qdisc's options (netem: delay, jitter)."""
    argv = ["tc", "-s", "-j", "-n", netem.check_netns_name(netns), "qdisc", "show"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(argv)} timed out after {timeout_s:g} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    out = []
    for raw in json.loads(proc.stdout or "[]"):
        row = {"device": raw.get("dev"), "kind": raw.get("kind"), "handle": raw.get("handle"),
               "root": bool(raw.get("root"))}
        row.update({name: raw.get(name) for name in COUNTERS})
        if raw.get("kind") == "netem":
            row["options"] = raw.get("options")
        out.append(row)
    return out


def service_qdisc_stats(state_dir: str, service: str) -> dict[str, Any]:
    """The qdiscs of ``service``'s namespace per the registry of ``state_dir`` (this host)."""
    return entry_qdisc_stats(load_registry(Path(state_dir) / "services.json").service(service))


def entry_qdisc_stats(entry: ServiceEntry) -> dict[str, Any]:
    """The qdiscs of the namespace of a registry entry of this host."""
    service = entry.name
    if not entry.netns:
        return {"service": service, "netns": None, "qdiscs": [], "netem": False,
                "reason": "the service has no network namespace of its own", "measured_at": time.time()}
    rows = qdisc_stats(entry.netns)
    return {"service": service, "netns": entry.netns, "qdiscs": rows,
            "netem": any(r["kind"] == "netem" for r in rows), "reason": None,
            "measured_at": time.time()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaoscheckout.network.qdisc_stats",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--service", required=True)
    args = parser.parse_args(argv)
    try:
        print(json.dumps({"result": service_qdisc_stats(args.state_dir, args.service)}))
        return 0
    except Exception as exc:  # noqa: BLE001 - one JSON error line for the caller
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
