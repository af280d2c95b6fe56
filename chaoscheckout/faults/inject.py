"""The one inject-under-lease path every fault action goes through.

Order, always: refuse when halted, when this process was declared dead, or when the
service carries a fault of another live run; write the lease durably (owner, expiry);
check again (a halt or a concurrent run may have started meanwhile); only then start
the effect. If anything fails after the effect started (the effect half-done, the
result not built), the effect is reverted before the error propagates; if even that
fails, the lease is marked abandoned so the reaper reverts it at once.

Every fault action returns exactly ``{fault_id, kind, backend, target, parameters,
injected_at, expires_at}`` (``target`` is the service name; ISO 8601 UTC times).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaoscheckout.config import Settings
from chaoscheckout.context import ActivityContext, ConfigOrContext, activity_context
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.faults.halt import check_not_halted
from chaoscheckout.faults.leases import Lease, LeaseStore
from chaoscheckout.faults.owner import Owner, current_owner, declared_dead, ensure_heartbeat
from chaoscheckout.faults.revert import owner_verdict, revert_lease

__all__ = ["Injection", "FaultConflict", "RunDeclaredDead", "inject_fault", "check_can_inject"]

logger = logging.getLogger("chaostoolkit")


class FaultConflict(InvalidFaultArgument):
    """The service already carries a fault of another live run: faults are never stacked."""


class RunDeclaredDead(ChaosCheckoutError):
    """This process was declared dead (frozen or unresponsive) and its faults reverted for it."""


@dataclass
class Injection:
    """A fault ready to inject: validated, nothing changed yet."""

    kind: str
    service: str
    backend: str
    duration_s: float
    parameters: dict[str, Any]  # stored in the lease and returned
    apply: Callable[[Lease], dict[str, Any]]  # starts the effect; returns measured parameters
    lease_params: dict[str, Any] = field(default_factory=dict)  # stored in the lease only


def check_can_inject(kind: str, service: str, configuration: ConfigOrContext = None) -> None:
    """Raise (nothing changed) when a ``kind`` fault on ``service`` would be refused now:
    halted, this process declared dead, or the service carries another live run's fault.
    Fault actions call it first, so the refusal says why before any other check."""
    ctx = activity_context(configuration)
    settings = ctx.settings
    check_not_halted(settings.state_dir)
    owner = current_owner()
    _check_not_declared_dead(settings, owner)
    _check_service_free(LeaseStore(settings.leases_dir), kind, service, owner, ctx)


def inject_fault(injection: Injection, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Inject ``injection`` under a lease owned by this process's run; see the module doc."""
    ctx = activity_context(configuration)
    settings = ctx.settings
    owners_dir = settings.state_dir / "owners"
    check_not_halted(settings.state_dir)
    owner = current_owner()
    _check_not_declared_dead(settings, owner)
    store = LeaseStore(settings.leases_dir)
    _check_service_free(store, injection.kind, injection.service, owner, ctx)
    ensure_heartbeat(owners_dir)  # the owner's first heartbeat is on disk before its lease
    lease = store.create(injection.kind, injection.service, injection.backend,
                         {**injection.parameters, **injection.lease_params}, injection.duration_s, owner)
    try:
        _check_after_lease(store, lease, settings)
    except BaseException:
        store.remove(lease.fault_id)
        raise
    try:
        measured = injection.apply(lease)
        result = lease.fault_result({**injection.parameters, **measured})
        _announce(lease, result)
    except BaseException as exc:
        _undo_after_failure(lease, ctx, exc)
        raise
    return result


###############################################################################
# Internals
###############################################################################
def _check_not_declared_dead(settings: Settings, owner: Owner) -> None:
    record = declared_dead(settings.state_dir / "owners", owner)
    if record is not None:
        raise RunDeclaredDead(
            f"this process ({owner.describe()}) was declared dead ({record.get('cause')}) and its "
            "faults were reverted for it; it never injects again: start a new run"
        )


def _check_service_free(store: LeaseStore, kind: str, service: str, owner: Owner,
                        ctx: ActivityContext) -> None:
    owners_dir = ctx.settings.state_dir / "owners"
    for other in store.for_service(service):
        if other.is_expired():  # its time is over anyway: the reaper is about to revert it
            revert_lease(other, ctx, "expired (found by a new injection)")
            continue
        if other.owner.run_id == owner.run_id and not other.abandoned:
            if other.kind == kind:
                raise InvalidFaultArgument(
                    f"service {service!r} already has a {other.kind} fault of this run "
                    f"({other.fault_id}); revert it first"
                )
            continue
        verdict = owner_verdict(other, owners_dir)
        if verdict.alive is False:
            revert_lease(other, ctx, f"owner dead: {verdict.why}")
            continue
        raise FaultConflict(
            f"service {service!r} carries fault {other.fault_id} ({other.kind}) of another "
            f"live run: {other.owner.describe()}; refused (faults of two runs are never stacked on "
            "one service): wait for that run to end, or `chaoscheckout halt`"
        )


def _check_after_lease(store: LeaseStore, lease: Lease, settings: Settings) -> None:
    """The lease is durable: a halt or a rival written meanwhile is seen now (or sees us)."""
    check_not_halted(settings.state_dir)
    owners_dir = settings.state_dir / "owners"
    for other in store.for_service(lease.service):
        if other.fault_id == lease.fault_id or other.owner.run_id == lease.owner.run_id:
            continue
        if (other.created_at, other.fault_id) < (lease.created_at, lease.fault_id) and \
                owner_verdict(other, owners_dir).alive is not False:
            raise FaultConflict(
                f"service {lease.service!r} got fault {other.fault_id} of {other.owner.describe()} "
                "at the same moment; it came first, this one is refused (nothing was changed)"
            )


def _announce(lease: Lease, result: dict[str, Any]) -> None:
    logger.info("injected %s (%s on %s via %s) for %s, until %s", lease.fault_id, lease.kind,
                lease.service, lease.backend, lease.owner.describe(), result["expires_at"])


def _undo_after_failure(lease: Lease, ctx: ActivityContext, exc: BaseException) -> None:
    try:
        undone = revert_lease(lease, ctx, f"injection failed: {exc!r}")
        note = (f"chaoscheckout: the fault {lease.fault_id} was reverted after this failure "
                f"(verified: {undone.get('verified')}, {undone.get('checked')})")
    except Exception as revert_exc:  # noqa: BLE001 - hand it to the reaper
        try:
            LeaseStore(ctx.settings.leases_dir).abandon(lease)
        except Exception as abandon_exc:  # noqa: BLE001
            logger.error("could not mark %s abandoned: %s", lease.fault_id, abandon_exc)
        note = (f"chaoscheckout: the fault {lease.fault_id} could not be reverted after this "
                f"failure ({revert_exc}); its lease is marked abandoned: the reaper reverts it")
    logger.error(note)
    exc.add_note(note)
