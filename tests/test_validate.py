"""Fast tier: the one number-validation module (chaoscheckout/validate.py) and its callers."""

from __future__ import annotations

import math

import pytest

from chaoscheckout import validate
from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults.leases import check_duration, check_positive
from chaoscheckout.network.proxy.loss import parse_response_loss
from chaoscheckout.network.proxy.toxic import ToxicError, parse_latency
from chaoscheckout.sli.probes import check_quantile

BAD_NUMBERS = [True, False, None, "1", [1], math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", BAD_NUMBERS)
def test_finite_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(validate.InvalidNumber, match=r"x must be a finite number, got"):
        validate.finite("x", value)


def test_finite_returns_a_float_and_parses_strings_only_when_asked():
    assert validate.finite("x", 3) == 3.0 and isinstance(validate.finite("x", 3), float)
    assert validate.finite("x", " 2.5 ", parse_strings=True) == 2.5
    with pytest.raises(validate.InvalidNumber):
        validate.finite("x", "nan", parse_strings=True)


@pytest.mark.parametrize("value, message", [
    (0, "must be > 0 and finite"), (-1, "must be > 0 and finite"), (math.nan, "must be > 0 and finite"),
    ("inf", "must be > 0 and finite"), ("soon", "must be a number"), (True, "must be a number"),
    (None, "must be a number"),
])
def test_positive(value, message):
    with pytest.raises(validate.InvalidNumber, match=message):
        validate.positive("t", value)
    assert validate.positive("t", "0.5") == 0.5


@pytest.mark.parametrize("value, kwargs, ok", [
    (0, {}, False), (1, {}, True), (0.5, {}, True), (1.0001, {}, False),
    (0, {"low_inclusive": True}, True), (1, {"high_inclusive": False}, False),
    ("0.5", {}, False), ("0.5", {"parse_strings": True}, True), (True, {}, False), (math.nan, {}, False),
])
def test_in_range(value, kwargs, ok):
    if ok:
        assert validate.in_range("f", value, 0, 1, **kwargs) == float(value)
    else:
        with pytest.raises(validate.InvalidNumber, match=r"f must be a finite number in [\[(]0, 1[\])]"):
            validate.in_range("f", value, 0, 1, **kwargs)


@pytest.mark.parametrize("value", [0, 11, 1.0, True, "5", None])
def test_integer(value):
    with pytest.raises(validate.InvalidNumber, match=r"n must be an integer 1\.\.10 req/s, got"):
        validate.integer("n", value, 1, 10, unit="req/s")
    assert validate.integer("n", 10, 1, 10) == 10


def test_the_error_type_is_the_callers():
    with pytest.raises(InvalidFaultArgument, match="duration_s must be a number of seconds"):
        check_duration("soon", 60)
    with pytest.raises(InvalidFaultArgument, match="duration_s must be > 0"):
        check_duration(-1, 60)
    with pytest.raises(InvalidFaultArgument, match="exceeds the maximum"):
        check_duration(61, 60)
    with pytest.raises(InvalidFaultArgument, match="timeout_s must be > 0"):
        check_positive("timeout_s", math.inf)
    with pytest.raises(InvalidFaultArgument, match="quantile must be a finite number in"):
        check_quantile(1)
    with pytest.raises(ToxicError, match="delay_ms must be a finite number in"):
        parse_latency({"delay_ms": 0})
    with pytest.raises(ToxicError, match="jitter_ms must be a finite number in"):
        parse_latency({"delay_ms": 10, "jitter_ms": 11})
    with pytest.raises(ToxicError, match="fraction must be a finite number, got True"):
        parse_response_loss({"fraction": True})
    assert parse_latency({"delay_ms": 10, "jitter_ms": 10, "fraction": 0.5}).fraction == 0.5


def test_load_control_collects_every_bad_number():
    from chaoslib.exceptions import InvalidActivity

    from chaoscheckout.load.control import _check_arguments  # noqa: PLC2701 - the control's own check

    with pytest.raises(InvalidActivity) as caught:
        _check_arguments(rate=0, duration_s=1.5, warmup_s=-1)
    message = str(caught.value)
    assert "rate must be an integer 1.." in message and "requests/s, got 0" in message
    assert "duration_s must be an integer 1.." in message
    assert "warmup_s must be a finite number in [0," in message
    _check_arguments(rate=5, duration_s=10, warmup_s=0)
