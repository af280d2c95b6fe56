"""Revert leases, whatever their kind, and check the effect is gone (verified teardown).

Used by rollbacks, the safety control, the guards, ``chaoscheckout halt`` and the reaper.
A revert undoes the effect (the kind's ``revert`` function), then checks it is really
gone (the kind's ``verify``: service healthy; no toxic and no netem qdisc on the route;
ballast gone and free space back) and reports ``verified`` with what was ``checked``.
A verified revert deletes the lease; an unverified one keeps it, marked ``abandoned``,
so the reaper retries it at once.

Ownership (runs never undo each other): :func:`revert_own` reverts only this run's
faults; :func:`revert_dead` only faults whose owner is dead or frozen; :func:`revert_all`
everything (halt).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from chaoscheckout.context import ActivityContext, ConfigOrContext, activity_context
from chaoscheckout.faults.kinds import KINDS, kind
from chaoscheckout.faults.leases import Lease, LeaseStore
from chaoscheckout.faults.owner import OwnerVerdict, current_owner, judge_owner

__all__ = ["revert_lease", "revert_all", "revert_own", "revert_dead", "preload_reverters",
           "owner_verdict", "split_by_owner"]

logger = logging.getLogger("chaostoolkit")


def preload_reverters() -> None:
    """Import every fault domain's revert function now (a long-lived reaper does this once)."""
    for fault_kind in KINDS.values():
        fault_kind.function("revert")
        fault_kind.function("verify")


def owner_verdict(lease: Lease, owners_dir: Path) -> OwnerVerdict:
    """Is the lease's owner alive (an abandoned lease has no owner any more)?"""
    if lease.abandoned:
        return OwnerVerdict(False, "abandoned by its owner (its own revert failed or was unverified)")
    return judge_owner(lease.owner, owners_dir)


def split_by_owner(leases: list[Lease], owners_dir: Path) -> tuple[list[Lease], list[Lease], list[Lease]]:
    """(this run's, dead owners', other live runs') leases."""
    me = current_owner().run_id
    mine, dead, others = [], [], []
    for lease in leases:
        if lease.owner.run_id == me and not lease.abandoned:
            mine.append(lease)
        elif owner_verdict(lease, owners_dir).alive is False:
            dead.append(lease)
        else:
            others.append(lease)
    return mine, dead, others


def revert_lease(lease: Lease, configuration: ConfigOrContext = None, reason: str = "") -> dict[str, Any]:
    """Undo the fault of ``lease``, verify it is gone, then delete the lease.

    Raises if the undo itself failed (the lease stays). When the check finds the effect
    still there, the lease stays, marked abandoned (the reaper retries), and the result
    says ``verified: false``. ``issued_at`` is when the undo was issued (for a kill: the
    start request, before the service's own start-up), ``gone_at`` when the check saw the
    effect gone (None when it did not), both unix times.
    """
    ctx = activity_context(configuration)  # one context for the undo and its check
    fault_kind = kind(lease.kind)
    store = LeaseStore(ctx.settings.leases_dir)
    if lease.params.get("remote") is True:  # a fault on another host, held by a keeper there
        from chaoscheckout.remote.session import revert_remote_lease, verify_remote_lease

        undo, verify = revert_remote_lease, verify_remote_lease
    else:
        undo, verify = fault_kind.function("revert"), fault_kind.function("verify")
    logger.debug("revert %s: undo begins (monotonic %.3f)", lease.fault_id, time.monotonic())
    result = undo(lease, ctx)
    logger.debug("revert %s: undo returned (monotonic %.3f)", lease.fault_id, time.monotonic())
    # when the undo was issued: the kind says (a kill's start request, before the service's
    # own start-up), else when its revert returned (toxic deleted, ballast unlinked)
    issued_at = result.pop("issued_at", None) or time.time()
    try:
        check = verify(lease, ctx)
    except Exception as exc:  # noqa: BLE001 - could not check: not verified
        check = {"verified": False, "checked": f"verification failed: {exc}"}
    gone_at = time.time() if check.get("verified") else None  # the effect seen gone from outside
    if check.get("verified"):
        store.remove(lease.fault_id)
        logger.info("reverted %s (%s on %s), verified: %s", lease.fault_id, lease.kind, lease.service,
                    check.get("checked"))
    else:
        store.abandon(lease)
        logger.error("reverted %s but the effect is still there (%s): the reaper retries",
                     lease.fault_id, check.get("checked"))
    return {"fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service,
            "run_id": lease.owner.run_id, **({"reason": reason} if reason else {}), **result,
            "verified": bool(check.get("verified")), "checked": check.get("checked"),
            "issued_at": issued_at, "gone_at": gone_at, "reverted_at": time.time()}


def revert_all(
    configuration: ConfigOrContext = None, service: str | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    """Revert every live lease, any owner (optionally of one service/kind); keeps going on errors."""
    ctx = activity_context(configuration)
    leases = LeaseStore(ctx.settings.leases_dir).live()
    chosen = [lease for lease in leases
              if not (service and lease.service != service) and not (kind and lease.kind != kind)]
    return _revert_each(chosen, ctx, "")


def revert_own(configuration: ConfigOrContext = None) -> list[dict[str, Any]]:
    """Revert this run's faults only (this process's run id); other runs' faults stay."""
    me = current_owner().run_id
    ctx = activity_context(configuration)
    leases = LeaseStore(ctx.settings.leases_dir).live()
    return _revert_each([lease for lease in leases if lease.owner.run_id == me], ctx, "")


def revert_dead(configuration: ConfigOrContext = None) -> list[dict[str, Any]]:
    """Revert faults whose owner is dead or frozen (never a live run's); each result says why."""
    ctx = activity_context(configuration)
    owners_dir = ctx.settings.state_dir / "owners"
    results = []
    for lease in LeaseStore(ctx.settings.leases_dir).live():
        verdict = owner_verdict(lease, owners_dir)
        if verdict.alive is False:
            results += _revert_each([lease], ctx, f"owner dead: {verdict.why}")
    return results


def _revert_each(leases: list[Lease], ctx: ActivityContext, reason: str) -> list[dict[str, Any]]:
    results = []
    for lease in leases:
        try:
            results.append(revert_lease(lease, ctx, reason))
        except Exception as exc:  # noqa: BLE001 - report and continue with the others
            logger.error("could not revert %s: %s", lease.fault_id, exc)
            results.append({"fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service,
                            "run_id": lease.owner.run_id, "error": str(exc), "verified": False})
    return results
