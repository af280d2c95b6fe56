"""Latency faults on the path to a service: ``add_latency`` / ``remove_latency``.

Two backends:

- ``proxy``: the fault proxy (``python -m chaoscheckout.network.proxy``) that callers
  already go through delays the request direction of the service's route; ``fraction``
  is the blast radius, a share of connections (``scope="connection"``) or of requests
  (``scope="request"``).
- ``netem``: ``tc qdisc ... netem`` on the interfaces of the service's own network
  namespace (the registry entry's ``netns``); needs a kernel with ``sch_netem``.

``auto`` picks netem when the kernel has it, the service has a namespace and
``fraction`` is 1, else the proxy. Every fault is a lease (kind ``latency``) written
before injection and reverted by ``remove_latency``, the safety control or the reaper.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from chaoscheckout import validate
from chaoscheckout.arguments import checked_before_the_run
from chaoscheckout.config import Settings
from chaoscheckout.context import ConfigOrContext, activity_context
from chaoscheckout.errors import BackendUnavailable, InvalidFaultArgument, TargetRefused, UnknownService
from chaoscheckout.faults.inject import Injection, check_can_inject, inject_fault
from chaoscheckout.faults.leases import Lease, LeaseStore, check_duration
from chaoscheckout.faults.revert import revert_lease, split_by_owner
from chaoscheckout.network import netem
from chaoscheckout.network.proxy.toxic import MAX_DELAY_MS
from chaoscheckout.network.proxy_client import ProxyControl, ProxyUnreachable
from chaoscheckout.network.proxy_route import proxy_target
from chaoscheckout.remote.session import inject_remote
from chaoscheckout.runtime import Runtime
from chaoscheckout.runtime.registry import ServiceEntry

__all__ = ["add_latency", "remove_latency"]

logger = logging.getLogger("chaostoolkit")

BACKENDS = ("auto", "proxy", "netem")
SCOPES = ("connection", "request")


def _latency_arguments(service: Any, delay_ms: Any, jitter_ms: Any = 0, fraction: Any = 1.0,
                       duration_s: Any = 60, backend: Any = "auto", scope: Any = "connection",
                       configuration: Any = None) -> tuple[float, float, float, float]:
    delay, jitter, share = _check_latency(delay_ms, jitter_ms, fraction)
    if not isinstance(scope, str) or scope not in SCOPES:
        raise InvalidFaultArgument(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if backend not in BACKENDS:
        raise InvalidFaultArgument(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    duration = check_duration(duration_s, activity_context(configuration).settings.max_fault_duration_s)
    return delay, jitter, share, duration


@checked_before_the_run(_latency_arguments)
def add_latency(
    service: str,
    delay_ms: float,
    jitter_ms: float = 0,
    fraction: float = 1.0,
    duration_s: float = 60,
    backend: str = "auto",
    scope: str = "connection",
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add latency on the path from callers to `service`, for at most `duration_s`.

    Returns at once; observe the effect with a pause or a probe.

    - `service`: a chaos target of the service registry.
    - `delay_ms`: added delay in milliseconds, > 0 and at most 60000.
    - `jitter_ms`: ± jitter, uniform in [delay - jitter, delay + jitter]; 0 ≤ jitter ≤ delay.
    - `fraction`: the share of traffic delayed, in (0, 1] (proxy backend only; netem
      delays all traffic, so netem requires 1). What it is a share of is `scope`.
    - `duration_s`: lease length; the fault is reverted at expiry even if `chaos run`
      dies (reaper; the proxy also drops its toxic at expiry). At most
      `chaoscheckout_max_fault_duration_s`.
    - `backend`: `proxy` (delays the request direction of the service's route in the
      fault proxy), `netem` (tc netem on the egress of the interfaces of the service's
      network namespace; needs the kernel's sch_netem) or `auto` (netem when possible,
      else proxy). Either way a request/response exchange gains `delay_ms` once.
    - `scope`: `connection` (default): each connection is picked with probability
      `fraction` (keep-alive connections again whenever the fault changes) and every
      request on a picked connection is delayed. `request`: each request/response
      exchange on any connection is picked independently with probability `fraction`.
      For an HTTP experiment `request` is usually what "30 % of calls are slow" means:
      a client's keep-alive pool holds a few connections, the slow one stays busy and
      the pool routes the next requests around it, so 30 % of connections measured
      as about 0.3 % of requests (2 of ~700) in a real run. Check what really happened
      with the probe `latency_fault_effect`. Irrelevant for netem (fraction 1).

    Invalid arguments, an unknown or non-target service, a service that already has a
    latency fault or carries another live run's fault (FaultConflict, naming the run),
    an unusable backend or a halt (FaultsHalted) are refused before anything is
    changed. Owned by the calling run: if it dies or freezes, the reaper removes the
    latency within seconds.

    Returns `{fault_id, kind, backend, target, parameters, injected_at, expires_at}`
    (`target` the service, ISO 8601 UTC times); `backend` is the one actually used,
    `parameters` include `scope` and where the delay sits (`route`, `listen`,
    `upstream` for the proxy; `netns`, `devices` for netem).
    Undo with `remove_latency(service)`, which returns the fault's final `effect`.

    A service with a `remote` registry entry lives on another host: the fault is then
    held there by a keeper over ssh (reverted when this process dies, freezes or loses
    the network; docs/ssh.md), `backend` is `ssh` and `parameters` add `remote_fault_id`,
    `remote_backend`, `remote_parameters` and `keeper_pid`.
    The `backend` argument then chooses between the remote host's own proxy and netem.
    """
    ctx = activity_context(configuration)
    delay, jitter, share, duration = _latency_arguments(service, delay_ms, jitter_ms, fraction, duration_s,
                                                        backend, scope, ctx)
    settings, runtime = ctx.settings, ctx.runtime
    entry = runtime.target(service)  # e.g. docker checks the container's label and netns
    if runtime.is_remote(service):  # held by a keeper on the service's host (docs/ssh.md)
        arguments = {"delay_ms": delay, "jitter_ms": jitter, "fraction": share, "backend": backend,
                     "scope": scope}
        return inject_remote("latency", service, arguments, duration, ctx)
    check_can_inject("latency", service, ctx)
    store = LeaseStore(settings.leases_dir)
    existing = [lease for lease in store.for_service(service, "latency") if not lease.is_expired()]
    if existing:
        raise InvalidFaultArgument(
            f"service {service!r} already has a latency fault ({existing[0].fault_id}); "
            "remove_latency first"
        )
    chosen, target = _plan(runtime, entry, backend, share, settings)
    parameters = {"delay_ms": delay, "jitter_ms": jitter, "fraction": share, "scope": scope,
                  "duration_s": duration, "distribution": "uniform", "requested_backend": backend,
                  **{k: v for k, v in target.items() if k != "proxy_control_url"}}

    def apply(lease: Lease) -> dict[str, Any]:
        if chosen == "proxy":
            control = ProxyControl(target["proxy_control_url"], settings.io_timeout_s)
            control.set_latency(target["route"], delay, jitter, share, lease.expires_at, lease.fault_id,
                                scope)
            measured: dict[str, Any] = {}
        else:
            measured = {"devices": netem.add_netem(target["netns"], delay, jitter, settings.io_timeout_s)}
        logger.info("latency %g±%g ms (fraction %g of %ss) on %s via %s until %.0f (%s)",
                    delay, jitter, share, scope, service, chosen, lease.expires_at, lease.fault_id)
        return measured

    return inject_fault(Injection("latency", service, chosen, duration, parameters, apply), ctx)


