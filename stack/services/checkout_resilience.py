"""checkout's resilience building blocks: the stale-if-error price cache, the time budget
and the retry budget.

Pure state, no I/O: :mod:`stack.services.checkout` does the calls and documents the
settings. Kept apart so each piece can be read (and reasoned about) on its own.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["PriceCache", "Budget", "RetryBudget"]


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


@dataclass
class RetryBudget:
    """How many retries the whole process may make: at most ``ratio`` of the first attempts
    of the last ``window_s`` seconds, plus ``min_per_s`` a second at any load (``ratio`` 0 and
    ``min_per_s`` 0 = no retries; ``ratio`` < 0 = no limit).

    Why: a retry is more work for an upstream that is already slow. At a flash sale's rate
    every timed-out attempt that is retried up to three times multiplies payments' work by up
    to four, which keeps it slow: the retries then cause the timeouts they answer. With a
    budget, a few slow requests (a fault on 10 % of them) are still all retried, while an
    upstream slow for everyone gets at most ``ratio`` more work, not 300 %. Same idea as
    Finagle's and gRPC's retry budgets.
    """

    ratio: float = 0.2
    min_per_s: float = 10.0
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _firsts: deque[float] = field(default_factory=deque)
    _retries: deque[float] = field(default_factory=deque)
    denied: int = 0

    def first_attempt(self) -> None:
        """Record a first attempt (it earns ``ratio`` of a retry)."""
        self._firsts.append(self.clock())

    def try_retry(self) -> bool:
        """Whether one more retry may be made now (and if so, spend it)."""
        if self.ratio < 0:
            return True
        now = self.clock()
        for times in (self._firsts, self._retries):
            while times and times[0] <= now - self.window_s:
                times.popleft()
        if len(self._retries) < self.min_per_s * self.window_s + self.ratio * len(self._firsts):
            self._retries.append(now)
            return True
        self.denied += 1
        return False
