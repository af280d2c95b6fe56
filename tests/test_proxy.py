"""The fault proxy as a real process in front of a real HTTP upstream, measured from a client."""

from __future__ import annotations

import hashlib
import http.client
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from netfixtures import (
    BASE,
    ROOT,
    ProxyRig,
    pattern_bytes,
    proxied_upstream,
    stop,
    timed_get,
)

from chaoscheckout.network.proxy_client import ProxyControl, ProxyError


@pytest.fixture(scope="module")
def rig() -> Iterator[ProxyRig]:
    rig = ProxyRig(upstream_port=BASE + 60, listen_port=BASE + 61, control_port=BASE + 62)
    with proxied_upstream(rig, f"up={rig.listen_port}:127.0.0.1:{rig.upstream_port}"):
        yield rig


class LeasedControlForTests(ProxyControl):
    """Fills the fault id and expiry the proxy requires, so each test states only what it
    measures (the requirement itself is tested below with the plain client)."""

    def set_latency(self, route, delay_ms, jitter_ms=0.0, fraction=1.0, expires_at=None,
                    fault_id=None, scope="connection"):
        return super().set_latency(route, delay_ms, jitter_ms, fraction, expires_at or time.time() + 60,
                                   fault_id or "test-fault", scope)


@pytest.fixture()
def control(rig: ProxyRig) -> Iterator[ProxyControl]:
    control = LeasedControlForTests(rig.control_url, timeout_s=5)
    control.clear_latency(rig.route)
    yield control
    control.clear_latency(rig.route)


def _median_s(url: str, n: int = 5) -> float:
    return statistics.median(timed_get(url) for _ in range(n))


def test_passthrough_large_bodies_are_byte_identical(rig: ProxyRig, control: ProxyControl) -> None:
    size = 8 * 1024 * 1024 + 13
    direct = httpx.get(f"{rig.direct_url}/bytes/{size}", timeout=30).content
    proxied = httpx.get(f"{rig.proxy_url}/bytes/{size}", timeout=30).content
    assert len(proxied) == size
    assert hashlib.sha256(proxied).digest() == hashlib.sha256(direct).digest()
    upload = pattern_bytes(4 * 1024 * 1024 + 7)[::-1]
    echoed = httpx.post(f"{rig.proxy_url}/echo", content=upload, timeout=30).content
    assert echoed == upload


def test_latency_added_to_each_request_then_removed(rig: ProxyRig, control: ProxyControl) -> None:
    baseline = _median_s(f"{rig.proxy_url}/healthz")
    control.set_latency(rig.route, delay_ms=200)
    slowed = _median_s(f"{rig.proxy_url}/healthz")
    direct = _median_s(f"{rig.direct_url}/healthz")
    assert 0.19 <= slowed - baseline <= 0.35, (baseline, slowed)
    assert direct < 0.1  # the upstream itself is not slowed
    assert control.clear_latency(rig.route)["removed"] is True
    after = _median_s(f"{rig.proxy_url}/healthz")
    assert after < baseline + 0.05, (baseline, after)
    assert control.clear_latency(rig.route)["removed"] is False  # idempotent


def test_keepalive_connection_is_decided_again_when_toxic_changes(
    rig: ProxyRig, control: ProxyControl
) -> None:
    with httpx.Client(timeout=10) as client:
        start = time.perf_counter()
        client.get(f"{rig.proxy_url}/healthz").raise_for_status()
        before = time.perf_counter() - start
        control.set_latency(rig.route, delay_ms=150)
        start = time.perf_counter()
        client.get(f"{rig.proxy_url}/healthz").raise_for_status()
        during = time.perf_counter() - start
        control.clear_latency(rig.route)
        start = time.perf_counter()
        client.get(f"{rig.proxy_url}/healthz").raise_for_status()
        after = time.perf_counter() - start
    # absolute bounds: a delay cannot be shorter than asked, and noise rarely reaches 140 ms
    assert during >= 0.15 and before < 0.14, (before, during)
    assert after < 0.14, after


