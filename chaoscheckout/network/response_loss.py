"""Response loss on the path to a service: ``lose_responses`` / ``restore_responses``.

The fault proxy that callers already go through relays each picked request to the
service, then drops the service's response and resets the caller's connection: the
service did the work (a provider captured the charge), the caller never hears of it. The
failure payment teams fear most, and one Toxiproxy cannot make (it cannot fault an HTTP
exchange after the upstream answered). ``fraction`` is a share of requests (each
request/response exchange picked independently). Every fault is a lease (kind
``response_loss``) written before injection and reverted by ``restore_responses``, the
safety control, the guards or the reaper; the proxy also drops the toxic at its expiry.

The whole kind is this module (plus its tests): one line in the fault-kind table
(:mod:`chaoscheckout.faults.kinds`) names its functions.
"""

from __future__ import annotations

import logging
from typing import Any

from chaoscheckout.arguments import checked_before_the_run
from chaoscheckout.config import finite_number
from chaoscheckout.context import ConfigOrContext, activity_context
from chaoscheckout.errors import InvalidFaultArgument, UnknownService
from chaoscheckout.faults.inject import Injection, check_can_inject, inject_fault
from chaoscheckout.faults.leases import Lease, LeaseStore, check_duration
from chaoscheckout.faults.revert import revert_lease, split_by_owner
from chaoscheckout.network.proxy_client import ProxyControl, ProxyUnreachable
from chaoscheckout.network.proxy_route import proxy_target
from chaoscheckout.runtime import Runtime
from chaoscheckout.runtime.registry import ServiceEntry

__all__ = ["lose_responses", "restore_responses", "response_loss_effect"]

logger = logging.getLogger("chaostoolkit")

KIND = "response_loss"


def _loss_arguments(service: Any, fraction: Any = 1.0, duration_s: Any = 60,
                    configuration: Any = None) -> tuple[float, float]:
    return (finite_number("fraction", fraction, 0, 1),
            check_duration(duration_s, activity_context(configuration).settings.max_fault_duration_s))


