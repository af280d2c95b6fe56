"""The proxy's HTTP control API: a tiny HTTP/1.1 server on asyncio streams (one request
per connection, ``Connection: close``).

Who may call it: the API listens either on a **unix socket** created with mode 0600 (only
its owner, and root, can connect: the stack's choice) or on **TCP with a bearer token**
read from a file that must be mode 0600 (or 0400) and owned by the proxy's user; every
request but ``GET /healthz`` and ``GET /metrics`` (read-only counters, scraped by
Prometheus) then needs ``Authorization: Bearer <token>`` (401 otherwise).
A toxic must carry a ``fault_id`` (``[A-Za-z0-9._-]``, at most 128) and an ``expires_at``
no further than ``max_toxic_s`` ahead (default 86400); the proxy drops it at its expiry by
itself, with or without traffic. Given ``leases_dir`` (the stack's ``<state_dir>/leases``),
a toxic is refused unless ``<leases_dir>/<fault_id>.json`` exists: no toxic without a lease.

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
- ``PUT /routes/<name>/response-loss`` ``{"fraction", "expires_at", "fault_id"}`` → the
  route with its new response-loss toxic (each request picked with probability
  ``fraction``: it reaches the upstream, its response is dropped and the caller's
  connection reset); ``GET`` → ``{"route", "response_loss": <toxic>|null}`` with
  ``effect``: ``{fault_id, scope, fraction, set_at, exchanges_seen, exchanges_picked,
  responses_lost, responses_lost_ratio}``; ``DELETE`` → ``{"route", "removed",
  "response_loss": <old>|null}``. Independent of the latency toxic.
- ``GET /metrics`` → Prometheus text format
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaoscheckout.network.proxy.loss import parse_response_loss
from chaoscheckout.network.proxy.relay import Route
from chaoscheckout.network.proxy.toxic import ToxicError, parse_latency

__all__ = ["ControlServer", "ControlAuthError", "read_token_file", "render_metrics", "DEFAULT_MAX_TOXIC_S"]

logger = logging.getLogger("chaoscheckout.proxy")

MAX_BODY = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
DEFAULT_MAX_TOXIC_S = 86400.0
OPEN_PATHS = ("/healthz", "/metrics")  # read-only, no fault ids: no token needed
FAULT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large"}


class ControlAuthError(Exception):
    """The control API's credential cannot be trusted (token file mode, owner, content)."""


@dataclass(frozen=True)
class ToxicEndpoint:
    """One toxic kind of the control API: ``/routes/<name>/<path>``."""

    key: str  # its key in the answers
    attr: str  # the Route attribute holding it
    live: str  # the Route method returning it while live
    parse: Callable[[Any], Any]  # the PUT body's validator (raises ToxicError)
    label: str  # for the log


TOXIC_ENDPOINTS = {
    "latency": ToxicEndpoint("latency", "toxic", "live_toxic", parse_latency, "latency"),
    "response-loss": ToxicEndpoint("response_loss", "loss", "live_loss", parse_response_loss,
                                   "response loss"),
}


