"""The stack's services as real processes: real Postgres, real SQLite, real supervisord.

Ports: ``CHAOSCHECKOUT_TEST_PORT_BASE`` (default 28100) + 60 … + 79, so these tests never
collide with the session ``stack`` fixture (base + 0 … + 50). Files live next to the test
state dir, in ``<CHAOSCHECKOUT_TEST_STATE_DIR>-services-unit``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from serviceprocs import PAYMENTS_AT_ANY_LOAD, clean_env, service_process, throwaway_postgres

from chaoscheckout.runtime.supervisor import SupervisorClient
from stack.services.remediator import shows_fd_leak

ROOT = Path(__file__).resolve().parent.parent
_TEST_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100"))
BASE = _TEST_BASE + 60
STATE = Path(
    os.environ.get("CHAOSCHECKOUT_TEST_STATE_DIR", f"/var/tmp/chaoscheckout-test-{_TEST_BASE}")
    + "-services-unit"
)
PG_BIN = Path(os.environ.get("CHAOSCHECKOUT_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PORT = {
    "checkout": BASE, "catalog": BASE + 1, "payments": BASE + 2, "provider": BASE + 3,
    "remediator": BASE + 4, "leaky": BASE + 5, "steady": BASE + 6, "parked": BASE + 7,
    "burst": BASE + 8, "checkout2": BASE + 9, "postgres": BASE + 10, "supervisord": BASE + 11,
    "blackhole": BASE + 12, "closed": BASE + 13, "payments_slow": BASE + 14,
}
IO_TIMEOUT_S = 5.0


def url(name: str, path: str = "") -> str:
    return f"http://127.0.0.1:{PORT[name]}{path}"


def service(module: str, env: dict[str, str], port: int, startup_s: float = 25):
    """Run ``python -m stack.services.<module>`` until the block ends; wait for /healthz."""
    return service_process(module, env, port, STATE, startup_s)


def metric(name: str, text: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def metrics_of(service_name: str) -> str:
    return httpx.get(url(service_name, "/metrics"), timeout=IO_TIMEOUT_S).text


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL 15 for the module."""
    with throwaway_postgres(PG_BIN, STATE / "pg", PORT["postgres"], ("checkout", "checkout_broken")) as dsn:
        yield dsn



@pytest.fixture(scope="module")
def chain(postgres: str) -> Iterator[dict[str, str]]:
    """catalog, provider, payments and checkout wired directly (no fault proxy)."""
    store = STATE / "provider" / "charges.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    checkout_env = {
        "CHECKOUT_PORT": str(PORT["checkout"]), "CHECKOUT_CATALOG_URL": url("catalog"),
        "CHECKOUT_PAYMENTS_URL": url("payments"), "CHECKOUT_DATABASE_URL": f"{postgres}/checkout",
        **PAYMENTS_AT_ANY_LOAD,
    }
    with (
        service("catalog", {"CATALOG_PORT": str(PORT["catalog"])}, PORT["catalog"]),
        service("provider", {"PROVIDER_PORT": str(PORT["provider"]), "PROVIDER_STORE": str(store)},
                PORT["provider"]),
        service("payments", {"PAYMENTS_PORT": str(PORT["payments"]),
                             "PAYMENTS_PROVIDER_URL": url("provider")}, PORT["payments"]),
        service("checkout", checkout_env, PORT["checkout"]),
    ):
        yield {"database_url": f"{postgres}/checkout", **checkout_env}


@pytest.fixture()
def blackhole() -> Iterator[str]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", PORT["blackhole"]))
    sock.listen(64)
    try:
        yield url("blackhole")
    finally:
        sock.close()


