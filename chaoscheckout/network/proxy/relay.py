"""The TCP relay of one route: passthrough, plus the latency toxic on the request direction.

Built on asyncio protocols (callbacks, no coroutine per chunk): passthrough writes each
received chunk straight to the other transport, with the transports' own flow control
(a full write buffer pauses reading on the other side). A chunk the toxic picks (see
:mod:`.toxic` for the ``connection`` and ``request`` scopes) is queued with its due time
(arrival + drawn delay), and so is any chunk arriving behind it; a timer writes queued
chunks in arrival order, so bytes keep their order and a streamed body is not delayed
cumulatively. Responses are never delayed; a response chunk marks the connection as
"answered", so its next upstream chunk starts a new exchange.

The response-loss toxic (:mod:`.loss`) picks exchanges as they start; a picked one's
request goes through, and the first response chunk of it is dropped and the client
connection reset (the upstream one closed). With neither toxic set, the fast path is all
that runs: it costs one more attribute test per request chunk (``route.loss``) and one per
response chunk (``conn.lose_response``) than before the response-loss toxic existed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass, field

from chaoscheckout.network.proxy.loss import ResponseLossToxic
from chaoscheckout.network.proxy.toxic import LatencyToxic

__all__ = ["Route", "RouteStats", "parse_route"]

logger = logging.getLogger("chaoscheckout.proxy")

CONNECT_TIMEOUT_S = 5.0
MAX_PENDING_BYTES = 4 * 1024 * 1024  # delayed bytes held before the client is paused


@dataclass
class RouteStats:
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    connections_total: int = 0
    connections_active: int = 0
    connections_failed: int = 0
    delayed_chunks: int = 0
    delayed_connections: int = 0
    toxic_exchanges: int = 0  # exchanges that started while a toxic was live
    delayed_exchanges: int = 0
    lost_responses: int = 0  # responses dropped by the response-loss toxic


@dataclass
class Route:
    name: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    listen_host: str = "127.0.0.1"
    toxic: LatencyToxic | None = None
    loss: ResponseLossToxic | None = None
    stats: RouteStats = field(default_factory=RouteStats)
    rng: random.Random = field(default_factory=random.Random)
    server: asyncio.base_events.Server | None = None

    def live_toxic(self) -> LatencyToxic | None:
        """The toxic if it is set and not expired (an expired toxic is dropped here)."""
        toxic = self.toxic
        if toxic is not None and toxic.expired():
            logger.info("route %s: latency toxic %s expired", self.name, toxic.fault_id)
            self.toxic = None
            return None
        return toxic

    def live_loss(self) -> ResponseLossToxic | None:
        """The response-loss toxic if set and not expired (an expired one is dropped here)."""
        loss = self.loss
        if loss is not None and loss.expired():
            logger.info("route %s: response-loss toxic %s expired", self.name, loss.fault_id)
            self.loss = None
            return None
        return loss

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), self.listen_host, self.listen_port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def describe(self) -> dict:
        toxic = self.live_toxic()
        loss = self.live_loss()
        return {
            "name": self.name,
            "listen": f"{self.listen_host}:{self.listen_port}",
            "upstream": f"{self.upstream_host}:{self.upstream_port}",
            "latency": toxic.to_dict() if toxic else None,
            "response_loss": loss.to_dict() if loss else None,
            "connections_active": self.stats.connections_active,
        }


class _Connection(asyncio.Protocol):
    """The client side of one proxied connection; owns the upstream side."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.loop = asyncio.get_running_loop()
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.generation = -1
        self.affected = False
        self.answered = True  # the upstream spoke since our last upstream chunk (or none yet)
        self.pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.client_eof = False  # the client sent EOF (to forward once pending is flushed)
        self.upstream_eof = False
        self.closed = False
        self.paused_by: set[str] = set()  # reasons the client's reading is paused
        self.held_by_toxic = False  # a chunk the toxic delayed is queued (not only connecting)
        self.lose_response: ResponseLossToxic | None = None  # this exchange's response is dropped

    # client side ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport
        self.route.stats.connections_total += 1
        self.route.stats.connections_active += 1
        self._pause_client("connecting")
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        route = self.route
        try:
            connecting = self.loop.create_connection(
                lambda: _Upstream(self), route.upstream_host, route.upstream_port
            )
            upstream, _ = await asyncio.wait_for(connecting, CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            route.stats.connections_failed += 1
            logger.warning("route %s: upstream %s:%s: %s", route.name, route.upstream_host,
                           route.upstream_port, exc)
            self.close()
            return
        if self.closed:
            upstream.close()
            return
        self.upstream = upstream
        if self.pending and self.timer is None:  # bytes that arrived while connecting
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)
        self._resume_client("connecting")

    def data_received(self, data: bytes) -> None:
        route = self.route
        route.stats.bytes_upstream += len(data)
        starts = self.answered  # first chunk after the upstream answered: a new exchange?
        self.answered = False
        upstream = self.upstream
        if route.toxic is None and route.loss is None and upstream is not None and not self.pending:
            upstream.write(data)  # the fast path: no toxic set, nothing held back
            return
        if starts and route.loss is not None:
            self._decide_loss()
        toxic = route.live_toxic()
        if self.upstream is None and not self.client.is_closing():
            # Python 3.11 re-enables reading right after connection_made, so bytes can
            # arrive while the upstream is still connecting (slow DNS, e.g. in a
            # container): queue them and stop reading until connected.
            self.client.pause_reading()
        if toxic is None:
            if not self.pending and self.upstream is not None:
                self.upstream.write(data)
                return
            delay = 0.0
        else:
            delay = self._toxic_delay(toxic, starts and not self.pending)
            if delay <= 0 and not self.pending and self.upstream is not None:
                self.upstream.write(data)
                return
            if delay > 0 or self.held_by_toxic:  # own delay, or held behind a delayed chunk
                toxic.counters.chunks_delayed += 1  # (not: only held while connecting)
        # queued (even undelayed) behind earlier delayed chunks: keeps the byte order
        if delay > 0:
            route.stats.delayed_chunks += 1
            self.held_by_toxic = True
        self.pending.append((self.loop.time() + delay, data))
        self.pending_bytes += len(data)
        if self.pending_bytes > MAX_PENDING_BYTES:
            self._pause_client("pending")
        if self.timer is None:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)

    def _decide_loss(self) -> None:
        """A new exchange under a live response-loss toxic: drop its response or not."""
        loss = self.route.live_loss()
        if loss is None:
            return
        loss.counters.exchanges_seen += 1
        if loss.pick(self.route.rng):
            loss.counters.exchanges_picked += 1
            self.lose_response = loss

    def lose(self) -> bool:
        """The upstream answered a picked exchange: drop the answer, reset the caller."""
        loss, self.lose_response = self.lose_response, None
        if self.route.loss is not loss:  # removed (reverted) meanwhile: the response goes through
            return False
        loss.counters.responses_lost += 1
        self.route.stats.lost_responses += 1
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.pending.clear()
        if self.client is not None:
            self.client.abort()  # no FIN after a response: the caller sees a reset/close
        if self.upstream is not None:
            self.upstream.abort()
        return True

    def _toxic_delay(self, toxic: LatencyToxic, new_exchange: bool) -> float:
        """This chunk's own delay under ``toxic`` (0: none); counts what it sees."""
        route, counters = self.route, toxic.counters
        counters.chunks_seen += 1
        if toxic.scope == "request":
            picked = new_exchange and toxic.pick(route.rng)
        else:
            if toxic.generation != self.generation:  # a new toxic: decide this connection again
                self.generation, self.affected = toxic.generation, toxic.pick(route.rng)
                counters.connections_decided += 1
                if self.affected:
                    counters.connections_picked += 1
                    route.stats.delayed_connections += 1
            picked = self.affected
        if new_exchange:
            counters.exchanges_seen += 1
            counters.exchanges_delayed += picked
            route.stats.toxic_exchanges += 1
            route.stats.delayed_exchanges += picked
        return toxic.draw_delay_s(route.rng) if picked else 0.0

    def _flush(self) -> None:
        self.timer = None
        if self.upstream is None:  # still connecting: _connect flushes once connected
            return
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now:
            _, data = self.pending.popleft()
            self.pending_bytes -= len(data)
            if self.upstream is not None and not self.upstream.is_closing():
                self.upstream.write(data)
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)
            return
        self.held_by_toxic = False
        self._resume_client("pending")
        if self.client_eof:
            self._send_eof_upstream()

    def eof_received(self) -> bool:
        self.client_eof = True
        if not self.pending:
            self._send_eof_upstream()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.route.stats.connections_active -= 1
        self.client_eof = True
        if self.pending:  # deliver what was sent before the client went away
            return
        self.close()

    def pause_writing(self) -> None:  # the client is slow: stop reading the upstream
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.resume_reading()

    # helpers -------------------------------------------------------------------------
    def _send_eof_upstream(self) -> None:
        if self.upstream is None or self.upstream.is_closing():
            self.close()
            return
        if self.client.is_closing():
            self.close()
            return
        if self.upstream.can_write_eof():
            self.upstream.write_eof()
        if self.upstream_eof:
            self.close()

    def _pause_client(self, reason: str) -> None:
        if not self.paused_by and self.client is not None and not self.client.is_closing():
            self.client.pause_reading()
        self.paused_by.add(reason)

    def _resume_client(self, reason: str) -> None:
        self.paused_by.discard(reason)
        if not self.paused_by and self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        self.pending.clear()
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.close()  # flushes what is already buffered


