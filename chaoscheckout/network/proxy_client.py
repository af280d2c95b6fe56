"""A client for the fault proxy's control API (stdlib HTTP, every call has a timeout).

The control URL is one of:

- ``unix:/path/to/faultproxy.sock`` — the stack's: a 0600 socket only root can use;
- ``http://host:port#token_file=/path/to/token`` — TCP; the token (read from a 0600 file,
  the fragment is never sent) goes in an ``Authorization: Bearer`` header. A ``token``
  argument overrides the file.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
from typing import Any
from urllib.parse import parse_qs, urlsplit

from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.unixhttp import UnixHTTPConnection

__all__ = ["ProxyControl", "ProxyUnreachable", "ProxyError"]


class ProxyError(ChaosCheckoutError):
    """The fault proxy answered with an error (bad toxic, unknown route, no credential)."""


class ProxyUnreachable(ProxyError):
    """The fault proxy's control API could not be reached.

    ``refused`` is True when nothing listens on the control address (the proxy is not
    running, so it holds no toxic), False for a timeout or another transport error.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ProxyControl:
    """``ProxyControl("unix:/var/lib/chaoscheckout/ctl/faultproxy.sock").set_latency("payments",
    delay_ms=300, expires_at=time.time() + 60, fault_id="f-1")``."""

    def __init__(self, url: str, timeout_s: float = 5.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._socket_path: str | None = None
        self._token = token
        if url.startswith("unix:"):
            self._socket_path = url[len("unix:"):]
            return
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ProxyError(f"fault proxy control URL {url!r}: expected unix:/path or http://host:port")
        self.url = f"http://{parts.netloc}{parts.path}".rstrip("/")
        self._host, self._port, self._prefix = parts.hostname, parts.port or 80, parts.path.rstrip("/")
        token_file = parse_qs(parts.fragment).get("token_file", [None])[0]
        if self._token is None and token_file:
            self._token = _read_token(token_file)

    def healthz(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def routes(self) -> dict[str, dict[str, Any]]:
        """Every route by name, each with its live ``latency`` toxic or None."""
        return {r["name"]: r for r in self._call("GET", "/routes")["routes"]}

    def route(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/routes/{name}")

    def set_latency(
        self,
        route: str,
        delay_ms: float,
        jitter_ms: float = 0.0,
        fraction: float = 1.0,
        expires_at: float | None = None,
        fault_id: str | None = None,
        scope: str = "connection",
    ) -> dict[str, Any]:
        """Set the route's toxic. The proxy refuses it without ``expires_at`` (unix
        seconds) and ``fault_id`` (the lease's id): it drops the toxic at its expiry."""
        body = {"delay_ms": delay_ms, "jitter_ms": jitter_ms, "fraction": fraction,
                "expires_at": expires_at, "fault_id": fault_id, "scope": scope}
        return self._call("PUT", f"/routes/{route}/latency", body)

    def latency(self, route: str) -> dict[str, Any] | None:
        """The route's live toxic (with its ``effect`` counters) or None."""
        return self._call("GET", f"/routes/{route}/latency")["latency"]

    def clear_latency(self, route: str) -> dict[str, Any]:
        """Remove the route's toxic; ``removed`` says whether there was one, ``latency`` is
        the old toxic with its final ``effect`` counters."""
        return self._call("DELETE", f"/routes/{route}/latency")

    def set_response_loss(self, route: str, fraction: float, expires_at: float,
                          fault_id: str) -> dict[str, Any]:
        """Set the route's response-loss toxic (each request picked with ``fraction``: it
        reaches the upstream, its response is dropped); refused without ``expires_at`` and
        ``fault_id``, dropped by the proxy at its expiry."""
        body = {"fraction": fraction, "expires_at": expires_at, "fault_id": fault_id}
        return self._call("PUT", f"/routes/{route}/response-loss", body)

    def response_loss(self, route: str) -> dict[str, Any] | None:
        """The route's live response-loss toxic (with its ``effect`` counters) or None."""
        return self._call("GET", f"/routes/{route}/response-loss")["response_loss"]

    def clear_response_loss(self, route: str) -> dict[str, Any]:
        """Remove the route's response-loss toxic; ``response_loss`` is the old one with its
        final ``effect`` counters."""
        return self._call("DELETE", f"/routes/{route}/response-loss")

    def metrics(self) -> str:
        return self._request("GET", "/metrics", None).decode()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        raw = self._request(method, path, body)
        try:
            return json.loads(raw)
        except ValueError:
            raise ProxyError(f"fault proxy {method} {path}: answer is not JSON") from None

    def _connection(self) -> http.client.HTTPConnection:
        if self._socket_path is not None:
            return UnixHTTPConnection(self._socket_path, self.timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> bytes:
        # stdlib client: no per-call TLS context set-up, so a revert costs ~1 ms, not ~50
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        target = path if self._socket_path is not None else f"{self._prefix}{path}"
        conn = self._connection()
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            refused = isinstance(exc, ConnectionRefusedError | FileNotFoundError)
            message = f"fault proxy at {self.url} unreachable: {exc}"
            raise ProxyUnreachable(message, refused=refused) from None
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                reason = json.loads(raw).get("error", resp.status)
            except (ValueError, AttributeError):
                reason = f"HTTP {resp.status}"
            raise ProxyError(f"fault proxy {method} {path}: {reason}")
        return raw


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------



def _read_token(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ProxyError(f"fault proxy token file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as fh:
        mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        if mode & 0o077:
            raise ProxyError(f"fault proxy token file {path} has mode {mode:04o}: it must be 0600")
        return fh.read(4096).strip()
