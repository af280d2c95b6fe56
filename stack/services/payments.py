"""payments: charges through the payment provider, passing the idempotency key through.

Run: ``python -m stack.services.payments`` (from the repo root). Settings (environment):

- ``PAYMENTS_PORT`` (default 18102): listen port on 127.0.0.1.
- ``PAYMENTS_PROVIDER_URL`` (required): base URL of the provider (in the stack, the fault
  proxy's provider port, base+13).
- ``PAYMENTS_PROVIDER_TIMEOUT_S`` (default 2): deadline for the whole provider call
  (connect + send + wait for the answer, every attempt together).
- ``PAYMENTS_PROVIDER_RETRIES`` (default 2, 0-5): more attempts when the provider's answer
  was lost (connection reset or closed without a response: the charge may be captured),
  each with the SAME idempotency key, so the provider replays a captured charge.
- ``PAYMENTS_RETRY_FRESH_KEY`` (default 0): 1 makes each retry use a FRESH idempotency key
  (``<key>-retry-<random>``). A deliberate bug, the weakened variant experiment 4
  (payments-response-lost) must catch: a lost answer then becomes a second charge.

Endpoints:

- ``POST /payments {"idempotency_key", "order_ref", "amount_cents"}`` → 200
  ``{"payment_id", "charge_id", "status": "captured"}`` once the provider captured the
  charge. ``payment_id`` is derived from the charge id, so a retry with the same key gets
  the same payment. A malformed body → 400; the provider refusing or unreachable (nothing
  charged) → 502 ``{"error", "detail"}``; the provider's outcome UNKNOWN (no answer within
  the deadline, or every attempt's answer lost after the request was sent: the charge may
  be captured) → 504 ``{"error": "payment provider outcome unknown", "detail"}``, so the
  caller retries with the same key or leaves the order pending, never marks it failed.
- ``GET /healthz`` → 200 while the service runs (it does not probe the provider: a slow
  provider must show as payment errors, not as payments being down).
- ``GET /metrics`` → ``payments_requests_total{outcome="ok|provider_error|provider_timeout|
  provider_lost|client_error"}``, histogram ``payments_request_duration_seconds{outcome}``,
  ``payments_provider_retries_total``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stack.services.common import (
    default_port,
    env_bool,
    env_float,
    env_int,
    env_url,
    healthz_route,
    json_error,
    metrics_route,
    read_json,
    serve,
    version_route,
)
from stack.services.upstream import AttemptTimeout, Upstream

__all__ = ["PaymentsSettings", "build_app", "main"]

logger = logging.getLogger("stack.payments")

PORT_OFFSET = 2
PAYMENT_ID_NAMESPACE = uuid.UUID("5b0e3f8e-4a53-4a3c-9d1e-7f2f8c1a6b10")
OUTCOMES = ("ok", "provider_error", "provider_timeout", "provider_lost", "client_error")

REQUESTS = Counter("payments_requests_total", "Payment requests by outcome", ["outcome"])
DURATION = Histogram(
    "payments_request_duration_seconds", "Payment request duration by outcome", ["outcome"],
    buckets=(.005, .01, .025, .05, .075, .1, .15, .2, .25, .3, .4, .5, .75, 1, 1.5, 2, 3, 5, 10),
)
RETRIES = Counter("payments_provider_retries_total", "Provider calls retried after a lost answer")
for _outcome in OUTCOMES:
    REQUESTS.labels(_outcome)


@dataclass(frozen=True)
class PaymentsSettings:
    port: int
    provider_url: str
    provider_timeout_s: float
    provider_retries: int = 2
    retry_fresh_key: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PaymentsSettings:
        return cls(
            port=env_int(environ, "PAYMENTS_PORT", default_port(PORT_OFFSET), 1, 65535),
            provider_url=env_url(environ, "PAYMENTS_PROVIDER_URL"),
            provider_timeout_s=env_float(environ, "PAYMENTS_PROVIDER_TIMEOUT_S", 2.0, 0.001, 300),
            provider_retries=env_int(environ, "PAYMENTS_PROVIDER_RETRIES", 2, 0, 5),
            retry_fresh_key=env_bool(environ, "PAYMENTS_RETRY_FRESH_KEY", False),
        )


class ProviderFailed(Exception):
    """No captured charge to show; ``outcome`` is the metric label. ``unknown``: the provider
    may have captured it (no answer in time, or the answer lost after the request was sent)."""

    def __init__(self, outcome: str, detail: str, unknown: bool = False) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.unknown = unknown


def build_app(settings: PaymentsSettings) -> Starlette:
    state: dict[str, Upstream] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state["provider"] = Upstream("provider", settings.provider_url)
        try:
            yield
        finally:
            await state.pop("provider").aclose()

    async def post_with_retries(body: dict[str, Any]) -> httpx.Response:
        """POST the charge; an answer lost in transit is retried (same key unless the
        deliberate fresh-key bug is switched on)."""
        attempt_body = body
        deadline = time.monotonic() + settings.provider_timeout_s
        for attempt in range(1 + settings.provider_retries):
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise AttemptTimeout("no time left for a retry")
            try:
                return await state["provider"].request("POST", "/charges", left_s, json=attempt_body)
            except httpx.TimeoutException:
                raise
            except httpx.TransportError as exc:
                if attempt == settings.provider_retries:
                    raise
                RETRIES.inc()
                logger.info("provider answer lost (%r): retry %d of %s", exc, attempt + 1,
                            body["idempotency_key"])
                if settings.retry_fresh_key:
                    attempt_body = {**body, "idempotency_key": f"{body['idempotency_key']}-retry-"
                                                               f"{uuid.uuid4().hex[:12]}"}
        raise AssertionError("unreachable")

    async def charge(body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await post_with_retries(body)
        except (TimeoutError, httpx.TimeoutException):
            raise ProviderFailed(
                "provider_timeout", f"provider gave no answer within {settings.provider_timeout_s}s",
                unknown=True,
            ) from None
        except httpx.ConnectError as exc:  # the request was never sent: nothing charged
            raise ProviderFailed("provider_error", f"provider unreachable: {exc!r}") from None
        except httpx.TransportError as exc:  # sent, answer lost: the charge may be captured
            raise ProviderFailed("provider_lost", f"provider answer lost: {exc!r}", unknown=True) from None
        except httpx.HTTPError as exc:
            raise ProviderFailed("provider_error", f"provider unreachable: {exc!r}") from None
        if response.status_code != 200:
            raise ProviderFailed(
                "provider_error", f"provider answered {response.status_code}: {response.text[:200]}"
            )
        try:
            charge = response.json()
            if charge.get("status") != "captured" or not charge.get("charge_id"):
                raise ValueError(f"charge not captured: {charge!r}"[:200])
        except ValueError as exc:
            raise ProviderFailed("provider_error", f"unexpected provider answer: {exc}") from None
        return charge

    async def create_payment(request: Request) -> Response:
        started = time.perf_counter()
        outcome = "ok"
        try:
            body = await read_json(request)
            problem = _invalid_payment(body)
            if problem:
                outcome = "client_error"
                return json_error(400, problem)
            try:
                captured = await charge({
                    "idempotency_key": body["idempotency_key"],
                    "order_ref": body["order_ref"],
                    "amount_cents": body["amount_cents"],
                })
            except ProviderFailed as exc:
                outcome = exc.outcome
                logger.warning("payment %s failed: %s", body["idempotency_key"], exc)
                if exc.unknown:
                    return json_error(504, "payment provider outcome unknown", detail=str(exc))
                return json_error(502, "payment provider failed", detail=str(exc))
            return JSONResponse({
                "payment_id": str(uuid.uuid5(PAYMENT_ID_NAMESPACE, captured["charge_id"])),
                "charge_id": captured["charge_id"],
                "status": "captured",
            })
        finally:
            REQUESTS.labels(outcome).inc()
            DURATION.labels(outcome).observe(time.perf_counter() - started)

    return Starlette(
        routes=[
            Route("/payments", create_payment, methods=["POST"]),
            healthz_route(),
            version_route("payments", settings),
            metrics_route(),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    def build(environ: Mapping[str, str]) -> tuple[Starlette, int]:
        settings = PaymentsSettings.from_env(environ)
        return build_app(settings), settings.port

    serve(build)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _invalid_payment(body: Any) -> str | None:
    """Why the body is not a valid payment request, or None."""
    if not isinstance(body, dict):
        return 'body must be a JSON object {"idempotency_key", "order_ref", "amount_cents"}'
    for name in ("idempotency_key", "order_ref"):
        if not isinstance(body.get(name), str) or not body[name]:
            return f"{name} must be a non-empty string"
    amount = body.get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return "amount_cents must be a positive integer"
    return None


if __name__ == "__main__":
    main()
