"""The TCP relay of one route: passthrough, plus the latency toxic on the request direction.

Passthrough is a plain read/write loop with large reads (no per-byte work). On an
affected connection each upstream-bound chunk is queued with its due time (arrival +
drawn delay) and written by one writer task in arrival order, so bytes keep their order
and a streamed body is not delayed cumulatively. Responses are never delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field

from chaoscheckout.network.proxy.toxic import LatencyToxic

__all__ = ["Route", "RouteStats", "parse_route"]

logger = logging.getLogger("chaoscheckout.proxy")

READ_SIZE = 256 * 1024
STREAM_LIMIT = 1024 * 1024
QUEUE_CHUNKS = 64
CONNECT_TIMEOUT_S = 5.0


@dataclass
class RouteStats:
    bytes_upstream: int = 0
    bytes_downstream: int = 0
    connections_total: int = 0
    connections_active: int = 0
    connections_failed: int = 0
    delayed_chunks: int = 0
    delayed_connections: int = 0


@dataclass
class Route:
    name: str
    listen_port: int
    upstream_host: str
    upstream_port: int
    listen_host: str = "127.0.0.1"
    toxic: LatencyToxic | None = None
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

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, self.listen_host, self.listen_port, limit=STREAM_LIMIT
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    def describe(self) -> dict:
        toxic = self.live_toxic()
        return {
            "name": self.name,
            "listen": f"{self.listen_host}:{self.listen_port}",
            "upstream": f"{self.upstream_host}:{self.upstream_port}",
            "latency": toxic.to_dict() if toxic else None,
            "connections_active": self.stats.connections_active,
        }

    # -- connections -------------------------------------------------------------------

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        upstream_w = None
        try:
            try:
                upstream_r, upstream_w = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port, limit=STREAM_LIMIT),
                    CONNECT_TIMEOUT_S,
                )
            except (TimeoutError, OSError) as exc:
                self.stats.connections_failed += 1
                logger.warning("route %s: upstream %s:%s: %s", self.name, self.upstream_host,
                               self.upstream_port, exc)
                return
            await asyncio.gather(
                self._pump_upstream(client_r, upstream_w),
                self._pump_downstream(upstream_r, client_w),
            )
        finally:
            self.stats.connections_active -= 1
            for writer in (client_w, upstream_w):
                if writer is not None:
                    writer.close()

    async def _pump_downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        try:
            while data := await reader.read(READ_SIZE):
                stats.bytes_downstream += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            writer.close()

    async def _pump_upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        generation = -1
        affected = False
        sender: _DelayedSender | None = None
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(READ_SIZE):
                stats.bytes_upstream += len(data)
                toxic = self.live_toxic()
                delay = 0.0
                if toxic is not None:
                    if toxic.generation != generation:  # new toxic: decide this connection again
                        generation, affected = toxic.generation, toxic.pick(self.rng)
                        if affected:
                            stats.delayed_connections += 1
                    if affected:
                        delay = toxic.draw_delay_s(self.rng)
                if delay > 0 or (sender is not None and sender.pending):
                    # queued behind earlier delayed chunks even when not delayed: keeps order
                    if sender is None:
                        sender = _DelayedSender(writer)
                    if delay > 0:
                        stats.delayed_chunks += 1
                    await sender.put(loop.time() + delay, data)
                else:
                    writer.write(data)
                    await writer.drain()
            if sender is not None:
                await sender.flush()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            writer.close()
        finally:
            if sender is not None:
                sender.cancel()


class _DelayedSender:
    """Writes queued chunks in arrival order, each no earlier than its due time."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending = 0
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        self.task = asyncio.ensure_future(self._run())

    async def put(self, due: float, data: bytes) -> None:
        self.pending += 1
        await self.queue.put((due, data))

    async def flush(self) -> None:
        await self.queue.join()

    def cancel(self) -> None:
        self.task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.queue.get()
            try:
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.writer.write(data)
                await self.writer.drain()
            except OSError:
                self.writer.close()
            finally:
                self.pending -= 1
                self.queue.task_done()


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

