"""The local runtime: services are supervisord programs on 127.0.0.1.

App programs run with ``autorestart=false``, so a SIGKILLed service stays down until
``start`` (the rollback) or the reaper starts it again. Only programs listed in the
service registry are ever touched.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.runtime.base import KillResult, Runtime, StartResult
from chaoscheckout.runtime.supervisor import SupervisorClient

__all__ = ["LocalRuntime"]

RUNNING_STATES = ("STARTING", "RUNNING", "BACKOFF")
ALIVE_STATES = ("STARTING", "RUNNING", "STOPPING")  # a process exists


class LocalRuntime(Runtime):
    name = "local"

    @cached_property
    def supervisor(self) -> SupervisorClient:
        """supervisord's client, made on first use: resolving targets, data dirs and health
        needs no supervisord (a registry of services run some other way still has those)."""
        if not self.registry.supervisor_url:
            raise ChaosCheckoutError("the service registry has no supervisor_url (local runtime)")
        return SupervisorClient(self.registry.supervisor_url, timeout_s=self.settings.io_timeout_s)

    def pid(self, service: str) -> int | None:
        info = self.supervisor.process_info(self.entry(service).process)
        return int(info["pid"]) if info.get("statename") in ALIVE_STATES and info.get("pid") else None

    def state(self, service: str) -> str:
        return str(self.supervisor.process_info(self.entry(service).process).get("statename"))

    def kill(self, service: str, timeout_s: float = 10.0) -> KillResult:
        entry = self.target(service)
        pid = self.pid(service)
        if pid is None:
            raise ChaosCheckoutError(f"service {service!r} is not running: nothing to kill")
        started = time.monotonic()
        deadline = started + timeout_s
        # a process that dies while STARTING is retried by supervisord (startretries)
        # whatever autorestart says: wait until supervisord considers it RUNNING
        while self.state(service) == "STARTING" and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = self.pid(service) or pid
        self.supervisor.signal(entry.process, "KILL")
        while time.monotonic() < deadline:
            state = self.state(service)
            if state not in RUNNING_STATES and not self.is_healthy(service, timeout_s=0.2):
                return KillResult(service, pid, time.monotonic() - started)
            if state in RUNNING_STATES and self.pid(service) not in (None, pid):
                raise ChaosCheckoutError(
                    f"service {service!r} was restarted by supervisord after SIGKILL "
                    "(its program needs autorestart=false)"
                )
            time.sleep(0.05)
        raise ChaosCheckoutError(f"service {service!r} (pid {pid}) still up {timeout_s:g} s after SIGKILL")

    def start(self, service: str, timeout_s: float = 30.0) -> StartResult:
        entry = self.entry(service)  # never start a program the registry does not list
        started = self.supervisor.start(entry.process, wait=False)
        waited = self.wait_healthy(service, timeout_s)
        return StartResult(service, started, waited, self.pid(service))

    def describe(self, service: str) -> dict[str, Any]:
        entry = self.entry(service)
        info = self.supervisor.process_info(entry.process)
        return {
            "service": service,
            "runtime": self.name,
            "process": entry.process,
            "state": info.get("statename"),
            "pid": info.get("pid") or None,
            "address": entry.address,
            "chaos_target": entry.chaos_target,
        }
