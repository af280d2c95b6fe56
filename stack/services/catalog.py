"""catalog: products and prices, held in memory; can reproduce the previous build's fd leak.

Run: ``python -m stack.services.catalog`` (from the repo root). Settings (environment):

- ``CATALOG_PORT`` (default 18101): listen port on 127.0.0.1.
- ``CATALOG_FD_LEAK`` (0|1, default 0): start with the fd leak switched on.

Endpoints:

- ``GET /products`` → ``{"products": [{"sku", "name", "price_cents"}, ...]}`` (20 products,
  skus ``sku-001`` … ``sku-020``).
- ``GET /prices?skus=a,b`` → ``{"prices": {"a": cents, "b": cents}}``; a missing/empty
  ``skus`` → 400; any unknown sku → 404 ``{"error", "unknown_skus": [...]}``.
- ``POST /admin/fd-leak {"enabled": true|false}`` → ``{"fd_leak": bool, "leaked_fds": n}``.
  While the leak is on, every ``/products`` and ``/prices`` request opens ``/dev/null`` and
  keeps it referenced forever: the process's open fds grow steadily with traffic (the
  "known fd-leak signature" the remediator watches for). Switching it off stops the
  growth; only a restart gives the leaked fds back.
- ``GET /healthz`` → 200 ``{"status":"ok"}`` while the process can still open files.
- ``GET /metrics`` → ``catalog_open_fds`` (gauge, counted from /proc/self/fd),
  ``catalog_leaked_fds``, ``catalog_requests_total{endpoint,status}``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from prometheus_client import Counter, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stack.services.common import (
    count_open_fds,
    default_port,
    env_bool,
    env_int,
    healthz_route,
    json_error,
    metrics_route,
    read_json,
    serve,
    version_route,
)

__all__ = ["CatalogSettings", "PRODUCTS", "build_app", "main"]

logger = logging.getLogger("stack.catalog")

PORT_OFFSET = 1


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price_cents: int


_NAMES = [
    "Espresso beans 1kg", "Filter papers", "Ceramic mug", "Milk jug", "Hand grinder",
    "Pour-over dripper", "Kettle gooseneck", "Scale 0.1g", "Tamper 58mm", "Knock box",
    "Cleaning tablets", "Descaler", "Travel cup", "Cold brew jar", "Chemex 6-cup",
    "Aeropress", "Moka pot", "French press", "Latte art pen", "Barista towel",
]
PRODUCTS: dict[str, Product] = {
    f"sku-{i:03d}": Product(f"sku-{i:03d}", name, 250 + 175 * i)
    for i, name in enumerate(_NAMES, start=1)
}


@dataclass(frozen=True)
class CatalogSettings:
    port: int
    fd_leak: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CatalogSettings:
        return cls(
            port=env_int(environ, "CATALOG_PORT", default_port(PORT_OFFSET), 1, 65535),
            fd_leak=env_bool(environ, "CATALOG_FD_LEAK", False),
        )


REQUESTS = Counter("catalog_requests_total", "Catalog requests", ["endpoint", "status"])
OPEN_FDS = Gauge("catalog_open_fds", "Open file descriptors of the catalog process")
LEAKED_FDS = Gauge("catalog_leaked_fds", "File descriptors leaked on purpose (fd-leak mode)")
OPEN_FDS.set_function(count_open_fds)


class FdLeak:
    """The previous build's defect, reproducible: files opened per request, never closed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._kept: list[IO[bytes]] = []
        LEAKED_FDS.set_function(lambda: len(self._kept))

    def on_request(self) -> None:
        if self.enabled:
            self._kept.append(open("/dev/null", "rb"))  # noqa: SIM115 - leaked on purpose

    @property
    def leaked(self) -> int:
        return len(self._kept)


def build_app(settings: CatalogSettings) -> Starlette:
    leak = FdLeak(settings.fd_leak)

    async def products(_: Request) -> Response:
        leak.on_request()
        REQUESTS.labels("products", "200").inc()
        return JSONResponse({"products": [_product_json(p) for p in PRODUCTS.values()]})

    async def prices(request: Request) -> Response:
        leak.on_request()
        skus = [s.strip() for s in request.query_params.get("skus", "").split(",") if s.strip()]
        if not skus:
            REQUESTS.labels("prices", "400").inc()
            return json_error(400, "query parameter 'skus' (comma-separated) is required")
        unknown = sorted({s for s in skus if s not in PRODUCTS})
        if unknown:
            REQUESTS.labels("prices", "404").inc()
            return json_error(404, "unknown sku", unknown_skus=unknown)
        REQUESTS.labels("prices", "200").inc()
        return JSONResponse({"prices": {s: PRODUCTS[s].price_cents for s in skus}})

    async def fd_leak_switch(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return json_error(400, 'body must be {"enabled": true|false}')
        leak.enabled = body["enabled"]
        logger.warning("fd leak switched %s (leaked so far: %d)", "on" if leak.enabled else "off",
                       leak.leaked)
        return JSONResponse({"fd_leak": leak.enabled, "leaked_fds": leak.leaked})

    async def can_open_files(_: Request) -> str | None:
        with open("/dev/null", "rb"):
            return None

    app = Starlette(routes=[
        Route("/products", products, methods=["GET"]),
        Route("/prices", prices, methods=["GET"]),
        Route("/admin/fd-leak", fd_leak_switch, methods=["POST"]),
        healthz_route(can_open_files),
        version_route("catalog", settings),
        metrics_route(),
    ])
    app.state.fd_leak = leak
    if settings.fd_leak:
        logger.warning("starting with the fd leak switched on (CATALOG_FD_LEAK=1)")
    return app


def main() -> None:
    def build(environ: Mapping[str, str]) -> tuple[Starlette, int]:
        settings = CatalogSettings.from_env(environ)
        return build_app(settings), settings.port

    serve(build)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _product_json(product: Product) -> dict[str, Any]:
    return {"sku": product.sku, "name": product.name, "price_cents": product.price_cents}


if __name__ == "__main__":
    main()
