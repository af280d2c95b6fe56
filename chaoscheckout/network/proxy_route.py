"""Where a service's fault-proxy route is, resolved through the runtime and checked against
the running proxy: the one resolution the latency and response-loss faults share."""

from __future__ import annotations

from typing import Any

from chaoscheckout.errors import BackendUnavailable
from chaoscheckout.network.proxy_client import ProxyControl, ProxyUnreachable
from chaoscheckout.runtime.registry import ServiceEntry

__all__ = ["proxy_target"]


def proxy_target(entry: ServiceEntry, control_url: str | None, timeout_s: float) -> dict[str, Any]:
    """``{route, listen, upstream, proxy_control_url}`` of ``entry``'s proxy route on the proxy
    at ``control_url`` (the runtime's ``proxy_control_url``), changing nothing;
    BackendUnavailable when there is no route or the proxy does not know it."""
    if entry.proxy is None or not control_url:
        raise BackendUnavailable(
            f"service {entry.name!r} has no fault-proxy route in the registry "
            "(needs its `proxy` entry and the registry's proxy_control_url)"
        )
    try:
        routes = ProxyControl(control_url, timeout_s).routes()
    except ProxyUnreachable as exc:
        raise BackendUnavailable(str(exc)) from None
    route = routes.get(entry.proxy.route)
    if route is None:
        raise BackendUnavailable(
            f"the fault proxy has no route {entry.proxy.route!r} (routes: {', '.join(routes) or 'none'})"
        )
    return {"route": entry.proxy.route, "listen": route["listen"], "upstream": route["upstream"],
            "proxy_control_url": control_url}
