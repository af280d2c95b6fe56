"""add_latency / remove_latency / the latency probes against real processes.

A private state dir holds a registry written by the test, pointing at a real fault
proxy and a real HTTP upstream; the netem cases use a real network namespace the test
creates (with a veth pair inside it). The last test runs against the real stack.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from netfixtures import BASE, ProxyRig, proxied_upstream, timed_get

from chaoscheckout.errors import BackendUnavailable, InvalidFaultArgument, TargetRefused, UnknownService
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.revert import revert_all
from chaoscheckout.network import netem
from chaoscheckout.network.actions import add_latency, remove_latency
from chaoscheckout.network.probes import latency_fault, latency_fault_effect, measure_latency_ms
from chaoscheckout.network.proxy_client import ProxyControl
from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry, save_registry

NETNS = f"cc-net-test-{os.getpid()}"


@pytest.fixture(scope="module")
def rig() -> Iterator[ProxyRig]:
    rig = ProxyRig(upstream_port=BASE + 63, listen_port=BASE + 64, control_port=BASE + 65)
    with proxied_upstream(rig, f"up={rig.listen_port}:127.0.0.1:{rig.upstream_port}",
                          f"nsup={BASE + 66}:127.0.0.1:{rig.upstream_port}"):
        yield rig


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    """A real network namespace with a veth pair inside (no host change), as a service's netns has."""
    subprocess.run(["ip", "netns", "add", NETNS], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                       check=True, timeout=10)
        subprocess.run(["ip", "-n", NETNS, "link", "set", "veth0", "up"], check=True, timeout=10)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False, timeout=10)


@pytest.fixture()
def conf(tmp_path: Path, rig: ProxyRig, netns: str) -> Iterator[dict]:
    def entry(name: str, **kw) -> ServiceEntry:
        return ServiceEntry(name=name, host="127.0.0.1", port=rig.upstream_port, process=name,
                            health_url=f"{rig.direct_url}/healthz", **kw)

    registry = Registry(
        runtime="local",
        proxy_control_url=rig.control_url,
        services={
            "up": entry("up", chaos_target=True, proxy=ProxyRoute("up", rig.listen_port)),
            "nsup": entry("nsup", chaos_target=True, netns=netns, proxy=ProxyRoute("nsup", BASE + 66)),
            "guarded": entry("guarded", chaos_target=False, proxy=ProxyRoute("up", rig.listen_port)),
            "noroute": entry("noroute", chaos_target=True),
        },
    )
    save_registry(registry, tmp_path / "services.json")
    configuration = {"chaoscheckout_state_dir": str(tmp_path), "chaoscheckout_max_fault_duration_s": 120}
    yield configuration
    remove_latency("up", configuration)
    remove_latency("nsup", configuration)


def _leases(conf: dict) -> list:
    return LeaseStore(Path(conf["chaoscheckout_state_dir"]) / "leases").live()


def _toxics(rig: ProxyRig) -> dict:
    return {name: r["latency"] for name, r in ProxyControl(rig.control_url).routes().items()}


def _median_s(url: str, n: int = 5) -> float:
    return statistics.median(timed_get(url) for _ in range(n))


