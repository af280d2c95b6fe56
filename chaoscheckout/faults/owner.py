"""Who owns a fault, and whether that owner still lives: the dead-man switch's evidence.

An owner is ``{run_id, host, pid, start_ticks, boot_id}``:

- ``run_id``: made by the safety control at ``before_experiment`` (and recorded in the
  journal); outside a run the calling process is the owner (``process-<host>-<pid>-<start>``).
- ``pid`` + ``start_ticks`` (field 22 of ``/proc/<pid>/stat``, clock ticks since boot):
  a recycled pid has another start time, so it is never mistaken for the owner.
- ``boot_id`` (``/proc/sys/kernel/random/boot_id``): after a reboot no owner of the
  previous boot lives.

Liveness never reads the wall clock (which can jump): the owner process runs a
heartbeat thread that writes ``CLOCK_BOOTTIME`` to ``<state_dir>/owners/<key>.json``
every 0.25 s; the reaper (same host, same boot, same clock) compares it with its own
``CLOCK_BOOTTIME``. Only a running process can keep it fresh. A SIGSTOPped owner is
also seen at once in ``/proc`` (state ``T``). An owner on another host cannot be judged
from here: its faults are left to their lease expiry, and ``status`` says so.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Owner", "OwnerVerdict", "current_owner", "set_run_id", "clear_run_id", "boottime",
    "boot_id", "proc_start_ticks", "judge_owner", "process_record", "recorded_process_state",
    "ensure_heartbeat", "declared_dead",
    "declare_dead", "read_heartbeat", "proc_stat", "safe_name", "HEARTBEAT_INTERVAL_S", "HEARTBEAT_STALE_S",
]

logger = logging.getLogger("chaostoolkit")

HEARTBEAT_INTERVAL_S = 0.25
HEARTBEAT_STALE_S = 3.0  # SIGSTOP is seen at once in /proc; this bound is for a hung owner


@dataclass(frozen=True)
class Owner:
    run_id: str
    host: str
    pid: int
    start_ticks: int
    boot_id: str

    @property
    def key(self) -> str:
        """The owner process's file name in ``owners/`` (one per process)."""
        return f"{safe_name(self.host)}-{self.pid}-{self.start_ticks}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Owner:
        if not isinstance(raw, dict):
            raise ValueError("owner must be an object")
        run_id, host, bid = raw.get("run_id"), raw.get("host"), raw.get("boot_id")
        pid, start = raw.get("pid"), raw.get("start_ticks")
        if not all(isinstance(v, str) and v for v in (run_id, host, bid)):
            raise ValueError("owner run_id, host and boot_id must be non-empty strings")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (pid, start)):
            raise ValueError("owner pid and start_ticks must be positive integers")
        return cls(run_id, host, pid, start, bid)

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host})"


@dataclass(frozen=True)
class OwnerVerdict:
    """``alive`` True/False, or None when this host cannot judge (another host's owner)."""

    alive: bool | None
    why: str
    last_seen_s: float | None = None  # seconds since the last heartbeat, when known


