"""Run one stack service as a real process for a test (shared by the service-level tests)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent

# checkout settings for tests about something else than payments' timeouts (the experiments
# measure those): payments attempts a busy machine still answers within (default 0.08 s)
PAYMENTS_AT_ANY_LOAD = {"CHECKOUT_PAYMENTS_TIMEOUT_S": "2", "CHECKOUT_BUDGET_S": "4"}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Poll ``condition`` until it holds (seconds waited); fail the test after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)
    return time.monotonic() - started


def answers_ok(health_url: str, timeout_s: float = 1) -> bool:
    """200 from ``health_url``; a service still starting refuses the connection."""
    try:
        return httpx.get(health_url, timeout=timeout_s, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def line_reader(stream: IO[str]) -> queue.Queue[str]:
    """The lines of ``stream``, read by a daemon thread, so that a test can wait for one
    with a deadline (``get(timeout=...)``)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


def clean_env() -> dict[str, str]:
    """The environment a service process gets: no settings leak in from the test run."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k in keep} | {"PYTHONUNBUFFERED": "1"}


@contextmanager
def service_process(module: str, env: dict[str, str], port: int, log_dir: Path,
                    startup_s: float = 25) -> Iterator[None]:
    """Run ``python -m stack.services.<module>`` until the block ends; wait for /healthz."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{module}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"stack.services.{module}"], cwd=ROOT,
            env={**clean_env(), **env}, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{module} exited {proc.returncode}: {log_path.read_text()[-2000:]}")
                if answers_ok(f"http://127.0.0.1:{port}/healthz"):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"{module} not healthy in {startup_s}s: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextmanager
def throwaway_postgres(pg_bin: Path, pg_dir: Path, port: int, databases: tuple[str, ...]) -> Iterator[str]:
    """A throwaway PostgreSQL in ``pg_dir`` (runs as user postgres: it refuses root).

    Yields the server's base DSN (append ``/<database>``); stops the server at the end.
    """
    shutil.rmtree(pg_dir, ignore_errors=True)
    pg_dir.mkdir(parents=True)
    shutil.chown(pg_dir, "postgres")
    run_as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*run_as_pg, str(pg_bin / "initdb"), "-D", str(pg_dir / "data"), "-A", "trust",
                    "-U", "postgres"], cwd="/tmp", check=True, capture_output=True, timeout=60)
    subprocess.run([*run_as_pg, str(pg_bin / "pg_ctl"), "-D", str(pg_dir / "data"), "-l",
                    str(pg_dir / "log"), "-w", "-t", "30", "-o",
                    f"-p {port} -k {pg_dir} -c listen_addresses=127.0.0.1", "start"],
                   cwd="/tmp", check=True, capture_output=True, timeout=60)
    try:
        for db in databases:
            subprocess.run([*run_as_pg, str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p",
                            str(port), db], cwd="/tmp", check=True, timeout=30)
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*run_as_pg, str(pg_bin / "pg_ctl"), "-D", str(pg_dir / "data"), "-m",
                        "fast", "-w", "-t", "30", "stop"], cwd="/tmp", capture_output=True, timeout=60)