def test_add_latency_via_proxy_then_remove(conf: dict, rig: ProxyRig) -> None:
    baseline = _median_s(f"{rig.proxy_url}/healthz")
    before = time.time()
    result = add_latency("up", delay_ms=200, jitter_ms=10, duration_s=30, backend="proxy", configuration=conf)
    json.dumps(result)  # journal-safe
    assert result["kind"] == "latency" and result["backend"] == "proxy"
    assert set(result) == {"fault_id", "kind", "backend", "target", "parameters", "injected_at", "expires_at"}
    assert result["target"] == "up" and result["parameters"]["route"] == "up"
    assert result["parameters"]["delay_ms"] == 200 and result["parameters"]["jitter_ms"] == 10
    injected_at = datetime.fromisoformat(result["injected_at"]).timestamp()
    expires_at = datetime.fromisoformat(result["expires_at"]).timestamp()
    assert before - 0.01 <= injected_at and math.isclose(expires_at - before, 30, abs_tol=2)
    [lease] = _leases(conf)
    assert lease.fault_id == result["fault_id"] and lease.kind == "latency" and lease.backend == "proxy"
    assert _toxics(rig)["up"]["expires_at"] == lease.expires_at  # the proxy enforces the lease too
    fault = latency_fault("up", conf)
    assert fault["leases"] == [lease.fault_id] and fault["proxy"]["delay_ms"] == 200
    slowed = measure_latency_ms("up", samples=5, configuration=conf)
    assert 190 <= slowed - baseline * 1000 <= 330, (baseline, slowed)
    assert measure_latency_ms("up", samples=3, via_proxy=False, configuration=conf) < 100

    removed = remove_latency("up", conf)
    assert removed["reverted"] == [lease.fault_id] and removed["proxy_toxic_removed"] is True
    assert _leases(conf) == [] and _toxics(rig)["up"] is None and latency_fault("up", conf) is None
    assert _median_s(f"{rig.proxy_url}/healthz") < baseline + 0.05
    again = remove_latency("up", conf)
    assert again["message"] == "nothing to remove" and again["reverted"] == []


def test_fraction_reaches_the_proxy(conf: dict, rig: ProxyRig) -> None:
    result = add_latency("up", delay_ms=80, fraction=0.5, duration_s=30, configuration=conf)
    assert result["backend"] == "proxy" and result["parameters"]["requested_backend"] == "auto"
    times = [timed_get(f"{rig.proxy_url}/healthz") for _ in range(40)]
    delayed = sum(t >= 0.072 for t in times)
    assert 10 <= delayed <= 30, delayed  # Binomial(40, 0.5): outside has probability ~0.2 %


def test_auto_uses_netem_only_where_the_kernel_has_it(conf: dict, rig: ProxyRig) -> None:
    has_netem, why = netem.kernel_has_netem()
    result = add_latency("nsup", delay_ms=50, duration_s=30, backend="auto", configuration=conf)
    assert result["backend"] == ("netem" if has_netem else "proxy"), why
    if not has_netem:
        assert _toxics(rig)["nsup"]["delay_ms"] == 50
    assert remove_latency("nsup", conf)["reverted"] == [result["fault_id"]]
    assert netem.show_netem(NETNS) == [] and _toxics(rig)["nsup"] is None


def test_netem_on_this_kernel_fails_cleanly(conf: dict, rig: ProxyRig) -> None:
    has_netem, why = netem.kernel_has_netem()
    if has_netem:
        pytest.skip(f"this kernel has netem ({why}); tests/vm exercises the netem backend")
    with pytest.raises(BackendUnavailable, match="sch_netem"):
        add_latency("nsup", delay_ms=100, backend="netem", configuration=conf)
    assert _leases(conf) == [] and netem.show_netem(NETNS) == [] and _toxics(rig)["nsup"] is None
    qdiscs = subprocess.run(["tc", "-n", NETNS, "qdisc", "show"], capture_output=True, text=True,
                            timeout=10, check=True).stdout
    assert "netem" not in qdiscs
    mine = f"cc-netem-probe-{os.getpid()}-"  # another suite on this machine has its own probes
    assert not [p for p in Path("/run/netns").iterdir() if p.name.startswith(mine)]


def test_netem_refused_without_a_netns_or_with_a_fraction(conf: dict, rig: ProxyRig) -> None:
    with pytest.raises(BackendUnavailable, match="no network namespace"):
        add_latency("up", delay_ms=100, backend="netem", configuration=conf)
    with pytest.raises(InvalidFaultArgument, match="fraction must be 1"):
        add_latency("nsup", delay_ms=100, fraction=0.5, backend="netem", configuration=conf)
    with pytest.raises(BackendUnavailable, match="no fault-proxy route"):
        add_latency("noroute", delay_ms=100, backend="proxy", configuration=conf)
    assert _leases(conf) == [] and all(t is None for t in _toxics(rig).values())


