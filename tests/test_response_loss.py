"""The response-loss fault kind: the request reaches the upstream, its response never
reaches the caller. Proxy behaviour, evidence counters, inject/revert with verified
teardown, failure after the effect, and the reaper's dead-man switch for a SIGKILLed owner.

No checkout stack: a real fault proxy in front of a real counting HTTP upstream (its
``GET /count`` says how many POSTs it really processed) and a real reaper process; for
payments' handling of a lost answer, the real payments and provider services behind the
proxy. Ports ``CHAOSCHECKOUT_TEST_PORT_BASE`` + 70..72 and + 77..79. Runs in about 20 s.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from netfixtures import BASE, ROOT, ProxyRig, proxied_upstream, stop
from serviceprocs import service_process

from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults import inject as inject_mod
from chaoscheckout.faults.deadruns import read_records
from chaoscheckout.faults.leases import Lease, LeaseStore
from chaoscheckout.faults.revert import revert_all, revert_lease
from chaoscheckout.network.proxy_client import ProxyControl, ProxyError
from chaoscheckout.network.response_loss import lose_responses, response_loss_effect, restore_responses
from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry, save_registry

# POST /work: counted, answers {"n": count}; GET /count: the count; GET /healthz: ok.
COUNTING_UPSTREAM = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
count, lock = 0, threading.Lock()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._send({"count": count} if self.path == "/count" else "ok")
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            count += 1
            n = count
        self._send({"n": n})
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.handle_error = lambda *args: None  # the proxy resets lost exchanges: expected
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


PROVIDER_ROUTE_PORT, PROVIDER_PORT, PAYMENTS_PORT = BASE + 77, BASE + 78, BASE + 79


@pytest.fixture(scope="module")
def rig() -> Iterator[ProxyRig]:
    rig = ProxyRig(upstream_port=BASE + 70, listen_port=BASE + 71, control_port=BASE + 72)
    with proxied_upstream(rig, f"prov={rig.listen_port}:127.0.0.1:{rig.upstream_port}",
                          f"provider={PROVIDER_ROUTE_PORT}:127.0.0.1:{PROVIDER_PORT}",
                          script=COUNTING_UPSTREAM):
        yield rig


@pytest.fixture()
def control(rig: ProxyRig) -> Iterator[ProxyControl]:
    control = ProxyControl(rig.control_url, timeout_s=5)
    control.clear_response_loss("prov")
    yield control
    control.clear_response_loss("prov")


@pytest.fixture()
def conf(tmp_path: Path, rig: ProxyRig, control: ProxyControl) -> Iterator[dict]:
    entry = ServiceEntry(name="prov", host="127.0.0.1", port=rig.upstream_port, process="prov",
                         health_url=f"{rig.direct_url}/healthz", chaos_target=True,
                         proxy=ProxyRoute("prov", rig.listen_port))
    save_registry(Registry(runtime="local", proxy_control_url=rig.control_url, services={"prov": entry}),
                  tmp_path / "services.json")
    configuration = {"chaoscheckout_state_dir": str(tmp_path)}
    yield configuration
    revert_all(configuration)


def _count(rig: ProxyRig) -> int:
    return httpx.get(f"{rig.direct_url}/count", timeout=5).json()["count"]


def _posts(rig: ProxyRig, total: int, connections: int = 4) -> tuple[int, int]:
    """``total`` POSTs through the proxy from ``connections`` threads sharing one keep-alive
    pool (as payments calls the provider); returns (answered, failed without an answer)."""
    answered, failed = [], []
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    with httpx.Client(timeout=10, limits=limits) as client:
        def work() -> None:
            for _ in range(total // connections):
                try:
                    client.post(f"{rig.proxy_url}/work", json={"amount_cents": 1200}).raise_for_status()
                    answered.append(1)
                except httpx.TransportError:
                    failed.append(1)

        threads = [threading.Thread(target=work) for _ in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    return len(answered), len(failed)


def _lease_of(conf: dict) -> list[Lease]:
    return LeaseStore(Path(conf["chaoscheckout_state_dir"]) / "leases").live()


def test_picked_requests_reach_the_upstream_and_their_responses_are_lost(rig, control):
    before = _count(rig)
    control.set_response_loss("prov", fraction=0.3, expires_at=time.time() + 60, fault_id="loss-1")
    n = 200
    answered, failed = _posts(rig, n)
    effect = control.response_loss("prov")["effect"]
    removed = control.clear_response_loss("prov")
    print(f"response loss 0.3 over {n} POSTs: {failed} lost, effect {effect}")
    assert _count(rig) - before == n  # every request reached the upstream, lost or not
    assert answered + failed == n
    assert 20 <= failed <= 100, failed  # Binomial(200, 0.3): mean 60, sd 6.5; ±6 sd
    assert effect["exchanges_seen"] == n and effect["responses_lost"] == failed == effect["exchanges_picked"]
    assert effect["fault_id"] == "loss-1" and effect["scope"] == "request"
    assert removed["removed"] is True and removed["response_loss"]["effect"]["responses_lost"] == failed
    assert _posts(rig, 40) == (40, 0)  # removed: every response comes back (the fast path again)
    metrics = control.metrics()
    assert 'chaoscheckout_proxy_lost_responses_total{route="prov"}' in metrics
    assert 'chaoscheckout_proxy_response_loss_fraction{route="prov"} 0' in metrics


def test_fraction_one_loses_every_response_after_the_upstream_did_the_work(rig, control):
    before = _count(rig)
    control.set_response_loss("prov", fraction=1, expires_at=time.time() + 60, fault_id="loss-2")
    with pytest.raises(httpx.TransportError):  # reset or closed without a response
        httpx.post(f"{rig.proxy_url}/work", json={}, timeout=5)
    assert _count(rig) == before + 1
    assert control.route("prov")["latency"] is None  # independent of the latency toxic


@pytest.mark.parametrize("body, message", [
    ({"fraction": 0, "expires_at": time.time() + 60, "fault_id": "x"}, "fraction must be a finite number in"),
    ({"fraction": 0.5, "fault_id": "x"}, "expires_at is required"),
    ({"fraction": 0.5, "expires_at": time.time() + 60}, "fault_id is required"),
    ({"fraction": 0.5, "expires_at": time.time() + 60, "fault_id": "x", "delay_ms": 1}, "unknown fields"),
])
def test_bad_toxic_is_refused_and_nothing_changes(rig, control, body, message):
    with pytest.raises(ProxyError, match=message):
        control._call("PUT", "/routes/prov/response-loss", body)  # noqa: SLF001 - the raw API
    assert control.response_loss("prov") is None


def test_the_proxy_drops_the_toxic_at_its_expiry(rig, control):
    control.set_response_loss("prov", fraction=1, expires_at=time.time() + 0.5, fault_id="loss-3")
    deadline = time.monotonic() + 5
    while control.response_loss("prov") is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert control.response_loss("prov") is None
    assert _posts(rig, 8) == (8, 0)


def test_inject_evidence_restore_with_verified_teardown(rig, conf, control):
    with pytest.raises(InvalidFaultArgument):
        lose_responses("prov", fraction=1.5, configuration=conf)
    assert _lease_of(conf) == [] and control.response_loss("prov") is None  # refused: nothing changed
    fault = lose_responses("prov", fraction=0.5, duration_s=30, configuration=conf)
    assert set(fault) == {"fault_id", "kind", "backend", "target", "parameters", "injected_at", "expires_at"}
    assert fault["kind"] == "response_loss" and fault["backend"] == "proxy" and fault["target"] == "prov"
    assert fault["parameters"]["route"] == "prov" and fault["parameters"]["scope"] == "request"
    [lease] = _lease_of(conf)
    assert lease.fault_id == fault["fault_id"] and lease.kind == "response_loss"
    with pytest.raises(InvalidFaultArgument, match="already has a response_loss fault"):
        lose_responses("prov", fraction=0.5, configuration=conf)
    answered, failed = _posts(rig, 40)
    effect = response_loss_effect("prov", conf)
    assert effect["fault_id"] == fault["fault_id"] and effect["exchanges_seen"] == 40
    assert effect["responses_lost"] == failed > 0
    undo = restore_responses("prov", conf)
    assert undo["reverted"] == [fault["fault_id"]] and undo["proxy_toxic_removed"] is True
    assert undo["effect"]["responses_lost"] == failed
    assert _lease_of(conf) == [] and control.response_loss("prov") is None
    assert response_loss_effect("prov", conf) is None
    assert restore_responses("prov", conf)["message"] == "nothing to restore"  # idempotent
    # a revert through the common path reports its verification
    fault = lose_responses("prov", fraction=1, duration_s=30, configuration=conf)
    [lease] = _lease_of(conf)
    result = revert_lease(lease, conf)
    assert result["verified"] is True and "no response-loss toxic" in result["checked"], result
    assert _posts(rig, 8) == (8, 0)


def test_failure_after_the_effect_leaves_no_fault(rig, conf, control, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("failure after the effect (forced by the test)")
    monkeypatch.setattr(inject_mod, "_announce", fail)
    with pytest.raises(RuntimeError, match="forced by the test") as raised:
        lose_responses("prov", fraction=1, duration_s=30, configuration=conf)
    assert "was reverted after this failure" in "".join(raised.value.__notes__)
    assert _lease_of(conf) == [] and control.response_loss("prov") is None


def test_sigkilled_owner_is_reverted_by_the_reaper(rig, conf, control, tmp_path):
    code = textwrap.dedent(f"""
        import time
        from chaoscheckout.network.response_loss import lose_responses
        lose_responses("prov", fraction=1, duration_s=60,
                       configuration={{"chaoscheckout_state_dir": {str(tmp_path)!r}}})
        print("injected", flush=True)
        time.sleep(120)
    """)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    reaper = None
    try:
        assert owner.stdout.readline().strip() == "injected"
        [lease] = _lease_of(conf)
        assert control.response_loss("prov")["fault_id"] == lease.fault_id
        reaper = subprocess.Popen([sys.executable, "-m", "chaoscheckout.faults.reaper", "--state-dir",
                                   str(tmp_path)], cwd=ROOT)
        time.sleep(1)
        assert control.response_loss("prov") is not None  # a live owner's fault is left alone
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        killed = time.monotonic()
        deadline = killed + 10  # the dead-man switch's bound is seconds; 10 leaves room for load
        while (control.response_loss("prov") is not None or _lease_of(conf)) and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - killed
        print(f"SIGKILL of the owner -> response loss reverted by the reaper in {took:.2f} s")
        assert control.response_loss("prov") is None and _lease_of(conf) == []
        [record] = read_records(tmp_path)
        assert record["fault_id"] == lease.fault_id and record["kind"] == "response_loss"
        assert record["verified"] is True and "no response-loss toxic" in record["checked"]
        assert _posts(rig, 8) == (8, 0)
    finally:
        owner.kill()
        owner.wait(timeout=10)
        if reaper is not None:
            stop(reaper)


@pytest.mark.parametrize("fresh_key, charges_taken", [(False, 1), (True, 3)])
def test_payments_retries_a_lost_answer_with_the_same_key_unless_broken(rig, control, tmp_path,
                                                                        fresh_key, charges_taken):
    """Every provider answer lost (fraction 1): payments tries 3 times and answers 504
    (outcome unknown, never a plain failure). With the same key the provider holds ONE
    charge; with the deliberate fresh-key bug, three for one order."""
    provider_env = {"PROVIDER_PORT": str(PROVIDER_PORT), "PROVIDER_STORE": str(tmp_path / "charges.sqlite")}
    payments_env = {"PAYMENTS_PORT": str(PAYMENTS_PORT),
                    "PAYMENTS_PROVIDER_URL": f"http://127.0.0.1:{PROVIDER_ROUTE_PORT}",
                    "PAYMENTS_RETRY_FRESH_KEY": "1" if fresh_key else "0",
                    "PAYMENTS_PROVIDER_TIMEOUT_S": "10"}  # three attempts fit on a busy machine
    order = f"order-{fresh_key}-{time.time()}"
    body = {"idempotency_key": order, "order_ref": order, "amount_cents": 900}
    with (service_process("provider", provider_env, PROVIDER_PORT, tmp_path),
          service_process("payments", payments_env, PAYMENTS_PORT, tmp_path)):
        control.set_response_loss("provider", fraction=1, expires_at=time.time() + 60, fault_id="pay-loss")
        try:
            answer = httpx.post(f"http://127.0.0.1:{PAYMENTS_PORT}/payments", json=body, timeout=20)
            effect = control.response_loss("provider")["effect"]
        finally:
            control.clear_response_loss("provider")
        charges = httpx.get(f"http://127.0.0.1:{PROVIDER_PORT}/charges", timeout=5).json()["charges"]
        assert answer.status_code == 504 and answer.json()["error"] == "payment provider outcome unknown"
        assert effect["responses_lost"] == 3  # 1 attempt + PAYMENTS_PROVIDER_RETRIES (2), all lost
        assert [c["order_ref"] for c in charges] == [order] * charges_taken
        again = httpx.post(f"http://127.0.0.1:{PAYMENTS_PORT}/payments", json=body, timeout=10)
        assert again.status_code == 200  # responses flow again: the caller's retry gets the charge
        if not fresh_key:
            assert again.json()["charge_id"] == charges[0]["charge_id"]  # replayed, not charged again
