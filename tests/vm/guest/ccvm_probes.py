"""Probes the in-VM experiment uses to time round trips precisely (stdlib sockets only).

``chaoscheckout.network.probes.measure_latency_ms`` builds an httpx client inside each
timed sample; under software emulation that costs 400+ ms of CPU per sample and buries a
100 ms delay in noise. This probe times only the network: a fresh TCP connection, one
``GET /healthz`` (HTTP/1.0), the full response. Found by ``chaos run`` through
``PYTHONPATH=/opt/ccvm`` in the VM.
"""

from __future__ import annotations

import socket
import statistics
import time

__all__ = ["round_trip_ms"]

MAX_SAMPLES = 100


def round_trip_ms(host: str, port: int, samples: int = 10, timeout_s: float = 10.0) -> float:
    """Median milliseconds of `samples` fresh-connection GET /healthz to host:port."""
    if not 1 <= int(samples) <= MAX_SAMPLES:
        raise ValueError(f"samples must be in [1, {MAX_SAMPLES}], got {samples!r}")
    times = []
    for _ in range(int(samples)):
        started = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        if not data.startswith(b"HTTP/1.") or data.split(b" ", 2)[1:2] != [b"200"]:
            raise RuntimeError(f"{host}:{port} answered {data[:40]!r}")
        times.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(times), 2)
