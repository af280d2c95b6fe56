"""Revert one lease, whatever its kind: used by rollbacks, the safety control and the reaper."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from chaoscheckout.config import settings_from
from chaoscheckout.faults.leases import Lease, LeaseStore

__all__ = ["revert_lease", "revert_all", "preload_reverters"]

logger = logging.getLogger("chaostoolkit")

# kind -> "module:function"; each function takes (lease, configuration) and undoes the
# fault idempotently, returning a JSON-friendly dict of what it did.
REVERTERS = {
    "kill": "chaoscheckout.service.actions:revert_kill_lease",
    "latency": "chaoscheckout.network.actions:revert_latency_lease",
    "disk": "chaoscheckout.disk.actions:revert_disk_lease",
}


def preload_reverters() -> None:
    """Import every fault domain's revert function now (a long-lived reaper does this once)."""
    for target in REVERTERS.values():
        importlib.import_module(target.split(":")[0])


def revert_lease(lease: Lease, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Undo the fault of ``lease`` then delete the lease. Raises if the undo failed."""
    module_name, func_name = REVERTERS[lease.kind].split(":")
    revert = getattr(importlib.import_module(module_name), func_name)
    result = revert(lease, configuration)
    LeaseStore(settings_from(configuration).leases_dir).remove(lease.fault_id)
    logger.info("reverted %s (%s on %s)", lease.fault_id, lease.kind, lease.service)
    return {"fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service, **result}


def revert_all(
    configuration: dict[str, Any] | None = None, service: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    """Revert every live lease (optionally of one service/kind); keeps going on errors."""
    store = LeaseStore(settings_from(configuration).leases_dir)
    results = []
    for lease in store.live():
        if (service and lease.service != service) or (kind and lease.kind != kind):
            continue
        try:
            results.append(revert_lease(lease, configuration))
        except Exception as exc:  # noqa: BLE001 - report and continue with the others
            logger.error("could not revert %s: %s", lease.fault_id, exc)
            results.append({"fault_id": lease.fault_id, "error": str(exc)})
    return results
