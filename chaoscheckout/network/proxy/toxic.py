"""The latency toxic: what it is, how it is parsed, how it picks connections and delays.

A toxic delays every upstream-bound (request direction) data chunk of an affected
connection by ``delay_ms`` ± ``jitter_ms``, the jitter drawn **uniformly** from
``[delay - jitter, delay + jitter]``. Which connections are affected is decided per
connection with probability ``fraction`` (the blast radius), and decided again by every
connection, keep-alive ones included, whenever the toxic changes (each toxic has a new
``generation``). Past ``expires_at`` (unix seconds) a toxic is inert.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LatencyToxic", "ToxicError", "parse_latency", "MAX_DELAY_MS"]

MAX_DELAY_MS = 60_000.0
_generations = itertools.count(1)


class ToxicError(ValueError):
    """A toxic specification was rejected (the message says which field and why)."""


@dataclass(frozen=True)
class LatencyToxic:
    delay_ms: float
    jitter_ms: float = 0.0
    fraction: float = 1.0
    expires_at: float | None = None
    fault_id: str | None = None
    generation: int = 0

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def pick(self, rng: random.Random) -> bool:
        """Decide whether one connection is affected (probability ``fraction``)."""
        return self.fraction >= 1.0 or rng.random() < self.fraction

    def draw_delay_s(self, rng: random.Random) -> float:
        """One chunk's delay in seconds: uniform in [delay - jitter, delay + jitter]."""
        if self.jitter_ms <= 0:
            return self.delay_ms / 1000.0
        return max(0.0, rng.uniform(self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms)) / 1000.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["distribution"] = "uniform"
        return data


def _number(body: dict[str, Any], key: str, default: float | None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ToxicError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def parse_latency(body: Any, now: float | None = None) -> LatencyToxic:
    """Validate a ``PUT /routes/<name>/latency`` body into a toxic (or raise ToxicError)."""
    if not isinstance(body, dict):
        raise ToxicError("body must be a JSON object")
    unknown = set(body) - {"delay_ms", "jitter_ms", "fraction", "expires_at", "fault_id"}
    if unknown:
        raise ToxicError(f"unknown fields: {', '.join(sorted(unknown))}")
    if "delay_ms" not in body:
        raise ToxicError("delay_ms is required")
    delay = _number(body, "delay_ms", None)
    jitter = _number(body, "jitter_ms", 0.0)
    fraction = _number(body, "fraction", 1.0)
    expires_at = _number(body, "expires_at", None)
    if not 0 < delay <= MAX_DELAY_MS:
        raise ToxicError(f"delay_ms must be in (0, {MAX_DELAY_MS:g}], got {delay:g}")
    if not 0 <= jitter <= delay:
        raise ToxicError(f"jitter_ms must be in [0, delay_ms={delay:g}], got {jitter:g}")
    if not 0 < fraction <= 1:
        raise ToxicError(f"fraction must be in (0, 1], got {fraction:g}")
    if expires_at is not None and expires_at <= (time.time() if now is None else now):
        raise ToxicError(f"expires_at={expires_at:.3f} is already in the past")
    fault_id = body.get("fault_id")
    if fault_id is not None and not isinstance(fault_id, str):
        raise ToxicError("fault_id must be a string")
    return LatencyToxic(delay, jitter, fraction, expires_at, fault_id, next(_generations))
