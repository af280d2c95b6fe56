"""stack.services.checkout_resilience.StoreBreaker and checkout's ``store_down``: when the
orders store counts as down, who is refused, who probes, what closes it (pure logic, a fake
clock; the breaker against a real crashed Postgres is in test_checkout_resilience.py)."""

from __future__ import annotations

import psycopg
import pytest
from fakeclock import ClockForTests
from psycopg_pool import PoolTimeout

from stack.services.checkout import store_down
from stack.services.checkout_resilience import StoreBreaker

pytestmark = pytest.mark.fast


def test_closed_passes_everything_and_a_success_while_closed_changes_nothing() -> None:
    breaker = StoreBreaker(clock=ClockForTests())
    assert [breaker.admit() for _ in range(3)] == ["pass"] * 3
    breaker.succeeded(trial=False)
    assert not breaker.is_open


def test_open_rejects_then_lets_one_trial_through_per_interval() -> None:
    clock = ClockForTests()
    breaker = StoreBreaker(trial_every_s=0.25, clock=clock)
    assert breaker.failed("connection refused", trial=False) is True
    assert breaker.failed("connection refused", trial=False) is False  # opened once
    assert breaker.admit() == "reject"  # no trial before the interval
    clock.now += 0.25
    assert breaker.admit() == "trial"
    assert breaker.admit() == "reject"  # one trial at a time
    clock.now += 1.0
    assert breaker.admit() == "reject"  # still: the first trial has not ended
    breaker.failed("connection refused", trial=True)
    assert breaker.admit() == "reject"  # the next trial waits its interval from the last
    clock.now += 0.25
    assert breaker.admit() == "trial"
    assert breaker.down_for_s() == pytest.approx(1.5)
    breaker.succeeded(trial=True)
    assert not breaker.is_open and breaker.admit() == "pass" and breaker.down_for_s() == 0.0


def test_only_a_trial_closes_it_and_an_abandoned_trial_frees_the_slot() -> None:
    clock = ClockForTests()
    breaker = StoreBreaker(trial_every_s=0.25, clock=clock)
    breaker.failed("server closed the connection", trial=False)
    breaker.succeeded(trial=False)  # a call admitted before the crash finished late
    assert breaker.is_open
    clock.now += 0.25
    assert breaker.admit() == "trial"
    breaker.abandoned(trial=True)  # the trial was cancelled (its client went away)
    assert breaker.is_open
    clock.now += 0.25
    assert breaker.admit() == "trial"  # not stuck waiting for the cancelled one


def test_store_down_tells_a_gone_server_from_an_error_of_a_running_one() -> None:
    assert store_down(PoolTimeout("couldn't get a connection after 2.00 sec"))
    assert store_down(psycopg.OperationalError("connection failed: Connection refused"))
    crashed = psycopg.errors.lookup("57P02")("terminating connection because of crash")
    assert store_down(crashed) and "crash" in store_down(crashed)
    assert store_down(psycopg.errors.lookup("57P03")("the database system is in recovery mode"))
    assert store_down(psycopg.errors.lookup("08006")("connection failure"))
    # a running Postgres answered: the breaker must not hide these behind "store down"
    assert store_down(psycopg.errors.lookup("53100")("could not extend file: No space left")) is None
    assert store_down(psycopg.errors.lookup("57014")("canceling statement due to timeout")) is None
    assert store_down(psycopg.errors.lookup("23505")("duplicate key")) is None
    assert store_down(ValueError("not a database error")) is None
