"""Run one stack service as a real process for a test (shared by the service-level tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


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
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
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