def test_jitter_spreads_delays_within_bounds(rig: ProxyRig, control: ProxyControl) -> None:
    control.set_latency(rig.route, delay_ms=100, jitter_ms=50)
    times = [timed_get(f"{rig.proxy_url}/healthz") for _ in range(12)]
    assert min(times) >= 0.048, times
    assert max(times) <= 0.150 + 0.1, times
    assert max(times) - min(times) >= 0.02, times  # uniform over 100 ms: not a constant delay


def test_fraction_limits_the_share_of_delayed_connections(rig: ProxyRig, control: ProxyControl) -> None:
    n, delay_s = 60, 0.08
    control.set_latency(rig.route, delay_ms=delay_s * 1000, fraction=0.5)
    times = [timed_get(f"{rig.proxy_url}/healthz") for _ in range(n)]
    delayed = sum(t >= delay_s * 0.9 for t in times)
    # Binomial(60, 0.5): outside [18, 42] has probability ~0.1 %
    assert 18 <= delayed <= 42, (delayed, times)
    control.set_latency(rig.route, delay_ms=delay_s * 1000, fraction=1.0)
    assert all(timed_get(f"{rig.proxy_url}/healthz") >= delay_s * 0.9 for _ in range(5))


def test_order_of_bytes_kept_under_jittered_delay(rig: ProxyRig, control: ProxyControl) -> None:
    control.set_latency(rig.route, delay_ms=20, jitter_ms=20)
    upload = pattern_bytes(3 * 1024 * 1024 + 1)
    echoed = httpx.post(f"{rig.proxy_url}/echo", content=upload, timeout=60).content
    assert echoed == upload
    metrics = control.metrics()
    delayed = [line for line in metrics.splitlines()
               if line.startswith('chaoscheckout_proxy_delayed_chunks_total{route="up"}')]
    assert delayed and float(delayed[0].split()[-1]) > 1  # the body really went in several chunks


def test_proxy_enforces_expires_at(rig: ProxyRig, control: ProxyControl) -> None:
    control.set_latency(rig.route, delay_ms=150, expires_at=time.time() + 1.0)
    assert timed_get(f"{rig.proxy_url}/healthz") >= 0.14
    time.sleep(1.7)  # sweeper runs every 0.5 s
    assert control.route(rig.route)["latency"] is None  # dropped without any traffic
    assert timed_get(f"{rig.proxy_url}/healthz") < 0.14


@pytest.mark.parametrize("body", [
    {"delay_ms": 0}, {"delay_ms": -5}, {"delay_ms": 60001}, {"delay_ms": "100"}, {"delay_ms": True},
    {"delay_ms": 100, "jitter_ms": 101}, {"delay_ms": 100, "jitter_ms": -1},
    {"delay_ms": 100, "fraction": 0}, {"delay_ms": 100, "fraction": 1.5},
    {"delay_ms": 100, "expires_at": 1.0}, {"delay_ms": 100, "color": "red"}, {"jitter_ms": 1}, [1],
    {"delay_ms": 100, "scope": "pipe"}, {"delay_ms": 100, "scope": 1},
    {"delay_ms": 100, "scope": ["request"]},
])
def test_bad_toxic_rejected_and_live_toxic_unchanged(rig: ProxyRig, control: ProxyControl, body) -> None:
    control.set_latency(rig.route, delay_ms=77, fault_id="keep")
    body = {"fault_id": "bad", "expires_at": time.time() + 60, **body} if isinstance(body, dict) else body
    resp = httpx.put(f"{rig.api}/routes/up/latency", json=body, headers=rig.auth, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]
    assert control.route(rig.route)["latency"]["fault_id"] == "keep"
    assert control.route(rig.route)["latency"]["delay_ms"] == 77


