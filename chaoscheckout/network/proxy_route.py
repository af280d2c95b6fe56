"""Where a service's fault-proxy route is, resolved from the registry and checked against
the running proxy: the one resolution the latency and response-loss faults share."""

from __future__ import annotations

from typing import Any

from chaoscheckout.errors import BackendUnavailable
from chaoscheckout.network.proxy_client import ProxyControl, ProxyUnreachable
from chaoscheckout.runtime.registry import Registry, ServiceEntry

__all__ = ["proxy_target"]


def proxy_target(registry: Registry, entry: ServiceEntry, timeout_s: float) -> dict[str, Any]:
    """``{route, listen, upstream, proxy_control_url}`` of ``entry``'s proxy route, changing
    nothing; BackendUnavailable when the registry has no route or the proxy does not know it."""
    if entry.proxy is None or not registry.proxy_control_url:
        raise BackendUnavailable(
            f"service {entry.name!r} has no fault-proxy route in the registry "
            "(needs its `proxy` entry and the registry's proxy_control_url)"
        )
    try:
        routes = ProxyControl(registry.proxy_control_url, timeout_s).routes()
    except ProxyUnreachable as exc:
        raise BackendUnavailable(str(exc)) from None
    route = routes.get(entry.proxy.route)
    if route is None:
        raise BackendUnavailable(
            f"the fault proxy has no route {entry.proxy.route!r} (routes: {', '.join(routes) or 'none'})"
        )
    return {"route": entry.proxy.route, "listen": route["listen"], "upstream": route["upstream"],
            "proxy_control_url": registry.proxy_control_url}
