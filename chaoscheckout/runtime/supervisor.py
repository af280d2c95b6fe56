"""A supervisord XML-RPC client with a timeout on every call.

The URL is ``unix:///path/to/supervisord.sock`` (the stack's: a 0600 socket only its
owner, root, can connect to) or ``http://host:port/RPC2``.
"""

from __future__ import annotations

import http.client
import xmlrpc.client
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.unixhttp import UnixHTTPConnection

__all__ = ["SupervisorClient", "SupervisorError"]


class SupervisorError(ChaosCheckoutError):
    """supervisord could not be reached or refused a call."""


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self._timeout_s
        return conn



class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__()
        self._path = path
        self._timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        return UnixHTTPConnection(self._path, self._timeout_s)


class SupervisorClient:
    """Thin wrapper over supervisord's ``supervisor.*`` XML-RPC namespace."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        if url.startswith("unix://"):
            transport: xmlrpc.client.Transport = _UnixTransport(url[len("unix://"):], timeout_s)
            url = "http://localhost/RPC2"
        else:
            transport = _TimeoutTransport(timeout_s)
        self._proxy = xmlrpc.client.ServerProxy(url, transport=transport)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"supervisord {method}{args}: {exc.faultString}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorError(f"supervisord at {self.url} unreachable: {exc}") from None

    def process_info(self, process: str) -> dict[str, Any]:
        """``getProcessInfo``: statename, pid, ... for one program."""
        return self._call("getProcessInfo", process)

    def all_process_info(self) -> list[dict[str, Any]]:
        return self._call("getAllProcessInfo")

    def pid(self, process: str) -> int | None:
        info = self.process_info(process)
        return int(info["pid"]) if info.get("statename") == "RUNNING" and info.get("pid") else None

    def start(self, process: str, wait: bool = False) -> bool:
        """Start a program; returns False when it was already running."""
        try:
            return bool(self._proxy.supervisor.startProcess(process, wait))
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" in exc.faultString:
                return False
            raise SupervisorError(f"supervisord startProcess({process}): {exc.faultString}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorError(f"supervisord at {self.url} unreachable: {exc}") from None

    def stop(self, process: str, wait: bool = True) -> bool:
        """Stop a program; returns False when it was not running."""
        try:
            return bool(self._proxy.supervisor.stopProcess(process, wait))
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" in exc.faultString:
                return False
            raise SupervisorError(f"supervisord stopProcess({process}): {exc.faultString}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorError(f"supervisord at {self.url} unreachable: {exc}") from None

    def signal(self, process: str, signal_name: str) -> bool:
        return bool(self._call("signalProcess", process, signal_name))

    def shutdown(self) -> None:
        self._call("shutdown")
