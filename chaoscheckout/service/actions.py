"""Kill a service and start it again (the rollback), bounded by a lease."""

from __future__ import annotations

import logging
import time
from typing import Any

from chaoslib.types import Configuration

from chaoscheckout.arguments import checked_before_the_run
from chaoscheckout.context import ConfigOrContext, activity_context
from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.faults.inject import Injection, check_can_inject, inject_fault
from chaoscheckout.faults.leases import Lease, LeaseStore, check_duration, check_positive
from chaoscheckout.faults.revert import revert_lease, split_by_owner
from chaoscheckout.remote.session import inject_remote

__all__ = ["kill_service", "start_service"]

logger = logging.getLogger("chaostoolkit")

START_TIMEOUT_S = 30.0  # a revert's bound comes from here, never from the lease


def _kill_arguments(service: Any, duration_s: Any = 60, configuration: Any = None) -> float:
    return check_duration(duration_s, activity_context(configuration).settings.max_fault_duration_s)


@checked_before_the_run(_kill_arguments)
def kill_service(
    service: str, duration_s: float = 60, configuration: Configuration = None
) -> dict[str, Any]:
    """
    SIGKILL a service; it stays down until `start_service` or the lease expires.

    - `service`: a chaos target of the service registry (e.g. `"catalog"`).
    - `duration_s`: the lease; at most `chaoscheckout_max_fault_duration_s` (default
      600). When it expires the reaper starts the service again, even if `chaos run`
      died. The action returns at once: observe with a pause or a probe.

    The fault is owned by the calling run (the safety control's run id, else the
    calling process): if that process dies or freezes, the reaper starts the service
    again within seconds.

    Returns `{fault_id, kind: "kill", backend, target, parameters: {duration_s, pid,
    down_after_s}, injected_at, expires_at}`. Undo with the rollback
    `start_service(service)`; the safety control also undoes it at the end of the
    experiment. Raises InvalidFaultArgument (nothing changed) for an unknown service, a
    service that is not a chaos target, a bad duration, or a service that carries
    another live run's fault (FaultConflict, naming the run); FaultsHalted while
    `chaoscheckout halt` is on.

    A service with a `remote` registry entry lives on another host: the fault is then
    held there by a keeper over ssh (reverted when this process dies, freezes or loses
    the network; docs/ssh.md), `backend` is `ssh` and `parameters` add `remote_fault_id`,
    `remote_backend`, `remote_parameters` and `keeper_pid`.
    """
    ctx = activity_context(configuration)
    duration = _kill_arguments(service, duration_s, ctx)
    settings, runtime = ctx.settings, ctx.runtime
    runtime.target(service)
    if runtime.is_remote(service):  # held by a keeper on the service's host (docs/ssh.md)
        return inject_remote("kill", service, {}, duration, ctx)
    check_can_inject("kill", service, ctx)
    if runtime.pid(service) is None:
        raise ChaosCheckoutError(f"service {service!r} is not running: nothing to kill")

    def apply(lease: Lease) -> dict[str, Any]:
        killed = runtime.kill(service, timeout_s=settings.io_timeout_s)
        logger.info("killed %s (pid %s), lease %s for %g s", service, killed.pid, lease.fault_id, duration)
        return {"pid": killed.pid, "down_after_s": round(killed.down_after_s, 3)}

    return inject_fault(Injection("kill", service, runtime.name, duration, {"duration_s": duration}, apply),
                        ctx)


def start_service(
    service: str, timeout_s: float = 30, configuration: Configuration = None
) -> dict[str, Any]:
    """
    Start a service again and wait until it is healthy: the rollback of `kill_service`.

    - `service`: a service of the registry.
    - `timeout_s`: how long to wait for the health check to pass (> 0).

    Idempotent: when the service is already running this only checks its health and
    says so (`already_running: true`). Deletes the service's kill leases of this run
    and of dead runs; a kill fault of another live run is left alone (`left_alone`)
    and the service is not started: runs never undo each other.
    Returns `{service, started, already_running, healthy_after_s, pid, reverted_leases,
    left_alone}`. Raises ActivityFailed when the service is not healthy within `timeout_s`.
    """
    timeout = check_positive("timeout_s", timeout_s)
    ctx = activity_context(configuration)
    settings, runtime = ctx.settings, ctx.runtime
    runtime.entry(service)
    store = LeaseStore(settings.leases_dir)
    mine, dead, others = split_by_owner(store.for_service(service, "kill"), settings.state_dir / "owners")
    remote_reverted = []
    if runtime.is_remote(service) and not others:  # its keeper reverts (starts) it on its host
        remote_reverted = [lease.fault_id for lease in mine + dead
                           if revert_lease(lease, ctx)["verified"]]
        mine, dead = [], []
    if others:
        logger.warning("start_service: %s carries %s of %s: left alone", service, others[0].fault_id,
                       others[0].owner.describe())
        return {"service": service, "started": False, "already_running": False, "healthy_after_s": None,
                "pid": None, "reverted_leases": [],
                "left_alone": [{"fault_id": o.fault_id, "run_id": o.owner.run_id} for o in others]}
    result = runtime.start(service, timeout_s=timeout)
    reverted = remote_reverted + [lease.fault_id for lease in mine + dead if store.remove(lease.fault_id)]
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
        "left_alone": [],
    }


def revert_kill_lease(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Undo a kill lease (used by the reaper and the safety control): start the service."""
    runtime = activity_context(configuration).runtime
    result = runtime.start(lease.service, timeout_s=START_TIMEOUT_S)
    # the start was issued before the health wait (healthy_after_s): the rest is start-up
    return {
        "action": "started" if result.started else "already running",
        "healthy_after_s": round(result.healthy_after_s, 3),
        "issued_at": time.time() - result.healthy_after_s,
    }


def verify_kill_reverted(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """The kill is gone when the service answers its health check again."""
    runtime = activity_context(configuration).runtime
    healthy = runtime.is_healthy(lease.service, timeout_s=min(2.0, runtime.settings.io_timeout_s))
    return {"verified": healthy, "checked": f"{lease.service} health check "
            f"{'passes' if healthy else 'fails'}"}
