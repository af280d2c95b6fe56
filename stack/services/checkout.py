"""checkout: POST /checkout — price the cart, record the order, charge it.

Run: ``python -m stack.services.checkout`` (from the repo root). Settings (environment):

- ``CHECKOUT_PORT`` (default 18100): listen port on 127.0.0.1.
- ``CHECKOUT_CATALOG_URL`` (required): base URL of catalog (in the stack, the fault
  proxy's catalog port, base+11).
- ``CHECKOUT_PAYMENTS_URL`` (required): base URL of payments (fault proxy, base+12).
- ``CHECKOUT_DATABASE_URL`` (required): Postgres DSN, e.g.
  ``postgresql://postgres@127.0.0.1:18120/checkout``.
- ``CHECKOUT_RETRIES`` (default 0): extra attempts of the catalog call after a timeout,
  a connection error or a 5xx.
- ``CHECKOUT_DB_POOL_SIZE`` (default 10): Postgres connections kept open.

Resilience settings. ``CHECKOUT_RESILIENCE`` (1|0, default 1) is a master switch: 0 gives
every setting below its first-version default (the weakened variant, on purpose:
``CHECKOUT_RESILIENCE=0 chaoscheckout stack up``); each setting set explicitly still wins.

| setting | default (resilience 1) | first version (0) |
| --- | --- | --- |
| ``CHECKOUT_PRICE_CACHE`` | 1 | 0 |
| ``CHECKOUT_PRICE_CACHE_MAX_AGE_S`` | 600 | 600 (unused) |
| ``CHECKOUT_PRICE_REFRESH_S`` | 30 (0 when the cache is off) | 0 |
| ``CHECKOUT_CATALOG_TIMEOUT_S`` | 0.3 when the cache is on, else 2 | 2 |
| ``CHECKOUT_ORDER_FIRST`` | 1 | 0 |
| ``CHECKOUT_PAYMENTS_TIMEOUT_S`` | 0.08 (per attempt; the floor when adaptive) | 5 |
| ``CHECKOUT_PAYMENTS_TIMEOUT_ADAPT`` | 4 (x observed median; 0 = fixed) | 0 |
| ``CHECKOUT_PAYMENTS_TIMEOUT_MAX_S`` | 0.25 | 5 (unused) |
| ``CHECKOUT_PAYMENTS_RETRIES`` | 3 | 0 |
| ``CHECKOUT_RETRY_BUDGET_RATIO`` | 0.2 | -1 (no limit; unused) |
| ``CHECKOUT_RETRY_BUDGET_MIN_PER_S`` | 10 | 10 (unused) |
| ``CHECKOUT_BUDGET_S`` | 0.3 (0 = no budget) | 0 |
| ``CHECKOUT_MAX_IN_FLIGHT`` | 48 (0 = no limit) | 0 |

1. **Price cache (stale-if-error).** Every price catalog returns is remembered per sku.
   When the catalog call fails (connection error, timeout, 5xx, malformed answer) and
   every requested sku is cached and younger than ``CHECKOUT_PRICE_CACHE_MAX_AGE_S``,
   the cached prices are used (metric ``checkout_price_cache_served_total``); otherwise
   503 as before. An unknown sku (catalog 404) is still 422, never served from cache.
   ``CHECKOUT_PRICE_REFRESH_S`` > 0 warms the cache in the background with
   ``GET /products`` at start-up and then every that many seconds (timeout 2 s; it never
   blocks a request), so a catalog that dies right after a checkout restart is survivable.
   Because the catalog call is on the request path, its timeout defaults to 0.3 s when the
   cache is on: a hung catalog costs each request at most 0.3 s (per attempt), then the
   cache answers.
2. **Order before charge.** ``INSERT`` the order with status ``pending`` BEFORE charging;
   if that fails → 503 ``order not recorded`` and NO charge is attempted. Then charge, then
   ``UPDATE`` to ``paid``. If that update fails (a full disk, say) the order row already
   exists: the answer is 200 with ``"status": "pending"`` and the order is logged and
   counted (``checkout_orders_left_pending_total``) — money safety holds because every
   charge has its order row. When payments answers with a failure, the order becomes
   ``failed`` (best effort); when payments never answered (timeouts) or answered 504 (the
   provider's outcome unknown: its answer was lost) it stays ``pending``: the charge may
   or may not have happened, a reconciler decides.
   ``CHECKOUT_ORDER_FIRST=0`` is the first version: charge, then ``INSERT`` as ``paid``
   (failing → 500 after the money was taken).
3. **Timeout budget for payments.** Each payments attempt is bounded by
   ``CHECKOUT_PAYMENTS_TIMEOUT_S``; on a timeout, a connection error or a 504 from payments
   (the provider's outcome unknown) up to
   ``CHECKOUT_PAYMENTS_RETRIES`` more attempts are made with the SAME idempotency key
   (``order_ref``; the provider deduplicates, so a retry never charges twice). All attempts
   share ``CHECKOUT_BUDGET_S``: an attempt's timeout is min(per-attempt, budget left) and
   no retry starts with less than 50 ms left. A timed-out attempt is abandoned, never
   cancelled: it ends by httpx's own timeouts, which close its connection, and a retry goes
   over another connection (:mod:`stack.services.upstream` says why: cancelling a request
   inside httpcore's pool leaks its slot for good).
   **Adaptive attempt timeout.** With ``CHECKOUT_PAYMENTS_TIMEOUT_ADAPT`` > 0 the per-attempt
   timeout is that many times the median latency of the payments attempts answered in the
   last 10 s (answers to attempts already given up on included), never below
   ``CHECKOUT_PAYMENTS_TIMEOUT_S`` nor above ``CHECKOUT_PAYMENTS_TIMEOUT_MAX_S`` (gauge
   ``checkout_payments_attempt_timeout_seconds``). Why: a fixed 80 ms attempt has no margin
   once checkout's own event loop is busy (a flash sale's rate), and its timeouts, retried,
   keep the loop busy: a timeout storm that outlived the fault in the peak series
   (journals/FINDINGS.md). A payments slowed for a minority of calls leaves the median
   where it was, so those calls are still cut at the floor and retried. With
   ``CHECKOUT_PAYMENTS_TIMEOUT_FAST_WINDOW_S`` > 0 (default 1) the median of that last
   short window counts too (the larger of the two): the 10 s one alone took 5 s to follow a
   sudden slow-down at a flash sale's rate.
4. **Retry budget for payments.** Retries of all requests together may be at most
   ``CHECKOUT_RETRY_BUDGET_RATIO`` of the first attempts of the last 10 s, plus
   ``CHECKOUT_RETRY_BUDGET_MIN_PER_S`` a second (ratio -1 = no limit). A few slowed
   requests are all retried; a payments slow for everyone is not sent up to four times the
   work, which keeps it slow at a flash sale's rate. A request whose retry is denied fails
   like one whose budget is spent (``checkout_payments_retries_denied_total``).

   Caution (3 and 4): a slow attempt that checkout
   gave up on may still reach the provider and charge later. With order-first that charge
   has its (``pending``) order row; with ``CHECKOUT_ORDER_FIRST=0`` it is a charge with no
   order — which is exactly why order-first matters once timeouts are short.

5. **Load shedding.** At most ``CHECKOUT_MAX_IN_FLIGHT`` checkouts are worked on at once;
   one more is answered 503 ``overloaded`` at once, before its body is read
   (``checkout_shed_total``; it counts as an error for the availability SLI). Healthy at a
   flash sale's 84/s about 3 are in flight; only a checkout already too slow to meet its
   budget lets them pile up, and a queue of hundreds makes every one of them late (each
   holds its turn on the event loop and a Postgres connection twice). Shedding bounds that
   queue, so what is queued cannot keep checkout overloaded long after its cause is gone.
6. **Orders-store breaker.** With ``CHECKOUT_STORE_BREAKER`` (default on) a failure of the
   order ``INSERT`` that says Postgres itself is gone (connection lost or refused, the server
   restarting or in recovery, no pooled connection within the 2 s wait) opens a breaker:
   checkouts are then refused at once with 503 ``orders store unavailable`` (nothing
   charged; ``checkout_store_rejected_total``), except one trial every 0.25 s that waits at
   most 0.5 s for a pooled connection (after a fresh connection of its own succeeded: a
   trial against a Postgres still down fails at once). The first trial that gets an answer
   from Postgres closes it (``checkout_store_breaker_open``). A trial that connected on its
   own but got no pooled connection renews the pool, whose reconnect back-off (1 s, 2 s,
   4 s, ...) would otherwise keep checkout failing for seconds after Postgres is back
   (``checkout_store_pools_renewed_total``). A broken pooled connection found by the pool's
   check opens the breaker too when a fresh connection fails as well. An error *from* a
   running Postgres (a full disk, a constraint) does not open it. Why: a Postgres that crashes and restarts (a
   checkpoint that cannot write to a full disk PANICs it) kills every pooled connection, and
   the pool reconnects with a back-off; without the breaker every checkout waited out the
   pool's 2 s and the in-flight limit filled within a second (the peak-load fill-pg-disk run,
   journals/FINDINGS.md).

Catalog and payments each have their own connection pool (200 connections), so a slow
or dead catalog cannot take the slots payments needs; a pool that stops answering (a pool
timeout) is replaced by a fresh one (``upstream_pools_recycled_total{upstream}``).

Fixed limits (not settings): Postgres connect timeout 3 s, wait for a pooled connection
2 s, ``statement_timeout`` 5 s, each order ``UPDATE`` bounded by 1 s, health check 1 s; at
start-up checkout waits up to 20 s for Postgres, then exits (supervisord restarts it). A
pooled connection is checked before use, so connections broken by a Postgres restart are
replaced. The ``orders`` table is created on start-up if missing (docs/architecture.md).

``POST /checkout {"items": [{"sku": "sku-001", "qty": 1}, ...]}`` (order-first on):

1. prices from ``GET <catalog>/prices?skus=...`` or the cache (unknown sku → 422,
   catalog failing and no usable cache → 503);
2. ``amount_cents`` and a new ``order_ref`` (uuid4);
3. ``INSERT`` the order as ``pending`` (failing → 503, nothing charged);
4. ``POST <payments>/payments`` with ``idempotency_key = order_ref`` (failing → 502);
5. ``UPDATE`` to ``paid`` → 200 ``{"order_ref", "amount_cents", "status": "paid"}``
   (update failing → 200 with ``"status": "pending"``).

A malformed body → 400. Every failure answers with a JSON ``{"error", "detail"}``.

``GET /healthz`` → 200 only when Postgres answers ``SELECT 1`` within 1 s.
``GET /metrics`` → ``checkout_requests_total{outcome="ok|error|client_error"}``, the
histogram ``checkout_request_duration_seconds{outcome}`` (``ok`` and ``error`` are the
availability SLI's outcomes, ``client_error`` (400/422) does not count against it),
``checkout_price_cache_served_total``, ``checkout_price_cache_skus``,
``checkout_payments_retries_denied_total``,
``checkout_payments_attempts_total{result="ok|refused|timeout|unreachable|unknown"}``,
``checkout_payments_attempt_timeout_seconds``, ``checkout_shed_total``,
``checkout_store_breaker_open``, ``checkout_store_rejected_total``,
``checkout_store_pools_renewed_total``,
``checkout_in_flight`` and ``checkout_orders_left_pending_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client import Counter, Gauge, Histogram
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stack.services.checkout_resilience import (
    AdaptiveTimeout,
    Budget,
    PriceCache,
    RetryBudget,
    StoreBreaker,
)
from stack.services.common import (
    ConfigError,
    default_port,
    env_bool,
    env_float,
    env_int,
    env_str,
    env_url,
    healthz_route,
    json_error,
    metrics_route,
    read_json,
    serve,
    version_route,
)
from stack.services.upstream import Upstream

__all__ = ["CheckoutSettings", "build_app", "main", "profile", "CREATE_ORDERS_TABLE"]

logger = logging.getLogger("stack.checkout")

PORT_OFFSET = 0
DB_CONNECT_TIMEOUT_S = 3
DB_POOL_WAIT_S = 2.0
DB_STATEMENT_TIMEOUT_MS = 5000
DB_STARTUP_WAIT_S = 20.0
DB_UPDATE_TIMEOUT_S = 1.0
DB_TRIAL_WAIT_S = 0.5  # a breaker trial's wait for a pooled connection
DB_PROBE_TIMEOUT_S = 1  # the breaker's fresh connection, to confirm a broken one means 'down'
HEALTH_TIMEOUT_S = 1.0
REFRESH_TIMEOUT_S = 2.0
MIN_ATTEMPT_S = 0.05
MAX_ITEMS = 50
MAX_QTY = 100

# stack/schema.sql: the one orders schema (stack up, the docker image and this fallback)
CREATE_ORDERS_TABLE = (Path(__file__).resolve().parent.parent / "schema.sql").read_text()

REQUESTS = Counter("checkout_requests_total", "Checkout requests by outcome", ["outcome"])
DURATION = Histogram(
    "checkout_request_duration_seconds", "Checkout request duration by outcome", ["outcome"],
    buckets=(.005, .01, .025, .05, .075, .1, .15, .2, .25, .3, .4, .5, .75, 1, 1.5, 2, 3, 5, 10),
)
CACHE_SERVED = Counter("checkout_price_cache_served_total",
                       "Checkouts priced from the cache because catalog failed")
CACHE_SKUS = Gauge("checkout_price_cache_skus", "Skus held in the price cache")
PAYMENT_ATTEMPTS = Counter("checkout_payments_attempts_total", "Payments attempts by result",
                           ["result"])
ATTEMPT_TIMEOUT = Gauge("checkout_payments_attempt_timeout_seconds",
                        "The per-attempt payments timeout in use (adaptive: follows the median)")
RETRIES_DENIED = Counter("checkout_payments_retries_denied_total",
                         "Payments retries not made: the retry budget was spent")
SHED = Counter("checkout_shed_total", "Checkouts answered 503 at once: too many in flight")
IN_FLIGHT = Gauge("checkout_in_flight", "Checkouts being worked on")
STORE_BREAKER_OPEN = Gauge("checkout_store_breaker_open",
                           "1 while the orders store is taken as down (checkouts refused at once)")
STORE_REJECTED = Counter("checkout_store_rejected_total",
                         "Checkouts refused at once because the orders store is down")
POOLS_RENEWED = Counter("checkout_store_pools_renewed_total",
                        "Postgres pools replaced: Postgres was back, the pool still backing off")
LEFT_PENDING = Counter("checkout_orders_left_pending_total",
                       "Charged orders whose UPDATE to paid failed (row stays pending)")
STORE_WRITE_ERRORS = Counter("checkout_store_write_errors_total",
                             "Order writes (INSERT or UPDATE) that failed: refused = a running "
                             "Postgres answered with an error (a full disk is SQLSTATE 53100), "
                             "unreachable = no answer (down, no pooled connection)", ["kind"])
for _outcome in ("ok", "error", "client_error"):
    REQUESTS.labels(_outcome)
    DURATION.labels(_outcome)
for _kind in ("refused", "unreachable"):  # present at 0 from the start: increase() sees the first
    STORE_WRITE_ERRORS.labels(_kind)
for _result in ("ok", "refused", "timeout", "unreachable", "unknown"):
    PAYMENT_ATTEMPTS.labels(_result)


@dataclass(frozen=True)
class CheckoutSettings:
    port: int
    catalog_url: str
    payments_url: str
    database_url: str
    catalog_timeout_s: float
    payments_timeout_s: float
    retries: int
    db_pool_size: int
    price_cache: bool = False
    price_cache_max_age_s: float = 600.0
    price_refresh_s: float = 0.0
    order_first: bool = False
    payments_retries: int = 0
    budget_s: float = 0.0
    retry_budget_ratio: float = -1.0
    retry_budget_min_per_s: float = 10.0
    payments_timeout_adapt: float = 0.0
    payments_timeout_max_s: float = 5.0
    payments_timeout_fast_window_s: float = 0.0
    max_in_flight: int = 0
    store_breaker: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CheckoutSettings:
        resilient = env_bool(environ, "CHECKOUT_RESILIENCE", True)
        cache = env_bool(environ, "CHECKOUT_PRICE_CACHE", resilient)
        refresh_s = env_float(environ, "CHECKOUT_PRICE_REFRESH_S", 30.0 if cache else 0.0, 0, 86400)
        if 0 < refresh_s < 1:
            raise ConfigError(f"CHECKOUT_PRICE_REFRESH_S: must be 0 (off) or >= 1, got {refresh_s}")
        return cls(
            port=env_int(environ, "CHECKOUT_PORT", default_port(PORT_OFFSET), 1, 65535),
            catalog_url=env_url(environ, "CHECKOUT_CATALOG_URL"),
            payments_url=env_url(environ, "CHECKOUT_PAYMENTS_URL"),
            database_url=env_str(environ, "CHECKOUT_DATABASE_URL"),
            catalog_timeout_s=env_float(environ, "CHECKOUT_CATALOG_TIMEOUT_S",
                                        0.3 if cache else 2.0, 0.001, 300),
            payments_timeout_s=env_float(environ, "CHECKOUT_PAYMENTS_TIMEOUT_S",
                                         0.08 if resilient else 5.0, 0.001, 300),
            retries=env_int(environ, "CHECKOUT_RETRIES", 0, 0, 10),
            db_pool_size=env_int(environ, "CHECKOUT_DB_POOL_SIZE", 10, 1, 200),
            price_cache=cache,
            price_cache_max_age_s=env_float(environ, "CHECKOUT_PRICE_CACHE_MAX_AGE_S", 600.0,
                                            1, 7 * 86400),
            price_refresh_s=refresh_s,
            order_first=env_bool(environ, "CHECKOUT_ORDER_FIRST", resilient),
            payments_retries=env_int(environ, "CHECKOUT_PAYMENTS_RETRIES", 3 if resilient else 0,
                                     0, 10),
            budget_s=env_float(environ, "CHECKOUT_BUDGET_S", 0.3 if resilient else 0.0, 0, 300),
            retry_budget_ratio=env_float(environ, "CHECKOUT_RETRY_BUDGET_RATIO",
                                         0.2 if resilient else -1.0, -1, 10),
            retry_budget_min_per_s=env_float(environ, "CHECKOUT_RETRY_BUDGET_MIN_PER_S", 10.0,
                                             0, 10000),
            payments_timeout_adapt=env_float(environ, "CHECKOUT_PAYMENTS_TIMEOUT_ADAPT",
                                             4.0 if resilient else 0.0, 0, 100),
            payments_timeout_max_s=env_float(environ, "CHECKOUT_PAYMENTS_TIMEOUT_MAX_S",
                                             0.25 if resilient else 5.0, 0.001, 300),
            payments_timeout_fast_window_s=env_float(
                environ, "CHECKOUT_PAYMENTS_TIMEOUT_FAST_WINDOW_S", 1.0 if resilient else 0.0, 0, 60),
            max_in_flight=env_int(environ, "CHECKOUT_MAX_IN_FLIGHT", 48 if resilient else 0,
                                  0, 100000),
            store_breaker=env_bool(environ, "CHECKOUT_STORE_BREAKER", resilient),
        )


@dataclass(frozen=True)
class LineItem:
    sku: str
    qty: int


class CheckoutFailed(Exception):
    """One step failed; carries the HTTP status, the metric outcome and the message."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail

    @property
    def outcome(self) -> str:
        return "client_error" if 400 <= self.status < 500 else "error"


