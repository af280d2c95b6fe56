"""checkout: POST /checkout — price the cart, charge it, record the order. A first version.

Run: ``python -m stack.services.checkout`` (from the repo root). Settings (environment):

- ``CHECKOUT_PORT`` (default 18100): listen port on 127.0.0.1.
- ``CHECKOUT_CATALOG_URL`` (required): base URL of catalog (in the stack, the fault
  proxy's catalog port, base+11).
- ``CHECKOUT_PAYMENTS_URL`` (required): base URL of payments (fault proxy, base+12).
- ``CHECKOUT_DATABASE_URL`` (required): Postgres DSN, e.g.
  ``postgresql://postgres@127.0.0.1:18120/checkout``.
- ``CHECKOUT_CATALOG_TIMEOUT_S`` (default 2): deadline of one catalog call.
- ``CHECKOUT_PAYMENTS_TIMEOUT_S`` (default 5): deadline of the payments call.
- ``CHECKOUT_RETRIES`` (default 0): extra attempts of the catalog call after a timeout,
  a connection error or a 5xx (the payments call is never retried).
- ``CHECKOUT_DB_POOL_SIZE`` (default 10): Postgres connections kept open.

A pooled connection is checked before use, so connections broken by a Postgres restart
are replaced instead of failing a request. Fixed limits (not settings): Postgres connect
timeout 3 s, wait for a pooled connection 2 s, ``statement_timeout`` 5 s, health check
1 s; at start-up checkout waits up to 20 s for Postgres, then exits (supervisord restarts
it). The ``orders`` table is created on start-up if missing (schema in docs/architecture.md).

``POST /checkout {"items": [{"sku": "sku-001", "qty": 1}, ...]}`` does, in this order:

1. ``GET <catalog>/prices?skus=...`` (unknown sku → 422, catalog failing → 503);
2. computes ``amount_cents`` and a new ``order_ref`` (uuid4);
3. ``POST <payments>/payments`` with ``idempotency_key = order_ref`` (failing → 502);
4. ``INSERT`` the order into ``orders`` with status ``paid`` (failing → 500);
5. answers 200 ``{"order_ref", "amount_cents", "status": "paid"}``.

There is deliberately no resilience here yet: no price cache, no fallback, the charge is
taken before the order is recorded. A malformed body → 400. Every failure answers with a
JSON ``{"error", "detail"}``.

``GET /healthz`` → 200 only when Postgres answers ``SELECT 1`` within 1 s.
``GET /metrics`` → ``checkout_requests_total{outcome="ok|error|client_error"}`` and the
histogram ``checkout_request_duration_seconds{outcome}``; ``ok`` and ``error`` are the
availability SLI's outcomes, ``client_error`` (400/422) does not count against it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from prometheus_client import Counter, Histogram
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stack.services.common import (
    default_port,
    env_float,
    env_int,
    env_str,
    env_url,
    healthz_route,
    http_client,
    json_error,
    metrics_route,
    read_json,
    serve,
)

__all__ = ["CheckoutSettings", "build_app", "main", "CREATE_ORDERS_TABLE"]

logger = logging.getLogger("stack.checkout")

PORT_OFFSET = 0
DB_CONNECT_TIMEOUT_S = 3
DB_POOL_WAIT_S = 2.0
DB_STATEMENT_TIMEOUT_MS = 5000
DB_STARTUP_WAIT_S = 20.0
HEALTH_TIMEOUT_S = 1.0
MAX_ITEMS = 50
MAX_QTY = 100

CREATE_ORDERS_TABLE = (
    "CREATE TABLE IF NOT EXISTS orders ("
    " order_ref uuid PRIMARY KEY,"
    " items jsonb NOT NULL,"
    " amount_cents int NOT NULL,"
    " status text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)

REQUESTS = Counter("checkout_requests_total", "Checkout requests by outcome", ["outcome"])
DURATION = Histogram(
    "checkout_request_duration_seconds", "Checkout request duration by outcome", ["outcome"],
    buckets=(.005, .01, .025, .05, .075, .1, .15, .2, .25, .3, .4, .5, .75, 1, 1.5, 2, 3, 5, 10),
)
for _outcome in ("ok", "error", "client_error"):
    REQUESTS.labels(_outcome)
    DURATION.labels(_outcome)


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CheckoutSettings:
        return cls(
            port=env_int(environ, "CHECKOUT_PORT", default_port(PORT_OFFSET), 1, 65535),
            catalog_url=env_url(environ, "CHECKOUT_CATALOG_URL"),
            payments_url=env_url(environ, "CHECKOUT_PAYMENTS_URL"),
            database_url=env_str(environ, "CHECKOUT_DATABASE_URL"),
            catalog_timeout_s=env_float(environ, "CHECKOUT_CATALOG_TIMEOUT_S", 2.0, 0.001, 300),
            payments_timeout_s=env_float(environ, "CHECKOUT_PAYMENTS_TIMEOUT_S", 5.0, 0.001, 300),
            retries=env_int(environ, "CHECKOUT_RETRIES", 0, 0, 10),
            db_pool_size=env_int(environ, "CHECKOUT_DB_POOL_SIZE", 10, 1, 200),
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


class Checkout:
    """The checkout steps, over one HTTP client and one Postgres pool."""

    def __init__(self, settings: CheckoutSettings) -> None:
        self.settings = settings
        self.client: httpx.AsyncClient | None = None
        self.pool: AsyncConnectionPool | None = None

    async def start(self) -> None:
        s = self.settings
        self.client = http_client(max(s.catalog_timeout_s, s.payments_timeout_s))
        self.pool = AsyncConnectionPool(
            s.database_url, min_size=s.db_pool_size, max_size=s.db_pool_size,
            timeout=DB_POOL_WAIT_S, open=False, name="checkout",
            check=AsyncConnectionPool.check_connection,  # drop connections a restart killed
            kwargs={
                "autocommit": True,
                "connect_timeout": DB_CONNECT_TIMEOUT_S,
                "options": f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
            },
        )
        await self.pool.open(wait=True, timeout=DB_STARTUP_WAIT_S)
        async with self.pool.connection() as conn:
            await conn.execute(CREATE_ORDERS_TABLE)
        logger.info("checkout ready: pool of %d Postgres connections", s.db_pool_size)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.pool is not None:
            await self.pool.close(timeout=5)

    async def run(self, items: list[LineItem]) -> dict[str, Any]:
        prices = await self.fetch_prices(sorted({item.sku for item in items}))
        amount_cents = sum(prices[item.sku] * item.qty for item in items)
        order_ref = str(uuid.uuid4())
        await self.charge(order_ref, amount_cents)
        await self.record_order(order_ref, items, prices, amount_cents)
        return {"order_ref": order_ref, "amount_cents": amount_cents, "status": "paid"}

    async def fetch_prices(self, skus: list[str]) -> dict[str, int]:
        url = f"{self.settings.catalog_url}/prices"
        timeout_s = self.settings.catalog_timeout_s
        last = ""
        for _attempt in range(1 + self.settings.retries):
            try:
                async with asyncio.timeout(timeout_s):
                    response = await self._http.get(url, params={"skus": ",".join(skus)},
                                                     timeout=timeout_s)
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

    async def charge(self, order_ref: str, amount_cents: int) -> dict[str, Any]:
        timeout_s = self.settings.payments_timeout_s
        body = {"idempotency_key": order_ref, "order_ref": order_ref, "amount_cents": amount_cents}
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._http.post(f"{self.settings.payments_url}/payments",
                                                 json=body, timeout=timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            raise CheckoutFailed(502, "payment failed",
                                 f"payments gave no answer within {timeout_s}s") from None
        except httpx.HTTPError as exc:
            raise CheckoutFailed(502, "payment failed", f"payments unreachable: {exc!r}") from None
        if response.status_code != 200:
            raise CheckoutFailed(502, "payment failed",
                                 f"payments answered {response.status_code}: {response.text[:200]}")
        return response.json()

    async def record_order(self, order_ref: str, items: list[LineItem], prices: dict[str, int],
                           amount_cents: int) -> None:
        rows = [{"sku": i.sku, "qty": i.qty, "price_cents": prices[i.sku]} for i in items]
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO orders (order_ref, items, amount_cents, status)"
                    " VALUES (%s, %s, %s, 'paid')",
                    (order_ref, Jsonb(rows), amount_cents),
                )
        except (psycopg.Error, PoolTimeout) as exc:
            logger.error("order %s was charged but could not be recorded: %s", order_ref, exc)
            raise CheckoutFailed(500, "order not recorded", str(exc)[:300]) from None

    async def database_answers(self, _: Request) -> str | None:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            async with self._pool.connection(timeout=HEALTH_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
        return None

    @property
    def _http(self) -> httpx.AsyncClient:
        if self.client is None:
            raise RuntimeError("checkout is not started")
        return self.client

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

    async def post_checkout(request: Request) -> Response:
        started = time.perf_counter()
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
            REQUESTS.labels(outcome).inc()
            DURATION.labels(outcome).observe(time.perf_counter() - started)

    app = Starlette(
        routes=[
            Route("/checkout", post_checkout, methods=["POST"]),
            healthz_route(checkout.database_answers),
            metrics_route(),
        ],
        lifespan=lifespan,
    )
    app.state.checkout = checkout
    return app


def main() -> None:
    def build(environ: Mapping[str, str]) -> tuple[Starlette, int]:
        settings = CheckoutSettings.from_env(environ)
        return build_app(settings), settings.port

    serve(build)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


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
