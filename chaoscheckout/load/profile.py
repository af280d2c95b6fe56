"""Load profiles: ``baseline`` (the experiment's own rate) and ``peak`` (a share of the latest
capacity measurement, reached by a ramp).

The peak rate comes from the **capacity record**, one small JSON file written by
``bench/capacity.py`` (``chaoscheckout capacity measure``) after a full capacity sweep::

    {"schema": 1,
     "capacity_per_s": 60.0,      # highest step that held (p95 < 300 ms, errors < 1 %,
                                  # < 2 % dropped), fault proxy in the path
     "measured_at": "2026-11-29T19:40:00Z",
     "host": {"name", "platform", "cpus", "loadavg"},
     "build": {"system_build", "system_label", "commit"},
     "method": {...}}             # how it was measured (steps, step length, SLOs)

Where it lives (configuration key / environment variable, first set wins):
``chaoscheckout_capacity_file`` / ``CHAOSCHECKOUT_CAPACITY_FILE``, else
``<state_dir>/capacity.json`` (the state dir survives ``stack down``).

The ``peak`` profile's settings:

- ``chaoscheckout_peak_share`` / ``CHAOSCHECKOUT_PEAK_SHARE`` (default 0.7, in (0, 1]):
  rate = floor(capacity x share), at least 1 and never above the capacity;
- ``chaoscheckout_peak_ramp_s`` / ``CHAOSCHECKOUT_PEAK_RAMP_S`` (default 30, 0..300): k6
  ramps from the baseline rate to the peak rate over this long, then holds the peak rate;
  the load control waits the ramp out before the steady state is first checked.

Everything is checked before k6 or any fault starts: an unknown profile, a missing or
invalid record, a share or ramp that is not a finite number in bounds, a rate above the
capacity or above the load control's limit raise :class:`ProfileError` saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaoscheckout.config import finite_number, settings_from
from chaoscheckout.errors import InvalidFaultArgument

__all__ = [
    "PROFILES",
    "CapacityRecord",
    "LoadProfile",
    "ProfileError",
    "capacity_path",
    "read_capacity",
    "write_capacity",
    "new_record",
    "resolve_profile",
    "peak_rate",
]

PROFILES = ("baseline", "peak")
SCHEMA = 1
DEFAULT_PEAK_SHARE = 0.7
DEFAULT_PEAK_RAMP_S = 30.0
MAX_RAMP_S = 300.0
MAX_CAPACITY_PER_S = 100000.0
MAX_RECORD_BYTES = 64 * 1024
MAX_RATE = 200  # the load control's own limit (chaoscheckout.load.control.MAX_RATE)
MEASURE_HINT = ("measure it first: `chaoscheckout capacity measure` (= bench/capacity.py, about 5 min, "
                "brings its own stack up and down), or point CHAOSCHECKOUT_CAPACITY_FILE at a record")


class ProfileError(InvalidFaultArgument):
    """The load profile cannot be resolved (nothing was started)."""


@dataclass(frozen=True)
class CapacityRecord:
    capacity_per_s: float
    measured_at: str
    host: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadProfile:
    name: str
    rate: int  # the rate k6 holds (after the ramp)
    start_rate: int  # where the ramp starts (== rate without a ramp)
    ramp_s: float
    share: float | None = None  # peak: the share of the capacity
    capacity_file: str | None = None
    capacity: dict[str, Any] | None = None  # the record the rate came from, verbatim
    capacity_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def k6_env(self) -> dict[str, str]:
        """What load/baseline.js needs for this profile (nothing extra for a flat baseline)."""
        if self.ramp_s <= 0 and self.name == "baseline":
            return {}
        vus = min(600, max(50, 3 * self.rate))  # a 2 s request timeout at the peak rate, plus slack
        return {"START_RATE": str(self.start_rate), "RAMP_S": str(int(round(self.ramp_s))),
                "PRE_ALLOCATED_VUS": str(min(vus, max(10, self.rate))), "MAX_VUS": str(vus)}


def capacity_path(configuration: dict[str, Any] | None = None) -> Path:
    """Where the capacity record is read and written (see the module docstring)."""
    explicit = _setting(configuration, "chaoscheckout_capacity_file", None)
    if explicit is not None:
        path = Path(str(explicit)).expanduser()
        if not path.is_absolute():
            raise ProfileError(f"CHAOSCHECKOUT_CAPACITY_FILE must be an absolute path, got {explicit!r}")
        return path
    return settings_from(configuration).state_dir / "capacity.json"


def read_capacity(path: Path) -> tuple[CapacityRecord, str]:
    """The record at ``path`` and the sha256 of its bytes; ProfileError when missing or invalid."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(f"no capacity record at {path}: the peak profile needs one; "
                           f"{MEASURE_HINT}") from None
    except OSError as exc:
        raise ProfileError(f"cannot read the capacity record {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise ProfileError(f"capacity record {path} is larger than {MAX_RECORD_BYTES} bytes: not a record")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ProfileError(f"capacity record {path} is not valid JSON ({exc}); {MEASURE_HINT}") from None
    return _parse_record(path, data), hashlib.sha256(raw).hexdigest()


def write_capacity(record: CapacityRecord, path: Path) -> Path:
    """Write ``record`` to ``path`` atomically (temp file, fsync, rename; 0644)."""
    _parse_record(path, record.to_dict())  # never write a record that could not be read back
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def new_record(capacity_per_s: float, build: dict[str, Any], method: dict[str, Any]) -> CapacityRecord:
    """A record measured now on this host."""
    import platform

    try:
        loadavg = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        loadavg = None
    return CapacityRecord(
        capacity_per_s=float(capacity_per_s),
        measured_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host={"name": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
              "loadavg": loadavg},
        build=dict(build), method=dict(method))


def peak_rate(capacity_per_s: float, share: float) -> int:
    """floor(capacity x share): the peak rate (checked by :func:`resolve_profile`)."""
    return int(math.floor(capacity_per_s * share + 1e-9))


def resolve_profile(name: Any, baseline_rate: int,
                    configuration: dict[str, Any] | None = None) -> LoadProfile:
    """The profile ``name`` for an experiment whose own (baseline) rate is ``baseline_rate``."""
    if not isinstance(name, str) or name not in PROFILES:
        raise ProfileError(f"unknown load profile {name!r}: choose one of {', '.join(PROFILES)} "
                           "(CHAOSCHECKOUT_LOAD_PROFILE, or --profile)")
    if name == "baseline":
        return LoadProfile("baseline", int(baseline_rate), int(baseline_rate), 0.0)
    share = _number("chaoscheckout_peak_share (CHAOSCHECKOUT_PEAK_SHARE)",
                    _setting(configuration, "chaoscheckout_peak_share", DEFAULT_PEAK_SHARE), 0, 1.0)
    ramp_s = _number("chaoscheckout_peak_ramp_s (CHAOSCHECKOUT_PEAK_RAMP_S)",
                     _setting(configuration, "chaoscheckout_peak_ramp_s", DEFAULT_PEAK_RAMP_S), 0, MAX_RAMP_S,
                     low_inclusive=True)
    path = capacity_path(configuration)
    record, digest = read_capacity(path)
    rate = peak_rate(record.capacity_per_s, share)
    if rate < 1:
        raise ProfileError(f"peak rate {record.capacity_per_s:g}/s x {share:g} rounds to 0 checkouts/s: "
                           f"the capacity record {path} is too small to derive a peak from; {MEASURE_HINT}")
    if rate > record.capacity_per_s:
        raise ProfileError(f"peak rate {rate}/s is above the measured capacity {record.capacity_per_s:g}/s "
                           f"({path})")
    if rate > MAX_RATE:
        raise ProfileError(f"peak rate {rate}/s is above the load control's limit of {MAX_RATE}/s: "
                           "lower CHAOSCHECKOUT_PEAK_SHARE")
    return LoadProfile("peak", rate, max(1, min(int(baseline_rate), rate)), ramp_s, share, str(path),
                       record.to_dict(), digest)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _setting(configuration: dict[str, Any] | None, key: str, default: Any) -> Any:
    value = (configuration or {}).get(key)
    if value not in (None, ""):
        return value
    value = os.environ.get(key.upper())
    return default if value in (None, "") else value


def _number(name: str, value: Any, low: float, high: float, low_inclusive: bool = False) -> float:
    try:
        return finite_number(name, value, low, high, low_inclusive)
    except InvalidFaultArgument as exc:
        raise ProfileError(str(exc)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _parse_record(path: Path, data: Any) -> CapacityRecord:
    def bad(why: str) -> ProfileError:
        return ProfileError(f"capacity record {path} is invalid: {why}; {MEASURE_HINT}")

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    if data.get("schema") != SCHEMA:
        raise bad(f"schema {data.get('schema')!r}, expected {SCHEMA}")
    capacity = data.get("capacity_per_s")
    if isinstance(capacity, bool) or not isinstance(capacity, int | float) or not math.isfinite(capacity) \
            or not 0 < capacity <= MAX_CAPACITY_PER_S:
        raise bad(f"capacity_per_s must be a finite number in (0, {MAX_CAPACITY_PER_S:g}], "
                  f"got {capacity!r}")
    measured_at = data.get("measured_at")
    try:
        datetime.fromisoformat(str(measured_at).replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"measured_at is not an ISO 8601 time: {measured_at!r}") from None
    parts = {}
    for key in ("host", "build", "method"):
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise bad(f"{key} must be an object")
        parts[key] = value
    return CapacityRecord(float(capacity), str(measured_at), parts["host"], parts["build"], parts["method"])
