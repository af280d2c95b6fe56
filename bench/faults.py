"""Benchmark fault revert times: from the revert call until the effect is gone for a caller.

    .venv/bin/python bench/faults.py [--port-base 20100] [--state-dir /var/tmp/cc-bench-faults]
                                     [--trials 5] [--use-running]

Brings a real stack up (``python -m stack.manage up``; ``--use-running`` uses the stack
already running in ``--state-dir``), then for each fault, ``--trials`` times:

- kill (catalog): ``kill_service`` then ``start_service``; effect gone = a fresh
  GET /healthz from the caller answers 200.
- disk (postgres): ``fill_disk(leave_bytes=0)`` (a write gets ENOSPC) then
  ``release_disk``; effect gone = a 64 KiB write in the data dir and a Postgres INSERT
  both succeed.
- latency (catalog, proxy backend, 300 ms) when ``chaoscheckout.network`` exists:
  ``add_latency`` then ``remove_latency``; effect gone = a fresh GET through the fault
  proxy takes < 100 ms.
- reaper: kill and disk with a 2 s lease and no revert call; time from lease expiry until
  the effect is gone (the path a SIGKILLed ``chaos run`` relies on).

Every loop is bounded (trials, and a deadline per poll). The stack it brought up is torn
down at the end. Timing on a shared machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from chaoscheckout.disk.actions import fill_disk, release_disk  # noqa: E402
from chaoscheckout.faults.leases import LeaseStore  # noqa: E402
from chaoscheckout.runtime.registry import load_registry  # noqa: E402
from chaoscheckout.service.actions import kill_service, start_service  # noqa: E402

POLL_S = 0.005


def wait_for(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check()`` is true (bounded); raises on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(POLL_S)
    raise TimeoutError(f"effect not gone after {timeout_s} s")


def http_ok(url: str, timeout_s: float = 0.5) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def fast_get(url: str, limit_s: float) -> bool:
    start = time.monotonic()
    return http_ok(url, timeout_s=2) and time.monotonic() - start < limit_s


def can_write(data_dir: Path, dsn: str) -> bool:
    probe = data_dir / "bench-write-probe"
    try:
        probe.write_bytes(b"x" * 65536)
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    try:
        with psycopg.connect(dsn, connect_timeout=2, options="-c statement_timeout=2000") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_disk (x text)")
            conn.execute("INSERT INTO bench_disk SELECT repeat('x', 1000) FROM generate_series(1, 200)")
            conn.execute("DROP TABLE bench_disk")
            conn.commit()
        return True
    except psycopg.Error:
        return False


def bench_kill(health_url: str, trials: int) -> list[float]:
    times = []
    for _ in range(trials):
        kill_service("catalog", duration_s=60)
        assert not http_ok(health_url), "catalog still answers after kill_service"
        start = time.monotonic()
        start_service("catalog", timeout_s=30)
        wait_for(lambda: http_ok(health_url), 30)
        times.append(time.monotonic() - start)
        time.sleep(1.2)  # let supervisord reach RUNNING (startsecs) before the next kill
    return times


def bench_disk(data_dir: Path, dsn: str, trials: int) -> list[float]:
    times = []
    for _ in range(trials):
        fill_disk("postgres", leave_bytes=0, duration_s=60)
        assert not can_write(data_dir, dsn), "writes still succeed on a full disk"
        start = time.monotonic()
        release_disk("postgres")
        wait_for(lambda: can_write(data_dir, dsn), 30)
        times.append(time.monotonic() - start)
    return times


def bench_latency(proxied_url: str, trials: int) -> list[float] | None:
    try:
        from chaoscheckout.network.actions import add_latency, remove_latency
    except ImportError:
        return None
    times = []
    for _ in range(trials):
        add_latency("catalog", delay_ms=300, duration_s=60, backend="proxy")
        assert not fast_get(proxied_url, 0.2), "no latency seen through the proxy"
        start = time.monotonic()
        remove_latency("catalog")
        wait_for(lambda: fast_get(proxied_url, 0.1), 30)
        times.append(time.monotonic() - start)
    return times


def bench_reaper(state_dir: Path, health_url: str, data_dir: Path, dsn: str, trials: int) -> dict[str, list]:
    store = LeaseStore(state_dir / "leases")
    out: dict[str, list] = {"kill": [], "disk": []}
    for _ in range(trials):
        kill_service("catalog", duration_s=2)
        expires_at = store.live()[0].expires_at
        wait_for(lambda: http_ok(health_url) and not store.live(), 15)
        out["kill"].append(time.time() - expires_at)
        time.sleep(1.2)
        fill_disk("postgres", leave_bytes=0, duration_s=2)
        expires_at = store.live()[0].expires_at
        wait_for(lambda: can_write(data_dir, dsn) and not store.live(), 15)
        out["disk"].append(time.time() - expires_at)
    return out


def row(name: str, times: list[float] | None) -> str:
    if not times:
        return f"| {name} | n/a | | | |"
    ms = [t * 1000 for t in times]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {min(ms):.0f} | {max(ms):.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port-base", type=int, default=20100)
    parser.add_argument("--state-dir", type=Path, default=Path("/var/tmp/cc-bench-faults"))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--use-running", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.trials <= 50:
        parser.error("--trials must be in 1..50")
    env = {**os.environ, "CHAOSCHECKOUT_STATE_DIR": str(args.state_dir),
           "CHAOSCHECKOUT_PORT_BASE": str(args.port_base)}
    os.environ.update(env)
    manage = [sys.executable, "-m", "stack.manage"]
    if not args.use_running:
        subprocess.run([*manage, "up"], cwd=ROOT, env=env, check=True, timeout=240,
                       stdout=subprocess.DEVNULL)
    try:
        registry = load_registry(args.state_dir / "services.json")
        catalog = registry.service("catalog")
        health_url = catalog.health_url
        proxied_url = f"http://127.0.0.1:{catalog.proxy.listen_port}/healthz" if catalog.proxy else None
        data_dir = Path(registry.service("postgres").data_dir)
        dsn = registry.extra.get("database_admin_url") or registry.extra["database_url"]  # a writer
        results = {
            "kill → start_service (GET /healthz 200)": bench_kill(health_url, args.trials),
            "disk → release_disk (64 KiB write + INSERT ok)": bench_disk(data_dir, dsn, args.trials),
            "latency 300 ms → remove_latency (GET via proxy < 100 ms)":
                bench_latency(proxied_url, args.trials) if proxied_url else None,
        }
        reaper = bench_reaper(args.state_dir, health_url, data_dir, dsn, min(args.trials, 3))
        print("\nRevert time: from the revert call until the effect is gone for a caller (ms)\n")
        print("| fault | trials | median | min | max |\n| --- | --- | --- | --- | --- |")
        for name, times in results.items():
            print(row(name, times))
        print("\nReaper (no revert call; 2 s lease, reaper tick 0.5 s): from lease expiry until "
              "the effect is gone (ms)\n")
        print("| fault | trials | median | min | max |\n| --- | --- | --- | --- | --- |")
        print(row("kill (reaper starts the service)", reaper["kill"]))
        print(row("disk (reaper deletes the ballast)", reaper["disk"]))
    finally:
        if not args.use_running:
            subprocess.run([*manage, "down"], cwd=ROOT, env=env, timeout=120, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
