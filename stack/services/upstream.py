"""One upstream's HTTP connection pool, with attempts bounded without cancelling inside it.

Why this exists. httpcore 1.0.9 (the newest; httpx 0.28.1) leaks a pool slot for good when
a request is cancelled while it waits for a connection the pool has just created for it
(httpcore issue #1093; the fixes, PRs #1094 and #1099, are unreleased). Bounding each attempt
with ``asyncio.timeout`` around ``client.post`` does exactly that under contention: at a
flash sale's rate, during a catalog outage, checkout's single pool lost all 100 of its slots
in seconds and every later request, to catalog and to payments, failed with a pool timeout
against healthy services, until the process was restarted.

httpx's own pool timeout is no safer: it is the same cancellation, delivered by a cancel
scope inside that wait. Measured with 40 workers churning attempts of 1-30 ms against a
10-connection pool for 5 s: bounded by ``asyncio.timeout``, the pool was left with 10
connections held by no request and 0 of 10 later requests answered; bounded by httpx's
own timeouts alone, with nothing of ours cancelling, it wedged the same way (0 of 10, three
runs of three). With the semaphore below: 10 of 10, no pool replaced (three of three).

So an attempt here is never cancelled inside httpcore, and never waits inside it: a
semaphore of ``max_connections`` slots is taken (with the attempt's timeout) before the
request is handed to the pool, so the pool always has a connection for it at once and its
wait-for-a-connection is never entered. ``request`` starts the attempt as a task with
httpx's own timeouts (connect and write ``timeout_s``; read ``linger_s``, 1 s, or
``timeout_s`` if longer), and waits for it at most ``timeout_s``. When the wait runs out the
caller gets :class:`AttemptTimeout` at once (the hard bound the caller's budget relies on)
and the attempt is *abandoned*: it goes on reading its answer for up to ``linger_s`` and
then gives its connection back to the pool, or ends by httpx's read timeout, through
httpcore's ordinary error path, which closes the connection. Abandoned attempts are counted
(``upstream_attempts_abandoned_total``).

Why linger: an attempt given up on at once (read timeout = ``timeout_s``) closes its
connection, and the next request opens a new one. At a flash sale's rate that churn costs
checkout CPU, a late event loop makes more 80 ms attempts time out, and so on. Measured at 84
checkouts/s on a fresh stack, catalog killed for 15 s and started again (one trial each):
without linger, the restart set off 7 s of 80-231 payments timeouts a second, checkout at a
full core and about 500 failed checkouts; with 1 s of linger, no timeout and no failure.

As a last line of defence a pool that stops answering is replaced: when an attempt ends
with ``httpx.PoolTimeout`` from httpcore itself (which the semaphore should make
impossible) the upstream switches new
requests to a fresh client (at most once per ``RECYCLE_MIN_INTERVAL_S``) and closes the old
one after ``CLOSE_GRACE_S``, when every attempt still on it has ended by its timeouts
(``upstream_pools_recycled_total``).

One ``Upstream`` per service called: a slow or dead catalog cannot take payments' slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
from prometheus_client import Counter

__all__ = ["Upstream", "AttemptTimeout"]

logger = logging.getLogger("stack.upstream")

MAX_CONNECTIONS = 200
LINGER_S = 1.0
RECYCLE_MIN_INTERVAL_S = 5.0
CLOSE_GRACE_S = 10.0
CLOSE_TIMEOUT_S = 5.0

ABANDONED = Counter("upstream_attempts_abandoned_total",
                    "Attempts given up on at their deadline and left to end by their own timeouts",
                    ["upstream"])
RECYCLED = Counter("upstream_pools_recycled_total",
                   "Connection pools replaced after a pool timeout", ["upstream"])


class AttemptTimeout(TimeoutError):
    """The upstream gave no answer within the attempt's timeout."""


class SlotTimeout(httpx.PoolTimeout):
    """Every connection slot stayed busy for the attempt's whole timeout (our semaphore's
    wait, not httpcore's: it says nothing about the pool's health)."""


