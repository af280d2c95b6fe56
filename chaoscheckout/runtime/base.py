"""The runtime interface: how an activity reaches a service it only knows by name.

A runtime resolves a service name through the service registry and acts on it (kill,
start, health, pid, data directory). ``local`` drives supervisord processes; a
``docker`` runtime (later) implements the same methods on containers. Activities only
ever talk to this interface, so the same experiment runs against either.
"""

from __future__ import annotations

import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from chaoscheckout.config import Settings
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.runtime.registry import Registry, ServiceEntry

__all__ = ["Runtime", "StartResult", "KillResult", "probe_health"]


@dataclass(frozen=True)
class KillResult:
    service: str
    pid: int
    down_after_s: float


@dataclass(frozen=True)
class StartResult:
    service: str
    started: bool  # False: it was already running
    healthy_after_s: float
    pid: int | None


class Runtime(ABC):
    """Where services live. Every method takes a service name from the registry."""

    name: str = "abstract"

    def __init__(self, registry: Registry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    # -- resolution (shared) ----------------------------------------------------------
    def entry(self, service: str) -> ServiceEntry:
        """The registry entry of any listed service (UnknownService otherwise)."""
        return self.registry.service(service)

    def target(self, service: str) -> ServiceEntry:
        """The registry entry of an allowed chaos target (TargetRefused otherwise)."""
        return self.registry.target(service)

    @property
    def proxy_control_url(self) -> str | None:
        """The fault proxy's control URL (None: no fault proxy on this stack)."""
        return self.registry.proxy_control_url

    def is_remote(self, service: str) -> bool:
        """True when the service lives on another host (its registry entry has ``remote``):
        its faults then go through a remote keeper (:mod:`chaoscheckout.remote.session`)."""
        return self.entry(service).remote is not None

    def data_dir(self, service: str) -> Path:
        """The service's data directory (relative paths are relative to the state dir)."""
        entry = self.entry(service)
        if not entry.data_dir:
            raise InvalidFaultArgument(f"service {service!r} has no data_dir in the service registry")
        path = Path(entry.data_dir)
        if not path.is_absolute():
            path = self.settings.state_dir / path
        if not path.is_dir():
            raise ChaosCheckoutError(f"data_dir of {service!r} is not a directory: {path}")
        return path

    def is_healthy(self, service: str, timeout_s: float = 2.0) -> bool:
        """One health check: the health URL answers 2xx (or the TCP port accepts)."""
        return probe_health(self.entry(service), timeout_s)

    def wait_healthy(self, service: str, timeout_s: float, interval_s: float = 0.1) -> float:
        """Poll health until it passes; returns the seconds waited, raises on timeout."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if self.is_healthy(service, timeout_s=max(0.05, min(1.0, remaining))):
                return time.monotonic() - started
            if time.monotonic() + interval_s > deadline:
                raise ChaosCheckoutError(f"service {service!r} not healthy after {timeout_s:g} s")
            time.sleep(interval_s)

    # -- what each runtime implements -----------------------------------------------
    @abstractmethod
    def pid(self, service: str) -> int | None:
        """PID (or container id) of the running service, None when it is down."""

    @abstractmethod
    def kill(self, service: str, timeout_s: float = 10.0) -> KillResult:
        """SIGKILL the service and wait until it is down; it must stay down."""

    @abstractmethod
    def start(self, service: str, timeout_s: float = 30.0) -> StartResult:
        """Start the service (no-op when running) and wait until healthy."""

    @abstractmethod
    def describe(self, service: str) -> dict[str, Any]:
        """A JSON-friendly description of the service's current state."""


def probe_health(entry: ServiceEntry, timeout_s: float) -> bool:
    """True when ``entry`` answers: GET health_url is 2xx, or its TCP port accepts."""
    timeout_s = max(0.05, float(timeout_s))
    if entry.health_url:
        try:
            response = httpx.get(entry.health_url, timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.is_success
    try:
        with socket.create_connection((entry.host, entry.port), timeout=timeout_s):
            return True
    except OSError:
        return False