@pytest.mark.parametrize("kwargs, error, message", [
    ({"delay_ms": 0}, InvalidFaultArgument, "delay_ms must be a finite number in"),
    ({"delay_ms": -50}, InvalidFaultArgument, "delay_ms must be a finite number in"),
    ({"delay_ms": 60001}, InvalidFaultArgument, "delay_ms must be a finite number in"),
    ({"delay_ms": float("nan")}, InvalidFaultArgument, "finite number"),
    ({"delay_ms": "100"}, InvalidFaultArgument, "finite number"),
    ({"delay_ms": True}, InvalidFaultArgument, "finite number"),
    ({"delay_ms": 100, "jitter_ms": 101}, InvalidFaultArgument, "jitter_ms"),
    ({"delay_ms": 100, "jitter_ms": -1}, InvalidFaultArgument, "jitter_ms"),
    ({"delay_ms": 100, "fraction": 0}, InvalidFaultArgument, "fraction"),
    ({"delay_ms": 100, "fraction": 1.01}, InvalidFaultArgument, "fraction"),
    ({"delay_ms": 100, "duration_s": 0}, InvalidFaultArgument, "duration_s"),
    ({"delay_ms": 100, "duration_s": 121}, InvalidFaultArgument, "maximum fault duration"),
    ({"delay_ms": 100, "backend": "tc"}, InvalidFaultArgument, "backend must be one of"),
    ({"delay_ms": 100, "scope": "packet"}, InvalidFaultArgument, "scope must be one of"),
    ({"delay_ms": 100, "scope": None}, InvalidFaultArgument, "scope must be one of"),
    ({"delay_ms": 100, "scope": ["request"]}, InvalidFaultArgument, "scope must be one of"),
    ({"delay_ms": 100, "service": "nope"}, UnknownService, "unknown service 'nope'"),
    ({"delay_ms": 100, "service": "guarded"}, TargetRefused, "not a chaos target"),
])
def test_invalid_arguments_change_nothing(conf: dict, rig: ProxyRig, kwargs, error, message) -> None:
    kwargs = {"service": "up", **kwargs}
    with pytest.raises(error, match=message):
        add_latency(configuration=conf, **kwargs)
    assert _leases(conf) == [] and all(t is None for t in _toxics(rig).values())


def test_second_fault_on_same_service_refused_first_kept(conf: dict, rig: ProxyRig) -> None:
    first = add_latency("up", delay_ms=120, duration_s=30, configuration=conf)
    with pytest.raises(InvalidFaultArgument, match="already has a latency fault"):
        add_latency("up", delay_ms=300, duration_s=30, configuration=conf)
    assert [lease.fault_id for lease in _leases(conf)] == [first["fault_id"]]
    assert _toxics(rig)["up"]["delay_ms"] == 120


def test_revert_dispatcher_and_unreachable_proxy(conf: dict, rig: ProxyRig, tmp_path: Path) -> None:
    fault = add_latency("up", delay_ms=120, duration_s=30, configuration=conf)
    [result] = revert_all(conf, service="up")
    assert result["fault_id"] == fault["fault_id"] and result["proxy_toxic_removed"] is True
    assert _leases(conf) == [] and _toxics(rig)["up"] is None
    # a proxy that is not running: refused before any lease is written
    registry = json.loads((tmp_path / "services.json").read_text())
    registry["proxy_control_url"] = f"http://127.0.0.1:{BASE + 68}"
    (tmp_path / "services.json").write_text(json.dumps(registry))
    with pytest.raises(BackendUnavailable, match="unreachable"):
        add_latency("up", delay_ms=100, backend="proxy", configuration=conf)
    assert _leases(conf) == []
    assert remove_latency("up", conf)["message"] == "nothing to remove"  # proxy down: no toxic
    registry["proxy_control_url"] = rig.control_url
    (tmp_path / "services.json").write_text(json.dumps(registry))


