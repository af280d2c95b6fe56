"""Kill a service and start it again (the rollback), bounded by a lease."""

from __future__ import annotations

import logging
from typing import Any

from chaoslib.types import Configuration

from chaoscheckout.config import settings_from
from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.faults.leases import Lease, LeaseStore, check_duration, check_positive
from chaoscheckout.runtime import get_runtime

__all__ = ["kill_service", "start_service"]

logger = logging.getLogger("chaostoolkit")


def kill_service(
    service: str, duration_s: float = 60, configuration: Configuration = None
) -> dict[str, Any]:
    """
    SIGKILL a service; it stays down until `start_service` or the lease expires.

    - `service`: a chaos target of the service registry (e.g. `"catalog"`).
    - `duration_s`: the lease; at most `chaoscheckout_max_fault_duration_s` (default
      600). When it expires the reaper starts the service again, even if `chaos run`
      died. The action returns at once: observe with a pause or a probe.

    Returns `{fault_id, kind: "kill", backend, target, parameters: {duration_s, pid},
    injected_at, expires_at}`. Undo with the rollback `start_service(service)`; the
    safety control also undoes it at the end of the experiment.
    Raises InvalidFaultArgument (nothing changed) for an unknown service, a service
    that is not a chaos target, or a bad duration.
    """
    settings = settings_from(configuration)
    duration = check_duration(duration_s, settings.max_fault_duration_s)
    runtime = get_runtime(configuration)
    runtime.target(service)
    if runtime.pid(service) is None:
        raise ChaosCheckoutError(f"service {service!r} is not running: nothing to kill")
    lease = LeaseStore(settings.leases_dir).create(
        "kill", service, runtime.name, {"duration_s": duration}, duration
    )
    try:
        killed = runtime.kill(service, timeout_s=settings.io_timeout_s)
    except Exception:
        try:
            still_up = runtime.pid(service) is not None
        except Exception:  # noqa: BLE001 - cannot tell: keep the lease, the reaper will start it
            still_up = False
        if still_up:  # nothing is left killed: drop the lease
            LeaseStore(settings.leases_dir).remove(lease.fault_id)
        raise
    logger.info("killed %s (pid %s), lease %s for %g s", service, killed.pid, lease.fault_id, duration)
    return lease.fault_result(
        service, {"duration_s": duration, "pid": killed.pid, "down_after_s": round(killed.down_after_s, 3)}
    )


def start_service(
    service: str, timeout_s: float = 30, configuration: Configuration = None
) -> dict[str, Any]:
    """
    Start a service again and wait until it is healthy: the rollback of `kill_service`.

    - `service`: a service of the registry.
    - `timeout_s`: how long to wait for the health check to pass (> 0).

    Idempotent: when the service is already running this only checks its health and
    says so (`already_running: true`). Deletes the service's kill leases.
    Returns `{service, started, already_running, healthy_after_s, pid, reverted_leases}`.
    Raises ActivityFailed when the service is not healthy within `timeout_s`.
    """
    timeout = check_positive("timeout_s", timeout_s)
    settings = settings_from(configuration)
    runtime = get_runtime(configuration)
    runtime.entry(service)
    store = LeaseStore(settings.leases_dir)
    leases = store.for_service(service, "kill")
    result = runtime.start(service, timeout_s=timeout)
    reverted = [lease.fault_id for lease in leases if store.remove(lease.fault_id)]
    if result.started:
        logger.info("started %s, healthy after %.2f s", service, result.healthy_after_s)
    else:
        logger.info("start_service: %s was already running (nothing to revert)", service)
    return {
        "service": service,
        "started": result.started,
        "already_running": not result.started,
        "healthy_after_s": round(result.healthy_after_s, 3),
        "pid": result.pid,
        "reverted_leases": reverted,
    }


def revert_kill_lease(lease: Lease, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Undo a kill lease (used by the reaper and the safety control): start the service."""
    runtime = get_runtime(configuration)
    result = runtime.start(lease.service, timeout_s=float(lease.params.get("start_timeout_s", 30)))
    return {
        "action": "started" if result.started else "already running",
        "healthy_after_s": round(result.healthy_after_s, 3),
    }
