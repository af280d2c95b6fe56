"""provider: simulates the external payment provider, with its own charge log in SQLite.

Run: ``python -m stack.services.provider`` (from the repo root). Settings (environment):

- ``PROVIDER_PORT`` (default 18103): listen port on 127.0.0.1.
- ``PROVIDER_STORE`` (required): path of the SQLite file holding the charge log (WAL mode;
  the file, its parent directory and the ``charges`` table are created on start). This is
  the provider's own store, never the Postgres under test.

Endpoints:

- ``POST /charges {"idempotency_key", "order_ref", "amount_cents"}`` → 200 with the charge
  ``{"charge_id", "idempotency_key", "order_ref", "amount_cents", "status": "captured",
  "captured_at", "replayed"}``. Charges are captured immediately (``captured_at`` is a unix
  float). The same ``idempotency_key`` again returns the same charge (``replayed: true``)
  and charges nothing more; the same key with a different order_ref/amount → 409.
  A malformed body → 400.
- ``GET /charges?since=<unix ts>`` (default 0) → ``{"charges": [...]}``: captured charges
  with ``captured_at >= since``, oldest first. Used by the money-safety probe.
- ``GET /healthz`` → 200 when the store answers ``SELECT 1``.
- ``GET /metrics`` → ``provider_charges_total{result="created|replayed|conflict"}``,
  ``provider_store_seconds`` (histogram of store calls).

SQLite runs on one dedicated thread (one connection), so the event loop never blocks on
it; every store call is bounded (``busy_timeout`` and an overall wait of 5 s).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stack.services.common import (
    default_port,
    env_int,
    env_str,
    healthz_route,
    json_error,
    metrics_route,
    read_json,
    serve,
    version_route,
)

__all__ = ["ProviderSettings", "ChargeStore", "build_app", "main"]

logger = logging.getLogger("stack.provider")

PORT_OFFSET = 3
STORE_CALL_TIMEOUT_S = 5.0
SQLITE_BUSY_TIMEOUT_S = 2.0
MAX_KEY_LENGTH = 200

T = TypeVar("T")

CHARGES = Counter("provider_charges_total", "Charge requests by result", ["result"])
STORE_SECONDS = Histogram("provider_store_seconds", "Time spent in the SQLite store per call")
for _result in ("created", "replayed", "conflict"):
    CHARGES.labels(_result)


@dataclass(frozen=True)
class ProviderSettings:
    port: int
    store: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProviderSettings:
        return cls(
            port=env_int(environ, "PROVIDER_PORT", default_port(PORT_OFFSET), 1, 65535),
            store=Path(env_str(environ, "PROVIDER_STORE")),
        )


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    order_ref: str
    amount_cents: int


class IdempotencyConflict(Exception):
    """The key was used before for a different order_ref or amount."""


class ChargeStore:
    """The charge log: one SQLite connection used only from one worker thread."""

    _COLUMNS = "charge_id, idempotency_key, order_ref, amount_cents, status, captured_at"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charge-store")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open_sync)

    async def close(self) -> None:
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    async def charge(self, request: ChargeRequest) -> tuple[dict[str, Any], bool]:
        """Capture a charge; returns ``(charge, replayed)``."""
        return await self._run(self._charge_sync, request)

    async def since(self, since: float) -> list[dict[str, Any]]:
        return await self._run(self._since_sync, since)

    async def ping(self) -> None:
        await self._run(self._ping_sync)

    # --- runs on the store thread -------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, func, *args), STORE_CALL_TIMEOUT_S
            )
        finally:
            STORE_SECONDS.observe(time.perf_counter() - started)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS charges ("
            " charge_id TEXT PRIMARY KEY,"
            " idempotency_key TEXT NOT NULL UNIQUE,"
            " order_ref TEXT NOT NULL,"
            " amount_cents INTEGER NOT NULL,"
            " status TEXT NOT NULL,"
            " captured_at REAL NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS charges_captured_at ON charges(captured_at)")
        self._conn = conn

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("charge store is not open")
        return self._conn

    def _charge_sync(self, request: ChargeRequest) -> tuple[dict[str, Any], bool]:
        db = self._db()
        cursor = db.execute(
            "INSERT INTO charges (charge_id, idempotency_key, order_ref, amount_cents, status,"
            " captured_at) VALUES (?, ?, ?, ?, 'captured', ?)"
            " ON CONFLICT(idempotency_key) DO NOTHING",
            (f"ch_{uuid.uuid4().hex}", request.idempotency_key, request.order_ref,
             request.amount_cents, time.time()),
        )
        replayed = cursor.rowcount == 0
        row = db.execute(
            f"SELECT {self._COLUMNS} FROM charges WHERE idempotency_key = ?",
            (request.idempotency_key,),
        ).fetchone()
        charge = _row_json(row)
        if replayed and (charge["order_ref"], charge["amount_cents"]) != (
            request.order_ref, request.amount_cents
        ):
            raise IdempotencyConflict(charge["charge_id"])
        return charge, replayed

    def _since_sync(self, since: float) -> list[dict[str, Any]]:
        rows = self._db().execute(
            f"SELECT {self._COLUMNS} FROM charges WHERE status = 'captured' AND captured_at >= ?"
            " ORDER BY captured_at",
            (since,),
        ).fetchall()
        return [_row_json(row) for row in rows]

    def _ping_sync(self) -> None:
        self._db().execute("SELECT 1").fetchone()


def build_app(settings: ProviderSettings) -> Starlette:
    store = ChargeStore(settings.store)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await store.open()
        logger.info("charge store open at %s", settings.store)
        try:
            yield
        finally:
            await store.close()

    async def create_charge(request: Request) -> Response:
        parsed = _parse_charge(await read_json(request))
        if isinstance(parsed, str):
            return json_error(400, parsed)
        try:
            charge, replayed = await store.charge(parsed)
        except IdempotencyConflict as exc:
            CHARGES.labels("conflict").inc()
            return json_error(409, "idempotency_key already used for a different charge",
                              charge_id=str(exc))
        except (sqlite3.Error, TimeoutError) as exc:
            logger.error("charge store failed: %s", exc)
            return json_error(503, "charge store unavailable", detail=str(exc))
        CHARGES.labels("replayed" if replayed else "created").inc()
        return JSONResponse({**charge, "replayed": replayed})

    async def list_charges(request: Request) -> Response:
        raw = request.query_params.get("since", "0")
        try:
            since = float(raw)
        except ValueError:
            return json_error(400, f"since must be a unix timestamp, got {raw!r}")
        try:
            charges = await store.since(since)
        except (sqlite3.Error, TimeoutError) as exc:
            return json_error(503, "charge store unavailable", detail=str(exc))
        return JSONResponse({"charges": charges})

    async def store_answers(_: Request) -> str | None:
        await store.ping()
        return None

    app = Starlette(
        routes=[
            Route("/charges", create_charge, methods=["POST"]),
            Route("/charges", list_charges, methods=["GET"]),
            healthz_route(store_answers),
            version_route("provider", settings),
            metrics_route(),
        ],
        lifespan=lifespan,
    )
    app.state.store = store
    return app


def main() -> None:
    def build(environ: Mapping[str, str]) -> tuple[Starlette, int]:
        settings = ProviderSettings.from_env(environ)
        return build_app(settings), settings.port

    serve(build)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _row_json(row: tuple[Any, ...]) -> dict[str, Any]:
    charge_id, key, order_ref, amount_cents, status, captured_at = row
    return {
        "charge_id": charge_id, "idempotency_key": key, "order_ref": order_ref,
        "amount_cents": amount_cents, "status": status, "captured_at": captured_at,
    }


def _parse_charge(body: Any) -> ChargeRequest | str:
    """A :class:`ChargeRequest`, or the reason the body is invalid."""
    if not isinstance(body, dict):
        return 'body must be a JSON object {"idempotency_key", "order_ref", "amount_cents"}'
    key, order_ref, amount = body.get("idempotency_key"), body.get("order_ref"), body.get("amount_cents")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        return f"idempotency_key must be a non-empty string of at most {MAX_KEY_LENGTH} chars"
    if not isinstance(order_ref, str) or not order_ref:
        return "order_ref must be a non-empty string"
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "amount_cents must be a positive integer"
    return ChargeRequest(key, order_ref, amount)


if __name__ == "__main__":
    main()
