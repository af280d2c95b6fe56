"""remediator: restarts a program that shows the known fd-leak signature (previous build).

Run: ``python -m stack.services.remediator`` (from the repo root). Settings (environment):

- ``REMEDIATOR_PORT`` (default 18104): listen port on 127.0.0.1.
- ``REMEDIATOR_SUPERVISOR_URL`` (required): supervisord XML-RPC URL, the stack's
  ``unix://<state_dir>/ctl/supervisord.sock`` (a 0600 socket: the remediator runs as
  root to reach it) or ``http://host:port/RPC2``.
- ``REMEDIATOR_WATCH`` (default ``catalog,payments,provider,checkout``): comma list of
  supervisord programs to watch.
- ``REMEDIATOR_FD_THRESHOLD`` (default 200): open files above which a program may be sick.
- ``REMEDIATOR_SAMPLES`` (default 3): how many consecutive samples must each have grown.
- ``REMEDIATOR_INTERVAL_S`` (default 1): seconds between samples.

Every interval it asks supervisord for the pid of each watched program and counts the
files among ``/proc/<pid>/fd`` (sockets, pipes and anonymous inodes left out: a service's
connections follow its load, and at a flash sale's rate checkout holds hundreds of them;
counting them, this remediator restarted a healthy checkout in the middle of a peak-load
run, journals/FINDINGS.md). The signature of the known fd leak is: the latest count is above
``REMEDIATOR_FD_THRESHOLD`` AND each of the last ``REMEDIATOR_SAMPLES`` samples grew over
the sample before it (so ``REMEDIATOR_SAMPLES + 1`` samples of the same pid are needed).
Then it restarts that program through supervisord (stop, then start), increments
``remediator_restarts_total{service}``, logs one line and starts sampling afresh.

It handles that one failure only: a program below the threshold or not growing is left
alone, and a program that is not RUNNING (killed, stopped, starting) is ignored — it is
not the remediator's failure to fix. A supervisord that cannot be reached is recorded in
``/status`` and retried at the next interval.

Endpoints: ``GET /healthz`` (200 while the sampling loop runs and its last round reached
supervisord), ``GET /status`` (JSON: settings, per program the pid, state and recent
samples, restarts, last error), ``GET /metrics`` (``remediator_open_fds{service}``,
``remediator_restarts_total{service}``, ``remediator_sample_errors_total``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from chaoscheckout.runtime.supervisor import SupervisorClient, SupervisorError
from stack.services.common import (
    ConfigError,
    count_open_files,
    default_port,
    env_float,
    env_int,
    env_list,
    env_url,
    healthz_route,
    metrics_route,
    serve,
    version_route,
)

__all__ = ["RemediatorSettings", "Remediator", "shows_fd_leak", "build_app", "main"]

logger = logging.getLogger("stack.remediator")

PORT_OFFSET = 4
POLL_TIMEOUT_S = 2.0       # XML-RPC timeout of getProcessInfo
RESTART_TIMEOUT_S = 30.0   # XML-RPC timeout of stop/start (waits for the program)
DEFAULT_WATCH = ("catalog", "payments", "provider", "checkout")

OPEN_FDS = Gauge("remediator_open_fds", "Open fds of each watched program", ["service"])
RESTARTS = Counter("remediator_restarts_total", "Restarts for the fd-leak signature", ["service"])
SAMPLE_ERRORS = Counter("remediator_sample_errors_total", "Sampling rounds that failed")


@dataclass(frozen=True)
class RemediatorSettings:
    port: int
    supervisor_url: str
    watch: tuple[str, ...]
    fd_threshold: int
    samples: int
    interval_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RemediatorSettings:
        watch = tuple(env_list(environ, "REMEDIATOR_WATCH", list(DEFAULT_WATCH)))
        if not watch:
            raise ConfigError("REMEDIATOR_WATCH: name at least one supervisord program")
        return cls(
            port=env_int(environ, "REMEDIATOR_PORT", default_port(PORT_OFFSET), 1, 65535),
            supervisor_url=_supervisor_url(environ),
            watch=watch,
            fd_threshold=env_int(environ, "REMEDIATOR_FD_THRESHOLD", 200, 1),
            samples=env_int(environ, "REMEDIATOR_SAMPLES", 3, 1, 100),
            interval_s=env_float(environ, "REMEDIATOR_INTERVAL_S", 1.0, 0.05, 3600),
        )


def _supervisor_url(environ: Mapping[str, str]) -> str:
    value = environ.get("REMEDIATOR_SUPERVISOR_URL", "")
    if value.startswith("unix:///"):
        return value
    return env_url(environ, "REMEDIATOR_SUPERVISOR_URL")


def shows_fd_leak(samples: list[int], threshold: int, growths: int) -> bool:
    """The known fd-leak signature over one pid's samples (oldest first).

    True when the latest sample is above ``threshold`` and each of the last ``growths``
    samples is strictly greater than the one before it.
    """
    if len(samples) < growths + 1 or samples[-1] <= threshold:
        return False
    recent = samples[-(growths + 1):]
    return all(later > earlier for earlier, later in zip(recent, recent[1:], strict=False))


@dataclass
class Watched:
    """What the remediator knows about one program."""

    name: str
    pid: int | None = None
    state: str = "unknown"
    samples: deque[int] = field(default_factory=lambda: deque(maxlen=16))
    restarts: int = 0
    last_restart_at: float | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid, "state": self.state, "samples": list(self.samples),
            "restarts": self.restarts, "last_restart_at": self.last_restart_at,
            "last_error": self.last_error,
        }


class Remediator:
    """The sampling loop; blocking XML-RPC and /proc reads run in a worker thread."""

    def __init__(self, settings: RemediatorSettings) -> None:
        self.settings = settings
        self.programs = {name: Watched(name) for name in settings.watch}
        self._poll = SupervisorClient(settings.supervisor_url, timeout_s=POLL_TIMEOUT_S)
        self._control = SupervisorClient(settings.supervisor_url, timeout_s=RESTART_TIMEOUT_S)
        self.last_round_at: float | None = None
        self.last_round_error: str | None = None
        self.rounds = 0

    async def run_forever(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.to_thread(self.sample_once)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.settings.interval_s - elapsed))

    def sample_once(self) -> None:
        """One round: sample every watched program, restart those showing the signature."""
        round_error = None
        for program in self.programs.values():
            try:
                self._sample(program)
            except SupervisorError as exc:
                program.last_error = round_error = str(exc)
            except Exception as exc:  # keep the loop alive; the reason is in /status
                program.last_error = round_error = f"{type(exc).__name__}: {exc}"
                logger.exception("sampling %s failed", program.name)
        if round_error:
            SAMPLE_ERRORS.inc()
        self.last_round_error = round_error
        self.last_round_at = time.time()
        self.rounds += 1

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "watch": list(s.watch), "fd_threshold": s.fd_threshold, "samples_required": s.samples,
            "interval_s": s.interval_s, "rounds": self.rounds, "last_round_at": self.last_round_at,
            "last_round_error": self.last_round_error,
            "restarts": {name: p.restarts for name, p in self.programs.items()},
            "programs": {name: p.to_json() for name, p in self.programs.items()},
        }

    async def healthy(self, _: Request) -> str | None:
        if self.last_round_at is None:
            return "no sampling round finished yet"
        age = time.time() - self.last_round_at
        if age > max(3 * self.settings.interval_s, 5.0):
            return f"last sampling round was {age:.1f}s ago"
        if self.last_round_error:
            return self.last_round_error
        return None

    # Internals ---------------------------------------------------------------------

    def _sample(self, program: Watched) -> None:
        info = self._poll.process_info(program.name)
        program.state = str(info.get("statename", "unknown"))
        pid = int(info.get("pid") or 0) if program.state == "RUNNING" else 0
        if not pid:
            self._forget(program, None)
            return
        if pid != program.pid:
            self._forget(program, pid)
        try:
            fds = count_open_files(pid)
        except FileNotFoundError:  # exited between the two calls
            self._forget(program, None)
            return
        program.samples.append(fds)
        program.last_error = None
        OPEN_FDS.labels(program.name).set(fds)
        if shows_fd_leak(list(program.samples), self.settings.fd_threshold, self.settings.samples):
            self._restart(program)

    def _restart(self, program: Watched) -> None:
        recent = list(program.samples)[-(self.settings.samples + 1):]
        logger.warning(
            "restarting %s (pid %s): fd-leak signature, open fds %s > %d and growing",
            program.name, program.pid, recent, self.settings.fd_threshold,
        )
        self._control.stop(program.name, wait=True)
        self._control.start(program.name, wait=True)
        program.restarts += 1
        program.last_restart_at = time.time()
        RESTARTS.labels(program.name).inc()
        self._forget(program, None)

    @staticmethod
    def _forget(program: Watched, pid: int | None) -> None:
        program.pid = pid
        program.samples.clear()
        if pid is None:
            with suppress(KeyError):
                OPEN_FDS.remove(program.name)


def build_app(settings: RemediatorSettings) -> Starlette:
    remediator = Remediator(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(remediator.run_forever(), name="remediator-loop")
        logger.info("watching %s (threshold %d fds, %d growing samples, every %ss)",
                    ",".join(settings.watch), settings.fd_threshold, settings.samples,
                    settings.interval_s)
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def status(_: Request) -> Response:
        return JSONResponse(remediator.status())

    for name in settings.watch:
        RESTARTS.labels(name)
    app = Starlette(
        routes=[
            Route("/status", status, methods=["GET"]),
            healthz_route(remediator.healthy),
            version_route("remediator", settings),
            metrics_route(),
        ],
        lifespan=lifespan,
    )
    app.state.remediator = remediator
    return app


def main() -> None:
    def build(environ: Mapping[str, str]) -> tuple[Starlette, int]:
        settings = RemediatorSettings.from_env(environ)
        return build_app(settings), settings.port

    serve(build)


if __name__ == "__main__":
    main()
