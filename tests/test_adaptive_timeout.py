"""stack.services.checkout_resilience.AdaptiveTimeout: a per-attempt timeout that follows the
observed median within a floor and a ceiling (pure logic, a fake clock)."""

from __future__ import annotations

import pytest
from fakeclock import ClockForTests

from stack.services.checkout_resilience import AdaptiveTimeout

pytestmark = pytest.mark.fast


def _record(timeout: AdaptiveTimeout, clock: ClockForTests, latencies: list[float]) -> None:
    for latency in latencies:
        clock.now += 0.01
        timeout.record(latency)
    clock.now += 1.0  # past the refresh interval


def _timeout(clock: ClockForTests, **kwargs: float) -> AdaptiveTimeout:
    return AdaptiveTimeout(**{"floor_s": 0.08, "ceiling_s": 0.25, "factor": 4, **kwargs},
                           clock=clock)


def test_floor_until_enough_answers_and_when_payments_is_fast() -> None:
    clock = ClockForTests()
    timeout = _timeout(clock)
    _record(timeout, clock, [0.2] * 19)
    assert timeout.timeout_s() == 0.08  # 19 answers: fewer than min_samples
    _record(timeout, clock, [0.2])
    assert timeout.timeout_s() == 0.25  # the 20th: 4 x 0.2 s, cut to the ceiling
    fast = _timeout(clock)
    _record(fast, clock, [0.005] * 500)
    assert fast.timeout_s() == 0.08  # 4 x the median (20 ms) is under the floor


def test_rises_with_a_queued_caller_and_stops_at_the_ceiling() -> None:
    clock = ClockForTests()
    timeout = _timeout(clock)
    _record(timeout, clock, [0.03] * 100)  # every call 30 ms: a busy event loop
    assert timeout.timeout_s() == pytest.approx(0.12)
    _record(timeout, clock, [0.3] * 300)
    assert timeout.timeout_s() == 0.25


def test_a_slowed_minority_leaves_the_timeout_at_the_floor() -> None:
    clock = ClockForTests()
    timeout = _timeout(clock)
    _record(timeout, clock, ([0.01] * 7 + [0.4] * 3) * 30)  # 30 % of calls slowed by 400 ms
    assert timeout.timeout_s() == 0.08


def test_slow_answers_leave_the_window_and_the_timeout_falls_back() -> None:
    clock = ClockForTests()
    timeout = _timeout(clock, window_s=10)
    _record(timeout, clock, [0.05] * 100)
    assert timeout.timeout_s() == pytest.approx(0.2)
    clock.now += 10.0
    _record(timeout, clock, [0.01] * 100)
    assert timeout.timeout_s() == 0.08


def test_factor_zero_is_the_fixed_timeout_and_a_low_ceiling_never_goes_under_the_floor() -> None:
    clock = ClockForTests()
    fixed = _timeout(clock, factor=0)
    _record(fixed, clock, [0.2] * 100)
    assert fixed.timeout_s() == 0.08
    inverted = _timeout(clock, ceiling_s=0.01)
    _record(inverted, clock, [0.2] * 100)
    assert inverted.timeout_s() == 0.08


def test_the_window_keeps_at_most_max_samples() -> None:
    clock = ClockForTests()
    timeout = _timeout(clock, max_samples=50)
    _record(timeout, clock, [0.2] * 100 + [0.01] * 50)
    assert timeout.timeout_s() == 0.08  # the 100 slow answers were pushed out
