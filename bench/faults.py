"""Benchmark fault revert times: from the revert call until the effect is gone for a caller.

    CHAOSCHECKOUT_PORT_BASE=... CHAOSCHECKOUT_STATE_DIR=... python bench/faults.py [--smoke]
        [--use-running]

(= ``bench/run.py --only faults``: brings the stack up and down). For each fault, 5 times
(1 with ``--smoke``):

- kill (catalog): ``kill_service`` then ``start_service``; effect gone = a fresh
  GET /healthz from the caller answers 200.
- disk (postgres): ``fill_disk(leave_bytes=0)`` (a write gets ENOSPC) then
  ``release_disk``; effect gone = a 64 KiB write in the data dir and a Postgres INSERT
  both succeed.
- latency (catalog, proxy backend, 300 ms) when ``chaoscheckout.network`` exists:
  ``add_latency`` then ``remove_latency``; effect gone = a fresh GET through the fault
  proxy takes < 100 ms.
- reaper: kill and disk with a 2 s lease and no revert call (3 times; 1 with ``--smoke``);
  time from lease expiry until the effect is gone (the path a SIGKILLed ``chaos run``
  relies on), beside the reaper's tick.

Every loop is bounded (trials, and a deadline per poll). Timing on a shared machine is noisy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from table import BenchContext, Row, median  # noqa: E402

from chaoscheckout.disk.actions import fill_disk, release_disk  # noqa: E402
from chaoscheckout.faults.leases import LeaseStore  # noqa: E402
from chaoscheckout.service.actions import kill_service, start_service  # noqa: E402

SECTION = "faults"
NEEDS_STACK = True
POLL_S = 0.005
REAPER_TICK_MS = 500.0


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


def rows(ctx: BenchContext) -> list[Row]:
    trials = 1 if ctx.smoke else 5
    registry = ctx.registry
    catalog = registry.service("catalog")
    health_url = catalog.health_url
    proxied_url = f"http://127.0.0.1:{catalog.proxy.listen_port}/healthz" if catalog.proxy else None
    data_dir = Path(registry.service("postgres").data_dir)
    dsn = registry.extra.get("database_admin_url") or registry.extra["database_url"]  # a writer
    out = [
        _row("kill catalog → start_service (GET /healthz 200)", bench_kill(health_url, trials)),
        _row("disk full → release_disk (64 KiB write + INSERT ok)", bench_disk(data_dir, dsn, trials)),
        _row("latency 300 ms → remove_latency (GET via proxy < 100 ms)",
             bench_latency(proxied_url, trials) if proxied_url else None),
    ]
    reaper = bench_reaper(ctx.state_dir, health_url, data_dir, dsn, 1 if ctx.smoke else 3)
    out.append(_row("reaper: kill lease expired → catalog up", reaper["kill"], REAPER_TICK_MS,
                    "reaper tick"))
    out.append(_row("reaper: disk lease expired → writes ok", reaper["disk"], REAPER_TICK_MS, "reaper tick"))
    return out


def _row(figure: str, times: list[float] | None, reference: float | None = None, label: str = "") -> Row:
    if not times:
        return Row(SECTION, figure, None, note="not measured (chaoscheckout.network missing)")
    ms = [t * 1000 for t in times]
    return Row(SECTION, f"revert time, {figure}", median(ms), "ms", reference, label,
               note=f"median of {len(ms)}, min {min(ms):.0f} ms, max {max(ms):.0f} ms")


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "faults", *sys.argv[1:]]))