def test_proxy_drops_toxic_at_lease_expiry_and_leftovers_are_cleaned(conf: dict, rig: ProxyRig) -> None:
    fault = add_latency("up", delay_ms=150, duration_s=1, configuration=conf)
    assert timed_get(f"{rig.proxy_url}/healthz") >= 0.14
    time.sleep(1.8)  # no reaper here: the proxy's own expiry must act
    assert _toxics(rig)["up"] is None and timed_get(f"{rig.proxy_url}/healthz") < 0.14
    assert remove_latency("up", conf)["reverted"] == [fault["fault_id"]]
    # a toxic left without a lease (e.g. lease deleted by hand) is still removed
    ProxyControl(rig.control_url).set_latency("up", delay_ms=100, fault_id=f"orphan-{uuid.uuid4().hex[:4]}",
                                              expires_at=time.time() + 60)
    cleaned = remove_latency("up", conf)
    assert cleaned["reverted"] == [] and cleaned["proxy_toxic_removed"] is True
    assert _toxics(rig)["up"] is None


def test_request_scope_effect_probe_and_final_effect_at_remove(conf: dict, rig: ProxyRig) -> None:
    assert latency_fault_effect("up", conf) is None  # no fault: null
    fault = add_latency("up", delay_ms=100, fraction=0.3, scope="request", duration_s=30,
                        backend="proxy", configuration=conf)
    assert fault["parameters"]["scope"] == "request"
    [lease] = _leases(conf)
    assert lease.params["scope"] == "request" and _toxics(rig)["up"]["scope"] == "request"
    fresh = latency_fault_effect("up", conf)
    json.dumps(fresh)
    assert fresh["fault_id"] == fault["fault_id"] and fresh["backend"] == "proxy"
    assert (fresh["scope"], fresh["fraction"], fresh["chunks_seen"], fresh["delayed_ratio"]) == \
        ("request", 0.3, 0, None)
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    slow = 0
    with httpx.Client(timeout=10, limits=limits) as client:
        for _ in range(100):
            start = time.perf_counter()
            client.get(f"{rig.proxy_url}/healthz").raise_for_status()
            slow += time.perf_counter() - start >= 0.09
    during = latency_fault_effect("up", conf)
    assert during["exchanges_seen"] == 100, during
    assert abs(during["exchanges_delayed"] - slow) <= 3, (during, slow)  # 3: timing noise
    assert 0.12 <= during["exchanges_delayed_ratio"] <= 0.48, during  # Binomial(100, 0.3) ± 4 sd
    removed = remove_latency("up", conf)
    assert removed["reverted"] == [fault["fault_id"]]
    assert removed["effect"]["fault_id"] == fault["fault_id"]
    assert removed["effect"]["exchanges_seen"] == 100
    assert removed["effect"]["exchanges_delayed"] == during["exchanges_delayed"]
    assert latency_fault_effect("up", conf) is None
    assert remove_latency("up", conf)["effect"] is None  # nothing live: no effect


def test_revert_all_reports_the_final_effect(conf: dict, rig: ProxyRig) -> None:
    fault = add_latency("up", delay_ms=40, duration_s=30, configuration=conf)
    assert fault["parameters"]["scope"] == "connection"  # the default
    for _ in range(3):
        timed_get(f"{rig.proxy_url}/healthz")
    [result] = revert_all(conf, service="up")
    effect = result["effect"]
    assert effect["fault_id"] == fault["fault_id"] and effect["scope"] == "connection"
    assert (effect["chunks_seen"], effect["chunks_delayed"], effect["connections_picked"]) == (3, 3, 3)


