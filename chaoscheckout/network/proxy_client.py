"""A client for the fault proxy's control API (stdlib HTTP, every call has a timeout)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError

__all__ = ["ProxyControl", "ProxyUnreachable", "ProxyError"]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


class ProxyError(ChaosCheckoutError):
    """The fault proxy answered with an error (bad toxic, unknown route)."""


class ProxyUnreachable(ProxyError):
    """The fault proxy's control API could not be reached.

    ``refused`` is True when nothing listens on the control port (the proxy is not
    running, so it holds no toxic), False for a timeout or another transport error.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ProxyControl:
    """``ProxyControl("http://127.0.0.1:18150").set_latency("payments", delay_ms=300)``."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

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

    def metrics(self) -> str:
        return self._request("GET", "/metrics", None).decode()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        raw = self._request(method, path, body)
        try:
            return json.loads(raw)
        except ValueError:
            raise ProxyError(f"fault proxy {method} {path}: answer is not JSON") from None

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> bytes:
        # stdlib client: no per-call TLS context set-up, so a revert costs ~1 ms, not ~50
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.code)
            except (ValueError, AttributeError, OSError):
                reason = f"HTTP {exc.code}"
            raise ProxyError(f"fault proxy {method} {path}: {reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            refused = isinstance(cause, ConnectionRefusedError)
            message = f"fault proxy at {self.url} unreachable: {cause}"
            raise ProxyUnreachable(message, refused=refused) from None