# --- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(("module", "env", "message"), [
    ("checkout", {"CHECKOUT_CATALOG_URL": "http://127.0.0.1:1", "CHECKOUT_PAYMENTS_URL":
                  "http://127.0.0.1:1"}, "CHECKOUT_DATABASE_URL is required"),
    ("checkout", {"CHECKOUT_CATALOG_URL": "http://127.0.0.1:1", "CHECKOUT_PAYMENTS_URL":
                  "http://127.0.0.1:1", "CHECKOUT_DATABASE_URL": "postgresql://x",
                  "CHECKOUT_RETRIES": "two"}, "CHECKOUT_RETRIES: expected an integer, got 'two'"),
    ("catalog", {"CATALOG_FD_LEAK": "maybe"}, "CATALOG_FD_LEAK: expected 0/1"),
    ("payments", {"PAYMENTS_PROVIDER_URL": "127.0.0.1:9"}, "PAYMENTS_PROVIDER_URL: expected an http"),
    ("provider", {}, "PROVIDER_STORE is required"),
    ("remediator", {"REMEDIATOR_SUPERVISOR_URL": "http://127.0.0.1:1/RPC2",
                    "REMEDIATOR_INTERVAL_S": "0"}, "REMEDIATOR_INTERVAL_S: must be >= 0.05"),
])
def test_bad_setting_stops_the_service_with_a_clear_error(module, env, message):
    done = subprocess.run([sys.executable, "-m", f"stack.services.{module}"], cwd=ROOT,
                          env={**clean_env(), **env}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr


def test_fd_leak_signature_needs_threshold_and_steady_growth():
    assert shows_fd_leak([190, 201, 215, 230], threshold=200, growths=3)
    assert not shows_fd_leak([201, 215, 230], threshold=200, growths=3)          # too few samples
    assert not shows_fd_leak([100, 120, 140, 160], threshold=200, growths=3)     # below threshold
    assert not shows_fd_leak([300, 310, 310, 320], threshold=200, growths=3)     # a flat sample
    assert not shows_fd_leak([400, 390, 380, 370], threshold=200, growths=3)     # shrinking


# --- catalog, provider, payments ----------------------------------------------------


def test_catalog_prices_and_unknown_sku(chain):
    products = httpx.get(url("catalog", "/products"), timeout=IO_TIMEOUT_S).json()["products"]
    assert len(products) == 20
    answer = httpx.get(url("catalog", "/prices"), params={"skus": "sku-001,sku-020"}, timeout=IO_TIMEOUT_S)
    assert answer.status_code == 200
    assert set(answer.json()["prices"]) == {"sku-001", "sku-020"}
    unknown = httpx.get(url("catalog", "/prices"), params={"skus": "sku-001,nope"}, timeout=IO_TIMEOUT_S)
    assert unknown.status_code == 404
    assert unknown.json()["unknown_skus"] == ["nope"]
    assert httpx.get(url("catalog", "/prices"), timeout=IO_TIMEOUT_S).status_code == 400


def test_catalog_fd_leak_grows_with_traffic_and_stops_when_switched_off(chain):
    with httpx.Client(timeout=IO_TIMEOUT_S) as client:
        bad = client.post(url("catalog", "/admin/fd-leak"), json={"enabled": "yes"})
        assert bad.status_code == 400
        before = metric("catalog_open_fds", client.get(url("catalog", "/metrics")).text)
        assert client.post(url("catalog", "/admin/fd-leak"), json={"enabled": True}).status_code == 200
        try:
            for _ in range(60):
                client.get(url("catalog", "/prices"), params={"skus": "sku-001"})
            leaking = metric("catalog_open_fds", client.get(url("catalog", "/metrics")).text)
        finally:
            client.post(url("catalog", "/admin/fd-leak"), json={"enabled": False})
        for _ in range(60):
            client.get(url("catalog", "/prices"), params={"skus": "sku-001"})
        after = metric("catalog_open_fds", client.get(url("catalog", "/metrics")).text)
    assert leaking >= before + 60
    assert after <= leaking + 2  # no more growth once switched off (leaked ones stay)


def test_provider_same_key_same_charge_and_since(chain):
    since = time.time()
    body = {"idempotency_key": f"k-{since}", "order_ref": f"o-{since}", "amount_cents": 1234}
    with httpx.Client(timeout=IO_TIMEOUT_S) as client:
        first = client.post(url("provider", "/charges"), json=body).json()
        again = client.post(url("provider", "/charges"), json=body).json()
        conflict = client.post(url("provider", "/charges"), json={**body, "amount_cents": 1})
        invalid = client.post(url("provider", "/charges"), json={**body, "amount_cents": "12"})
        listed = client.get(url("provider", "/charges"), params={"since": since}).json()["charges"]
    assert first["status"] == "captured" and first["replayed"] is False
    assert again["charge_id"] == first["charge_id"] and again["replayed"] is True
    assert conflict.status_code == 409
    assert invalid.status_code == 400
    assert [c["charge_id"] for c in listed if c["idempotency_key"] == body["idempotency_key"]] == [
        first["charge_id"]
    ]
    assert first["captured_at"] >= since


def test_payments_passes_the_key_and_maps_an_unknown_provider_outcome_to_504(chain, blackhole):
    body = {"idempotency_key": f"pay-{time.time()}", "order_ref": "o-pay", "amount_cents": 500}
    with httpx.Client(timeout=IO_TIMEOUT_S) as client:
        one = client.post(url("payments", "/payments"), json=body).json()
        two = client.post(url("payments", "/payments"), json=body).json()
        assert one["status"] == "captured" and one == two  # same key → same charge and payment
        assert client.post(url("payments", "/payments"), json={"order_ref": "x"}).status_code == 400
    slow_env = {"PAYMENTS_PORT": str(PORT["payments_slow"]), "PAYMENTS_PROVIDER_URL": blackhole,
                "PAYMENTS_PROVIDER_TIMEOUT_S": "0.5"}
    with service("payments", slow_env, PORT["payments_slow"]):
        started = time.monotonic()
        answer = httpx.post(url("payments_slow", "/payments"), json=body, timeout=IO_TIMEOUT_S)
        elapsed = time.monotonic() - started
        assert answer.status_code == 504 and "0.5" in answer.json()["detail"]  # outcome unknown
        assert 0.4 < elapsed < 2.0
        assert metric('payments_requests_total{outcome="provider_timeout"}', metrics_of("payments_slow")) == 1


# --- checkout -----------------------------------------------------------------------


def test_checkout_chain_orders_equal_charges(chain):
    """300 checkouts, 10 at a time: every one paid, one order per charge, same amounts."""
    since = time.time()
    results = asyncio.run(_checkouts(total=300, concurrency=10, time_limit_s=90))
    elapsed = time.time() - since
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
    charges = httpx.get(url("provider", "/charges"), params={"since": since},
                        timeout=IO_TIMEOUT_S).json()["charges"]
    charged = {c["order_ref"]: c["amount_cents"] for c in charges}
    with psycopg.connect(chain["database_url"], connect_timeout=5) as conn:
        rows = conn.execute("SELECT order_ref::text, amount_cents, status FROM orders"
                            " WHERE created_at >= to_timestamp(%s)", (since - 1,)).fetchall()
    recorded = {ref: amount for ref, amount, _ in rows}
    answered = {body["order_ref"]: body["amount_cents"] for _, body in results}
    assert recorded == charged == answered
    assert {status for _, _, status in rows} == {"paid"}
    print(f"\n300 checkouts in {elapsed:.1f}s: {300 / elapsed:.0f}/s at concurrency 10")


def test_checkout_outcomes_and_status_codes(chain, postgres, blackhole):
    with httpx.Client(timeout=IO_TIMEOUT_S) as client:
        before = client.get(url("checkout", "/metrics")).text
        assert client.post(url("checkout", "/checkout"), content=b"{nope").status_code == 400
        assert client.post(url("checkout", "/checkout"), json={"items": [{"sku": "sku-001", "qty": 0}]}
                           ).status_code == 400
        assert client.post(url("checkout", "/checkout"), json={"items": [{"sku": "nope"}]}
                           ).status_code == 422
        after = client.get(url("checkout", "/metrics")).text
    client_errors = 'checkout_requests_total{outcome="client_error"}'
    assert metric(client_errors, after) - metric(client_errors, before) == 3
    errors = 'checkout_requests_total{outcome="error"}'
    assert metric(errors, after) == metric(errors, before)

    # catalog refusing connections, with 2 retries → 503; catalog silent → 503 after the timeout
    env = {"CHECKOUT_PORT": str(PORT["checkout2"]), "CHECKOUT_CATALOG_URL": url("closed"),
           "CHECKOUT_PAYMENTS_URL": url("payments"), "CHECKOUT_DATABASE_URL": f"{postgres}/checkout",
           "CHECKOUT_RETRIES": "2"}
    with service("checkout", env, PORT["checkout2"]):
        answer = httpx.post(url("checkout2", "/checkout"), json={"items": [{"sku": "sku-001"}]},
                            timeout=IO_TIMEOUT_S)
        assert answer.status_code == 503 and answer.json()["error"] == "catalog unavailable"
        assert metric('checkout_requests_total{outcome="error"}', metrics_of("checkout2")) == 1
    env.update(CHECKOUT_CATALOG_URL=blackhole, CHECKOUT_CATALOG_TIMEOUT_S="0.3", CHECKOUT_RETRIES="1")
    with service("checkout", env, PORT["checkout2"]):
        started = time.monotonic()
        answer = httpx.post(url("checkout2", "/checkout"), json={"items": [{"sku": "sku-001"}]},
                            timeout=IO_TIMEOUT_S)
        assert answer.status_code == 503 and "0.3s" in answer.json()["detail"]
        assert 0.55 < time.monotonic() - started < 2.5  # two attempts of 0.3 s


def test_checkout_charges_before_recording_so_a_db_failure_leaves_a_charge(chain, postgres):
    """The first version's known weakness: INSERT fails after the charge → 500, money taken."""
    broken = f"{postgres}/checkout_broken"
    env = {"CHECKOUT_PORT": str(PORT["checkout2"]), "CHECKOUT_CATALOG_URL": url("catalog"),
           "CHECKOUT_PAYMENTS_URL": url("payments"), "CHECKOUT_DATABASE_URL": broken,
           "CHECKOUT_ORDER_FIRST": "0", **PAYMENTS_AT_ANY_LOAD}  # order-first: test_checkout_resilience
    with service("checkout", env, PORT["checkout2"]):
        with psycopg.connect(broken, connect_timeout=5, autocommit=True) as conn:
            conn.execute("CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$BEGIN RAISE EXCEPTION 'refused by test'; END$$")
            conn.execute("CREATE OR REPLACE TRIGGER refuse BEFORE INSERT ON orders"
                         " FOR EACH ROW EXECUTE FUNCTION refuse()")
        since = time.time()
        answer = httpx.post(url("checkout2", "/checkout"), json={"items": [{"sku": "sku-003"}]},
                            timeout=IO_TIMEOUT_S)
        assert answer.status_code == 500 and answer.json()["error"] == "order not recorded"
        charges = httpx.get(url("provider", "/charges"), params={"since": since},
                            timeout=IO_TIMEOUT_S).json()["charges"]
        assert len(charges) == 1
        with psycopg.connect(broken, connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0


def test_checkout_healthz_follows_postgres(chain):
    assert httpx.get(url("checkout", "/healthz"), timeout=IO_TIMEOUT_S).json() == {"status": "ok"}


# --- remediator ---------------------------------------------------------------------


_HOLDS_SOCKETS_A_PIPE_AND_A_FILE = """
import os, socket, sys
print("idle", flush=True)
sys.stdin.readline()
sockets = [socket.socket() for _ in range(150)]
read_end, write_end = os.pipe()
leaked_like = open(os.devnull)
print("holding", flush=True)
sys.stdin.readline()
"""


def test_the_remediator_counts_files_not_connections():
    """At a flash sale's rate checkout holds hundreds of sockets: they are load, not a leak.

    Counted in a child that does nothing between the two counts, as the remediator counts a
    service: the test process's own threads may open files at any moment."""
    from stack.services.common import count_open_fds, count_open_files

    child = subprocess.Popen([sys.executable, "-c", _HOLDS_SOCKETS_A_PIPE_AND_A_FILE],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=clean_env())
    try:
        assert child.stdout.readline() == "idle\n"
        before_fds, before_files = count_open_fds(child.pid), count_open_files(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "holding\n"
        assert count_open_fds(child.pid) == before_fds + 153  # 150 sockets, 2 pipe ends, 1 file
        assert count_open_files(child.pid) == before_files + 1  # the file; no socket, no pipe
    finally:
        child.kill()
        child.communicate(timeout=10)


def test_remediator_restarts_only_the_leaking_program():
    """Real supervisord: leaky (leak on, steady traffic) is restarted; steady (no leak, same
    traffic), burst (one burst past the threshold, then flat) and parked (stopped) are not."""
    sup_dir = STATE / "supervisord"
    shutil.rmtree(sup_dir, ignore_errors=True)
    sup_dir.mkdir(parents=True)
    conf = sup_dir / "supervisord.conf"
    conf.write_text(_supervisord_conf(sup_dir))
    subprocess.run([str(Path(sys.executable).parent / "supervisord"), "-c", str(conf)],
                   check=True, timeout=30, env=clean_env())
    supervisor = SupervisorClient(f"http://127.0.0.1:{PORT['supervisord']}/RPC2", timeout_s=10)
    env = {"REMEDIATOR_PORT": str(PORT["remediator"]),
           "REMEDIATOR_SUPERVISOR_URL": supervisor.url, "REMEDIATOR_WATCH": "leaky,steady,burst,parked",
           "REMEDIATOR_FD_THRESHOLD": "60", "REMEDIATOR_SAMPLES": "4", "REMEDIATOR_INTERVAL_S": "0.5"}
    try:
        _wait_running(supervisor, ["leaky", "steady", "burst"])
        leaky_pid = supervisor.pid("leaky")
        asyncio.run(_burst(url("burst", "/prices?skus=sku-001"), 120))
        with service("remediator", env, PORT["remediator"]), httpx.Client(timeout=IO_TIMEOUT_S) as client:
            deadline = time.monotonic() + 30
            status = client.get(url("remediator", "/status")).json()
            while status["restarts"]["leaky"] == 0 and time.monotonic() < deadline:
                for name in ("leaky", "steady"):
                    try:
                        client.get(url(name, "/prices"), params={"skus": "sku-001"})
                    except httpx.HTTPError:
                        pass  # leaky is being restarted
                time.sleep(0.05)
                status = client.get(url("remediator", "/status")).json()
            time.sleep(1.5)  # a few more rounds for the others
            status = client.get(url("remediator", "/status")).json()
            metrics = client.get(url("remediator", "/metrics")).text
        assert status["restarts"] == {"leaky": 1, "steady": 0, "burst": 0, "parked": 0}, status
        assert metric('remediator_restarts_total{service="leaky"}', metrics) == 1
        assert status["programs"]["parked"]["state"] == "STOPPED"
        assert max(status["programs"]["burst"]["samples"]) > 60  # above threshold, yet left alone
        _wait_running(supervisor, ["leaky"])
        assert supervisor.pid("leaky") != leaky_pid
    finally:
        try:
            supervisor.shutdown()
        finally:
            _wait_gone(sup_dir / "supervisord.pid")


# --- helpers ------------------------------------------------------------------------


async def _checkouts(total: int, concurrency: int, time_limit_s: float) -> list[tuple[int, dict]]:
    results: list[tuple[int, dict]] = []
    deadline = time.monotonic() + time_limit_s
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for index in counter:
            if time.monotonic() > deadline:
                return
            items = [{"sku": f"sku-{1 + index % 20:03d}", "qty": 1 + index % 3}, {"sku": "sku-007"}]
            answer = await client.post(url("checkout", "/checkout"), json={"items": items})
            results.append((answer.status_code, answer.json()))

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


async def _burst(target: str, count: int) -> None:
    async with httpx.AsyncClient(timeout=IO_TIMEOUT_S) as client:
        await asyncio.gather(*(client.get(target) for _ in range(count)))


def _supervisord_conf(sup_dir: Path) -> str:
    def program(name: str, leak: str, autostart: bool = True) -> str:
        return (
            f"[program:{name}]\ncommand={sys.executable} -m stack.services.catalog\n"
            f"directory={ROOT}\nenvironment=CATALOG_PORT=\"{PORT[name]}\",CATALOG_FD_LEAK=\"{leak}\"\n"
            f"autostart={'true' if autostart else 'false'}\nautorestart=false\nstartsecs=1\n"
            f"stopwaitsecs=5\nredirect_stderr=true\nstdout_logfile={sup_dir}/{name}.log\n\n"
        )

    return (
        f"[supervisord]\nlogfile={sup_dir}/supervisord.log\npidfile={sup_dir}/supervisord.pid\n\n"
        f"[inet_http_server]\nport=127.0.0.1:{PORT['supervisord']}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        + program("leaky", "1") + program("steady", "0") + program("burst", "1")
        + program("parked", "0", autostart=False)
    )


def _wait_running(supervisor: SupervisorClient, names: list[str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if all(supervisor.pid(name) for name in names):
                for name in names:  # and answering
                    httpx.get(url(name, "/healthz"), timeout=1).raise_for_status()
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{names} not RUNNING within {timeout_s}s")
        time.sleep(0.2)


def _wait_gone(pid_file: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def test_checkout_profile_names_the_build_from_its_settings() -> None:
    """GET /version's profile: first-version / resilient / custom, from the parsed settings."""
    from stack.services.checkout import CheckoutSettings, profile

    urls = {"CHECKOUT_CATALOG_URL": "http://127.0.0.1:1", "CHECKOUT_PAYMENTS_URL": "http://127.0.0.1:2",
            "CHECKOUT_DATABASE_URL": "postgresql://postgres@127.0.0.1:3/checkout"}
    assert profile(CheckoutSettings.from_env({**urls, "CHECKOUT_RESILIENCE": "0"})) == "first-version"
    assert profile(CheckoutSettings.from_env(urls)) == "resilient"
    assert profile(CheckoutSettings.from_env({**urls, "CHECKOUT_RESILIENCE": "0",
                                              "CHECKOUT_ORDER_FIRST": "1"})) == "custom"