def read_token_file(path: str | Path) -> str:
    """The token in ``path``, refused unless the file is a regular file owned by this user
    with no group/other permission bits."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ControlAuthError(f"token file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ControlAuthError(
                f"token file {path} must be a regular file owned by uid {os.geteuid()} with mode "
                f"0600 (found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
            )
        token = fh.read(4096).strip()
    if len(token) < 16:
        raise ControlAuthError(f"token file {path}: the token must be at least 16 characters")
    return token


class ControlServer:
    """The control API on ``socket_path`` (a 0600 unix socket) or on ``host:port`` with
    ``token`` (required for TCP)."""

    def __init__(self, routes: dict[str, Route], host: str | None = None, port: int | None = None,
                 *, socket_path: str | None = None, token: str | None = None,
                 max_toxic_s: float = DEFAULT_MAX_TOXIC_S, leases_dir: str | None = None) -> None:
        if socket_path is None and (host is None or port is None):
            raise ValueError("ControlServer needs socket_path, or host and port")
        if socket_path is None and not token:
            raise ControlAuthError("a TCP control API needs a token (--token-file)")
        self.routes = routes
        self.host = host
        self.port = port
        self.socket_path = socket_path
        self.token = token
        self.max_toxic_s = max_toxic_s
        self.leases_dir = Path(leases_dir) if leases_dir else None
        self.server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self.socket_path is None:
            self.server = await asyncio.start_server(self._handle, self.host, self.port)
            return
        path = Path(self.socket_path)
        if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.lstat().st_mode)):
            raise OSError(f"{path} exists and is not a socket: not replacing it")
        path.unlink(missing_ok=True)  # a stale socket of an earlier run
        old = os.umask(0o177)  # born 0600: no window where others may connect
        try:
            self.server = await asyncio.start_unix_server(self._handle, path=str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, headers, body = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            except TimeoutError:
                status, payload = 408, {"error": "request timeout"}
            except _HttpError as exc:
                status, payload = exc.status, {"error": str(exc)}
            else:
                if self._authorised(method, path, headers):
                    status, payload = self.dispatch(method, path, body)
                else:
                    status, payload = 401, {"error": "missing or wrong bearer token"}
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

    def _authorised(self, method: str, path: str, headers: dict[str, str]) -> bool:
        if self.token is None or (method == "GET" and path.split("?", 1)[0].rstrip("/") in OPEN_PATHS):
            return True
        given = headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

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
            if len(parts) == 3 and parts[2] in TOXIC_ENDPOINTS:
                return self._toxic(route, TOXIC_ENDPOINTS[parts[2]], method, path, body)
        return 404, {"error": f"no such endpoint: {method} {path}"}

    def _toxic(self, route: Route, kind: ToxicEndpoint, method: str, path: str,
               body: bytes) -> tuple[int, Any]:
        """PUT, GET, DELETE of one toxic kind on one route (latency, response-loss)."""
        if method == "PUT":
            try:
                raw = json.loads(body or b"null")
                self._check_lease_fields(raw)
                toxic = kind.parse(raw)
            except ValueError as exc:  # JSONDecodeError and ToxicError
                reason = str(exc) if isinstance(exc, ToxicError) else f"invalid JSON: {exc}"
                return 400, {"error": reason}
            setattr(route, kind.attr, toxic)
            logger.info("route %s: %s %s", route.name, kind.label, toxic.to_dict())
            return 200, route.describe()
        if method == "DELETE":
            old = getattr(route, kind.live)()
            setattr(route, kind.attr, None)
            logger.info("route %s: %s removed (%s)", route.name, kind.label, old and old.fault_id)
            return 200, {"route": route.name, "removed": old is not None,
                         kind.key: old.to_dict() if old else None}
        if method == "GET":
            toxic = getattr(route, kind.live)()
            return 200, {"route": route.name, kind.key: toxic.to_dict() if toxic else None}
        return 405, {"error": f"{method} not allowed on {path}"}

    def _check_lease_fields(self, raw: Any) -> None:
        """No toxic without a fault id and a bounded expiry: the proxy never holds a
        fault that nothing would undo."""
        if not isinstance(raw, dict):
            return  # parse_latency says why
        fault_id = raw.get("fault_id")
        if not isinstance(fault_id, str) or not FAULT_ID.fullmatch(fault_id):
            raise ToxicError("fault_id is required: 1-128 characters of [A-Za-z0-9._-]")
        expires_at = raw.get("expires_at")
        if expires_at is None:
            raise ToxicError("expires_at is required (unix seconds): a toxic always ends")
        if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
            if expires_at > time.time() + self.max_toxic_s:
                raise ToxicError(f"expires_at is more than {self.max_toxic_s:g} s ahead")
        if self.leases_dir is not None:
            lease = self.leases_dir / f"{fault_id}.json"
            if not lease.is_file() or lease.is_symlink():
                raise ToxicError(f"no lease {fault_id!r} in {self.leases_dir}: a toxic needs its lease first")


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
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
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
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
    return method.upper(), path, headers, body


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
        ("chaoscheckout_proxy_lost_responses_total", "counter",
         "Responses the response-loss toxic dropped (caller's connection reset)", []),
        ("chaoscheckout_proxy_response_loss_fraction", "gauge", "Live response-loss fraction (0: none)", []),
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
        loss = route.live_loss()
        series[10][3].append((r, s.lost_responses))
        series[11][3].append((r, loss.fraction if loss else 0))
    out = []
    for name, kind, help_text, samples in series:
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        out.extend(f"{name}{{{labels}}} {value:g}\n" for labels, value in samples)
    return "".join(out)
