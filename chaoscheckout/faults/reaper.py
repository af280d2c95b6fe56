"""The reaper: reverts expired leases, outside any ``chaos run`` process.

Run it under the runtime's supervisor::

    python -m chaoscheckout.faults.reaper --state-dir /var/lib/chaoscheckout [--interval-s 0.5]

Every tick it reverts each expired lease of the state dir (faults.revert.revert_lease).
A lease whose revert fails stays on disk and is retried next tick; one bad lease never
stops the loop. SIGTERM/SIGINT end the loop after the current tick.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.revert import preload_reverters, revert_lease

__all__ = ["Reaper", "main"]

logger = logging.getLogger("chaostoolkit")


class Reaper:
    """Revert expired leases of one state dir, tick after tick."""

    def __init__(self, state_dir: Path, interval_s: float = 0.5) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.state_dir = Path(state_dir)
        self.interval_s = interval_s
        self.configuration: dict[str, Any] = {"chaoscheckout_state_dir": str(self.state_dir)}
        self.store = LeaseStore(self.state_dir / "leases")
        self.stop_event = threading.Event()
        self.failures: dict[str, int] = {}
        self.next_try: dict[str, float] = {}

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Revert every expired lease once; returns what was reverted (errors included)."""
        results = []
        for lease in self.store.expired(now):
            if self.stop_event.is_set():
                break
            if self.next_try.get(lease.fault_id, 0.0) > time.monotonic():
                continue  # failed recently: back off (a failed revert is retried, not spammed)
            try:
                result = revert_lease(lease, self.configuration)
                late_s = time.time() - lease.expires_at  # when the fault is gone, not when we began
            except Exception as exc:  # noqa: BLE001 - keep going, retry next tick
                count = self.failures[lease.fault_id] = self.failures.get(lease.fault_id, 0) + 1
                self.next_try[lease.fault_id] = time.monotonic() + min(30.0, self.interval_s * 2**count)
                logger.error("reaper: revert of %s failed (attempt %d): %s", lease.fault_id, count, exc)
                results.append({"fault_id": lease.fault_id, "error": str(exc)})
                continue
            self.failures.pop(lease.fault_id, None)
            self.next_try.pop(lease.fault_id, None)
            logger.info("reaper: reverted expired %s %.2f s after expiry: %s", lease.fault_id, late_s, result)
            results.append(result)
        return results

    def run(self, max_ticks: int | None = None) -> None:
        """Loop until stopped (or ``max_ticks`` ticks)."""
        logger.info("reaper: watching %s every %g s", self.store.dir, self.interval_s)
        preload_reverters()  # the first revert must not pay for imports
        ticks = 0
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - e.g. leases dir unreadable: retry
                logger.error("reaper: tick failed: %s", exc)
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            self.stop_event.wait(self.interval_s)
        logger.info("reaper: stopped")

    def stop(self, *_: Any) -> None:
        self.stop_event.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaoscheckout.faults.reaper", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="the stack's state dir")
    parser.add_argument("--interval-s", type=float, default=0.5, help="seconds between ticks (default 0.5)")
    parser.add_argument("--once", action="store_true", help="one tick, then exit")
    args = parser.parse_args(argv)
    if not args.interval_s > 0:
        parser.error("--interval-s must be > 0")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    reaper = Reaper(args.state_dir, args.interval_s)
    signal.signal(signal.SIGTERM, reaper.stop)
    signal.signal(signal.SIGINT, reaper.stop)
    reaper.run(max_ticks=1 if args.once else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
