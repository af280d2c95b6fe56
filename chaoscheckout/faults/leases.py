"""Leases: every live fault is a JSON file with an expiry, written before injection.

A lease outlives the ``chaos run`` process that created it, so the reaper (a process
under the runtime's supervisor) can revert the fault at expiry even if the run was
SIGKILLed, and the safety control can find every live fault at experiment end.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaoscheckout.errors import InvalidFaultArgument

__all__ = ["Lease", "LeaseStore", "check_duration", "check_positive", "iso_utc"]

KINDS = ("kill", "latency", "disk")


@dataclass(frozen=True)
class Lease:
    fault_id: str
    kind: str
    service: str
    backend: str
    params: dict[str, Any]
    created_at: float
    expires_at: float
    owner_pid: int = field(default_factory=os.getpid)

    def remaining_s(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fault_result(self, target: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """The JSON a fault action returns (the contract in docs/architecture.md)."""
        return {
            "fault_id": self.fault_id,
            "kind": self.kind,
            "backend": self.backend,
            "target": target,
            "parameters": parameters,
            "injected_at": iso_utc(self.created_at),
            "expires_at": iso_utc(self.expires_at),
        }


def iso_utc(ts: float) -> str:
    """A UNIX timestamp as an ISO 8601 UTC string."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def check_duration(duration_s: Any, max_duration_s: float) -> float:
    """Validate a fault duration: a positive number no longer than the configured maximum."""
    if isinstance(duration_s, bool):
        raise InvalidFaultArgument(f"duration_s must be a number of seconds, got {duration_s!r}")
    try:
        value = float(duration_s)
    except (TypeError, ValueError):
        raise InvalidFaultArgument(f"duration_s must be a number of seconds, got {duration_s!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidFaultArgument(f"duration_s must be > 0 and finite, got {duration_s!r}")
    if value > max_duration_s:
        raise InvalidFaultArgument(
            f"duration_s={value:g} exceeds the maximum fault duration of {max_duration_s:g} s "
            "(chaoscheckout_max_fault_duration_s)"
        )
    return value


def check_positive(name: str, value: Any) -> float:
    """Validate a finite number > 0 (timeouts, intervals)."""
    if isinstance(value, bool):
        raise InvalidFaultArgument(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidFaultArgument(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise InvalidFaultArgument(f"{name} must be > 0 and finite, got {value!r}")
    return number


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
    ) -> Lease:
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
        )
        self._write(lease)
        return lease

    def _write(self, lease: Lease) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".lease.")
        with os.fdopen(fd, "w") as fh:
            json.dump(lease.to_dict(), fh)
        os.replace(tmp, self.dir / f"{lease.fault_id}.json")

    def live(self) -> list[Lease]:
        """Every lease on disk (expired or not), oldest first."""
        leases = []
        if not self.dir.is_dir():
            return leases
        for path in self.dir.glob("*.json"):
            try:
                leases.append(Lease(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # removed meanwhile, or half-written by a foreign tool
        return sorted(leases, key=lambda lease: lease.created_at)

    def for_service(self, service: str, kind: str | None = None) -> list[Lease]:
        return [
            lease for lease in self.live()
            if lease.service == service and (kind is None or lease.kind == kind)
        ]

    def expired(self, now: float | None = None) -> list[Lease]:
        now = time.time() if now is None else now
        return [lease for lease in self.live() if lease.expires_at <= now]

    def remove(self, fault_id: str) -> bool:
        try:
            (self.dir / f"{fault_id}.json").unlink()
            return True
        except FileNotFoundError:
            return False