class Upstream:
    """The HTTP pool to one upstream service (``name`` labels its metrics)."""

    def __init__(self, name: str, base_url: str, max_connections: int = MAX_CONNECTIONS,
                 linger_s: float = LINGER_S) -> None:
        self.name = name
        self.linger_s = linger_s
        self.base_url = base_url.rstrip("/")
        self.max_connections = max_connections
        self.recycled = 0
        self._client = self._new_client()
        self._slots = asyncio.Semaphore(max_connections)
        self._attempts: set[asyncio.Task[httpx.Response]] = set()
        self._retired: list[httpx.AsyncClient] = []
        self._closers: set[asyncio.Task[None]] = set()
        self._last_recycle = float("-inf")
        ABANDONED.labels(name)
        RECYCLED.labels(name)

    async def request(self, method: str, path: str, timeout_s: float,
                      on_answer: Callable[[float], None] | None = None, **kwargs: Any) -> httpx.Response:
        """One attempt: the response, or :class:`AttemptTimeout` after ``timeout_s`` at most;
        other failures as httpx raises them (``httpx.HTTPError``). ``on_answer(seconds)`` is
        called when a response arrives, also for an attempt already given up on (it may still
        answer while it lingers)."""
        started = time.monotonic()
        attempt = asyncio.ensure_future(self._attempt(method, f"{self.base_url}{path}",
                                                      timeout_s, kwargs))
        self._attempts.add(attempt)
        attempt.add_done_callback(self._attempt_ended)
        if on_answer is not None:
            attempt.add_done_callback(partial(_report_answer, on_answer, started))
        try:
            done, _ = await asyncio.wait({attempt}, timeout=timeout_s)
        except asyncio.CancelledError:  # our caller was cancelled: the attempt still is not
            ABANDONED.labels(self.name).inc()
            raise
        if not done:
            ABANDONED.labels(self.name).inc()
            raise AttemptTimeout(f"{self.name} gave no answer within {timeout_s:.3g}s")
        return attempt.result()

    async def _attempt(self, method: str, url: str, timeout_s: float,
                       kwargs: dict[str, Any]) -> httpx.Response:
        try:
            async with asyncio.timeout(timeout_s):  # cancels only our own wait for a slot
                await self._slots.acquire()
        except TimeoutError:
            raise SlotTimeout(f"no free connection to {self.name} within {timeout_s:.3g}s") from None
        try:
            # read: an attempt given up on lingers to read its answer, keeping its connection
            timeout = httpx.Timeout(timeout_s, read=max(timeout_s, self.linger_s))
            return await self._client.request(method, url, timeout=timeout, **kwargs)
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        """Close the pool (and any pool being retired); attempts in flight end with errors."""
        for closer in list(self._closers):
            closer.cancel()
        for client in [*self._retired, self._client]:
            await _close(client)

    def _attempt_ended(self, attempt: asyncio.Task[httpx.Response]) -> None:
        self._attempts.discard(attempt)
        if attempt.cancelled():
            return
        error = attempt.exception()  # also marks an abandoned attempt's error as retrieved
        if isinstance(error, httpx.PoolTimeout) and not isinstance(error, SlotTimeout):
            self._recycle()

    def _recycle(self) -> None:
        now = time.monotonic()
        if now - self._last_recycle < RECYCLE_MIN_INTERVAL_S:
            return
        self._last_recycle = now
        old, self._client = self._client, self._new_client()
        self.recycled += 1
        RECYCLED.labels(self.name).inc()
        logger.warning("%s: a pool timeout: new requests go to a fresh connection pool; the old "
                       "one closes in %gs", self.name, CLOSE_GRACE_S)
        self._retired.append(old)
        closer = asyncio.ensure_future(self._close_later(old))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _close_later(self, client: httpx.AsyncClient) -> None:
        await asyncio.sleep(CLOSE_GRACE_S)
        self._retired.remove(client)
        await _close(client)

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self.max_connections,
                                max_keepalive_connections=self.max_connections),
            trust_env=False,  # never route loopback traffic through an environment proxy
        )


def _report_answer(on_answer: Callable[[float], None], started: float,
                   attempt: asyncio.Task[httpx.Response]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        on_answer(time.monotonic() - started)


async def _close(client: httpx.AsyncClient) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await client.aclose()
