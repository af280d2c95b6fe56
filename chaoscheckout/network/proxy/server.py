"""The fault proxy process: its routes, the control API, the expiry sweeper, signals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from chaoscheckout.network.proxy.control import (
    DEFAULT_MAX_TOXIC_S,
    ControlAuthError,
    ControlServer,
    read_token_file,
)
from chaoscheckout.network.proxy.relay import Route, parse_route

__all__ = ["main", "serve", "event_loop_factory"]

logger = logging.getLogger("chaoscheckout.proxy")

SWEEP_INTERVAL_S = 0.5
LOOP_CHOICES = ("auto", "uvloop", "asyncio")


async def serve(routes: dict[str, Route], control: ControlServer) -> None:
    """Run until SIGTERM/SIGINT: every route's listener, the control API, the sweeper."""
    for route in routes.values():
        await route.start()
        logger.info("route %s: %s:%s -> %s:%s", route.name, route.listen_host, route.listen_port,
                    route.upstream_host, route.upstream_port)
    await control.start()
    logger.info("control API on %s", control.address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        for route in routes.values():
            route.live_toxic()  # drops an expired toxic even when no traffic flows
            route.live_loss()
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_INTERVAL_S)
        except TimeoutError:
            pass
    control.server.close()
    if control.socket_path:
        Path(control.socket_path).unlink(missing_ok=True)
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


def _control(value: str) -> tuple[str, int] | str:
    """``unix:/path/to.sock`` (a socket path) or ``HOST:PORT``."""
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if not path.startswith("/"):
            raise argparse.ArgumentTypeError(f"expected unix:/absolute/path, got {value!r}")
        return path
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
    parser.add_argument("--control", type=_control, required=True, metavar="unix:PATH|HOST:PORT",
                        help="the HTTP control API: a unix socket (created mode 0600) or a TCP "
                        "address (then --token-file is required)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="bearer token for a TCP control API (file mode 0600, owned by this user)")
    parser.add_argument("--leases-dir", metavar="DIR",
                        help="refuse a toxic whose fault_id has no DIR/<fault_id>.json (the lease)")
    parser.add_argument("--max-toxic-s", type=float, default=DEFAULT_MAX_TOXIC_S,
                        help="refuse a toxic whose expires_at is further ahead (default %(default)g)")
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
    if not 0 < args.max_toxic_s <= DEFAULT_MAX_TOXIC_S * 7:  # also refuses nan
        parser.error(f"--max-toxic-s must be in (0, {DEFAULT_MAX_TOXIC_S * 7:g}]")
    try:
        token = read_token_file(args.token_file) if args.token_file else None
        if isinstance(args.control, str):
            control = ControlServer(routes, socket_path=args.control, token=token,
                                    max_toxic_s=args.max_toxic_s, leases_dir=args.leases_dir)
        else:
            control = ControlServer(routes, *args.control, token=token, max_toxic_s=args.max_toxic_s,
                                    leases_dir=args.leases_dir)
        loop_name, loop_factory = event_loop_factory(os.environ)
    except ControlAuthError as exc:
        parser.error(str(exc))
    except ValueError as exc:
        parser.error(str(exc))
    logger.info("event loop: %s", loop_name)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(routes, control))
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    return 0
