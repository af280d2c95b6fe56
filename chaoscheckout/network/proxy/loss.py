"""The response-loss toxic: the request reaches the upstream, its response never reaches the caller.

For each **exchange** (see :mod:`.toxic`: for HTTP/1.1 a request) that starts while the
toxic is live, one independent draw with probability ``fraction`` picks it. A picked
exchange's request is relayed to the upstream untouched; when the upstream's first
response byte arrives (so the upstream has done the work, e.g. captured a charge) the
relay drops it and resets the client connection (and closes the upstream one): the
caller sees a connection reset or a close without a response. Scope is always
``request``. Counted from the moment the toxic is set (:class:`LossCounters`); past
``expires_at`` (unix seconds) the toxic is inert.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from chaoscheckout import validate
from chaoscheckout.network.proxy.toxic import ToxicError

__all__ = ["ResponseLossToxic", "LossCounters", "parse_response_loss"]

_generations = itertools.count(1)


@dataclass
class LossCounters:
    """What one toxic did since it was set (mutated by the relay, one event loop thread)."""

    exchanges_seen: int = 0  # exchanges that started while the toxic was live
    exchanges_picked: int = 0  # picked: their response is to be dropped
    responses_lost: int = 0  # a response arrived from the upstream and was dropped (client reset)


@dataclass(frozen=True)
class ResponseLossToxic:
    fraction: float = 1.0
    expires_at: float | None = None
    fault_id: str | None = None
    generation: int = 0
    set_at: float = field(default_factory=time.time)
    counters: LossCounters = field(default_factory=LossCounters, compare=False, repr=False)

    scope = "request"

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def pick(self, rng: random.Random) -> bool:
        return self.fraction >= 1.0 or rng.random() < self.fraction

    def effect(self) -> dict[str, Any]:
        c = self.counters
        return {"fault_id": self.fault_id, "scope": self.scope, "fraction": self.fraction,
                "set_at": self.set_at, **asdict(c),
                "responses_lost_ratio": (round(c.responses_lost / c.exchanges_seen, 4)
                                         if c.exchanges_seen else None)}

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "counters"}
        data["scope"] = self.scope
        data["effect"] = self.effect()
        return data


def parse_response_loss(body: Any, now: float | None = None) -> ResponseLossToxic:
    """Validate a ``PUT /routes/<name>/response-loss`` body (raises ToxicError)."""
    if not isinstance(body, dict):
        raise ToxicError("body must be a JSON object")
    unknown = set(body) - {"fraction", "expires_at", "fault_id"}
    if unknown:
        raise ToxicError(f"unknown fields: {', '.join(sorted(unknown))}")
    values = {}
    for key, default in (("fraction", 1.0), ("expires_at", None)):
        value = body.get(key, default)
        values[key] = None if value is None else validate.finite(key, value, error=ToxicError)
    now = time.time() if now is None else now
    validate.in_range("fraction", values["fraction"], 0, 1, error=ToxicError)
    if values["expires_at"] is not None and values["expires_at"] <= now:
        raise ToxicError(f"expires_at={values['expires_at']:.3f} is already in the past")
    fault_id = body.get("fault_id")
    if fault_id is not None and not isinstance(fault_id, str):
        raise ToxicError("fault_id must be a string")
    return ResponseLossToxic(values["fraction"], values["expires_at"], fault_id, next(_generations), now)
