"""The latency toxic: what it is, how it is parsed, how it picks traffic and counts its effect.

A toxic delays upstream-bound (request direction) data by ``delay_ms`` ± ``jitter_ms``,
the jitter drawn **uniformly** from ``[delay - jitter, delay + jitter]``. Its ``scope``
says what ``fraction`` (the blast radius) is a fraction of:

- ``connection`` (the default): each connection is picked with probability
  ``fraction`` and every upstream chunk of a picked connection is delayed. Decided again
  by every connection, keep-alive ones included, whenever the toxic changes (each toxic
  has a new ``generation``). Beware the pool effect: a client pool routes around its one
  slow connection, so 30 % of connections can be well under 1 % of requests.
- ``request``: each **exchange** is picked independently with probability ``fraction``.
  An exchange starts with an upstream chunk that arrives when the connection has no
  delayed chunk in flight and the upstream has answered since the connection's previous
  upstream chunk (or it is the connection's first chunk). For HTTP/1.1 (keep-alive, no
  pipelining) an exchange is a request, so this is a fraction of requests.

Either way a chunk that arrives behind a delayed chunk waits for it (byte order holds).
Each toxic counts its effect from the moment it is set (:class:`ToxicCounters`). Past
``expires_at`` (unix seconds) a toxic is inert.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from chaoscheckout import validate

__all__ = ["LatencyToxic", "ToxicCounters", "ToxicError", "parse_latency", "MAX_DELAY_MS", "SCOPES"]

MAX_DELAY_MS = 60_000.0
SCOPES = ("connection", "request")
_generations = itertools.count(1)


class ToxicError(ValueError):
    """A toxic specification was rejected (the message says which field and why)."""


@dataclass
class ToxicCounters:
    """What one toxic did since it was set (mutated by the relay, one event loop thread).

    ``chunks_delayed`` counts chunks that left later than they arrived because of the
    toxic: with a delay of their own, or held behind a delayed chunk.
    """

    chunks_seen: int = 0
    chunks_delayed: int = 0
    exchanges_seen: int = 0
    exchanges_delayed: int = 0
    connections_decided: int = 0  # connection scope: decisions taken
    connections_picked: int = 0


@dataclass(frozen=True)
class LatencyToxic:
    delay_ms: float
    jitter_ms: float = 0.0
    fraction: float = 1.0
    expires_at: float | None = None
    fault_id: str | None = None
    generation: int = 0
    scope: str = "connection"
    set_at: float = field(default_factory=time.time)
    counters: ToxicCounters = field(default_factory=ToxicCounters, compare=False, repr=False)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def pick(self, rng: random.Random) -> bool:
        """One independent draw with probability ``fraction`` (a connection or an exchange)."""
        return self.fraction >= 1.0 or rng.random() < self.fraction

    def draw_delay_s(self, rng: random.Random) -> float:
        """One chunk's delay in seconds: uniform in [delay - jitter, delay + jitter]."""
        if self.jitter_ms <= 0:
            return self.delay_ms / 1000.0
        return max(0.0, rng.uniform(self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms)) / 1000.0

    def effect(self) -> dict[str, Any]:
        """The counters with ratios (null when nothing was seen yet)."""
        c = self.counters
        return {
            "fault_id": self.fault_id,
            "scope": self.scope,
            "fraction": self.fraction,
            "set_at": self.set_at,
            **asdict(c),
            "delayed_ratio": round(c.chunks_delayed / c.chunks_seen, 4) if c.chunks_seen else None,
            "exchanges_delayed_ratio": (round(c.exchanges_delayed / c.exchanges_seen, 4)
                                        if c.exchanges_seen else None),
        }

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "counters"}
        data["distribution"] = "uniform"
        data["effect"] = self.effect()
        return data


def _number(body: dict[str, Any], key: str, default: float | None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    return validate.finite(key, value, error=ToxicError)


def parse_latency(body: Any, now: float | None = None) -> LatencyToxic:
    """Validate a ``PUT /routes/<name>/latency`` body into a toxic (or raise ToxicError)."""
    if not isinstance(body, dict):
        raise ToxicError("body must be a JSON object")
    unknown = set(body) - {"delay_ms", "jitter_ms", "fraction", "expires_at", "fault_id", "scope"}
    if unknown:
        raise ToxicError(f"unknown fields: {', '.join(sorted(unknown))}")
    if "delay_ms" not in body:
        raise ToxicError("delay_ms is required")
    delay = _number(body, "delay_ms", None)
    jitter = _number(body, "jitter_ms", 0.0)
    fraction = _number(body, "fraction", 1.0)
    expires_at = _number(body, "expires_at", None)
    now = time.time() if now is None else now
    validate.in_range("delay_ms", delay, 0, MAX_DELAY_MS, error=ToxicError)
    validate.in_range("jitter_ms", jitter, 0, delay, low_inclusive=True, error=ToxicError)
    validate.in_range("fraction", fraction, 0, 1, error=ToxicError)
    if expires_at is not None and expires_at <= now:
        raise ToxicError(f"expires_at={expires_at:.3f} is already in the past")
    fault_id = body.get("fault_id")
    if fault_id is not None and not isinstance(fault_id, str):
        raise ToxicError("fault_id must be a string")
    scope = body.get("scope", "connection")
    if scope is None:
        scope = "connection"
    if scope not in SCOPES:
        raise ToxicError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return LatencyToxic(delay, jitter, fraction, expires_at, fault_id, next(_generations), scope, now)
