"""stack.services.checkout_resilience.RetryBudget: retries bounded by a share of first
attempts over a sliding window, plus a floor a second (pure logic, a fake clock)."""

from __future__ import annotations

import pytest
from fakeclock import ClockForTests

from stack.services.checkout_resilience import RetryBudget

pytestmark = pytest.mark.fast


def _retries_granted(budget: RetryBudget, tries: int) -> int:
    return sum(budget.try_retry() for _ in range(tries))


def test_a_few_slow_requests_are_all_retried() -> None:
    clock = ClockForTests()
    budget = RetryBudget(ratio=0.2, min_per_s=10, window_s=10, clock=clock)
    for _ in range(100):  # 10/s for 10 s, one in ten needing a retry: all granted
        budget.first_attempt()
    assert _retries_granted(budget, 10) == 10 and budget.denied == 0


def test_an_upstream_slow_for_everyone_gets_a_bounded_share_of_retries() -> None:
    clock = ClockForTests()
    budget = RetryBudget(ratio=0.2, min_per_s=10, window_s=10, clock=clock)
    for _ in range(840):  # a flash sale: 84/s for 10 s
        budget.first_attempt()
    granted = _retries_granted(budget, 3 * 840)  # every request wants three retries
    assert granted == 100 + 168  # floor (10/s x 10 s) + 0.2 x 840
    assert budget.denied == 3 * 840 - granted


def test_the_window_slides() -> None:
    clock = ClockForTests()
    budget = RetryBudget(ratio=0.0, min_per_s=1, window_s=10, clock=clock)
    assert _retries_granted(budget, 20) == 10
    clock.now += 10.0  # every spent retry has left the window
    assert _retries_granted(budget, 20) == 10


def test_zero_means_no_retries_and_negative_no_limit() -> None:
    none = RetryBudget(ratio=0.0, min_per_s=0)
    none.first_attempt()
    assert not none.try_retry()
    unlimited = RetryBudget(ratio=-1, min_per_s=0)
    assert _retries_granted(unlimited, 1000) == 1000
