"""Real processes for the network tests: a tiny HTTP upstream and the fault proxy.

Ports are ``CHAOSCHECKOUT_TEST_PORT_BASE`` (default 28100) + 60..69, outside the offsets
the session stack uses, all on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100"))

# GET /bytes/<n>: n deterministic bytes; POST /echo: the body back; GET /healthz: "ok".
UPSTREAM_SCRIPT = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATTERN = bytes(range(256)) * 4096

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path.split("/")[2])
            self._send((PATTERN * (n // len(PATTERN) + 1))[:n])
        else:
            self._send(b"ok")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        self._send(self.rfile.read(n))

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def pattern_bytes(n: int) -> bytes:
    pattern = bytes(range(256)) * 4096
    return (pattern * (n // len(pattern) + 1))[:n]


@dataclass
class ProxyRig:
    upstream_port: int
    listen_port: int
    control_port: int
    route: str = "up"

    @property
    def control_url(self) -> str:
        """For ProxyControl: the TCP control API and its token file."""
        return f"{self.api}#token_file={token_file(self.control_port)}"

    @property
    def api(self) -> str:
        """The bare control API address (raw HTTP calls add :attr:`auth`)."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {token_file(self.control_port).read_text().strip()}"}

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"


def start_upstream(port: int, script: str = UPSTREAM_SCRIPT) -> subprocess.Popen:
    """An HTTP upstream (``script`` run with the port as argument) answering ``/healthz``."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(port)])
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


_TOKEN_DIR: Path | None = None


def token_file(control_port: int) -> Path:
    """A 0600 token file for the proxy whose TCP control API is on ``control_port``."""
    global _TOKEN_DIR
    if _TOKEN_DIR is None:
        _TOKEN_DIR = Path(tempfile.mkdtemp(prefix="cc-proxy-tokens-"))
    path = _TOKEN_DIR / f"{control_port}.token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(16))
    return path


def start_proxy(control_port: int, *routes: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "chaoscheckout.network.proxy", "--control", f"127.0.0.1:{control_port}",
            "--token-file", str(token_file(control_port)), "--log-level", "WARNING"]
    for route in routes:
        args += ["--route", route]
    proc = subprocess.Popen(args, cwd=ROOT)
    wait_http(f"http://127.0.0.1:{control_port}/healthz", proc)
    return proc


@contextmanager
def proxied_upstream(rig: ProxyRig, *routes: str, script: str = UPSTREAM_SCRIPT) -> Iterator[ProxyRig]:
    """The rig's upstream (``script``, see start_upstream) and a proxy with ``routes`` in front
    of it; both stopped at exit."""
    upstream = start_upstream(rig.upstream_port, script)
    try:
        proxy = start_proxy(rig.control_port, *routes)
    except Exception:
        stop(upstream)
        raise
    try:
        yield rig
    finally:
        stop(proxy)
        stop(upstream)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{url} not up within {timeout_s} s")


def timed_get(url: str, timeout_s: float = 10.0) -> float:
    """Seconds for one GET on a fresh connection (stdlib client: little client-side noise)."""
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise AssertionError(f"GET {url}: HTTP {resp.status}")
    return time.perf_counter() - start
