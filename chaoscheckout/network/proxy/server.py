"""The fault proxy process: its routes, the control API, the expiry sweeper, signals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping

from chaoscheckout.network.proxy.control import ControlServer
from chaoscheckout.network.proxy.relay import Route, parse_route

__all__ = ["main", "serve", "event_loop_factory"]

logger = logging.getLogger("chaoscheckout.proxy")

SWEEP_INTERVAL_S = 0.5
LOOP_CHOICES = ("auto", "uvloop", "asyncio")


async def serve(routes: dict[str, Route], control_host: str, control_port: int) -> None:
    """Run until SIGTERM/SIGINT: every route's listener, the control API, the sweeper."""
    control = ControlServer(routes, control_host, control_port)
    for route in routes.values():
        await route.start()
        logger.info("route %s: %s:%s -> %s:%s", route.name, route.listen_host, route.listen_port,
                    route.upstream_host, route.upstream_port)
    await control.start()
    logger.info("control API on http://%s:%s", control_host, control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        for route in routes.values():
            route.live_toxic()  # drops an expired toxic even when no traffic flows
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL_S)
        except TimeoutError:
            pass
    control.server.close()
    for route in routes.values():
        await route.stop()


def event_loop_factory(env: Mapping[str, str]) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loop the proxy runs on: uvloop when installed, else asyncio's own.

    uvloop (libuv, transports in C) roughly halves the relay's per-chunk CPU: the relay
    itself is a few attribute updates and one ``write`` per chunk, the rest of its time is
    the loop and the socket calls (profiled with py-spy under k6 load).
    ``CHAOSCHECKOUT_PROXY_LOOP=asyncio`` forces asyncio's loop (to compare, or to rule uvloop
    out); ``uvloop`` requires it (an error if it is missing); ``auto`` (default) prefers it.
    """
    choice = env.get("CHAOSCHECKOUT_PROXY_LOOP", "auto").strip().lower() or "auto"
    if choice not in LOOP_CHOICES:
        raise ValueError(f"CHAOSCHECKOUT_PROXY_LOOP must be one of {', '.join(LOOP_CHOICES)}, got {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ValueError("CHAOSCHECKOUT_PROXY_LOOP=uvloop but uvloop is not installed "
                                 "(pip install uvloop)") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _route(value: str) -> Route:
    try:
        return parse_route(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaoscheckout.network.proxy",
        description="TCP fault proxy (latency toxic) with an HTTP control API. Routes listen on 127.0.0.1.",
    )
    parser.add_argument("--control", type=_host_port, required=True, metavar="HOST:PORT",
                        help="address of the HTTP control API")
    parser.add_argument("--route", type=_route, action="append", required=True,
                        metavar="NAME=LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    routes: dict[str, Route] = {}
    for route in args.route:
        if route.name in routes:
            parser.error(f"duplicate route name {route.name!r}")
        # containers: listen on every interface of the container's own network namespace
        route.listen_host = os.environ.get("CHAOSCHECKOUT_BIND_HOST", route.listen_host)
        routes[route.name] = route
    try:
        loop_name, loop_factory = event_loop_factory(os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    logger.info("event loop: %s", loop_name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(routes, *args.control))
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    return 0