class _Upstream(asyncio.Protocol):
    """The upstream side: relays responses to the client untouched."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.stats = conn.route.stats

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.stats.bytes_downstream += len(data)
        conn = self.conn
        if conn.lose_response is not None and conn.lose():
            return
        conn.answered = True
        client = conn.client
        if client is not None and not client.is_closing():
            client.write(data)

    def eof_received(self) -> bool:
        conn = self.conn
        conn.upstream_eof = True
        if conn.client is not None and not conn.client.is_closing() and conn.client.can_write_eof():
            conn.client.write_eof()
        if conn.client_eof and not conn.pending:
            conn.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.close()

    def pause_writing(self) -> None:  # the upstream is slow: stop reading the client
        self.conn._pause_client("upstream")  # noqa: SLF001

    def resume_writing(self) -> None:
        self.conn._resume_client("upstream")  # noqa: SLF001


def parse_route(spec: str) -> Route:
    """Parse ``NAME=LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT`` (raises ValueError)."""
    try:
        name, rest = spec.split("=", 1)
        listen, host, port = rest.split(":")
        route = Route(name=name, listen_port=int(listen), upstream_host=host, upstream_port=int(port))
    except ValueError:
        raise ValueError(
            f"bad route {spec!r}: expected NAME=LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT"
        ) from None
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"bad route name {name!r}: letters, digits, '-' and '_' only")
    for port_value in (route.listen_port, route.upstream_port):
        if not 0 < port_value < 65536:
            raise ValueError(f"bad port {port_value} in route {spec!r}")
    return route
