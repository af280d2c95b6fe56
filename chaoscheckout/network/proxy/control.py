"""The proxy's HTTP control API: a tiny HTTP/1.1 server on asyncio streams (one request
per connection, ``Connection: close``).

- ``GET /healthz`` → ``{"status": "ok", "routes": N}``
- ``GET /routes`` → ``{"routes": [{name, listen, upstream, latency|null, connections_active}]}``
- ``GET /routes/<name>`` → one route
- ``PUT /routes/<name>/latency`` ``{"delay_ms", "jitter_ms", "fraction", "scope", "expires_at",
  "fault_id"}`` (``scope``: ``connection`` (default) | ``request``) → the route with its new
  toxic (400 with ``{"error"}`` on a bad body, nothing changed)
- ``GET /routes/<name>/latency`` → ``{"route", "latency": <toxic>|null}``; a toxic carries
  ``effect``: ``{fault_id, scope, fraction, set_at, chunks_seen, chunks_delayed,
  exchanges_seen, exchanges_delayed, connections_decided, connections_picked,
  delayed_ratio, exchanges_delayed_ratio}`` counted since it was set
- ``DELETE /routes/<name>/latency`` → ``{"route", "removed": bool, "latency": <old>|null}``
  (the old toxic with its final ``effect``)
- ``GET /metrics`` → Prometheus text format
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from chaoscheckout.network.proxy.relay import Route
from chaoscheckout.network.proxy.toxic import ToxicError, parse_latency

__all__ = ["ControlServer", "render_metrics"]

logger = logging.getLogger("chaoscheckout.proxy")

MAX_BODY = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Payload Too Large"}


class ControlServer:
    def __init__(self, routes: dict[str, Route], host: str, port: int) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, body = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            except TimeoutError:
                status, payload = 408, {"error": "request timeout"}
            except _HttpError as exc:
                status, payload = exc.status, {"error": str(exc)}
            else:
                status, payload = self.dispatch(method, path, body)
            if isinstance(payload, str):
                data, ctype = payload.encode(), "text/plain; version=0.0.4"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
            writer.write(head.encode() + data)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        if path == "/healthz" and method == "GET":
            return 200, {"status": "ok", "routes": len(self.routes)}
        if path == "/metrics" and method == "GET":
            return 200, render_metrics(self.routes)
        if path == "/routes" and method == "GET":
            return 200, {"routes": [r.describe() for r in self.routes.values()]}
        if len(parts) in (2, 3) and parts[0] == "routes":
            route = self.routes.get(parts[1])
            if route is None:
                return 404, {"error": f"no route {parts[1]!r}; routes: {', '.join(self.routes) or 'none'}"}
            if len(parts) == 2 and method == "GET":
                return 200, route.describe()
            if len(parts) == 3 and parts[2] == "latency":
                if method == "PUT":
                    return self._put_latency(route, body)
                if method == "DELETE":
                    old = route.live_toxic()
                    route.toxic = None
                    logger.info("route %s: latency removed (%s)", route.name, old and old.fault_id)
                    return 200, {"route": route.name, "removed": old is not None,
                                 "latency": old.to_dict() if old else None}
                if method == "GET":
                    toxic = route.live_toxic()
                    return 200, {"route": route.name, "latency": toxic.to_dict() if toxic else None}
                return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no such endpoint: {method} {path}"}

    def _put_latency(self, route: Route, body: bytes) -> tuple[int, Any]:
        try:
            toxic = parse_latency(json.loads(body or b"null"))
        except ValueError as exc:  # JSONDecodeError and ToxicError
            reason = str(exc) if isinstance(exc, ToxicError) else f"invalid JSON: {exc}"
            return 400, {"error": reason}
        route.toxic = toxic
        logger.info("route %s: latency %s", route.name, toxic.to_dict())
        return 200, route.describe()


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise _HttpError(400, "malformed request head") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, _version = lines[0].split(" ", 2)
    except ValueError:
        raise _HttpError(400, "malformed request line") from None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise _HttpError(400, "bad Content-Length") from None
    if length < 0 or length > MAX_BODY:
        raise _HttpError(413, f"body larger than {MAX_BODY} bytes")
    try:
        body = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError:
        raise _HttpError(400, "truncated body") from None
    return method.upper(), path, body


def render_metrics(routes: dict[str, Route]) -> str:
    """Prometheus text exposition of every route's counters and its live toxic."""
    series: list[tuple[str, str, str, list[tuple[str, float]]]] = [
        ("chaoscheckout_proxy_bytes_total", "counter", "Bytes relayed, by direction", []),
        ("chaoscheckout_proxy_connections_total", "counter", "Client connections accepted", []),
        ("chaoscheckout_proxy_connections_active", "gauge", "Client connections open", []),
        ("chaoscheckout_proxy_upstream_failures_total", "counter", "Upstream connects that failed", []),
        ("chaoscheckout_proxy_delayed_chunks_total", "counter", "Upstream-bound chunks delayed", []),
        ("chaoscheckout_proxy_delayed_connections_total", "counter",
         "Connection decisions that picked the connection for delay", []),
        ("chaoscheckout_proxy_toxic_exchanges_total", "counter",
         "Exchanges (for HTTP: requests) that started while a latency toxic was live", []),
        ("chaoscheckout_proxy_delayed_exchanges_total", "counter", "Exchanges the latency toxic delayed", []),
        ("chaoscheckout_proxy_latency_delay_ms", "gauge", "Live latency toxic delay (0: none)", []),
        ("chaoscheckout_proxy_latency_fraction", "gauge", "Live latency toxic fraction (0: none)", []),
    ]
    for route in routes.values():
        s, r = route.stats, f'route="{route.name}"'
        toxic = route.live_toxic()
        series[0][3].extend([(f'{r},direction="upstream"', s.bytes_upstream),
                             (f'{r},direction="downstream"', s.bytes_downstream)])
        series[1][3].append((r, s.connections_total))
        series[2][3].append((r, s.connections_active))
        series[3][3].append((r, s.connections_failed))
        series[4][3].append((r, s.delayed_chunks))
        series[5][3].append((r, s.delayed_connections))
        series[6][3].append((r, s.toxic_exchanges))
        series[7][3].append((r, s.delayed_exchanges))
        series[8][3].append((r, toxic.delay_ms if toxic else 0))
        series[9][3].append((r, toxic.fraction if toxic else 0))
    out = []
    for name, kind, help_text, samples in series:
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        out.extend(f"{name}{{{labels}}} {value:g}\n" for labels, value in samples)
    return "".join(out)
