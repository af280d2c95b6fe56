"""A clock a test moves by hand, for the pure-logic tests of time windows."""

from __future__ import annotations


class ClockForTests:
    """Callable like ``time.monotonic``; returns ``now``, which the test sets."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