def test_control_api_errors_and_metrics(rig: ProxyRig, control: ProxyControl) -> None:
    with pytest.raises(ProxyError, match="no route 'nope'"):
        control.set_latency("nope", delay_ms=10)
    bad_json = httpx.put(f"{rig.api}/routes/up/latency", content=b"{not json", headers=rig.auth, timeout=5)
    assert bad_json.status_code == 400
    assert httpx.get(f"{rig.api}/nothing", headers=rig.auth, timeout=5).status_code == 404
    assert control.healthz()["status"] == "ok"
    routes = control.routes()
    assert routes["up"]["upstream"] == f"127.0.0.1:{rig.upstream_port}" and routes["up"]["latency"] is None

    def upstream_bytes() -> float:
        for line in control.metrics().splitlines():
            if line.startswith('chaoscheckout_proxy_bytes_total{route="up",direction="downstream"}'):
                return float(line.split()[-1])
        raise AssertionError("metric missing")

    before = upstream_bytes()
    httpx.get(f"{rig.proxy_url}/bytes/100000", timeout=10).raise_for_status()
    assert upstream_bytes() - before >= 100000


@pytest.mark.parametrize("argv, message", [
    (["--route", "x=1:127.0.0.1"], "expected NAME=LISTEN_PORT"),
    (["--route", "b@d=1:127.0.0.1:2"], "bad route name"),
    (["--route", "x=70000:127.0.0.1:2"], "bad port"),
])
def test_cli_rejects_bad_routes(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chaoscheckout.network.proxy", "--control", f"127.0.0.1:{BASE + 69}", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 2 and message in result.stderr


def _pooled_posts(url: str, total: int, connections: int) -> list[float]:
    """``total`` small POSTs (JSON body, as checkout calls payments) from ``connections`` threads
    sharing one keep-alive pool of ``connections`` connections; each request's duration."""
    times: list[float] = []
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    with httpx.Client(timeout=10, limits=limits) as client:
        def work() -> None:
            for _ in range(total // connections):
                start = time.perf_counter()
                client.post(f"{url}/echo", json={"amount_cents": 1200}).raise_for_status()
                times.append(time.perf_counter() - start)

        threads = [threading.Thread(target=work) for _ in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(times) == total
    return times


def _connections_total(control: ProxyControl) -> float:
    for line in control.metrics().splitlines():
        if line.startswith('chaoscheckout_proxy_connections_total{route="up"}'):
            return float(line.split()[-1])
    raise AssertionError("metric missing")


def test_request_scope_delays_a_fraction_of_keepalive_requests(rig: ProxyRig, control: ProxyControl) -> None:
    n, delay_s = 300, 0.1
    conns_before = _connections_total(control)
    control.set_latency(rig.route, delay_ms=delay_s * 1000, fraction=0.3, scope="request", fault_id="req")
    times = _pooled_posts(rig.proxy_url, n, connections=4)
    effect = control.latency(rig.route)["effect"]
    removed = control.clear_latency(rig.route)["latency"]["effect"]
    delayed = sum(t >= delay_s * 0.9 for t in times)
    print(f"request scope 0.3 over {n} POSTs on 4 keep-alive connections: {delayed} delayed "
          f"({delayed / n:.1%}); effect {effect}")
    assert _connections_total(control) - conns_before <= 4  # really a pool of keep-alive connections
    # Binomial(300, 0.3): mean 90, sd 7.9; [58, 122] is ±4 sd
    assert 58 <= delayed <= 122, delayed
    # every POST is one exchange, even when its head and body arrive as separate chunks
    assert effect["exchanges_seen"] == n and effect["chunks_seen"] >= n, effect
    # a delayed exchange is never faster than its delay; a pause of the client's own threads can
    # make an undelayed one look delayed (4 threads share this process)
    assert effect["exchanges_delayed"] <= delayed <= effect["exchanges_delayed"] + 10, (effect, delayed)
    assert effect["fault_id"] == "req" and effect["scope"] == "request" and effect["connections_decided"] == 0
    assert removed["exchanges_seen"] == n and removed["exchanges_delayed"] == effect["exchanges_delayed"]
    metrics = {line.split()[0]: float(line.split()[1]) for line in control.metrics().splitlines()
               if line.startswith("chaoscheckout_proxy_") and 'route="up"' in line}
    assert metrics['chaoscheckout_proxy_delayed_exchanges_total{route="up"}'] >= effect["exchanges_delayed"]


def test_connection_scope_picks_whole_connections(rig: ProxyRig, control: ProxyControl) -> None:
    conns, per_conn, delay_s = 8, 10, 0.06
    control.set_latency(rig.route, delay_ms=delay_s * 1000, fraction=0.5, scope="connection")
    picked = 0
    for _ in range(conns):
        conn = http.client.HTTPConnection("127.0.0.1", rig.listen_port, timeout=10)
        try:
            slow = []
            for _ in range(per_conn):
                start = time.perf_counter()
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                slow.append(time.perf_counter() - start >= delay_s * 0.9)
        finally:
            conn.close()
        # a connection is picked as a whole: all its requests delayed (a delayed request is never
        # faster than its delay), or most of them fast (a pause of this process can slow one)
        is_picked = sorted(slow)[per_conn // 2]
        assert all(slow) if is_picked else sum(slow) <= 2, slow
        picked += is_picked
    effect = control.clear_latency(rig.route)["latency"]["effect"]
    assert effect["connections_decided"] == conns and effect["connections_picked"] == picked, effect
    assert effect["exchanges_seen"] == conns * per_conn
    assert effect["exchanges_delayed"] == picked * per_conn == effect["chunks_delayed"], effect


def test_request_scope_mixes_delays_within_a_connection(rig: ProxyRig, control: ProxyControl) -> None:
    delay_s = 0.06
    control.set_latency(rig.route, delay_ms=delay_s * 1000, fraction=0.5, scope="request")
    conn = http.client.HTTPConnection("127.0.0.1", rig.listen_port, timeout=10)
    slow = []
    try:
        for _ in range(30):
            start = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            slow.append(time.perf_counter() - start >= delay_s * 0.9)
    finally:
        conn.close()
    effect = control.latency(rig.route)["effect"]
    # one connection, both outcomes: P(all 30 equal) = 2 * 0.5**30
    assert any(slow) and not all(slow), slow
    assert effect["exchanges_seen"] == 30, effect
    assert effect["exchanges_delayed"] <= sum(slow) <= effect["exchanges_delayed"] + 3, (effect, slow)


def test_connection_scope_pool_effect_is_visible_in_the_counters(
    rig: ProxyRig, control: ProxyControl
) -> None:
    """Connection scope on a pool: the share of requests slowed is not ``fraction``; the counters say
    how many were. With fraction 1 on 4 connections every request is delayed (the control)."""
    # 100 ms, well above the ~40 ms a client's Nagle + delayed-ACK stall can add on its own
    control.set_latency(rig.route, delay_ms=100, fraction=0.3, scope="connection")
    times = _pooled_posts(rig.proxy_url, 120, connections=4)
    effect = control.clear_latency(rig.route)["latency"]["effect"]
    delayed = sum(t >= 0.09 for t in times)
    print(f"connection scope 0.3 on 4 pooled connections: {effect['connections_picked']}/"
          f"{effect['connections_decided']} connections picked, {delayed}/120 requests delayed; {effect}")
    assert effect["connections_decided"] <= 4 and effect["exchanges_seen"] == 120
    assert effect["exchanges_delayed"] <= delayed <= effect["exchanges_delayed"] + 10, (effect, delayed)
    if effect["connections_picked"] == 0:
        assert effect["exchanges_delayed"] == 0 and effect["delayed_ratio"] == 0
    control.set_latency(rig.route, delay_ms=50, fraction=1.0, scope="connection")
    _pooled_posts(rig.proxy_url, 40, connections=4)
    effect = control.clear_latency(rig.route)["latency"]["effect"]
    assert effect["exchanges_delayed"] == effect["exchanges_seen"] == 40 and effect["delayed_ratio"] == 1.0


def test_effect_counters_start_at_zero_for_each_toxic(rig: ProxyRig, control: ProxyControl) -> None:
    control.set_latency(rig.route, delay_ms=30, fault_id="one")
    for _ in range(5):
        timed_get(f"{rig.proxy_url}/healthz")
    first = control.latency(rig.route)["effect"]
    assert (first["fault_id"], first["chunks_seen"], first["chunks_delayed"]) == ("one", 5, 5), first
    assert first["exchanges_delayed_ratio"] == 1.0 and first["connections_decided"] == 5
    control.set_latency(rig.route, delay_ms=30, fraction=0.5, scope="request", fault_id="two")
    fresh = control.latency(rig.route)["effect"]
    assert (fresh["fault_id"], fresh["chunks_seen"], fresh["delayed_ratio"]) == ("two", 0, None), fresh
    timed_get(f"{rig.proxy_url}/healthz")
    final = control.clear_latency(rig.route)["latency"]
    assert final["scope"] == "request" and final["effect"]["chunks_seen"] == 1
    assert control.latency(rig.route) is None


def test_order_of_bytes_kept_under_request_scope(rig: ProxyRig, control: ProxyControl) -> None:
    control.set_latency(rig.route, delay_ms=20, jitter_ms=20, fraction=0.5, scope="request")
    with httpx.Client(timeout=60) as client:
        for size in (3 * 1024 * 1024 + 1, 200_001, 17):
            upload = pattern_bytes(size)[::-1]
            assert client.post(f"{rig.proxy_url}/echo", content=upload).content == upload
    effect = control.latency(rig.route)["effect"]
    assert effect["chunks_seen"] > 3  # the large body really went in several chunks


# --- who may set a toxic (issue 16) -----------------------------------------------------


@pytest.mark.parametrize("missing, message", [
    ({"fault_id": None}, "fault_id is required"),
    ({"fault_id": "../x"}, "fault_id is required"),
    ({"expires_at": None}, "expires_at is required"),
    ({"expires_at": time.time() + 10 * 86400}, "more than 86400 s ahead"),
])
def test_toxic_without_fault_id_or_bounded_expiry_is_refused(rig: ProxyRig, missing, message) -> None:
    plain = ProxyControl(rig.control_url, timeout_s=5)
    plain.clear_latency(rig.route)
    arguments = {"fault_id": "f-1", "expires_at": time.time() + 60, **missing}
    with pytest.raises(ProxyError, match=message):
        plain.set_latency(rig.route, delay_ms=50, **arguments)
    assert plain.latency(rig.route) is None


def test_tcp_control_api_needs_the_token(rig: ProxyRig) -> None:
    assert httpx.get(f"{rig.api}/healthz", timeout=5).status_code == 200  # liveness only
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        assert httpx.get(f"{rig.api}/routes", headers=headers, timeout=5).status_code == 401
        put = httpx.put(f"{rig.api}/routes/up/latency", headers=headers, timeout=5,
                        json={"delay_ms": 50, "fault_id": "x", "expires_at": time.time() + 60})
        assert put.status_code == 401
    assert ProxyControl(rig.control_url).latency(rig.route) is None


def test_proxy_refuses_to_start_without_a_trustworthy_credential(tmp_path) -> None:
    loose = tmp_path / "token"
    loose.write_text("0123456789abcdef0123")
    loose.chmod(0o644)
    for extra, message in (([], "needs a token"), (["--token-file", str(loose)], "mode 0600")):
        result = subprocess.run(
            [sys.executable, "-m", "chaoscheckout.network.proxy", "--control", f"127.0.0.1:{BASE + 69}",
             "--route", f"x={BASE + 68}:127.0.0.1:1", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=20,
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr


def test_unix_control_socket_is_0600_and_refuses_other_users(tmp_path) -> None:
    tmp_path.chmod(0o755)
    sock = tmp_path / "control.sock"
    with socket.socket() as probe:  # any free port for the route: only the control socket matters
        probe.bind(("127.0.0.1", 0))
        route_port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "chaoscheckout.network.proxy", "--control", f"unix:{sock}",
                             "--route", f"x={route_port}:127.0.0.1:1", "--log-level", "WARNING"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        control = ProxyControl(f"unix:{sock}", timeout_s=5)
        assert control.healthz()["status"] == "ok"
        # as user nobody, with the system interpreter (stdlib only): connect is refused
        attempt = ("import socket,sys; s=socket.socket(socket.AF_UNIX)\n"
                   "try: s.connect(sys.argv[1]); print('connected')\n"
                   "except PermissionError: print('refused')")
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "/usr/bin/python3", "-c", attempt, str(sock)],
                                capture_output=True, text=True, timeout=20)
        assert result.stdout.strip() == "refused", result.stdout + result.stderr
    finally:
        stop(proc)
    assert not sock.exists()  # removed at exit
