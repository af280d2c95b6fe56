"""A client for the fault proxy's control API (every call has a timeout)."""

from __future__ import annotations

from typing import Any

import httpx

from chaoscheckout.errors import ChaosCheckoutError

__all__ = ["ProxyControl", "ProxyUnreachable", "ProxyError"]


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
    ) -> dict[str, Any]:
        body = {"delay_ms": delay_ms, "jitter_ms": jitter_ms, "fraction": fraction,
                "expires_at": expires_at, "fault_id": fault_id}
        return self._call("PUT", f"/routes/{route}/latency", body)

    def clear_latency(self, route: str) -> dict[str, Any]:
        """Remove the route's toxic; ``removed`` says whether there was one."""
        return self._call("DELETE", f"/routes/{route}/latency")

    def metrics(self) -> str:
        try:
            resp = httpx.get(f"{self.url}/metrics", timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise ProxyUnreachable(f"fault proxy at {self.url} unreachable: {exc}") from None
        return resp.text

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            resp = httpx.request(method, f"{self.url}{path}", json=body, timeout=self.timeout_s)
        except httpx.ConnectError as exc:
            raise ProxyUnreachable(f"fault proxy at {self.url} unreachable: {exc}", refused=True) from None
        except httpx.HTTPError as exc:
            raise ProxyUnreachable(f"fault proxy at {self.url} unreachable: {exc!r}") from None
        try:
            data = resp.json()
        except ValueError:
            raise ProxyError(f"fault proxy {method} {path}: HTTP {resp.status_code}, not JSON") from None
        if resp.status_code != 200:
            raise ProxyError(f"fault proxy {method} {path}: {data.get('error', resp.status_code)}")
        return data
