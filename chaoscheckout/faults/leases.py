"""Leases: every live fault is a JSON file with an expiry and an owner, written before injection.

A lease outlives the ``chaos run`` process that created it, so the reaper (a process
under the runtime's supervisor) can revert the fault when its owner dies or freezes
(the dead-man switch, see :mod:`chaoscheckout.faults.owner`) or at expiry, and the
safety control can find its run's faults at experiment end.

File ``<state_dir>/leases/<fault_id>.json`` (written to a temp file, fsynced, renamed,
directory fsynced: durable before the effect starts)::

    {"fault_id": "kill-catalog-1a2b3c4d", "kind": "kill", "service": "catalog",
     "backend": "local", "params": {...}, "created_at": <unix s>, "expires_at": <unix s>,
     "owner": {"run_id", "host", "pid", "start_ticks", "boot_id"},
     "expires_boottime": <CLOCK_BOOTTIME s>, "abandoned": false}

A lease is data, never an instruction: it is parsed strictly (``fault_id`` equals the
file name, known kind, finite numbers); a file that does not parse is reported by
:meth:`LeaseStore.scan` as invalid, never silently skipped. Expiry is judged on
``CLOCK_BOOTTIME`` when the lease was written in this boot (wall-clock jumps neither
shorten nor stretch a fault), else on the wall clock. ``abandoned`` means its owner
gave up on it (a failed or unverified revert): the reaper takes it over at once.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaoscheckout import validate
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.faults.kinds import KIND_NAMES
from chaoscheckout.faults.owner import Owner, boot_id, boottime

__all__ = ["Lease", "LeaseStore", "InvalidLease", "LeasesUnreadable", "check_duration",
           "check_positive", "iso_utc", "KINDS", "FAULT_ID_RE"]

KINDS = KIND_NAMES  # from the fault-kind table
FAULT_ID_RE = re.compile(
    r"^(?P<kind>[a-z][a-z_]*)-(?P<service>[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*)-[0-9a-f]{8}$")


class LeasesUnreadable(ChaosCheckoutError):
    """The leases dir cannot be listed or written: nothing is injected, nothing is dropped."""


@dataclass(frozen=True)
class InvalidLease:
    path: Path
    reason: str


@dataclass(frozen=True)
class Lease:
    fault_id: str
    kind: str
    service: str
    backend: str
    params: dict[str, Any]
    created_at: float
    expires_at: float
    owner: Owner
    expires_boottime: float | None = None
    abandoned: bool = False

    def remaining_s(self, now: float | None = None) -> float:
        """Seconds left (on CLOCK_BOOTTIME for a lease of this boot, else the wall clock)."""
        if now is None and self.expires_boottime is not None and self.owner.boot_id == boot_id():
            return self.expires_boottime - boottime()
        return self.expires_at - (time.time() if now is None else now)

    def is_expired(self, now: float | None = None) -> bool:
        return self.remaining_s(now) <= 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["owner"] = self.owner.to_dict()
        return data

    @classmethod
    def parse(cls, raw: Any, file_stem: str | None = None) -> Lease:
        """A lease from its JSON, strictly (ValueError says what is wrong)."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        fault_id = raw.get("fault_id")
        if not isinstance(fault_id, str) or not FAULT_ID_RE.match(fault_id):
            raise ValueError(f"bad fault_id {fault_id!r}")
        if file_stem is not None and fault_id != file_stem:
            raise ValueError(f"fault_id {fault_id!r} differs from its file name {file_stem!r}")
        kind, service, backend = raw.get("kind"), raw.get("service"), raw.get("backend")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if not (isinstance(service, str) and service and isinstance(backend, str)):
            raise ValueError("service and backend must be strings")
        params = raw.get("params")
        if not isinstance(params, dict):
            raise ValueError("params must be an object")
        numbers = {}
        for key in ("created_at", "expires_at", "expires_boottime"):
            value = raw.get(key)
            if value is None and key == "expires_boottime":
                numbers[key] = None
                continue
            numbers[key] = validate.finite(key, value, error=ValueError)
        abandoned = raw.get("abandoned", False)
        if not isinstance(abandoned, bool):
            raise ValueError("abandoned must be true or false")
        return cls(fault_id, kind, service, backend, dict(params), numbers["created_at"],
                   numbers["expires_at"], Owner.from_dict(raw.get("owner")),
                   numbers["expires_boottime"], abandoned)

    def fault_result(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """The JSON every fault action returns (the contract in docs/architecture.md)."""
        return {
            "fault_id": self.fault_id,
            "kind": self.kind,
            "backend": self.backend,
            "target": self.service,
            "parameters": parameters,
            "injected_at": iso_utc(self.created_at),
            "expires_at": iso_utc(self.expires_at),
        }


def iso_utc(ts: float) -> str:
    """A UNIX timestamp as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def check_duration(duration_s: Any, max_duration_s: float) -> float:
    """Validate a fault duration: a positive number no longer than the configured maximum."""
    value = validate.positive("duration_s", duration_s, error=InvalidFaultArgument,
                              what="a number of seconds")
    if value > max_duration_s:
        raise InvalidFaultArgument(
            f"duration_s={value:g} exceeds the maximum fault duration of {max_duration_s:g} s "
            "(chaoscheckout_max_fault_duration_s)"
        )
    return value


def check_positive(name: str, value: Any) -> float:
    """Validate a finite number > 0 (timeouts, intervals)."""
    return validate.positive(name, value, error=InvalidFaultArgument)


class LeaseStore:
    """The leases of one state dir: ``<state_dir>/leases/<fault_id>.json``."""

    def __init__(self, leases_dir: Path) -> None:
        self.dir = Path(leases_dir)

    def create(
        self,
        kind: str,
        service: str,
        backend: str,
        params: dict[str, Any],
        duration_s: float,
        owner: Owner,
    ) -> Lease:
        """Write a new lease durably (fsync) and return it."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        now = time.time()
        lease = Lease(
            fault_id=f"{kind}-{service}-{uuid.uuid4().hex[:8]}",
            kind=kind,
            service=service,
            backend=backend,
            params=dict(params),
            created_at=now,
            expires_at=now + duration_s,
            owner=owner,
            expires_boottime=boottime() + duration_s,
        )
        if not FAULT_ID_RE.match(lease.fault_id):
            raise InvalidFaultArgument(f"service name {service!r} cannot name a lease file")
        self.write(lease)
        return lease

    def write(self, lease: Lease) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".lease.")
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(lease.to_dict(), fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.dir / f"{lease.fault_id}.json")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise LeasesUnreadable(f"cannot write a lease in {self.dir}: {exc}") from None

    def abandon(self, lease: Lease) -> Lease:
        """Hand ``lease`` to the reaper now (its owner could not revert or verify it)."""
        abandoned = replace(lease, abandoned=True)
        if (self.dir / f"{lease.fault_id}.json").exists():
            self.write(abandoned)
        return abandoned

    def scan(self) -> tuple[list[Lease], list[InvalidLease]]:
        """Every lease on disk (expired or not, oldest first) and every file that is not one.

        Raises LeasesUnreadable when the dir exists but cannot be listed.
        """
        leases: list[Lease] = []
        invalid: list[InvalidLease] = []
        if not self.dir.exists():
            return leases, invalid
        try:
            paths = sorted(self.dir.glob("*.json"))
            if not self.dir.is_dir():
                raise NotADirectoryError(f"{self.dir} is not a directory")
        except OSError as exc:
            raise LeasesUnreadable(f"cannot list the leases dir {self.dir}: {exc}") from None
        for path in paths:
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue  # reverted meanwhile
            except OSError as exc:
                invalid.append(InvalidLease(path, f"unreadable: {exc}"))
                continue
            try:
                leases.append(Lease.parse(json.loads(text), path.stem))
            except (ValueError, TypeError) as exc:
                invalid.append(InvalidLease(path, str(exc) or type(exc).__name__))
        return sorted(leases, key=lambda lease: (lease.created_at, lease.fault_id)), invalid

    def live(self) -> list[Lease]:
        """Every valid lease on disk (expired or not), oldest first."""
        return self.scan()[0]

    def for_service(self, service: str, kind: str | None = None) -> list[Lease]:
        return [
            lease for lease in self.live()
            if lease.service == service and (kind is None or lease.kind == kind)
        ]

    def expired(self, now: float | None = None) -> list[Lease]:
        return [lease for lease in self.live() if lease.is_expired(now)]

    def remove(self, fault_id: str) -> bool:
        if not FAULT_ID_RE.match(fault_id):
            return False  # never a path built from a foreign string
        try:
            (self.dir / f"{fault_id}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    def quarantine(self, path: Path) -> Path:
        """Move an invalid lease file aside (``leases/quarantine/``) so it is reported once."""
        target_dir = self.dir / "quarantine"
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{path.name}.{int(time.time())}"
        os.replace(path, target)
        return target

    def quarantined(self) -> list[Path]:
        qdir = self.dir / "quarantine"
        return sorted(qdir.iterdir()) if qdir.is_dir() else []
