"""checkout's resilience mechanisms, each on and off, against real processes.

Real PostgreSQL 15, real catalog / payments / provider / checkout processes. In front of
catalog or payments, where a test needs a slow, hung or refusing dependency, sits a real
tiny HTTP upstream run by the test (:class:`Upstream`, uvicorn in a thread) that forwards
to the real service. Database failures are real Postgres errors (a trigger that raises).

Ports: ``CHAOSCHECKOUT_TEST_PORT_BASE`` (default 28100) + 80 … + 99 (the ``stack``
fixture uses + 0 … + 50, test_services_unit.py + 60 … + 79). Files in
``<CHAOSCHECKOUT_TEST_STATE_DIR>-resilience``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import uvicorn
from serviceprocs import PAYMENTS_AT_ANY_LOAD, service_process, throwaway_postgres, wait_until
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stack.services.checkout import CREATE_ORDERS_TABLE

ROOT = Path(__file__).resolve().parent.parent
_TEST_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100"))
BASE = _TEST_BASE + 80
STATE = Path(
    os.environ.get("CHAOSCHECKOUT_TEST_STATE_DIR", f"/var/tmp/chaoscheckout-test-{_TEST_BASE}")
    + "-resilience"
)
PG_BIN = Path(os.environ.get("CHAOSCHECKOUT_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
PORT = {
    "checkout": BASE, "checkout2": BASE + 1, "checkout3": BASE + 2, "catalog": BASE + 3,
    "payments": BASE + 4, "provider": BASE + 5, "catalog_up": BASE + 6, "payments_up": BASE + 7,
    "postgres": BASE + 10, "postgres_crash": BASE + 11,
}
DATABASES = ("checkout", "insert_refused", "update_refused", "overhead_on", "overhead_off")
IO_TIMEOUT_S = 5.0
HANG_S = 3.0
CART = {"items": [{"sku": "sku-004", "qty": 2}]}


def url(name: str, path: str = "") -> str:
    return f"http://127.0.0.1:{PORT[name]}{path}"


# --- a real tiny upstream in front of catalog or payments ---------------------------


class Upstream:
    """Forwards to ``target``; ``mode`` makes it slow, hung or refusing. Records each
    request's path, idempotency key and client port (a new port = a new connection)."""

    def __init__(self, port: int, target: str) -> None:
        self.target = target
        self.mode = "forward"  # forward | slow | slow_first | hang | refuse
        self.delay_s = 1.0
        self.seen: list[tuple[str, str | None, int]] = []
        self._keys: set[str | None] = set()
        self._client: httpx.AsyncClient | None = None
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Upstream:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail("test upstream did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        key = json.loads(body).get("idempotency_key") if body else None
        self.seen.append((request.url.path, key, request.client.port if request.client else 0))
        first = key not in self._keys
        self._keys.add(key)
        if self.mode == "hang":
            await asyncio.sleep(HANG_S)
            return Response(status_code=504)
        if self.mode == "refuse":
            return JSONResponse({"error": "refused by the test upstream"}, status_code=502)
        if self.mode == "slow" or (self.mode == "slow_first" and first):
            await asyncio.sleep(self.delay_s)
        if self._client is None:  # created in the server's own event loop
            self._client = httpx.AsyncClient(timeout=IO_TIMEOUT_S, trust_env=False)
        answer = await self._client.request(
            request.method, f"{self.target}{request.url.path}", params=request.query_params,
            content=body, headers={"content-type": request.headers.get("content-type", "")},
        )
        return Response(answer.content, answer.status_code,
                        media_type=answer.headers.get("content-type"))



# --- processes ----------------------------------------------------------------------


def service(module: str, env: dict[str, str], port: int, startup_s: float = 25):
    """Run ``python -m stack.services.<module>`` until the block ends; wait for /healthz."""
    return service_process(module, env, port, STATE, startup_s)


def checkout(name: str, database: str, catalog: str, payments: str, **settings: str):
    env = {"CHECKOUT_PORT": str(PORT[name]), "CHECKOUT_CATALOG_URL": catalog,
           "CHECKOUT_PAYMENTS_URL": payments, "CHECKOUT_DATABASE_URL": database,
           "CHECKOUT_DB_POOL_SIZE": "3", **settings}
    return service("checkout", env, PORT[name])


def catalog_process():
    return service("catalog", {"CATALOG_PORT": str(PORT["catalog"])}, PORT["catalog"])


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL 15 for the module."""
    with throwaway_postgres(PG_BIN, STATE / "pg", PORT["postgres"], DATABASES) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def money(postgres: str) -> Iterator[None]:
    """provider and payments (direct), for the whole module."""
    store = STATE / "provider" / "charges.sqlite"
    store.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    with (
        service("provider", {"PROVIDER_PORT": str(PORT["provider"]), "PROVIDER_STORE": str(store)},
                PORT["provider"]),
        service("payments", {"PAYMENTS_PORT": str(PORT["payments"]),
                             "PAYMENTS_PROVIDER_URL": url("provider")}, PORT["payments"]),
    ):
        yield


# --- 1. price cache -----------------------------------------------------------------


def test_price_cache_serves_a_dead_catalog_and_off_or_stale_fails(postgres, money):
    """Catalog killed: cache on → 200 with the last prices, fast, also for a sku only
    warmed by GET /products; cache off → 503; cache on but older than max age → 503."""
    db = f"{postgres}/checkout"
    with contextlib.ExitStack() as catalog, httpx.Client(timeout=IO_TIMEOUT_S) as client:
        catalog.enter_context(catalog_process())
        with (
            checkout("checkout", db, url("catalog"), url("payments"), **PAYMENTS_AT_ANY_LOAD),
            checkout("checkout2", db, url("catalog"), url("payments"), CHECKOUT_PRICE_CACHE="0",
                     **PAYMENTS_AT_ANY_LOAD),
            checkout("checkout3", db, url("catalog"), url("payments"),
                     CHECKOUT_PRICE_CACHE_MAX_AGE_S="1", **PAYMENTS_AT_ANY_LOAD),
        ):
            prices = client.get(url("catalog", "/prices"),
                                params={"skus": "sku-004,sku-017"}).json()["prices"]
            _wait_for(lambda: _metric(client, "checkout", "checkout_price_cache_skus") == 20)
            for name in ("checkout", "checkout2", "checkout3"):
                first = client.post(url(name, "/checkout"), json=CART)
                assert first.status_code == 200, first.text
                assert first.json()["amount_cents"] == 2 * prices["sku-004"]
            catalog.close()  # catalog killed (SIGTERM, waited for)
            with pytest.raises(httpx.ConnectError):
                client.get(url("catalog", "/healthz"))
            time.sleep(1.1)  # checkout3's cache is now older than its max age (1 s)

            started = time.monotonic()
            cached = client.post(url("checkout", "/checkout"), json=CART)
            elapsed = time.monotonic() - started
            warmed_only = client.post(url("checkout", "/checkout"),
                                      json={"items": [{"sku": "sku-017"}]})
            no_cache = client.post(url("checkout2", "/checkout"), json=CART)
            stale = client.post(url("checkout3", "/checkout"), json=CART)
            served = _metric(client, "checkout", "checkout_price_cache_served_total")

    assert cached.status_code == 200, cached.text
    assert cached.json()["amount_cents"] == 2 * prices["sku-004"]
    assert cached.json()["status"] == "paid"
    assert elapsed < 1.0, elapsed  # connection refused is fast; no waiting on a dead catalog
    assert warmed_only.status_code == 200 and warmed_only.json()["amount_cents"] == prices["sku-017"]
    assert served == 2
    assert no_cache.status_code == 503 and no_cache.json()["error"] == "catalog unavailable"
    assert stale.status_code == 503 and stale.json()["error"] == "catalog unavailable"
    print(f"\ncatalog dead: checkout from cache in {elapsed * 1000:.0f} ms")


def test_hung_catalog_costs_at_most_the_short_catalog_timeout(postgres, money):
    """A catalog that accepts and never answers: cache on (timeout 0.3 s by default) →
    200 from cache within 0.3 s + margin; the first version (timeout 2 s) → 503 after 2 s."""
    db = f"{postgres}/checkout"
    with (
        catalog_process(),
        Upstream(PORT["catalog_up"], url("catalog")) as upstream,
        checkout("checkout", db, url("catalog_up"), url("payments")),
        checkout("checkout2", db, url("catalog_up"), url("payments"), CHECKOUT_RESILIENCE="0"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        for name in ("checkout", "checkout2"):
            assert client.post(url(name, "/checkout"), json=CART).status_code == 200
        upstream.mode = "hang"
        timed = {}
        for name in ("checkout", "checkout2"):
            started = time.monotonic()
            answer = client.post(url(name, "/checkout"), json=CART)
            timed[name] = (answer.status_code, time.monotonic() - started)
    assert timed["checkout"][0] == 200 and timed["checkout"][1] < 0.8, timed
    assert timed["checkout2"][0] == 503 and 1.9 < timed["checkout2"][1] < 3.0, timed
    print(f"\nhung catalog: cache on {timed['checkout'][1] * 1000:.0f} ms, "
          f"first version {timed['checkout2'][1] * 1000:.0f} ms")


# --- 2. order before charge ---------------------------------------------------------


def test_order_first_refused_insert_means_no_charge_and_first_version_charges(postgres, money):
    """Postgres refuses the INSERT (a real error from a trigger): order-first → 503 and
    nothing charged; order-first off → 500 and a charge with no order."""
    db = f"{postgres}/insert_refused"
    _refuse(db, "INSERT")
    with (
        catalog_process(),
        checkout("checkout", db, url("catalog"), url("payments")),
        checkout("checkout2", db, url("catalog"), url("payments"), CHECKOUT_ORDER_FIRST="0"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        since = time.time()
        fixed = client.post(url("checkout", "/checkout"), json=CART)
        time.sleep(0.2)
        charges_after_fixed = _charges(client, since)
        weak = client.post(url("checkout2", "/checkout"), json=CART)
        charges_after_weak = _charges(client, since)
    assert fixed.status_code == 503 and fixed.json()["error"] == "order not recorded"
    assert "nothing was charged" in fixed.json()["detail"]
    assert charges_after_fixed == []
    assert weak.status_code == 500 and weak.json()["error"] == "order not recorded"
    assert len(charges_after_weak) == 1  # money taken ...
    assert _orders(db) == []  # ... and no order: the first version's flaw


def test_order_first_failed_update_answers_pending_with_the_order_recorded(postgres, money):
    """Postgres refuses the UPDATE to paid (as a full disk would): 200 status pending, the
    order row exists, exactly one charge; payments refusing → the order is marked failed."""
    db = f"{postgres}/update_refused"
    _refuse(db, "UPDATE")
    with (
        catalog_process(),
        Upstream(PORT["payments_up"], url("payments")) as upstream,
        checkout("checkout", db, url("catalog"), url("payments_up"), **PAYMENTS_AT_ANY_LOAD),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        since = time.time()
        answer = client.post(url("checkout", "/checkout"), json=CART)
        left_pending = _metric(client, "checkout", "checkout_orders_left_pending_total")
        assert answer.status_code == 200, answer.text
        ref = answer.json()["order_ref"]
        charges = _charges(client, since, ref)
        _allow(db)
        upstream.mode = "refuse"
        refused = client.post(url("checkout", "/checkout"), json=CART)
    assert answer.status_code == 200 and answer.json()["status"] == "pending", answer.text
    assert left_pending == 1
    assert len(charges) == 1 and charges[0]["amount_cents"] == answer.json()["amount_cents"]
    assert _orders(db, ref) == [(ref, "pending")]
    assert refused.status_code == 502 and refused.json()["error"] == "payment failed"
    failed = [status for _, status in _orders(db) if status == "failed"]
    assert failed == ["failed"]


# --- 3. payments timeout budget -----------------------------------------------------


def test_budget_retries_a_stuck_attempt_on_a_new_connection_with_the_same_key(postgres, money):
    """The first payments attempt hangs 1 s: checkout gives up on it after its per-attempt
    timeout (0.3 s here, so that a busy machine's retry still fits; the default is 0.08 s),
    retries over a new connection with the same idempotency key, answers 200 before the
    stuck attempt could have; the provider holds one charge even after it arrives late."""
    db = f"{postgres}/checkout"
    with (
        catalog_process(),
        Upstream(PORT["payments_up"], url("payments")) as upstream,
        checkout("checkout", db, url("catalog"), url("payments_up"),
                 CHECKOUT_PAYMENTS_TIMEOUT_S="0.3", CHECKOUT_BUDGET_S="2"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        assert client.post(url("checkout", "/checkout"), json=CART).status_code == 200  # warm
        upstream.mode, upstream.delay_s = "slow_first", 1.0
        upstream.seen.clear()
        since = time.time()
        started = time.monotonic()
        answer = client.post(url("checkout", "/checkout"), json=CART)
        elapsed = time.monotonic() - started
        time.sleep(1.3)  # the stuck first attempt reaches payments now
        ref = answer.json()["order_ref"]
        charges = _charges(client, since, ref)
        timeouts = _metric(client, "checkout", 'checkout_payments_attempts_total{result="timeout"}')
    attempts = [(key, port) for path, key, port in upstream.seen if path == "/payments"]
    assert answer.status_code == 200 and answer.json()["status"] == "paid", answer.text
    assert elapsed < 1.0, elapsed  # the stuck attempt answers after 1 s
    assert [key for key, _ in attempts] == [ref, ref]
    assert attempts[0][1] != attempts[1][1]  # the retry used a new connection
    assert len(charges) == 1
    assert timeouts == 1
    assert _orders(db, ref) == [(ref, "paid")]
    print(f"\npayments first attempt stuck: checkout answered in {elapsed * 1000:.0f} ms")


def test_spent_retry_budget_stops_retries_and_leaves_the_order_pending(postgres, money):
    """The retry budget allows none (ratio 0, floor 0): a stuck first attempt is not retried;
    502 naming the retry budget, the denial counted, the order left pending (the abandoned
    attempt may still charge)."""
    db = f"{postgres}/checkout"
    with (
        catalog_process(),
        Upstream(PORT["payments_up"], url("payments")) as upstream,
        checkout("checkout", db, url("catalog"), url("payments_up"),
                 CHECKOUT_RETRY_BUDGET_RATIO="0", CHECKOUT_RETRY_BUDGET_MIN_PER_S="0",
                 CHECKOUT_PAYMENTS_TIMEOUT_S="0.3", CHECKOUT_BUDGET_S="2"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        assert client.post(url("checkout", "/checkout"), json=CART).status_code == 200  # warm
        upstream.mode, upstream.delay_s = "slow", 1.0
        upstream.seen.clear()
        answer = client.post(url("checkout", "/checkout"), json=CART)
        denied = _metric(client, "checkout", "checkout_payments_retries_denied_total")
    attempts = [key for path, key, _ in upstream.seen if path == "/payments"]
    assert answer.status_code == 502 and "retry budget spent" in answer.json()["detail"], answer.text
    assert len(attempts) == 1 and denied == 1
    assert _orders(db, attempts[0]) == [(attempts[0], "pending")]


def test_slow_payments_budget_bounds_checkout_and_order_first_keeps_money_safe(postgres, money):
    """Every payments call takes 1 s. Budget on: 502 within the budget + margin; the late
    charge still lands — with order-first it has its pending order, without it is money
    with no order. First version (CHECKOUT_RESILIENCE=0): waits the full second, 200."""
    db = f"{postgres}/checkout"
    with (
        catalog_process(),
        Upstream(PORT["payments_up"], url("payments")) as upstream,
        checkout("checkout", db, url("catalog"), url("payments_up")),
        checkout("checkout2", db, url("catalog"), url("payments_up"), CHECKOUT_ORDER_FIRST="0"),
        checkout("checkout3", db, url("catalog"), url("payments_up"), CHECKOUT_RESILIENCE="0"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        for name in ("checkout", "checkout2", "checkout3"):
            assert client.post(url(name, "/checkout"), json=CART).status_code == 200  # warm
        upstream.mode, upstream.delay_s = "slow", 1.0
        since = time.time()
        answers = {}
        for name in ("checkout", "checkout2", "checkout3"):
            started = time.monotonic()
            answer = client.post(url(name, "/checkout"), json=CART)
            answers[name] = (answer.status_code, time.monotonic() - started)
        time.sleep(1.3)  # the abandoned attempts reach the provider
        charges = _charges(client, since)
    orders = dict(_orders(db))
    charged = {c["order_ref"] for c in charges}
    assert answers["checkout"][0] == 502 and answers["checkout"][1] < 0.6, answers
    assert answers["checkout2"][0] == 502 and answers["checkout2"][1] < 0.6, answers
    assert answers["checkout3"][0] == 200 and 0.95 < answers["checkout3"][1] < 2.5, answers
    assert len(charges) == 3  # one per checkout: retries reused the key
    without_order = charged - set(orders)
    assert len(without_order) == 1  # the order-first-off checkout's late charge
    assert [orders[ref] for ref in charged & set(orders)].count("pending") == 1
    print("\npayments +1 s: " + ", ".join(f"{n} {s} in {t * 1000:.0f} ms"
                                          for n, (s, t) in answers.items()))


def test_adaptive_timeout_learns_a_slower_payments_and_a_fixed_one_never_does(postgres, money):
    """Every payments call takes 0.15 s, above the 0.08 s floor. Fixed (adapt 0): every
    attempt times out, every checkout fails. Adaptive (the default, 4 x the median): the
    abandoned attempts' late answers (0.15 s) fill the window, the timeout rises to its
    ceiling and checkouts succeed again. The ceiling is 0.5 s here (default 0.25 s) and the
    budget 1 s, so that a busy machine's answer still fits in the learned timeout."""
    db = f"{postgres}/checkout"
    with (
        catalog_process(),
        Upstream(PORT["payments_up"], url("payments")) as upstream,
        checkout("checkout", db, url("catalog"), url("payments_up"),
                 CHECKOUT_PAYMENTS_TIMEOUT_MAX_S="0.5", CHECKOUT_BUDGET_S="1"),
        checkout("checkout2", db, url("catalog"), url("payments_up"),
                 CHECKOUT_PAYMENTS_TIMEOUT_ADAPT="0", CHECKOUT_BUDGET_S="1"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        for name in ("checkout", "checkout2"):
            assert client.post(url(name, "/checkout"), json=CART).status_code == 200  # warm
        upstream.mode, upstream.delay_s = "slow", 0.15
        codes: dict[str, list[int]] = {"checkout": [], "checkout2": []}
        for _ in range(25):
            for name in codes:
                codes[name].append(client.post(url(name, "/checkout"), json=CART).status_code)
        gauge = {name: _metric(client, name, "checkout_payments_attempt_timeout_seconds")
                 for name in codes}
    assert set(codes["checkout2"]) == {502}, codes  # the fixed 0.08 s never fits a 0.15 s payments
    assert codes["checkout"][-5:] == [200] * 5, codes
    assert gauge == {"checkout": 0.5, "checkout2": 0.08}, gauge  # 4 x 0.15 s, at the ceiling
    print(f"\npayments +0.15 s: adaptive {codes['checkout'].count(200)}/25 paid "
          f"(first success at #{codes['checkout'].index(200) + 1}), fixed 0/25")


def test_load_shedding_answers_503_at_once_and_records_nothing(postgres, money):
    """At most 2 checkouts in flight: with 2 stuck on a slow payments, a third is answered
    503 ``overloaded`` at once, with no order row and no charge; once they end, checkouts
    are served again."""
    db = f"{postgres}/checkout"
    with (
        catalog_process(),
        Upstream(PORT["payments_up"], url("payments")) as upstream,
        checkout("checkout", db, url("catalog"), url("payments_up"), CHECKOUT_MAX_IN_FLIGHT="2",
                 CHECKOUT_PAYMENTS_TIMEOUT_S="1", CHECKOUT_BUDGET_S="3"),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        assert client.post(url("checkout", "/checkout"), json=CART).status_code == 200  # warm
        upstream.mode, upstream.delay_s = "slow", 2.0
        orders_before = len(_orders(db))
        stuck = [threading.Thread(target=client.post, args=(url("checkout", "/checkout"),),
                                  kwargs={"json": CART}, daemon=True) for _ in range(2)]
        for thread in stuck:
            thread.start()
        _wait_for(lambda: _metric(client, "checkout", "checkout_in_flight") == 2)
        # both stuck ones have recorded their order (order first) and wait on payments now
        _wait_for(lambda: len(_orders(db)) == orders_before + 2)
        since = time.time()
        started = time.monotonic()
        shed = client.post(url("checkout", "/checkout"), json=CART)
        elapsed = time.monotonic() - started
        stuck_when_shed = [thread.is_alive() for thread in stuck]
        orders_with_shed = len(_orders(db))
        for thread in stuck:
            thread.join(IO_TIMEOUT_S)
        upstream.mode = "forward"
        _wait_for(lambda: _metric(client, "checkout", "checkout_in_flight") == 0)
        served = client.post(url("checkout", "/checkout"), json=CART)
        shed_total = _metric(client, "checkout", "checkout_shed_total")
        time.sleep(0.5)  # nothing in flight is left to charge: the stuck ones ended above
        charges = _charges(client, since)
    orders_after = {ref for ref, _ in _orders(db)}
    assert shed.status_code == 503 and shed.json()["error"] == "overloaded", shed.text
    assert stuck_when_shed == [True, True]  # answered while both were in flight: not queued
    assert orders_with_shed == orders_before + 2  # the two stuck ones only
    assert served.status_code == 200, served.text
    assert shed_total == 1
    assert len(orders_after) == orders_before + 3  # the stuck two and the served one
    assert {c["order_ref"] for c in charges} <= orders_after  # the shed one charged nothing
    print(f"\nshed in {elapsed * 1000:.0f} ms")


# --- 6. orders-store breaker ---------------------------------------------------------


def test_store_breaker_refuses_at_once_while_postgres_is_down_and_closes_when_it_is_back(money):
    """Postgres crashes (``pg_ctl stop -m immediate``: every backend dies at once, as when a
    checkpoint that cannot write to a full disk PANICs it) under two checkouts, one with the
    orders-store breaker and one without. While it is down the breaker's checkout answers 503
    ``orders store unavailable`` at once; the other waits out the pool's 2 s on every
    checkout. Once Postgres is back the breaker closes by itself and checkouts are served;
    nothing was charged while the store was down."""
    pg_dir = STATE / "pg-crash"
    with (
        throwaway_postgres(PG_BIN, pg_dir, PORT["postgres_crash"], ("breaker_on", "breaker_off")) as dsn,
        catalog_process(),
        checkout("checkout", f"{dsn}/breaker_on", url("catalog"), url("payments"), **PAYMENTS_AT_ANY_LOAD),
        checkout("checkout2", f"{dsn}/breaker_off", url("catalog"), url("payments"),
                 CHECKOUT_STORE_BREAKER="0", **PAYMENTS_AT_ANY_LOAD),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        for name in ("checkout", "checkout2"):
            assert client.post(url(name, "/checkout"), json=CART).status_code == 200
        since = time.time()
        _pg_ctl(pg_dir, "stop", "-m", "immediate")
        with_breaker = [_timed_checkout(client, "checkout") for _ in range(10)]
        without = [_timed_checkout(client, "checkout2") for _ in range(3)]
        opened = _metric(client, "checkout", "checkout_store_breaker_open")
        rejected = _metric(client, "checkout", "checkout_store_rejected_total")
        _pg_ctl(pg_dir, "start", "-w", "-t", "30", "-l", str(pg_dir / "log"), "-o",
                f"-p {PORT['postgres_crash']} -k {pg_dir} -c listen_addresses=127.0.0.1")
        back_s = wait_until(lambda: _timed_checkout(client, "checkout")[0] == 200, 20,
                            "checkout with the breaker served again after Postgres restarted")
        closed = _metric(client, "checkout", "checkout_store_breaker_open")
        time.sleep(0.5)  # a charge of a refused checkout would be in by now
        charges = _charges(client, since)
        recorded = {ref for ref, _ in _orders(f"{dsn}/breaker_on")}
    statuses = {status for status, _, _ in with_breaker}
    assert statuses == {503}, with_breaker
    assert all(error in ("orders store unavailable", "order not recorded") for _, _, error in with_breaker)
    seconds = sorted(elapsed for _, elapsed, _ in with_breaker)
    assert seconds[-1] < 2.5 and seconds[-2] < 1.0, seconds  # at most the first waits the pool
    assert seconds[len(seconds) // 2] < 0.2, seconds  # the median: refused at once, not after the pool's 2 s
    assert {status for status, _, _ in without} == {503}, without
    assert min(elapsed for _, elapsed, _ in without) > 1.5, without  # each waited the pool out
    assert opened == 1 and closed == 0
    assert back_s < 10, back_s  # the pool's own back-off alone can take longer (it doubles)
    assert rejected >= 5, rejected  # the first waits the pool; one trial every 0.25 s goes to Postgres
    assert {c["order_ref"] for c in charges} <= recorded  # refused checkouts charged nothing
    print(f"\nwith the breaker: {[round(t, 3) for t in seconds]} s; without: "
          f"{[round(e, 2) for _, e, _ in without]} s; served again {back_s:.1f} s after the restart")


def _timed_checkout(client: httpx.Client, name: str) -> tuple[int, float, str]:
    started = time.monotonic()
    response = client.post(url(name, "/checkout"), json=CART)
    error = response.json().get("error", "") if response.status_code != 200 else ""
    return response.status_code, time.monotonic() - started, error


def _pg_ctl(pg_dir: Path, action: str, *args: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                    str(pg_dir / "data"), *args, action], cwd="/tmp", check=True,
                   capture_output=True, timeout=60)


# --- cost of order-first ------------------------------------------------------------


def test_order_first_overhead_p50(postgres, money):
    """150 sequential checkouts per variant (interleaved): all 200 and recorded; prints the
    p50 of each. The extra SQL round trip must not double the p50."""
    count = 150
    with (
        catalog_process(),
        checkout("checkout", f"{postgres}/overhead_on", url("catalog"), url("payments"),
                 **PAYMENTS_AT_ANY_LOAD),
        checkout("checkout2", f"{postgres}/overhead_off", url("catalog"), url("payments"),
                 CHECKOUT_ORDER_FIRST="0", **PAYMENTS_AT_ANY_LOAD),
        httpx.Client(timeout=IO_TIMEOUT_S) as client,
    ):
        timings: dict[str, list[float]] = {"checkout": [], "checkout2": []}
        deadline = time.monotonic() + 60
        for index in range(count):
            if time.monotonic() > deadline:
                pytest.fail(f"only {index} rounds in 60 s")
            for name in timings:
                started = time.perf_counter()
                answer = client.post(url(name, "/checkout"), json=CART)
                timings[name].append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
    p50_on = statistics.median(timings["checkout"]) * 1000
    p50_off = statistics.median(timings["checkout2"]) * 1000
    assert len(_orders(f"{postgres}/overhead_on")) == count
    assert {s for _, s in _orders(f"{postgres}/overhead_on")} == {"paid"}
    assert len(_orders(f"{postgres}/overhead_off")) == count
    assert p50_on < 2 * p50_off, (p50_on, p50_off)
    print(f"\norder-first p50 {p50_on:.1f} ms vs first version {p50_off:.1f} ms "
          f"(+{p50_on - p50_off:.1f} ms) over {count} sequential checkouts each")


# --- helpers ------------------------------------------------------------------------


def _metric(client: httpx.Client, name: str, series: str) -> float:
    for line in client.get(url(name, "/metrics")).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics of {name}")


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        time.sleep(0.1)


def _charges(client: httpx.Client, since: float, order_ref: str | None = None) -> list[dict]:
    charges = client.get(url("provider", "/charges"), params={"since": since}).json()["charges"]
    return [c for c in charges if order_ref is None or c["order_ref"] == order_ref]


def _orders(database_url: str, order_ref: str | None = None) -> list[tuple[str, str]]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT order_ref::text, status FROM orders").fetchall()
    return [(ref, status) for ref, status in rows if order_ref is None or ref == order_ref]


def _refuse(database_url: str, operation: str) -> None:
    """Make Postgres raise on every ``operation`` (INSERT|UPDATE) of ``orders``."""
    with psycopg.connect(database_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(CREATE_ORDERS_TABLE)
        conn.execute("CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$BEGIN RAISE EXCEPTION 'refused by test'; END$$")
        conn.execute(f"CREATE OR REPLACE TRIGGER refuse BEFORE {operation} ON orders"
                     " FOR EACH ROW EXECUTE FUNCTION refuse()")


def _allow(database_url: str) -> None:
    with psycopg.connect(database_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS refuse ON orders")
