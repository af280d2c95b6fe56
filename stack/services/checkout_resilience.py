"""checkout's resilience building blocks: the stale-if-error price cache, the time budget,
the retry budget, the adaptive attempt timeout and the orders-store breaker.

Pure state, no I/O: :mod:`stack.services.checkout` does the calls and documents the
settings. Kept apart so each piece can be read (and reasoned about) on its own.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["PriceCache", "Budget", "RetryBudget", "AdaptiveTimeout", "StoreBreaker"]


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


@dataclass
class AdaptiveTimeout:
    """A per-attempt timeout that follows the latency the caller observes.

    ``timeout_s()`` is ``factor`` times the median latency of the attempts answered in the
    last ``window_s`` seconds, never below ``floor_s`` nor above ``ceiling_s`` (``factor`` 0
    = always ``floor_s``: a fixed timeout). Until ``min_samples`` answers are in the window
    the timeout is ``floor_s``. With ``fast_window_s`` > 0 the median of the answers of that
    last short window counts too (the larger of the two medians, once ``min_samples``
    answers are in it): the 10 s window is full of the fast answers from before, so on its
    own it took 5 s to follow a sudden slow-down, and by then a storm of retried timeouts
    was under way (journals/FINDINGS.md, fifth session). The short window follows within
    a refresh or two, and falls back as fast, leaving the 10 s median in charge. Answers to
    attempts already given up on count too (they arrive while the attempt lingers): they are
    what tells a queued caller from a slow upstream when every attempt is timing out.

    Why: the latency checkout observes includes its own queueing. At a flash sale's rate a
    busy event loop adds tens of milliseconds to every call, so a fixed 80 ms attempt times out
    on a healthy payments; each timeout is retried, the retries cost CPU, the loop gets busier
    and more attempts time out: a metastable timeout storm that outlives whatever set it off.
    A timeout that rises with the median stops timing out calls that are merely queued. The
    median, not a high percentile: a fault that slows a minority of calls (the latency
    experiment slows 10 %) leaves it where it was, so those calls are still cut at the floor
    and retried, which is what the retries are for.
    """

    floor_s: float
    ceiling_s: float
    factor: float = 4.0
    window_s: float = 10.0
    fast_window_s: float = 0.0
    min_samples: int = 20
    max_samples: int = 2000
    refresh_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    _samples: deque[tuple[float, float]] = field(default_factory=deque)
    _current: float = 0.0
    _computed_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.ceiling_s = max(self.ceiling_s, self.floor_s)
        self._current = self.floor_s

    def record(self, latency_s: float) -> None:
        """Record the latency of one attempt that got an answer."""
        self._samples.append((self.clock(), latency_s))
        if len(self._samples) > self.max_samples:
            self._samples.popleft()

    def timeout_s(self) -> float:
        """The timeout the next attempt should use."""
        if self.factor <= 0:
            return self.floor_s
        now = self.clock()
        if now - self._computed_at >= self.refresh_s:
            self._computed_at = now
            while self._samples and self._samples[0][0] <= now - self.window_s:
                self._samples.popleft()
            medians = [m for m in (self.median_s(), self.fast_median_s(now)) if m is not None]
            self._current = (self.floor_s if not medians
                             else min(self.ceiling_s, max(self.floor_s, self.factor * max(medians))))
        return self._current

    def median_s(self) -> float | None:
        """The median of the window's answered attempts (None below ``min_samples``)."""
        if len(self._samples) < self.min_samples:
            return None
        return statistics.median(latency for _, latency in self._samples)

    def fast_median_s(self, now: float | None = None) -> float | None:
        """The median of the answers of the last ``fast_window_s`` (None when off or below
        ``min_samples``)."""
        if self.fast_window_s <= 0:
            return None
        since = (self.clock() if now is None else now) - self.fast_window_s
        recent: list[float] = []
        for at, latency in reversed(self._samples):
            if at <= since:
                break
            recent.append(latency)
        return statistics.median(recent) if len(recent) >= self.min_samples else None


@dataclass
class StoreBreaker:
    """Fail fast while the orders store (Postgres) is down, instead of queueing on its pool.

    Closed, every order ``INSERT`` waits for a pooled connection as usual. A failure that
    says the server itself is gone (a connection lost or refused, Postgres restarting or in
    recovery, no pooled connection within the wait) opens it: from then on ``admit`` answers
    ``"reject"`` (the checkout is refused at once, nothing charged), except one ``"trial"``
    at a time, ``trial_every_s`` after the breaker opened or the last trial failed, that goes
    to the pool with a short wait. The first trial that
    succeeds closes the breaker. A failure that comes *from* a running server (a full disk,
    a constraint) is fast already and leaves the breaker as it is.

    Why: when Postgres crashes and restarts (a checkpoint that cannot write to a full disk
    PANICs it), every connection of the pool dies at once and the pool reconnects with a
    back-off of 1 s, 2 s, ... Each checkout then waits out the whole pool wait (2 s) before it
    fails; at a flash sale's rate that fills the in-flight limit within a second and p95
    latency jumps past 2 s, though nothing is gained by waiting.
    """

    trial_every_s: float = 0.25
    clock: Callable[[], float] = time.monotonic
    opened_at: float | None = None
    reason: str = ""
    _next_trial_at: float = 0.0
    _trial_in_flight: bool = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def admit(self) -> str:
        """``"pass"`` (closed), ``"trial"`` (open; this one probes the store) or ``"reject"``."""
        if self.opened_at is None:
            return "pass"
        now = self.clock()
        if self._trial_in_flight or now < self._next_trial_at:
            return "reject"
        self._trial_in_flight = True
        self._next_trial_at = now + self.trial_every_s
        return "trial"

    def succeeded(self, trial: bool) -> None:
        """The store answered. A trial closes the breaker; a call admitted while it was
        closed changes nothing (it may have got its connection before the store went down)."""
        if trial:
            self._trial_in_flight = False
            self.opened_at = None
            self.reason = ""

    def abandoned(self, trial: bool) -> None:
        """The call ended without an answer either way (cancelled): let the next trial go."""
        if trial:
            self._trial_in_flight = False

    def failed(self, reason: str, trial: bool) -> bool:
        """The store is down (``reason``); True when this failure opened the breaker."""
        if trial:  # the next trial waits its interval from the end of this one
            self._trial_in_flight = False
            self._next_trial_at = self.clock() + self.trial_every_s
        if self.opened_at is not None:
            return False
        self.opened_at = self.clock()
        self.reason = reason
        self._next_trial_at = self.opened_at + self.trial_every_s
        return True

    def down_for_s(self) -> float:
        return 0.0 if self.opened_at is None else self.clock() - self.opened_at
