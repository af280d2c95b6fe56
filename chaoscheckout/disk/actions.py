"""Fill a service's data filesystem with a ballast file, and release it (the rollback)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from chaoslib.types import Configuration

from chaoscheckout.config import settings_from
from chaoscheckout.disk.ballast import (
    ballast_path,
    check_leave_bytes,
    delete_ballast,
    fs_usage,
    write_ballast,
)
from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.faults.leases import Lease, LeaseStore, check_duration
from chaoscheckout.runtime import get_runtime

__all__ = ["fill_disk", "release_disk"]

logger = logging.getLogger("chaostoolkit")


def fill_disk(
    service: str, leave_bytes: int = 0, duration_s: float = 60, configuration: Configuration = None
) -> dict[str, Any]:
    """
    Fill the filesystem holding a service's data directory until only `leave_bytes`
    remain free, with one ballast file `<data_dir>/.chaoscheckout-ballast`.

    - `service`: a chaos target of the service registry that has a `data_dir`
      (e.g. `"postgres"`). The data dir must be on its own filesystem (not `/`).
    - `leave_bytes`: free bytes to leave (0 = full: writes fail with ENOSPC). Must be
      >= 0 and smaller than the free space now.
    - `duration_s`: the lease; at most `chaoscheckout_max_fault_duration_s`. At expiry
      the reaper deletes the ballast even if `chaos run` died.

    Returns `{fault_id, kind: "disk", backend, target, parameters: {leave_bytes,
    duration_s, ballast_path, ballast_bytes, free_bytes_before, free_bytes_after,
    filesystem_bytes}, injected_at, expires_at}`. Undo with `release_disk(service)`.
    Raises InvalidFaultArgument (nothing changed) for a bad argument, a symlinked or
    outside ballast path, or a disk that is already filled.
    """
    settings = settings_from(configuration)
    duration = check_duration(duration_s, settings.max_fault_duration_s)
    runtime = get_runtime(configuration)
    runtime.target(service)
    path = ballast_path(runtime.data_dir(service))
    store = LeaseStore(settings.leases_dir)
    if path.exists() or store.for_service(service, "disk"):
        raise ChaosCheckoutError(f"the disk of {service!r} is already filled: release_disk first")
    before = fs_usage(path.parent)
    leave = check_leave_bytes(leave_bytes, before)
    lease = store.create(
        "disk", service, runtime.name,
        {"leave_bytes": leave, "duration_s": duration, "ballast_path": str(path)}, duration,
    )
    try:
        size = write_ballast(path, leave)
    except BaseException:
        store.remove(lease.fault_id)
        raise
    after = fs_usage(path.parent)
    logger.info("filled %s: %d-byte ballast, %d bytes left, lease %s", path.parent, size,
                after.free_bytes, lease.fault_id)
    return lease.fault_result(service, {
        "leave_bytes": leave,
        "duration_s": duration,
        "ballast_path": str(path),
        "ballast_bytes": size,
        "free_bytes_before": before.free_bytes,
        "free_bytes_after": after.free_bytes,
        "filesystem_bytes": after.size_bytes,
    })


def release_disk(service: str, configuration: Configuration = None) -> dict[str, Any]:
    """
    Delete the ballast that `fill_disk` wrote for `service` (and nothing else).

    Idempotent: with no ballast it changes nothing and says so (`removed: false`).
    Returns `{service, removed, freed_bytes, free_bytes_after, reverted_leases}`.
    """
    settings = settings_from(configuration)
    runtime = get_runtime(configuration)
    runtime.entry(service)
    store = LeaseStore(settings.leases_dir)
    leases = store.for_service(service, "disk")
    path = ballast_path(runtime.data_dir(service))
    freed = delete_ballast(path)
    for lease in leases:  # a lease may name an older data_dir: delete its ballast too
        freed += delete_ballast(Path(lease.params.get("ballast_path", path)))
    reverted = [lease.fault_id for lease in leases if store.remove(lease.fault_id)]
    if freed or reverted:
        logger.info("released %s: freed %d bytes", path, freed)
    else:
        logger.info("release_disk: no ballast for %s (nothing to revert)", service)
    return {
        "service": service,
        "removed": bool(freed or reverted),
        "freed_bytes": freed,
        "free_bytes_after": fs_usage(path.parent).free_bytes,
        "reverted_leases": reverted,
    }


def revert_disk_lease(lease: Lease, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Undo a disk lease (reaper, safety control): delete the ballast it names."""
    raw = lease.params.get("ballast_path")
    if not raw:
        raise ChaosCheckoutError(f"disk lease {lease.fault_id} names no ballast_path")
    freed = delete_ballast(Path(raw))
    return {"action": "deleted ballast" if freed else "no ballast (nothing to do)", "freed_bytes": freed}
