"""The guards' HTTP calls go over one kept connection (chaoscheckout.httpclient), not a new
client per poll: ``httpx.get`` cost about 40 ms of CPU per call (bench/guard_cost.py).

A real HTTP/1.1 server on 127.0.0.1 plays the provider's charge log and Prometheus; it
records the client port of every request (a new port = a new connection)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chaoscheckout.httpclient import http_get, shared_client
from chaoscheckout.sli.money import _fetch_charges
from chaoscheckout.sli.prometheus import PrometheusClient

pytestmark = pytest.mark.fast


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    ports: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        _Handler.ports.append(self.client_address[1])
        if self.path.startswith("/charges"):
            body = {"charges": []}
        else:
            body = {"status": "success", "data": {"resultType": "vector",
                                                  "result": [{"metric": {}, "value": [0, "1"]}]}}
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.ports = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_guard_polls_reuse_one_connection(server: str) -> None:
    prometheus = PrometheusClient(server, timeout_s=2)
    for _ in range(3):
        assert _fetch_charges(server, 0.0, 2.0) == []
        assert prometheus.value("up") == 1.0
    assert len(_Handler.ports) == 6
    assert len(set(_Handler.ports)) == 1, _Handler.ports  # one kept connection


def test_shared_client_is_made_again_after_close_and_takes_each_calls_timeout(server: str) -> None:
    first = shared_client()
    first.close()
    assert http_get(server + "/x", 2.0).status_code == 200
    assert shared_client() is not first and not shared_client().is_closed
    with pytest.raises(Exception) as caught:  # nothing listens on port 9: refused at once
        http_get("http://127.0.0.1:9/", 0.5)
    assert "Connect" in type(caught.value).__name__
