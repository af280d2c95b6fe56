"""Fill a service's data filesystem with a ballast file, and release it (the rollback)."""

from __future__ import annotations

import logging
import os
from typing import Any

from chaoslib.types import Configuration

from chaoscheckout.arguments import checked_before_the_run
from chaoscheckout.context import ActivityContext, ConfigOrContext, activity_context
from chaoscheckout.disk.ballast import (
    ballast_path,
    check_leave_bytes,
    delete_ballast,
    fs_usage,
    whole_bytes,
    write_ballast,
)
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.faults.inject import Injection, check_can_inject, inject_fault
from chaoscheckout.faults.leases import Lease, LeaseStore, check_duration
from chaoscheckout.faults.revert import revert_lease, split_by_owner
from chaoscheckout.remote.session import inject_remote

__all__ = ["fill_disk", "release_disk"]

logger = logging.getLogger("chaostoolkit")


def _fill_arguments(service: Any, leave_bytes: Any = 0, duration_s: Any = 60,
                    configuration: ConfigOrContext = None) -> tuple[float, int]:
    return (check_duration(duration_s, activity_context(configuration).settings.max_fault_duration_s),
            whole_bytes(leave_bytes))


@checked_before_the_run(_fill_arguments)
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
    outside ballast path, a disk that is already filled, or a service that carries
    another live run's fault (FaultConflict, naming the run); FaultsHalted while
    `chaoscheckout halt` is on. Owned by the calling run: if it dies or freezes, the
    reaper deletes the ballast within seconds.

    A service with a `remote` registry entry lives on another host: the fault is then
    held there by a keeper over ssh (reverted when this process dies, freezes or loses
    the network; docs/ssh.md), `backend` is `ssh` and `parameters` add `remote_fault_id`,
    `remote_backend`, `remote_parameters` and `keeper_pid`.
    """
    ctx = activity_context(configuration)
    duration, _ = _fill_arguments(service, leave_bytes, duration_s, ctx)
    settings, runtime = ctx.settings, ctx.runtime
    runtime.target(service)
    if runtime.is_remote(service):  # held by a keeper on the service's host (docs/ssh.md)
        if isinstance(leave_bytes, bool) or not isinstance(leave_bytes, int) or leave_bytes < 0:
            raise InvalidFaultArgument(f"leave_bytes must be an integer >= 0, got {leave_bytes!r}")
        return inject_remote("disk", service, {"leave_bytes": leave_bytes}, duration, ctx)
    check_can_inject("disk", service, ctx)
    path = ballast_path(runtime.data_dir(service))
    store = LeaseStore(settings.leases_dir)
    if path.exists() or store.for_service(service, "disk"):
        raise ChaosCheckoutError(f"the disk of {service!r} is already filled: release_disk first")
    before = fs_usage(path.parent)
    leave = check_leave_bytes(leave_bytes, before)

    def apply(lease: Lease) -> dict[str, Any]:
        size = write_ballast(path, leave)
        after = fs_usage(path.parent)
        logger.info("filled %s: %d-byte ballast, %d bytes left, lease %s", path.parent, size,
                    after.free_bytes, lease.fault_id)
        return {"ballast_bytes": size, "free_bytes_after": after.free_bytes,
                "filesystem_bytes": after.size_bytes}

    parameters = {"leave_bytes": leave, "duration_s": duration, "ballast_path": str(path),
                  "free_bytes_before": before.free_bytes}
    return inject_fault(Injection("disk", service, runtime.name, duration, parameters, apply), ctx)


def release_disk(service: str, configuration: Configuration = None) -> dict[str, Any]:
    """
    Delete the ballast that `fill_disk` wrote for `service` (and nothing else).

    Idempotent: with no ballast it changes nothing and says so (`removed: false`).
    A disk fault of another live run is left alone (`left_alone`): runs never undo
    each other.
    Returns `{service, removed, freed_bytes, free_bytes_after, reverted_leases, left_alone}`.
    """
    ctx = activity_context(configuration)
    settings, runtime = ctx.settings, ctx.runtime
    runtime.entry(service)
    store = LeaseStore(settings.leases_dir)
    if runtime.is_remote(service):  # its keeper deletes the ballast on its host
        return _release_remote(service, store, ctx)
    path = ballast_path(runtime.data_dir(service))
    mine, dead, others = split_by_owner(store.for_service(service, "disk"), settings.state_dir / "owners")
    if others:
        logger.warning("release_disk: %s carries %s of %s: left alone", service, others[0].fault_id,
                       others[0].owner.describe())
        return {"service": service, "removed": False, "freed_bytes": 0,
                "free_bytes_after": fs_usage(path.parent).free_bytes, "reverted_leases": [],
                "left_alone": [{"fault_id": o.fault_id, "run_id": o.owner.run_id} for o in others]}
    leases = mine + dead
    freed = delete_ballast(path)
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
        "left_alone": [],
    }


def revert_disk_lease(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Undo a disk lease (reaper, safety control): delete the service's ballast.

    The path is resolved from the registry and the runtime now, never taken from the lease.
    """
    path = ballast_path(activity_context(configuration).runtime.data_dir(lease.service))
    freed = delete_ballast(path)
    return {"action": "deleted ballast" if freed else "no ballast (nothing to do)", "freed_bytes": freed}


def verify_disk_reverted(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """The fill is gone when the ballast file is gone and free space is back (more than
    halfway from what the fault left to what was free before it)."""
    path = ballast_path(activity_context(configuration).runtime.data_dir(lease.service))
    free = fs_usage(path.parent).free_bytes
    leave = int(lease.params.get("leave_bytes", 0) or 0)
    before = lease.params.get("free_bytes_before")
    wanted = leave + (int(before) - leave) // 2 if isinstance(before, int) and before > leave else leave + 1
    gone = not os.path.lexists(path)
    ok = gone and free >= wanted
    return {"verified": ok, "checked": f"ballast {'absent' if gone else 'still present'} at {path}; "
            f"free {free} bytes (needs >= {wanted})"}


def _release_remote(service: str, store: LeaseStore, ctx: ActivityContext) -> dict[str, Any]:
    mine, dead, others = split_by_owner(store.for_service(service, "disk"), ctx.settings.state_dir / "owners")
    if others:
        return {"service": service, "removed": False, "freed_bytes": 0, "free_bytes_after": None,
                "reverted_leases": [],
                "left_alone": [{"fault_id": o.fault_id, "run_id": o.owner.run_id} for o in others]}
    results = [revert_lease(lease, ctx) for lease in mine + dead]
    return {"service": service, "removed": bool(results), "freed_bytes": None, "free_bytes_after": None,
            "reverted_leases": [r["fault_id"] for r in results if r.get("verified")], "left_alone": []}
