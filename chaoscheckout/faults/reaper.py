"""The reaper: the dead-man switch and the lease expiry, outside any ``chaos run`` process.

Run it under the runtime's supervisor (one per state dir)::

    python -m chaoscheckout.faults.reaper --state-dir /var/lib/chaoscheckout [--interval-s 0.25]

Every tick it reverts each lease whose owner is dead or frozen (process gone, pid
reused, stopped, no heartbeat for HEARTBEAT_STALE_S, abandoned; see
:mod:`chaoscheckout.faults.owner`) and each expired lease (due leases in parallel), then
verifies the effect is gone (faults.revert.revert_lease). For a dead owner it also
appends what it reverted to the dead-run record (:mod:`chaoscheckout.faults.deadruns`)
and marks the owner declared dead, so a frozen run that resumes never injects again. A
revert that fails or is not verified is retried with per-lease backoff; one bad lease
never stops the loop. A file in ``leases/`` that is not a valid lease is moved to
``leases/quarantine/`` and reported; when its name still says which fault it was, that
fault is reverted by service.

Two reapers on one state dir: the second waits on ``<state_dir>/reaper.lock`` (flock) and
takes over when the first dies. SIGTERM/SIGINT end the loop after the current tick.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chaoscheckout.faults.deadruns import append_record
from chaoscheckout.faults.kinds import KINDS
from chaoscheckout.faults.leases import FAULT_ID_RE, InvalidLease, Lease, LeaseStore, LeasesUnreadable
from chaoscheckout.faults.owner import boottime, declare_dead, proc_stat, read_heartbeat, safe_name
from chaoscheckout.faults.revert import owner_verdict, preload_reverters, revert_lease

__all__ = ["Reaper", "main"]

logger = logging.getLogger("chaostoolkit")

INVALID_GRACE_S = 2.0  # a foreign tool may still be writing it
HOUSEKEEPING_EVERY_S = 10.0


class Reaper:
    """Revert leases of dead owners and expired leases of one state dir, tick after tick."""

    def __init__(self, state_dir: Path, interval_s: float = 0.25) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.state_dir = Path(state_dir)
        self.owners_dir = self.state_dir / "owners"
        self.interval_s = interval_s
        self.configuration: dict[str, Any] = {"chaoscheckout_state_dir": str(self.state_dir)}
        self.store = LeaseStore(self.state_dir / "leases")
        self.stop_event = threading.Event()
        self.failures: dict[str, int] = {}
        self.next_try: dict[str, float] = {}
        self.lock_fd: int | None = None
        self.standby_logged = False
        self.last_error: str | None = None
        self.last_housekeeping = 0.0

    def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """One pass; returns what was reverted (errors included). ``now`` (wall clock) is
        for tests: given, expiry is judged on it instead of CLOCK_BOOTTIME."""
        if not self.hold_lock():
            return []
        try:
            leases, invalid = self.store.scan()
        except LeasesUnreadable as exc:
            if str(exc) != self.last_error:
                logger.error("reaper: %s (retrying every tick; no lease is dropped)", exc)
                self.last_error = str(exc)
            return [{"error": str(exc)}]
        self.last_error = None
        results = [r for bad in invalid if (r := self._invalid(bad)) is not None]
        due = []
        for lease in leases:
            if lease.is_expired(now):
                dead_cause = None
                reason = "expired"
            else:
                verdict = owner_verdict(lease, self.owners_dir)
                if verdict.alive is not False:
                    continue
                # an abandoned lease: its owner gave that fault up and may well be alive
                dead_cause = None if lease.abandoned else verdict.why
                reason = verdict.why if lease.abandoned else f"owner dead: {verdict.why}"
            if self.next_try.get(lease.fault_id, 0.0) > time.monotonic():
                continue  # failed recently: back off (retried, not spammed)
            due.append((lease, reason, dead_cause))
        if len(due) == 1:
            results.append(self._revert(*due[0]))
        elif due:  # one slow revert (a service's start-up) must not delay the others
            with ThreadPoolExecutor(max_workers=min(8, len(due))) as pool:
                results += list(pool.map(lambda job: self._revert(*job), due))
        if time.monotonic() - self.last_housekeeping > HOUSEKEEPING_EVERY_S:
            self.last_housekeeping = time.monotonic()
            self._housekeeping(leases)
        return results

    def hold_lock(self) -> bool:
        """True when this reaper is the state dir's active one (flock on reaper.lock)."""
        if self.lock_fd is not None:
            return True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "reaper.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not self.standby_logged:
                logger.warning("reaper: another reaper holds %s/reaper.lock: standing by (takes over "
                               "when it stops)", self.state_dir)
                self.standby_logged = True
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd
        if self.standby_logged:
            logger.warning("reaper: the other reaper is gone: now active")
        return True

    def release_lock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def run(self, max_ticks: int | None = None) -> None:
        """Loop until stopped (or ``max_ticks`` ticks)."""
        preload_reverters()  # the first revert must not pay for imports
        logger.info("reaper: watching %s every %g s", self.store.dir, self.interval_s)
        ticks = 0
        try:
            while not self.stop_event.is_set():
                try:
                    self.tick()
                except Exception as exc:  # noqa: BLE001 - never stop the loop
                    logger.error("reaper: tick failed: %s", exc)
                ticks += 1
                if max_ticks is not None and ticks >= max_ticks:
                    break
                self.stop_event.wait(self.interval_s)
        finally:
            self.release_lock()
        logger.info("reaper: stopped")

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    # -- internals -----------------------------------------------------------------
    def _revert(self, lease: Lease, reason: str, dead_cause: str | None) -> dict[str, Any]:
        detected_at = time.time()
        last_seen_at = self._last_seen_at(lease)
        try:
            result = revert_lease(lease, self.configuration, reason)
        except Exception as exc:  # noqa: BLE001 - keep going, retry next tick
            result = {"fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service,
                      "error": str(exc), "verified": False}
        if result.get("verified"):
            self.failures.pop(lease.fault_id, None)
            self.next_try.pop(lease.fault_id, None)
            logger.info("reaper: reverted %s (%s): %s", lease.fault_id, reason, result)
        else:
            count = self.failures[lease.fault_id] = self.failures.get(lease.fault_id, 0) + 1
            self.next_try[lease.fault_id] = time.monotonic() + min(30.0, self.interval_s * 2**count)
            logger.error("reaper: revert of %s not done or not verified (attempt %d): %s",
                         lease.fault_id, count, result.get("error") or result.get("checked"))
        if dead_cause is not None or lease.abandoned:
            record = {"fault_id": lease.fault_id, "kind": lease.kind, "service": lease.service,
                      "run_id": lease.owner.run_id, "owner": lease.owner.to_dict(),
                      "cause": dead_cause or reason, "owner_last_seen_at": last_seen_at,
                      "detected_at": detected_at, "reverted_at": result.get("reverted_at"),
                      "verified": result.get("verified", False), "checked": result.get("checked"),
                      "error": result.get("error")}
            if self.failures.get(lease.fault_id, 0) <= 1:  # one line per fault, not per retry
                append_record(self.state_dir, record)
            if dead_cause is not None:
                declare_dead(self.owners_dir, lease.owner, record)
        return result

    def _last_seen_at(self, lease: Lease) -> float | None:
        beat = read_heartbeat(self.owners_dir, lease.owner)
        return None if beat is None else time.time() - (boottime() - beat)

    def _invalid(self, bad: InvalidLease) -> dict[str, Any] | None:
        try:
            if time.time() - bad.path.stat().st_mtime < INVALID_GRACE_S:
                return None
            moved = self.store.quarantine(bad.path)
        except OSError as exc:
            logger.error("reaper: invalid lease %s (%s) cannot be moved aside: %s", bad.path, bad.reason, exc)
            return {"fault_id": bad.path.stem, "error": f"invalid lease: {bad.reason}"}
        logger.error("reaper: invalid lease %s (%s): moved to %s", bad.path.name, bad.reason, moved)
        record: dict[str, Any] = {"fault_id": bad.path.stem, "cause": f"invalid lease: {bad.reason}",
                                  "quarantined_to": str(moved), "detected_at": time.time()}
        match = FAULT_ID_RE.match(bad.path.stem)
        if match and match["kind"] in KINDS:
            fault_kind = KINDS[match["kind"]]
            record.update(kind=fault_kind.name, service=match["service"])
            try:  # ownership-aware: a live run's fault on that service is left alone
                record["rollback"] = fault_kind.function("rollback")(match["service"],
                                                                     configuration=self.configuration)
            except Exception as exc:  # noqa: BLE001 - e.g. the service is not in the registry
                record["error"] = f"could not revert by service: {exc}"
        append_record(self.state_dir, record)
        return record

    def _housekeeping(self, leases: list[Lease]) -> None:
        """Forget heartbeat files and dead marks of this host's owner processes that are gone."""
        owning = {lease.owner.key for lease in leases}
        if not self.owners_dir.is_dir():
            return
        host = safe_name(socket.gethostname())
        for path in self.owners_dir.iterdir():
            key = path.name.rsplit(".", 1)[0]
            parts = key.rsplit("-", 2)
            if key in owning or path.name.startswith(".") or len(parts) != 3 or parts[0] != host:
                continue
            try:
                pid, start = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            stat = proc_stat(pid)
            if stat is None or stat[1] != start:
                path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaoscheckout.faults.reaper", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="the stack's state dir")
    parser.add_argument("--interval-s", type=float, default=0.25, help="seconds between ticks (default 0.25)")
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
