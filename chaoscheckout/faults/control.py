"""The operator's view and emergency brake: what ``chaoscheckout status`` and ``halt`` do.

:func:`fault_status` lists live faults (owner, whether it lives, age, time left), invalid
lease files, the halt and the dead-run record. :func:`halt` blocks injections, then
reverts every live fault of the state dir whatever its owner, all at once (one thread
per fault), and returns what it did.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chaoscheckout.faults.deadruns import read_records
from chaoscheckout.faults.halt import halt_record, set_halt
from chaoscheckout.faults.leases import LeaseStore, LeasesUnreadable
from chaoscheckout.faults.revert import owner_verdict, revert_lease

__all__ = ["fault_status", "halt"]

MAX_PARALLEL = 64  # threads of one halt: more live faults than services is already odd


def fault_status(state_dir: Path, records: int = 20) -> dict[str, Any]:
    state_dir = Path(state_dir)
    store = LeaseStore(state_dir / "leases")
    out: dict[str, Any] = {"state_dir": str(state_dir), "halt": halt_record(state_dir), "faults": [],
                           "invalid_leases": [], "quarantined": [], "error": None}
    try:
        leases, invalid = store.scan()
    except LeasesUnreadable as exc:
        leases, invalid, out["error"] = [], [], str(exc)
    now = time.time()
    for lease in leases:
        verdict = owner_verdict(lease, state_dir / "owners")
        out["faults"].append({
            "fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service,
            "backend": lease.backend, "run_id": lease.owner.run_id, "pid": lease.owner.pid,
            "host": lease.owner.host,
            "owner": {True: "alive", False: "dead", None: "unknown"}[verdict.alive],
            "owner_detail": verdict.why, "age_s": round(now - lease.created_at, 1),
            "left_s": round(lease.remaining_s(), 1), "abandoned": lease.abandoned,
        })
    out["invalid_leases"] = [{"file": bad.path.name, "reason": bad.reason} for bad in invalid]
    out["quarantined"] = [path.name for path in store.quarantined()]
    out["dead_runs"] = read_records(state_dir)[-records:]
    return out


def halt(state_dir: Path, reason: str = "", timeout_s: float = 30.0) -> dict[str, Any]:
    """Block injections, then revert every live fault (any owner) in parallel: one thread
    per fault, so no revert waits for another (a killed service's start-up delays only its
    own). Each result gets ``issued_after_s`` (the undo issued) and ``gone_after_s`` (the
    effect checked gone, None when not verified), seconds since the halt began."""
    state_dir = Path(state_dir)
    started = time.monotonic()
    began_at = time.time()
    record = set_halt(state_dir, reason)
    configuration = {"chaoscheckout_state_dir": str(state_dir)}
    try:
        leases = LeaseStore(state_dir / "leases").live()
        error = None
    except LeasesUnreadable as exc:
        leases, error = [], str(exc)

    def one(lease: Any) -> dict[str, Any]:
        try:
            return revert_lease(lease, configuration, f"halted by {record['by']}")
        except Exception as exc:  # noqa: BLE001 - reported; the lease stays for the reaper
            return {"fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service,
                    "error": str(exc), "verified": False}

    results: list[dict[str, Any]] = []
    if leases:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(leases))) as pool:
            results = list(pool.map(one, leases, timeout=timeout_s))
    for result in results:
        for key, at in (("issued_after_s", result.get("issued_at")), ("gone_after_s", result.get("gone_at"))):
            result[key] = None if at is None else round(max(0.0, at - began_at), 3)
    return {"halt": record, "reverted": results, "error": error,
            "elapsed_s": round(time.monotonic() - started, 3),
            "all_verified": error is None and all(r.get("verified") for r in results)}