def remove_latency(service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Remove every latency fault on `service` (idempotent).

    Reverts each live latency lease of the service, then clears any leftover fault-proxy
    toxic on its route and any netem qdisc in its network namespace (e.g. one whose lease
    was deleted by hand). Nothing to remove is a result, not an error.

    - `service`: a service of the registry.

    A latency fault of another live run is left alone (`left_alone`): runs never undo
    each other.

    Returns `{service, reverted: [fault ids], proxy_toxic_removed, netem_removed:
    [devices], effect, left_alone, message}`; `effect` is what the removed fault did, read at revert
    (the `latency_fault_effect` dict, or null when no fault was live), so the journal
    shows how much traffic was really slowed.
    """
    ctx = activity_context(configuration)
    settings, runtime = ctx.settings, ctx.runtime
    entry = runtime.entry(service)
    store = LeaseStore(settings.leases_dir)
    reverted, proxy_removed, netem_removed, effect = [], False, [], None
    mine, dead, others = split_by_owner(store.for_service(service, "latency"), settings.state_dir / "owners")
    if others:
        logger.warning("remove_latency: %s carries %s of %s: left alone", service, others[0].fault_id,
                       others[0].owner.describe())
        return {"service": service, "reverted": [], "proxy_toxic_removed": False, "netem_removed": [],
                "effect": None, "left_alone": [{"fault_id": o.fault_id, "run_id": o.owner.run_id}
                                               for o in others],
                "message": f"latency on {service} belongs to another live run: left alone"}
    for lease in mine + dead:
        result = revert_lease(lease, ctx)
        reverted.append(lease.fault_id)
        proxy_removed |= bool(result.get("proxy_toxic_removed"))
        netem_removed += result.get("netem_removed", [])
        effect = result.get("effect") or effect
    # a remote service's latency lives on its host (reverted through its keeper above)
    leftover = _clear(entry, runtime, {}, settings) if not runtime.is_remote(service) else \
        {"proxy_toxic_removed": False, "netem_removed": []}
    proxy_removed |= leftover["proxy_toxic_removed"]
    netem_removed += leftover["netem_removed"]
    effect = effect or leftover.get("effect")
    nothing = not (reverted or proxy_removed or netem_removed)
    return {
        "service": service,
        "reverted": reverted,
        "proxy_toxic_removed": proxy_removed,
        "netem_removed": netem_removed,
        "effect": effect,
        "left_alone": [],
        "message": "nothing to remove" if nothing else f"latency removed from {service}",
    }


def revert_latency_lease(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Undo one latency lease (proxy toxic and netem qdisc, whichever is present); idempotent.

    The lease only names the service: where to act (route, control URL, netns) is resolved
    by that name through the runtime at revert time (:func:`_revert_target`),
    never read from the lease, so a hand-made lease cannot steer a revert anywhere else.
    Used by :mod:`chaoscheckout.faults.revert` (rollbacks, safety control, reaper).
    """
    ctx = activity_context(configuration)
    entry, why = _revert_target(lease.service, ctx.runtime)
    if entry is None:
        logger.warning("latency lease %s: %s", lease.fault_id, why)
        return {"proxy_toxic_removed": False, "netem_removed": [], "effect": None, "untouched": why}
    result = _clear(entry, ctx.runtime, {"fault_id": lease.fault_id}, ctx.settings)
    return {**result, "note": why} if why else result


def verify_latency_reverted(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """The latency is gone when the proxy has no toxic on the service's route and its
    network namespace has no netem qdisc (both resolved as the revert resolves them)."""
    ctx = activity_context(configuration)
    settings, control_url = ctx.settings, ctx.runtime.proxy_control_url
    entry, why = _revert_target(lease.service, ctx.runtime)
    if entry is None:
        return {"verified": True, "checked": f"nothing to check: {why}"}
    checked, ok = [], True
    if entry.proxy is not None and control_url:
        try:
            toxic = ProxyControl(control_url, settings.io_timeout_s).latency(entry.proxy.route)
            ok &= toxic is None
            state = "no toxic" if toxic is None else "toxic live"
            checked.append(f"proxy route {entry.proxy.route}: {state}")
        except ProxyUnreachable as exc:
            if not exc.refused:
                raise
            checked.append("fault proxy not running (holds no toxic)")
    if entry.netns:
        present = netem.show_netem(netem.check_netns_name(entry.netns), settings.io_timeout_s)
        ok &= not present
        state = "netem on " + ", ".join(q.device for q in present) if present else "no netem qdisc"
        checked.append(f"netns {entry.netns}: {state}")
    return {"verified": ok, "checked": "; ".join(checked) or f"{entry.name}: no route and no netns"}


###############################################################################
# Internals
###############################################################################
def _check_latency(delay_ms: Any, jitter_ms: Any, fraction: Any) -> tuple[float, float, float]:
    bad = InvalidFaultArgument
    for name, value in (("delay_ms", delay_ms), ("jitter_ms", jitter_ms), ("fraction", fraction)):
        validate.finite(name, value, error=bad)
    delay = validate.in_range("delay_ms", delay_ms, 0, MAX_DELAY_MS, error=bad)
    jitter = validate.in_range("jitter_ms", jitter_ms, 0, delay, low_inclusive=True, error=bad)
    share = validate.in_range("fraction", fraction, 0, 1, error=bad)
    return delay, jitter, share


def _plan(
    runtime: Runtime, entry: ServiceEntry, backend: str, share: float, settings: Settings
) -> tuple[str, dict[str, Any]]:
    """Pick the backend and check it can work, changing nothing. Returns (backend, target)."""
    if backend == "netem":
        return "netem", _netem_target(entry, share, settings)
    if backend == "proxy":
        return "proxy", proxy_target(entry, runtime.proxy_control_url, settings.io_timeout_s)
    reasons = []
    if share < 1:
        reasons.append(f"netem: fraction={share:g} needs per-connection choice")
    else:
        try:
            return "netem", _netem_target(entry, share, settings)
        except BackendUnavailable as exc:
            reasons.append(f"netem: {exc}")
    try:
        return "proxy", proxy_target(entry, runtime.proxy_control_url, settings.io_timeout_s)
    except BackendUnavailable as exc:
        reasons.append(f"proxy: {exc}")
    raise BackendUnavailable(f"no latency backend works for {entry.name!r}: " + "; ".join(reasons))


def _netem_target(entry: ServiceEntry, share: float, settings: Settings) -> dict[str, Any]:
    if share < 1:
        raise InvalidFaultArgument(
            f"netem delays all traffic of a namespace: fraction must be 1 (got {share:g}); "
            "use backend='proxy' for a fraction of connections"
        )
    if not entry.netns:
        raise BackendUnavailable(
            f"service {entry.name!r} has no network namespace in the registry: netem on the "
            "host's interfaces would slow every service, so it is refused"
        )
    netns = netem.check_netns_name(entry.netns)
    ok, why = netem.kernel_has_netem(settings.io_timeout_s)
    if not ok:
        raise BackendUnavailable(f"netem backend unavailable: {why}")
    if not netem.netns_exists(netns):
        raise BackendUnavailable(f"network namespace {netns!r} of {entry.name!r} does not exist")
    devices = netem.netns_devices(netns, settings.io_timeout_s)
    if not devices:
        raise BackendUnavailable(f"network namespace {netns!r} has no interface besides lo")
    present = netem.show_netem(netns, settings.io_timeout_s)
    if present:
        raise BackendUnavailable(
            f"namespace {netns!r} already has netem on {', '.join(q.device for q in present)}"
        )
    return {"netns": netns, "devices": devices}


def _revert_target(service: str, runtime: Runtime) -> tuple[ServiceEntry | None, str]:
    """The entry a latency revert acts on, found by service name only. ``(None, why)`` when
    the name is not a chaos target of the registry: nothing is touched (add_latency refuses
    such a service, so no latency of ours can be there; the lease is only data to drop).
    The proxy route is the stack's own proxy; the netns is acted on only when the runtime
    accepts the target (docker: the labelled container, the netns its own), else it is left
    out (``why`` says so): netem put in a container's namespace died with that namespace."""
    try:
        entry = runtime.entry(service)
    except UnknownService:
        return None, f"{service!r} is not in the service registry: nothing touched"
    if not entry.chaos_target:
        return None, f"{service!r} is not a chaos target of this stack: nothing touched"
    try:
        runtime.target(service)  # as add_latency resolves it (docker: the label and netns too)
    except TargetRefused as exc:
        return dataclasses.replace(entry, netns=None), f"netns left alone: {exc}"
    return entry, ""


def _clear(
    entry: ServiceEntry | None, runtime: Runtime, params: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Remove the proxy toxic and netem qdiscs of a service, whichever is present.

    ``effect`` in the result is what the removed fault did (proxy counters, or netem
    qdisc statistics read just before deletion), or None when nothing was live.
    """
    route = entry.proxy.route if entry and entry.proxy else None
    control_url = runtime.proxy_control_url
    netns = entry.netns if entry else None
    result: dict[str, Any] = {"proxy_toxic_removed": False, "netem_removed": [], "effect": None}
    if route and control_url:
        try:
            cleared = ProxyControl(control_url, settings.io_timeout_s).clear_latency(route)
            result["proxy_toxic_removed"] = bool(cleared["removed"])
            if cleared.get("latency"):
                result["effect"] = proxy_effect(cleared["latency"])
        except ProxyUnreachable as exc:
            if not exc.refused:
                raise
            result["proxy"] = "not running: it holds no toxic"
    if netns:
        netns = netem.check_netns_name(netns)
        stats = netem.netem_stats(netns, settings.io_timeout_s)
        result["netem_removed"] = netem.remove_netem(netns, settings.io_timeout_s)
        if result["netem_removed"] and result["effect"] is None:
            result["effect"] = netem_effect(stats, params)
    return result


def proxy_effect(toxic: dict[str, Any]) -> dict[str, Any]:
    """The probe's effect dict from a proxy toxic as the control API describes it."""
    effect = toxic.get("effect") or {}
    return {"fault_id": toxic.get("fault_id"), "backend": "proxy", "scope": toxic.get("scope"),
            "fraction": toxic.get("fraction"),
            **{k: effect.get(k) for k in _EFFECT_KEYS}, "reason": None}


def netem_effect(stats: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The probe's effect dict for netem: no per-request counts, the qdisc statistics."""
    return {"fault_id": params.get("fault_id"), "backend": "netem", "scope": params.get("scope"),
            "fraction": 1.0, **dict.fromkeys(_EFFECT_KEYS), "netem_stats": stats.get("qdiscs"),
            "reason": stats.get("reason") or "netem delays every packet of the namespace's "
                      "interfaces; packets counted by tc -s are in netem_stats"}


_EFFECT_KEYS = ("chunks_seen", "chunks_delayed", "delayed_ratio", "exchanges_seen",
                "exchanges_delayed", "exchanges_delayed_ratio", "connections_decided",
                "connections_picked", "set_at")