@checked_before_the_run(_loss_arguments)
def lose_responses(
    service: str,
    fraction: float = 1.0,
    duration_s: float = 60,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lose the responses of `service` to a share of its callers' requests, for at most `duration_s`.

    Each request through the service's fault-proxy route is picked independently with
    probability `fraction`; a picked request reaches the service untouched (the service
    does the work), then its response is dropped and the caller's connection reset: the
    caller sees a connection reset or a close without a response. Returns at once.

    - `service`: a chaos target of the service registry with a fault-proxy route.
    - `fraction`: share of requests whose response is lost, in (0, 1].
    - `duration_s`: lease length; the fault is reverted at expiry even if `chaos run`
      dies (reaper; the proxy also drops its toxic at expiry). At most
      `chaoscheckout_max_fault_duration_s`.

    Invalid arguments, an unknown or non-target service, a service without a proxy
    route, a service that already has a response-loss fault or carries another live
    run's fault (FaultConflict, naming the run), or a halt (FaultsHalted) are refused
    before anything is changed. Owned by the calling run: if it dies or freezes, the
    reaper restores the responses within seconds.

    Returns `{fault_id, kind, backend, target, parameters, injected_at, expires_at}`
    (`backend` is `proxy`; `parameters` hold `fraction`, `scope` (`request`), `route`,
    `listen`, `upstream`). Undo with `restore_responses(service)`; evidence with the probe
    `response_loss_effect(service)`.
    """
    ctx = activity_context(configuration)
    share, duration = _loss_arguments(service, fraction, duration_s, ctx)
    settings, runtime = ctx.settings, ctx.runtime
    entry = runtime.target(service)  # e.g. docker checks the container's label
    check_can_inject(KIND, service, ctx)
    existing = [lease for lease in LeaseStore(settings.leases_dir).for_service(service, KIND)
                if not lease.is_expired()]
    if existing:
        raise InvalidFaultArgument(f"service {service!r} already has a response-loss fault "
                                   f"({existing[0].fault_id}); restore_responses first")
    target = proxy_target(entry, runtime.proxy_control_url, settings.io_timeout_s)
    parameters = {"fraction": share, "scope": "request", "duration_s": duration,
                  **{k: v for k, v in target.items() if k != "proxy_control_url"}}

    def apply(lease: Lease) -> dict[str, Any]:
        ProxyControl(target["proxy_control_url"], settings.io_timeout_s).set_response_loss(
            target["route"], share, lease.expires_at, lease.fault_id)
        logger.info("response loss (fraction %g of requests) on %s until %.0f (%s)",
                    share, service, lease.expires_at, lease.fault_id)
        return {}

    return inject_fault(Injection(KIND, service, "proxy", duration, parameters, apply), ctx)


def restore_responses(service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stop losing the responses of `service` (idempotent).

    Reverts each response-loss lease of the service of this run or of a dead run, then
    clears any leftover response-loss toxic on its proxy route (e.g. one whose lease was
    deleted by hand). Nothing to restore is a result, not an error. A response-loss
    fault of another live run is left alone (`left_alone`): runs never undo each other.

    - `service`: a service of the registry.

    Returns `{service, reverted: [fault ids], proxy_toxic_removed, effect, left_alone,
    message}`; `effect` is what the removed fault did (the `response_loss_effect` dict
    read at revert, or null when none was live).
    """
    ctx = activity_context(configuration)
    settings, runtime = ctx.settings, ctx.runtime
    entry = runtime.entry(service)
    store = LeaseStore(settings.leases_dir)
    mine, dead, others = split_by_owner(store.for_service(service, KIND), settings.state_dir / "owners")
    if others:
        logger.warning("restore_responses: %s carries %s of %s: left alone", service, others[0].fault_id,
                       others[0].owner.describe())
        return {"service": service, "reverted": [], "proxy_toxic_removed": False, "effect": None,
                "left_alone": [{"fault_id": o.fault_id, "run_id": o.owner.run_id} for o in others],
                "message": f"response loss on {service} belongs to another live run: left alone"}
    reverted, removed, effect = [], False, None
    for lease in mine + dead:
        result = revert_lease(lease, ctx)
        reverted.append(lease.fault_id)
        removed |= bool(result.get("proxy_toxic_removed"))
        effect = result.get("effect") or effect
    leftover = _clear(entry, runtime, settings.io_timeout_s)
    removed |= leftover["proxy_toxic_removed"]
    effect = effect or leftover["effect"]
    nothing = not (reverted or removed)
    return {"service": service, "reverted": reverted, "proxy_toxic_removed": removed, "effect": effect,
            "left_alone": [],
            "message": "nothing to restore" if nothing else f"responses of {service} restored"}


def response_loss_effect(service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """How many responses of `service` the live response-loss fault has really dropped so far.

    Evidence that the fault bit; read it at the end of the fault window (a probe before
    the rollback). `restore_responses` returns the same dict with the final counts.

    - `service`: a service of the registry.

    Returns null when no response-loss fault is live on the service's proxy route, else
    `{fault_id, backend, scope, fraction, set_at, exchanges_seen, exchanges_picked,
    responses_lost, responses_lost_ratio}` counted by the fault proxy since the fault was
    set: `exchanges_seen` requests that started while it was live, `exchanges_picked`
    those picked, `responses_lost` those whose response arrived and was dropped (a
    picked request whose caller gave up first loses nothing). The ratio is null before
    any traffic.
    """
    ctx = activity_context(configuration)
    entry = ctx.runtime.entry(service)
    proxy = _proxy(entry, ctx.runtime, ctx.settings.io_timeout_s)
    if proxy is None:
        return None
    try:
        toxic = proxy[0].response_loss(proxy[1])
    except ProxyUnreachable as exc:
        if not exc.refused:
            raise
        return None
    return _effect(toxic) if toxic else None


def revert_response_loss_lease(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Undo one response-loss lease (the proxy toxic on the service's route); idempotent.

    Where to act comes from the registry (through the runtime) now, never from the lease."""
    ctx = activity_context(configuration)
    return _clear(_entry(lease.service, ctx.runtime), ctx.runtime, ctx.settings.io_timeout_s)


def verify_response_loss_reverted(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Responses flow again when the proxy holds no response-loss toxic on the service's route."""
    ctx = activity_context(configuration)
    entry = _entry(lease.service, ctx.runtime)
    if entry is None:
        return {"verified": True, "checked": f"{lease.service} is not in the registry: nothing to check"}
    proxy = _proxy(entry, ctx.runtime, ctx.settings.io_timeout_s)
    if proxy is None:
        return {"verified": True, "checked": f"{lease.service} has no proxy route: nothing to check"}
    try:
        toxic = proxy[0].response_loss(proxy[1])
    except ProxyUnreachable as exc:
        if not exc.refused:
            raise
        return {"verified": True, "checked": "fault proxy not running (holds no toxic)"}
    state = "no response-loss toxic" if toxic is None else "response-loss toxic live"
    return {"verified": toxic is None, "checked": f"proxy route {entry.proxy.route}: {state}"}


###############################################################################
# Internals
###############################################################################
def _entry(service: str, runtime: Runtime) -> ServiceEntry | None:
    """The service's entry, None when the registry has no such service (nothing to act on)."""
    try:
        return runtime.entry(service)
    except UnknownService:
        return None


def _proxy(entry: ServiceEntry, runtime: Runtime, timeout_s: float) -> tuple[ProxyControl, str] | None:
    """The fault proxy's control client and the service's route, None when it has no route."""
    if entry.proxy is None or not runtime.proxy_control_url:
        return None
    return ProxyControl(runtime.proxy_control_url, timeout_s), entry.proxy.route


def _clear(entry: ServiceEntry | None, runtime: Runtime, timeout_s: float) -> dict[str, Any]:
    result: dict[str, Any] = {"proxy_toxic_removed": False, "effect": None}
    proxy = _proxy(entry, runtime, timeout_s) if entry is not None else None
    if proxy is None:
        return result
    try:
        cleared = proxy[0].clear_response_loss(proxy[1])
    except ProxyUnreachable as exc:
        if not exc.refused:
            raise
        result["proxy"] = "not running: it holds no toxic"
        return result
    result["proxy_toxic_removed"] = bool(cleared["removed"])
    if cleared.get("response_loss"):
        result["effect"] = _effect(cleared["response_loss"])
    return result


def _effect(toxic: dict[str, Any]) -> dict[str, Any]:
    effect = toxic.get("effect") or {}
    return {"fault_id": toxic.get("fault_id"), "backend": "proxy", "scope": "request",
            "fraction": toxic.get("fraction"),
            **{k: effect.get(k) for k in ("set_at", "exchanges_seen", "exchanges_picked", "responses_lost",
                                          "responses_lost_ratio")}}
