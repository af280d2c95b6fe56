"""stack.services.upstream: an upstream's pool survives attempts given up on under contention.

The churn below is what wedged checkout at a flash sale's rate (httpcore issue #1093): many
attempts with deadlines of a few milliseconds against a small pool. Run against a real HTTP
server on 127.0.0.1 in this process (a tiny one: it answers every request after 0-20 ms).
Bounded in count of workers and in time (3 s of churn).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import pytest

from stack.services.upstream import AttemptTimeout, Upstream

pytestmark = pytest.mark.fast

POOL = 10
WORKERS = 40
CHURN_S = 3.0


async def _answer_after_a_moment(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while True:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                head += chunk
            await asyncio.sleep(random.uniform(0, 0.02))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    writer.close()


async def _churn_then_ask(upstream: Upstream) -> tuple[int, list[str]]:
    end = time.monotonic() + CHURN_S

    async def worker() -> None:
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                await upstream.request("GET", "/", random.uniform(0.001, 0.03))

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    errors: list[str] = []
    answered = 0
    for _ in range(10):
        try:
            response = await upstream.request("GET", "/", 2.0)
            answered += response.status_code == 200
        except Exception as exc:  # noqa: BLE001 - the test reports what failed
            errors.append(repr(exc))
    return answered, errors


@contextlib.asynccontextmanager
async def _upstream_served_by(handler, **kwargs) -> AsyncIterator[Upstream]:
    """An Upstream to a real HTTP server on 127.0.0.1 run by ``handler``; on the way out,
    every attempt it abandoned must have ended by its own timeouts."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream("test-upstream", f"http://127.0.0.1:{port}", **kwargs)
    try:
        yield upstream
        deadline = time.monotonic() + 5
        while upstream._attempts and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not upstream._attempts, "an abandoned attempt did not end by its own timeouts"
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()


def test_pool_keeps_answering_after_attempts_abandoned_under_contention() -> None:
    async def scenario() -> None:
        async with _upstream_served_by(_answer_after_a_moment, max_connections=POOL) as upstream:
            answered, errors = await _churn_then_ask(upstream)
            assert (answered, errors) == (10, [])
            assert upstream.recycled == 0, "the pool had to be replaced: it leaked its slots"

    asyncio.run(scenario())


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while await reader.read(4096):  # read until the client gives up and closes
            pass
    writer.close()


def test_attempt_is_bounded_by_its_timeout_even_when_the_upstream_never_answers() -> None:
    async def scenario() -> None:
        async with _upstream_served_by(_never_answer) as upstream:
            started = time.monotonic()
            with pytest.raises(AttemptTimeout, match="no answer within 0.2s"):
                await upstream.request("GET", "/", 0.2)
            assert time.monotonic() - started < 2.0  # the bound, far above 0.2 s for a busy host

    asyncio.run(scenario())