def boottime() -> float:
    """Seconds since boot, suspend included; never jumps with the wall clock."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of ``pid`` from /proc, None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()  # comm may hold spaces and parentheses
    return rest[0], int(rest[19])  # field 3 = state, field 22 = starttime


def proc_start_ticks(pid: int) -> int:
    stat = proc_stat(pid)
    if stat is None:
        raise ProcessLookupError(pid)
    return stat[1]


def current_owner() -> Owner:
    """This process as an owner, with the run id set by the safety control (if any)."""
    host = socket.gethostname()
    pid = os.getpid()
    start = proc_start_ticks(pid)
    with _LOCK:
        run_id = _STATE.get("run_id")
    return Owner(run_id or f"process-{safe_name(host)}-{pid}-{start}", host, pid, start, boot_id())


def set_run_id(run_id: str | None = None) -> str:
    """Start a run in this process (the safety control does it); returns its id."""
    run_id = run_id or f"run-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    with _LOCK:
        _STATE["run_id"] = run_id
        _STATE.pop("declared_dead", None)
    return run_id


def clear_run_id() -> None:
    with _LOCK:
        _STATE.pop("run_id", None)


def process_record(pid: int) -> dict[str, Any] | None:
    """What names a process of this host across pid reuse and reboots (pid, start ticks, host,
    boot id), for :func:`recorded_process_state`; None when there is no such process."""
    stat = proc_stat(pid)
    if stat is None:
        return None
    return {"pid": pid, "start_ticks": stat[1], "host": socket.gethostname(), "boot_id": boot_id()}


def recorded_process_state(host: str, boot: str, pid: int, start_ticks: int) -> tuple[str, str]:
    """Is the process recorded as (host, boot id, pid, start ticks) still running here?
    ``("elsewhere" | "gone" | "stopped" | "running", why)``; /proc only, never the wall clock."""
    if host != socket.gethostname():
        return "elsewhere", f"owner is on another host ({host}): left to lease expiry"
    if boot != boot_id():
        return "gone", "the host rebooted since the fault was injected"
    stat = proc_stat(pid)
    if stat is None:
        return "gone", f"process {pid} is gone"
    state, start = stat
    if start != start_ticks:
        return "gone", f"process {pid} is gone (pid reused by another process)"
    if state in ("Z", "X"):
        return "gone", f"process {pid} exited"
    if state in ("T", "t"):
        return "stopped", f"process {pid} is stopped (frozen, e.g. SIGSTOP)"
    return "running", "alive"


def judge_owner(owner: Owner, owners_dir: Path, stale_after_s: float = HEARTBEAT_STALE_S) -> OwnerVerdict:
    """Is ``owner`` alive? Reads /proc and its heartbeat; never the wall clock."""
    state, why = recorded_process_state(owner.host, owner.boot_id, owner.pid, owner.start_ticks)
    if state != "running":
        return OwnerVerdict(None if state == "elsewhere" else False, why)
    beat = read_heartbeat(owners_dir, owner)
    if beat is not None:
        age = boottime() - beat
        if age > stale_after_s:
            return OwnerVerdict(False, f"process {owner.pid} gave no heartbeat for {age:.1f} s (frozen)", age)
        return OwnerVerdict(True, "alive", age)
    return OwnerVerdict(True, "alive (no heartbeat file yet)")


def read_heartbeat(owners_dir: Path, owner: Owner) -> float | None:
    try:
        raw = json.loads((Path(owners_dir) / f"{owner.key}.json").read_text())
        value = float(raw["boottime"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value


def ensure_heartbeat(owners_dir: Path) -> None:
    """Start this process's heartbeat for ``owners_dir`` (idempotent); the first beat is
    written before this returns, so a lease is never written before its owner's heartbeat."""
    owners_dir = Path(owners_dir)
    key = (os.getpid(), str(owners_dir))
    with _LOCK:
        beat = _HEARTBEATS.get(key)
        if beat is not None and beat.is_alive():
            return
        beat = _Heartbeat(owners_dir)
        owners_dir.parent.mkdir(parents=True, exist_ok=True)
        beat.write()
        beat.start()
        _HEARTBEATS[key] = beat


def declare_dead(owners_dir: Path, owner: Owner, record: dict[str, Any]) -> None:
    """Mark ``owner`` declared dead (its faults were reverted for it); it must never inject again."""
    path = Path(owners_dir) / f"{owner.key}.dead"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(record))
    except OSError as exc:
        logger.error("could not write %s: %s", path, exc)


def declared_dead(owners_dir: Path, owner: Owner | None = None) -> dict[str, Any] | None:
    """The record written when this process (or ``owner``) was declared dead, else None."""
    owner = owner or current_owner()
    try:
        return json.loads((Path(owners_dir) / f"{owner.key}.dead").read_text())
    except (OSError, ValueError):
        return None


###############################################################################
# Internals
###############################################################################
_LOCK = threading.RLock()
_STATE: dict[str, Any] = {}
_HEARTBEATS: dict[tuple[int, str], _Heartbeat] = {}


def safe_name(text: str) -> str:
    """``text`` made safe for a file name."""
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text)[:64] or "host"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Heartbeat(threading.Thread):
    """Writes CLOCK_BOOTTIME every HEARTBEAT_INTERVAL_S; on a halt or on being declared
    dead while a run is on, it interrupts the run (SIGUSR1: chaoslib's "leave now")."""

    def __init__(self, owners_dir: Path) -> None:
        super().__init__(name="chaoscheckout-heartbeat", daemon=True)
        self.owners_dir = owners_dir
        self.owner = current_owner()
        self.path = owners_dir / f"{self.owner.key}.json"
        self.state_dir = owners_dir.parent
        self.interrupted = False

    def write(self) -> None:
        self.owners_dir.mkdir(exist_ok=True)  # never re-creates a state dir that was removed
        _atomic_write(self.path, json.dumps({"boottime": boottime(), "pid": self.owner.pid}))

    def run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_INTERVAL_S)
            if not self.state_dir.is_dir():  # the stack's state dir is gone: nothing to own
                with _LOCK:
                    _HEARTBEATS.pop((os.getpid(), str(self.owners_dir)), None)
                return
            try:
                self.write()
            except OSError as exc:  # the reaper then sees a stale heartbeat: fail safe
                logger.error("heartbeat: cannot write %s: %s", self.path, exc)
            self._interrupt_if_needed()

    def _interrupt_if_needed(self) -> None:
        with _LOCK:
            in_run = "run_id" in _STATE
        if not in_run or self.interrupted:
            return
        reason = None
        if (self.state_dir / "HALT").exists():
            reason = "halted (chaoscheckout halt)"
        elif (self.owners_dir / f"{self.owner.key}.dead").exists():
            reason = "declared dead by the reaper (its faults were reverted for it)"
        if reason is None:
            return
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            return  # not inside chaoslib's exit_signals(): the safety control's hooks stop it
        self.interrupted = True
        logger.warning("chaoscheckout: interrupting this run: %s", reason)
        os.kill(os.getpid(), signal.SIGUSR1)