class PaymentFailed(CheckoutFailed):
    """The charge failed; ``answered`` is True when payments said no (a definite failure)."""

    def __init__(self, detail: str, answered: bool) -> None:
        super().__init__(502, "payment failed", detail)
        self.answered = answered


class Checkout:
    """The checkout steps, over one HTTP pool per upstream and one Postgres pool."""

    def __init__(self, settings: CheckoutSettings) -> None:
        self.settings = settings
        self.catalog: Upstream | None = None
        self.payments: Upstream | None = None
        self.pool: AsyncConnectionPool | None = None
        self.cache = PriceCache(settings.price_cache_max_age_s)
        self.retry_budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min_per_s)
        self.attempt_timeout = AdaptiveTimeout(settings.payments_timeout_s,
                                              settings.payments_timeout_max_s,
                                              factor=settings.payments_timeout_adapt,
                                              fast_window_s=settings.payments_timeout_fast_window_s)
        ATTEMPT_TIMEOUT.set(settings.payments_timeout_s)
        self.store_breaker = StoreBreaker()
        self._closing: set[asyncio.Task[None]] = set()  # old pools being closed
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self.catalog = Upstream("catalog", s.catalog_url)
        self.payments = Upstream("payments", s.payments_url)
        self.pool = self._new_pool()
        await self.pool.open(wait=True, timeout=DB_STARTUP_WAIT_S)
        async with self.pool.connection() as conn:
            # the stack's checkout role may not CREATE (its table is made by `stack up`)
            found = await (await conn.execute("SELECT to_regclass('orders')")).fetchone()
            if found[0] is None:
                await conn.execute(CREATE_ORDERS_TABLE)
        if s.price_cache and s.price_refresh_s > 0:
            self._refresher = asyncio.create_task(self._refresh_prices_forever())
        logger.info("checkout ready: pool of %d Postgres connections; %s", s.db_pool_size,
                    _describe(s))

    def _new_pool(self) -> AsyncConnectionPool:
        s = self.settings
        return AsyncConnectionPool(
            s.database_url, min_size=s.db_pool_size, max_size=s.db_pool_size,
            timeout=DB_POOL_WAIT_S, open=False, name="checkout",
            check=self._check_pooled,  # drop connections a restart killed
            kwargs={
                "autocommit": True,
                "connect_timeout": DB_CONNECT_TIMEOUT_S,
                "options": f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
            },
        )

    async def _renew_pool(self) -> None:
        """A fresh pool in place of one still backing off from a Postgres that is back.

        psycopg_pool reconnects a lost connection with a back-off (1 s, 2 s, 4 s, ...), so
        after a restart of some seconds its first new connection can come seconds after
        Postgres accepts them again. A breaker trial that connected on its own but got no
        pooled connection swaps in a new pool, which connects at once; the old one is closed
        in the background (its checked-out connections are let go as they come back)."""
        old, self.pool = self.pool, self._new_pool()
        await self.pool.open(wait=False)
        POOLS_RENEWED.inc()
        logger.warning("orders store back but the pool had no connection: pool renewed")
        if old is not None:
            task = asyncio.create_task(old.close(timeout=DB_POOL_WAIT_S))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for upstream in (self.catalog, self.payments):
            if upstream is not None:
                await upstream.aclose()
        if self.pool is not None:
            await self.pool.close(timeout=5)
        for closing in list(self._closing):  # pools replaced by _renew_pool (bounded close)
            with contextlib.suppress(Exception):
                await closing

    async def run(self, items: list[LineItem]) -> dict[str, Any]:
        prices = await self.fetch_prices(sorted({item.sku for item in items}))
        amount_cents = sum(prices[item.sku] * item.qty for item in items)
        order_ref = str(uuid.uuid4())
        if not self.settings.order_first:  # the first version: money first, order after
            await self.charge(order_ref, amount_cents)
            await self.insert_order(order_ref, items, prices, amount_cents, "paid", charged=True)
            return {"order_ref": order_ref, "amount_cents": amount_cents, "status": "paid"}
        await self.insert_order(order_ref, items, prices, amount_cents, "pending", charged=False)
        try:
            await self.charge(order_ref, amount_cents)
        except PaymentFailed as exc:
            if exc.answered:
                await self.set_status(order_ref, "failed")
            raise
        if not await self.set_status(order_ref, "paid"):
            LEFT_PENDING.inc()
            return {"order_ref": order_ref, "amount_cents": amount_cents, "status": "pending"}
        return {"order_ref": order_ref, "amount_cents": amount_cents, "status": "paid"}

    async def fetch_prices(self, skus: list[str]) -> dict[str, int]:
        try:
            prices = await self._prices_from_catalog(skus)
        except CheckoutFailed as exc:
            if exc.status != 503 or not self.settings.price_cache:
                raise
            cached = self.cache.lookup(skus)
            if cached is None:
                raise
            CACHE_SERVED.inc()
            logger.info("catalog failed (%s): priced %d skus from the cache", exc.detail, len(skus))
            return cached
        if self.settings.price_cache:
            self._remember(prices.items())
        return prices

    async def charge(self, order_ref: str, amount_cents: int) -> dict[str, Any]:
        """POST /payments, retried on timeouts / connection errors within the budget."""
        s = self.settings
        body = {"idempotency_key": order_ref, "order_ref": order_ref, "amount_cents": amount_cents}
        budget = Budget(s.budget_s, MIN_ATTEMPT_S)
        failures: list[str] = []
        self.retry_budget.first_attempt()
        for attempt in range(1 + s.payments_retries):
            per_attempt_s = self.attempt_timeout.timeout_s()
            ATTEMPT_TIMEOUT.set(per_attempt_s)
            timeout_s = budget.next_timeout(per_attempt_s)
            if timeout_s is None:
                failures.append(f"budget of {s.budget_s}s spent")
                break
            if attempt > 0 and not self.retry_budget.try_retry():
                RETRIES_DENIED.inc()
                failures.append(f"retry budget spent ({s.retry_budget_ratio:g} of first attempts)")
                break
            try:
                response = await self._upstream(self.payments).request(
                    "POST", "/payments", timeout_s, on_answer=self.attempt_timeout.record, json=body)
            except (TimeoutError, httpx.TimeoutException):
                PAYMENT_ATTEMPTS.labels("timeout").inc()
                failures.append(f"payments gave no answer within {timeout_s:.3g}s")
                continue
            except httpx.HTTPError as exc:
                PAYMENT_ATTEMPTS.labels("unreachable").inc()
                failures.append(f"payments unreachable: {exc!r}")
                continue
            if response.status_code == 504:  # payments: the provider's outcome is unknown
                PAYMENT_ATTEMPTS.labels("unknown").inc()
                failures.append(f"payments: provider outcome unknown ({response.text[:120]})")
                continue  # not a refusal: the same key again is safe (the provider replays it)
            if response.status_code != 200:
                PAYMENT_ATTEMPTS.labels("refused").inc()
                raise PaymentFailed(f"payments answered {response.status_code}: "
                                    f"{response.text[:200]}", answered=True)
            PAYMENT_ATTEMPTS.labels("ok").inc()
            return response.json()
        raise PaymentFailed("; ".join(failures), answered=False)

    async def insert_order(self, order_ref: str, items: list[LineItem], prices: dict[str, int],
                           amount_cents: int, status: str, charged: bool) -> None:
        rows = [{"sku": i.sku, "qty": i.qty, "price_cents": prices[i.sku]} for i in items]
        breaker = self.store_breaker
        use_breaker = self.settings.store_breaker and not charged  # guards order-first only
        admitted = breaker.admit() if use_breaker else "pass"
        if admitted == "reject":
            STORE_REJECTED.inc()
            raise CheckoutFailed(503, "orders store unavailable",
                                 f"nothing was charged: Postgres down for "
                                 f"{breaker.down_for_s():.1f}s ({breaker.reason})")
        trial = admitted == "trial"
        settled = False
        try:
            if trial and (down := await self._fresh_connection_fails()) is not None:
                raise StoreStillDown(down)
            async with self._pool.connection(timeout=DB_TRIAL_WAIT_S if trial else None) as conn:
                await conn.execute(
                    "INSERT INTO orders (order_ref, items, amount_cents, status)"
                    " VALUES (%s, %s, %s, %s)",
                    (order_ref, Jsonb(rows), amount_cents, status),
                )
            settled = True
            if trial:
                self._breaker_closed()
        except (psycopg.Error, PoolTimeout, StoreStillDown) as exc:
            settled = True
            _count_write_error(exc)
            if trial and isinstance(exc, PoolTimeout):  # Postgres answered its own connect
                await self._renew_pool()
            down = store_down(exc) if use_breaker else None
            if down is None:
                if trial:  # a running Postgres answered (a full disk, a constraint)
                    self._breaker_closed()
            elif breaker.failed(down, trial):
                self._breaker_opened(down)
            if charged:
                logger.error("order %s was charged but could not be recorded: %s", order_ref, exc)
                raise CheckoutFailed(500, "order not recorded", str(exc)[:300]) from None
            raise CheckoutFailed(503, "order not recorded",
                                 f"nothing was charged: {str(exc)[:300]}") from None
        finally:
            if not settled:
                breaker.abandoned(trial)

    async def _check_pooled(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The pool's check of a connection before it is handed out. A broken one is dropped
        (the pool then tries the next); with the breaker on, a fresh connection is tried once
        and, when that fails too, the store is down: the breaker opens before the pool's 2 s
        wait runs out, so the checkouts behind this one are refused at once."""
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception:
            if self.settings.store_breaker and not self.store_breaker.is_open:
                down = await self._fresh_connection_fails()
                if down is not None and self.store_breaker.failed(down, trial=False):
                    self._breaker_opened(down)
            raise

    async def _fresh_connection_fails(self) -> str | None:
        """Why a new connection to Postgres fails (None: it works)."""
        try:
            async with asyncio.timeout(DB_PROBE_TIMEOUT_S):
                conn = await psycopg.AsyncConnection.connect(
                    self.settings.database_url, connect_timeout=DB_PROBE_TIMEOUT_S, autocommit=True)
                await conn.close()
        except TimeoutError:
            return f"no new connection within {DB_PROBE_TIMEOUT_S}s"
        except psycopg.Error as exc:
            return store_down(exc) or _one_line(exc)
        return None

    @staticmethod
    def _breaker_opened(reason: str) -> None:
        STORE_BREAKER_OPEN.set(1)
        logger.warning("orders store down (%s): refusing checkouts at once until a trial "
                       "insert succeeds", reason)

    def _breaker_closed(self) -> None:
        logger.warning("orders store answers again after %.1fs: breaker closed",
                       self.store_breaker.down_for_s())
        STORE_BREAKER_OPEN.set(0)
        self.store_breaker.succeeded(trial=True)

    async def set_status(self, order_ref: str, status: str) -> bool:
        """UPDATE the order's status; False (logged) when Postgres refused or was too slow."""
        try:
            async with asyncio.timeout(DB_UPDATE_TIMEOUT_S):
                async with self._pool.connection(timeout=DB_UPDATE_TIMEOUT_S) as conn:
                    await conn.execute("UPDATE orders SET status = %s WHERE order_ref = %s",
                                       (status, order_ref))
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            _count_write_error(exc)
            logger.error("order %s stays pending: could not set it %s: %r", order_ref, status, exc)
            return False
        return True

    async def database_answers(self, _: Request) -> str | None:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            async with self._pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        return None

    async def refresh_prices(self) -> int:
        """GET /products once and remember every price; the number of skus remembered."""
        response = await self._upstream(self.catalog).request("GET", "/products", REFRESH_TIMEOUT_S)
        response.raise_for_status()
        products = response.json()["products"]
        self._remember((p["sku"], int(p["price_cents"])) for p in products)
        return len(products)

    async def _prices_from_catalog(self, skus: list[str]) -> dict[str, int]:
        timeout_s = self.settings.catalog_timeout_s
        last = ""
        for _attempt in range(1 + self.settings.retries):
            try:
                response = await self._upstream(self.catalog).request(
                    "GET", "/prices", timeout_s, params={"skus": ",".join(skus)})
            except (TimeoutError, httpx.TimeoutException):
                last = f"catalog gave no answer within {timeout_s}s"
                continue
            except httpx.HTTPError as exc:
                last = f"catalog unreachable: {exc!r}"
                continue
            if response.status_code == 404:
                raise CheckoutFailed(422, "unknown sku", response.text[:200])
            if response.status_code >= 500:
                last = f"catalog answered {response.status_code}"
                continue
            try:
                prices = response.json()["prices"]
                return {sku: int(prices[sku]) for sku in skus}
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckoutFailed(503, "catalog unavailable",
                                     f"unexpected catalog answer: {exc!r}") from None
        raise CheckoutFailed(503, "catalog unavailable", last)

    async def _refresh_prices_forever(self) -> None:
        while True:
            try:
                count = await self.refresh_prices()
                logger.debug("price cache refreshed: %d skus", count)
            except (TimeoutError, httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                logger.warning("price cache refresh failed (cache kept): %r", exc)
            await asyncio.sleep(self.settings.price_refresh_s)

    def _remember(self, prices: Any) -> None:
        self.cache.remember(prices)
        CACHE_SKUS.set(len(self.cache))

    @staticmethod
    def _upstream(upstream: Upstream | None) -> Upstream:
        if upstream is None:
            raise RuntimeError("checkout is not started")
        return upstream

    @property
    def _pool(self) -> AsyncConnectionPool:
        if self.pool is None:
            raise RuntimeError("checkout is not started")
        return self.pool


def build_app(settings: CheckoutSettings) -> Starlette:
    checkout = Checkout(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await checkout.start()
        try:
            yield
        finally:
            await checkout.stop()

    in_flight = 0

    async def post_checkout(request: Request) -> Response:
        nonlocal in_flight
        started = time.perf_counter()
        if 0 < settings.max_in_flight <= in_flight:
            SHED.inc()
            REQUESTS.labels("error").inc()
            DURATION.labels("error").observe(time.perf_counter() - started)
            return json_error(503, "overloaded",
                              detail=f"{in_flight} checkouts in flight (limit {settings.max_in_flight})")
        in_flight += 1
        IN_FLIGHT.set(in_flight)
        outcome = "error"
        try:
            items = _parse_items(await read_json(request))
            if isinstance(items, str):
                outcome = "client_error"
                return json_error(400, items)
            result = await checkout.run(items)
            outcome = "ok"
            return JSONResponse(result)
        except CheckoutFailed as exc:
            outcome = exc.outcome
            if outcome == "error":
                logger.warning("checkout failed (%d %s): %s", exc.status, exc.message, exc.detail)
            return json_error(exc.status, exc.message, detail=exc.detail)
        except Exception as exc:  # the contract: any failure is a JSON 5xx
            logger.exception("checkout failed unexpectedly")
            return json_error(500, "internal error", detail=repr(exc)[:300])
        finally:
            in_flight -= 1
            IN_FLIGHT.set(in_flight)
            REQUESTS.labels(outcome).inc()
            DURATION.labels(outcome).observe(time.perf_counter() - started)

    app = Starlette(
        routes=[
            Route("/checkout", post_checkout, methods=["POST"]),
            healthz_route(checkout.database_answers),
            version_route("checkout", settings, profile(settings)),
            metrics_route(),
        ],
        lifespan=lifespan,
    )
    app.state.checkout = checkout
    return app


RESILIENCE_FIELDS = ("price_cache", "price_cache_max_age_s", "price_refresh_s", "catalog_timeout_s",
                     "order_first", "payments_timeout_s", "payments_retries", "budget_s",
                     "retry_budget_ratio", "retry_budget_min_per_s", "payments_timeout_adapt",
                     "payments_timeout_fast_window_s",
                     "payments_timeout_max_s", "max_in_flight", "store_breaker")


def profile(settings: CheckoutSettings) -> str:
    """Which build of checkout's behaviour these settings are: "first-version" (every resilience
    setting at its ``CHECKOUT_RESILIENCE=0`` value), "resilient" (every one at its default), or
    "custom" (anything else). Shown by ``GET /version`` and so in every journal."""
    for name, resilient in (("first-version", "0"), ("resilient", "1")):
        reference = CheckoutSettings.from_env({
            "CHECKOUT_RESILIENCE": resilient, "CHECKOUT_CATALOG_URL": settings.catalog_url,
            "CHECKOUT_PAYMENTS_URL": settings.payments_url, "CHECKOUT_DATABASE_URL": settings.database_url,
        })
        if all(getattr(reference, f) == getattr(settings, f) for f in RESILIENCE_FIELDS):
            return name
    return "custom"


def main() -> None:
    def build(environ: Mapping[str, str]) -> tuple[Starlette, int]:
        settings = CheckoutSettings.from_env(environ)
        return build_app(settings), settings.port

    serve(build)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _describe(s: CheckoutSettings) -> str:
    cache = (f"price cache on (max age {s.price_cache_max_age_s:g}s, refresh "
             f"{s.price_refresh_s:g}s)" if s.price_cache else "price cache off")
    budget = f"budget {s.budget_s:g}s" if s.budget_s > 0 else "no budget"
    if s.retry_budget_ratio >= 0:
        budget += f", retries up to {s.retry_budget_ratio:g} of first attempts"
    timeout = f"{s.payments_timeout_s:g}s"
    if s.payments_timeout_adapt > 0:
        timeout = (f"{s.payments_timeout_adapt:g} x median within {s.payments_timeout_s:g}-"
                   f"{s.payments_timeout_max_s:g}s")
        if s.payments_timeout_fast_window_s > 0:
            timeout += f" (10s and {s.payments_timeout_fast_window_s:g}s windows)"
    shedding = f"at most {s.max_in_flight} in flight" if s.max_in_flight else "no load shedding"
    return (f"{cache}, catalog timeout {s.catalog_timeout_s:g}s, "
            f"order {'before' if s.order_first else 'after'} charge, payments "
            f"{timeout} x {1 + s.payments_retries} attempts, {budget}, {shedding}")


class StoreStillDown(Exception):
    """A breaker trial's fresh connection failed: the store is still down (no pool wait)."""


def _count_write_error(exc: BaseException) -> None:
    """Count a failed order write: "refused" when a running Postgres answered with an error
    (its SQLSTATE is not a connection or shutdown class), else "unreachable"."""
    answered = isinstance(exc, psycopg.Error) and store_down(exc) is None
    STORE_WRITE_ERRORS.labels("refused" if answered else "unreachable").inc()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def store_down(exc: BaseException) -> str | None:
    """Why ``exc`` says the orders store itself is down; None when a running server answered
    (a full disk, a constraint, a statement timeout: errors a breaker must not hide)."""
    if isinstance(exc, StoreStillDown):
        return str(exc)
    if isinstance(exc, PoolTimeout):
        return f"no pooled connection within the wait: {str(exc)[:200]}"
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate or ""
        # no SQLSTATE: the client lost or could not open the connection; 08: connection
        # exception; 57P: the server is shutting down, crashed or cannot accept connections yet
        if not state or state.startswith(("08", "57P")):
            return _one_line(exc)
    return None


def _parse_items(body: Any) -> list[LineItem] | str:
    """The line items, or why the body is invalid."""
    usage = 'body must be {"items": [{"sku": "sku-001", "qty": 1}, ...]}'
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        return usage
    raw_items = body["items"]
    if not 1 <= len(raw_items) <= MAX_ITEMS:
        return f"items must hold 1 to {MAX_ITEMS} entries"
    items = []
    for index, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            return f"items[{index}]: {usage}"
        sku, qty = raw.get("sku"), raw.get("qty", 1)
        if not isinstance(sku, str) or not sku or "," in sku:
            return f"items[{index}].sku must be a non-empty string without commas"
        if not isinstance(qty, int) or isinstance(qty, bool) or not 1 <= qty <= MAX_QTY:
            return f"items[{index}].qty must be an integer from 1 to {MAX_QTY}"
        items.append(LineItem(sku, qty))
    return items


if __name__ == "__main__":
    main()
