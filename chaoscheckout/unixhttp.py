"""HTTP over a unix socket: the local control planes (supervisord, the fault proxy) listen
on 0600 sockets, so only their owner can drive them."""

from __future__ import annotations

import http.client
import socket

__all__ = ["UnixHTTPConnection"]


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client`` connection to ``path`` with ``timeout_s`` on connect and every read."""

    def __init__(self, path: str, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
