"""checkout's resilience building blocks: the stale-if-error price cache and the time budget.

Pure state, no I/O: :mod:`stack.services.checkout` does the calls and documents the
settings. Kept apart so each piece can be read (and reasoned about) on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["PriceCache", "Budget"]


@dataclass
class PriceCache:
    """The last price seen from catalog for each sku, with when it was seen.

    ``lookup`` answers only when EVERY requested sku is cached and none is older than
    ``max_age_s``: a partial or stale answer would price a cart wrongly, so it is refused.
    """

    max_age_s: float
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, tuple[int, float]] = field(default_factory=dict)

    def remember(self, prices: Iterable[tuple[str, int]]) -> None:
        now = self.clock()
        for sku, cents in prices:
            self._entries[sku] = (int(cents), now)

    def lookup(self, skus: Iterable[str]) -> dict[str, int] | None:
        """The cached prices of ``skus``, or None when one is missing or too old."""
        oldest_allowed = self.clock() - self.max_age_s
        found: dict[str, int] = {}
        for sku in skus:
            entry = self._entries.get(sku)
            if entry is None or entry[1] < oldest_allowed:
                return None
            found[sku] = entry[0]
        return found

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Budget:
    """A deadline shared by the attempts of one stage (``total_s`` 0 = no budget).

    ``next_timeout(per_attempt_s)`` is the timeout the next attempt may use: the
    per-attempt timeout cut to what is left, or None when less than ``min_attempt_s`` is
    left (no attempt should start that cannot finish). The first attempt always starts.
    """

    total_s: float
    min_attempt_s: float = 0.05
    clock: Callable[[], float] = time.monotonic
    _deadline: float = 0.0
    _attempts: int = 0

    def __post_init__(self) -> None:
        self._deadline = self.clock() + self.total_s if self.total_s > 0 else float("inf")

    def remaining_s(self) -> float:
        return self._deadline - self.clock()

    def next_timeout(self, per_attempt_s: float) -> float | None:
        remaining = self.remaining_s()
        if self._attempts > 0 and remaining < self.min_attempt_s:
            return None
        self._attempts += 1
        return max(0.001, min(per_attempt_s, remaining))
