"""The remote agent's one-shot verbs: each acts on this host's own registry and runtime.

Every verb takes the parsed ``--json`` object and the activity context of the remote state
dir (resolved once by :func:`run_verb`), and returns a JSON-friendly value (the CLI prints
it as ``{"result": ...}``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from chaoscheckout.context import ActivityContext, activity_context
from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults.halt import halt_record
from chaoscheckout.faults.kinds import kind as fault_kind
from chaoscheckout.faults.leases import Lease, LeaseStore
from chaoscheckout.faults.revert import revert_lease

__all__ = ["VERBS", "run_verb"]

def health(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    return {"healthy": ctx.runtime.is_healthy(_service(args), timeout_s=_number(args, "timeout_s", 2.0))}


def pid(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    return {"pid": ctx.runtime.pid(_service(args))}


def kill(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    killed = ctx.runtime.kill(_service(args), timeout_s=_number(args, "timeout_s", 10.0))
    return {"pid": killed.pid, "down_after_s": round(killed.down_after_s, 3)}


def start(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    started = ctx.runtime.start(_service(args), timeout_s=_number(args, "timeout_s", 30.0))
    return {"started": started.started, "healthy_after_s": round(started.healthy_after_s, 3),
            "pid": started.pid}


def describe(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    return ctx.runtime.describe(_service(args))


def revert(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    """Revert this host's leases of ``service`` owned by ``run_id`` (optionally one ``kind``)."""
    leases = _matching(args, ctx)
    return {"reverted": [revert_lease(lease, ctx, args.get("reason") or "remote revert")
                         for lease in leases]}


def verify(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    """Verified when no lease of ``service``/``run_id`` is left (a lease is only deleted
    after a verified revert) and, given the keeper's copy of the lease, the kind's own
    check passes now."""
    left = _matching(args, ctx)
    if left:
        return {"verified": False, "checked": "remote lease(s) still there: "
                + ", ".join(f"{lease.fault_id}{' (abandoned)' if lease.abandoned else ''}" for lease in left)}
    checked = ["no remote lease left"]
    if isinstance(args.get("lease"), dict):
        lease = Lease.parse(args["lease"])
        check = fault_kind(lease.kind).function("verify")(lease, ctx)
        checked.append(str(check.get("checked")))
        if not check.get("verified"):
            return {"verified": False, "checked": "; ".join(checked)}
    return {"verified": True, "checked": "; ".join(checked)}


def status(args: dict[str, Any], ctx: ActivityContext) -> dict[str, Any]:
    settings = ctx.settings
    leases, invalid = LeaseStore(settings.leases_dir).scan()
    return {"leases": [lease.to_dict() for lease in leases], "invalid": [str(bad.path) for bad in invalid],
            "halt": halt_record(settings.state_dir), "time": time.time()}


VERBS: dict[str, Callable[[dict[str, Any], ActivityContext], Any]] = {
    "health": health, "pid": pid, "kill": kill, "start": start, "describe": describe,
    "revert": revert, "verify": verify, "status": status,
}


def run_verb(verb: str, args: dict[str, Any], configuration: dict[str, Any]) -> Any:
    if verb not in VERBS:
        raise InvalidFaultArgument(f"unknown remote verb {verb!r}; known: {', '.join(VERBS)}, keep")
    if not isinstance(args, dict):
        raise InvalidFaultArgument("--json must be a JSON object")
    return VERBS[verb](args, activity_context(configuration))


###############################################################################
# Internals
###############################################################################
def _service(args: dict[str, Any]) -> str:
    service = args.get("service")
    if not isinstance(service, str) or not service:
        raise InvalidFaultArgument("the remote call needs a service name")
    return service


def _number(args: dict[str, Any], key: str, default: float) -> float:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 600:
        raise InvalidFaultArgument(f"{key} must be a number of seconds in (0, 600], got {value!r}")
    return float(value)


def _matching(args: dict[str, Any], ctx: ActivityContext) -> list[Lease]:
    service, run_id, kind = _service(args), args.get("run_id"), args.get("kind")
    if not isinstance(run_id, str) or not run_id:
        raise InvalidFaultArgument("the remote call needs the run_id whose faults it acts on")
    store = LeaseStore(ctx.settings.leases_dir)
    return [lease for lease in store.for_service(service, kind)
            if lease.owner.run_id == run_id and args.get("fault_id") in (None, lease.fault_id)]