def test_payments_latency_raises_checkout_latency_on_the_stack(stack) -> None:
    """+60 ms on payments shows in checkout's latency: every checkout takes at least the delay
    while the fault is on, and the median is back under it once removed. Request scope 0.3
    slows about 30 % of checkouts, and the effect probe's count matches the checkouts the
    client saw take the delay. (A delayed checkout can never be faster than the delay; an
    undelayed one can be slowed by the machine, so the client's count may be a few above.)"""
    configuration = {"chaoscheckout_state_dir": str(stack.state_dir)}
    checkout = stack.registry.service("checkout")
    url = f"http://{checkout.host}:{checkout.port}/checkout"
    body = {"items": [{"sku": "sku-001", "qty": 1}]}

    def checkout_times_s(n: int) -> list[float]:
        times = []
        with httpx.Client(timeout=15) as client:
            for _ in range(n):
                start = time.perf_counter()
                client.post(url, json=body).raise_for_status()
                times.append(time.perf_counter() - start)
        return times

    baseline_times = checkout_times_s(7)
    baseline = statistics.median(baseline_times)
    fault = add_latency("payments", delay_ms=60, duration_s=60, backend="proxy", configuration=configuration)
    try:
        assert fault["backend"] == "proxy" and fault["parameters"]["scope"] == "connection"
        slowed_times = checkout_times_s(5)
        slowed = statistics.median(slowed_times)
        effect = latency_fault_effect("payments", configuration)
    finally:
        removed = remove_latency("payments", configuration)
    after = statistics.median(checkout_times_s(5))
    delay_s = 0.06
    print(f"checkout median: baseline {baseline * 1000:.1f} ms, payments +60 ms {slowed * 1000:.1f} ms, "
          f"after remove {after * 1000:.1f} ms")
    assert removed["reverted"] == [fault["fault_id"]]
    assert min(baseline_times) < delay_s, baseline_times  # without the fault, checkout is faster
    assert min(slowed_times) >= delay_s and slowed > baseline, (baseline_times, slowed_times)
    assert after < delay_s, (baseline, after)
    assert effect["exchanges_seen"] >= 5 and effect["exchanges_delayed"] == effect["exchanges_seen"], effect
    assert latency_fault("payments", configuration) is None

    n = 80
    fault = add_latency("payments", delay_ms=60, fraction=0.3, scope="request", duration_s=60,
                        backend="proxy", configuration=configuration)
    try:
        times = checkout_times_s(n)
    finally:
        removed = remove_latency("payments", configuration)
    effect = removed["effect"]
    slow = sum(t >= delay_s for t in times)
    print(f"payments +60 ms, request scope 0.3, {n} sequential checkouts: {slow} slowed at the client; "
          f"effect at revert {effect}")
    assert effect["fault_id"] == fault["fault_id"] and effect["exchanges_seen"] >= n, effect
    # Binomial(80, 0.3): mean 24, sd 4.1; [8, 40] is ±4 sd
    assert 8 <= effect["exchanges_delayed"] <= 40, effect
    # at most 4 below (a delayed retry of a checkout already slowed, a call that is not a
    # checkout's), at most 8 above (undelayed checkouts a busy machine slowed)
    assert effect["exchanges_delayed"] - 4 <= slow <= effect["exchanges_delayed"] + 8, (slow, effect)

    # the same fault per connection, 4 concurrent callers: what share of payments calls it slowed
    fault = add_latency("payments", delay_ms=60, fraction=0.3, scope="connection", duration_s=60,
                        backend="proxy", configuration=configuration)
    try:
        threads = [threading.Thread(target=checkout_times_s, args=(20,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        removed = remove_latency("payments", configuration)
    effect = removed["effect"]
    print(f"payments +60 ms, connection scope 0.3, 80 checkouts from 4 threads: effect at revert {effect}")
    assert effect["scope"] == "connection" and effect["exchanges_seen"] >= n, effect
    assert effect["connections_picked"] <= effect["connections_decided"], effect
    if effect["connections_picked"] == 0:
        assert effect["exchanges_delayed"] == 0, effect
