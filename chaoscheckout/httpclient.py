"""One kept HTTP client per process, for the probes and guards that poll.

``httpx.get`` makes a new client for every call, and with it a TLS context that loads the
system's CA bundle, even for a plain ``http://`` URL: about 40 ms of CPU per call on the
2-core machine the stack was measured on, against 2.6 ms on a kept client. The safeguards
poll every second (Prometheus for availability and latency, the provider's charge log for
money and double charges), so a run with three guards spent about 0.15-0.25 of a core on
them, on the machine that runs the system under test, from the moment the fault went in.
At a flash sale's rate that was the push that set off checkout's timeout storms
(journals/FINDINGS.md, fifth session).

The client is thread-safe (the guards run in threads), is created at first use, and every
call passes its own timeout. Connections are kept alive; one that the server closed meanwhile
is noticed and replaced by httpcore before it is reused.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import httpx

__all__ = ["http_get", "shared_client"]

_LOCK = threading.Lock()
_CLIENT: httpx.Client | None = None


def shared_client() -> httpx.Client:
    """This process's kept client (created at first use)."""
    global _CLIENT
    with _LOCK:
        if _CLIENT is None or _CLIENT.is_closed:
            _CLIENT = httpx.Client(limits=httpx.Limits(max_connections=20,
                                                       max_keepalive_connections=10))
        return _CLIENT


def http_get(url: str, timeout_s: float, params: Mapping[str, str] | None = None) -> httpx.Response:
    """GET ``url`` on the kept client, bounded by ``timeout_s`` (connect, read, write, pool)."""
    return shared_client().get(url, params=params, timeout=timeout_s)
