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


def _answers(clock: ClockForTests, latencies: list[float], every_s: float,
             *timeouts: AdaptiveTimeout) -> None:
    for latency in latencies:
        clock.now += every_s
        for timeout in timeouts:
            timeout.record(latency)


def test_the_fast_window_follows_a_sudden_slow_down_within_a_refresh() -> None:
    """10 s of 5 ms answers at 84/s, then 0.5 s of 60 ms ones (a loop suddenly busy): with a 1 s
    window beside the 10 s one the deadline is 4 x 60 ms at once; with the 10 s one only it
    stays at the floor (its median is still the fast answers')."""
    clock = ClockForTests()
    both, long_only = _timeout(clock, fast_window_s=1.0), _timeout(clock)
    _answers(clock, [0.005] * 840, 1 / 84, both, long_only)
    assert both.timeout_s() == long_only.timeout_s() == 0.08
    clock.now += 0.3  # past the refresh interval
    _answers(clock, [0.06] * 42, 1 / 84, both, long_only)
    assert both.timeout_s() == pytest.approx(0.24)
    assert long_only.timeout_s() == 0.08
    _answers(clock, [0.005] * 126, 1 / 84, both)  # 1.5 s of fast answers again
    clock.now += 0.3
    assert both.timeout_s() == 0.08  # the short window's say is over


def test_the_fast_window_ignores_a_slowed_minority_and_a_trickle() -> None:
    clock = ClockForTests()
    timeout = _timeout(clock, fast_window_s=1.0)
    _answers(clock, ([0.01] * 8 + [0.4] * 2) * 60, 1 / 84, timeout)  # 20 % slowed by 400 ms
    clock.now += 0.3
    assert timeout.timeout_s() == 0.08
    trickle = _timeout(clock, fast_window_s=1.0)
    _answers(clock, [0.005] * 100 + [0.2] * 10, 0.1, trickle)  # 10 answers a second
    clock.now += 0.3
    assert trickle.fast_median_s() is None  # fewer than min_samples in any 1 s
    assert trickle.timeout_s() == 0.08
