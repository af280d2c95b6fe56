"""Number validation, once: finite, positive, range and integer checks with one message style.

Every check refuses bools, NaN and infinities and returns the value as a float (``integer``:
an int). ``error`` is the exception class raised with the one-line message (default
:class:`InvalidNumber`); activities pass ``InvalidFaultArgument``, the fault proxy its
``ToxicError``. ``parse_strings=True`` accepts numbers given as strings (environment
variables, ``${...}`` substitution). Pure Python, no chaoslib: the fault proxy uses it too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["InvalidNumber", "finite", "positive", "in_range", "integer"]

ErrorType = Callable[[str], Exception]


class InvalidNumber(ValueError):
    """A number failed its check; the message names it, what it must be and what it was."""


def _as_float(value: Any, parse_strings: bool) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if parse_strings and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def finite(name: str, value: Any, *, error: ErrorType = InvalidNumber, parse_strings: bool = False) -> float:
    """``value`` as a finite float, else ``error("<name> must be a finite number, got …")``."""
    number = _as_float(value, parse_strings)
    if number is None or not math.isfinite(number):
        raise error(f"{name} must be a finite number, got {value!r}")
    return number


def positive(name: str, value: Any, *, error: ErrorType = InvalidNumber, what: str = "a number") -> float:
    """``value`` (strings parsed) as a finite float > 0: ``<name> must be <what>`` when it is
    not a number, ``<name> must be > 0 and finite`` when it is not positive and finite."""
    number = _as_float(value, parse_strings=True)
    if number is None:
        raise error(f"{name} must be {what}, got {value!r}")
    if not (math.isfinite(number) and number > 0):
        raise error(f"{name} must be > 0 and finite, got {value!r}")
    return number


def in_range(name: str, value: Any, low: float, high: float, *, low_inclusive: bool = False,
             high_inclusive: bool = True, error: ErrorType = InvalidNumber,
             parse_strings: bool = False) -> float:
    """``value`` as a finite float in (low, high] (brackets per the flags), else
    ``error("<name> must be a finite number in (low, high], got …")``."""
    number = _as_float(value, parse_strings)
    ok = number is not None and math.isfinite(number) \
        and (number >= low if low_inclusive else number > low) \
        and (number <= high if high_inclusive else number < high)
    if not ok:
        bounds = f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
        raise error(f"{name} must be a finite number in {bounds}, got {value!r}")
    return number  # type: ignore[return-value]


def integer(name: str, value: Any, low: int, high: int, *, error: ErrorType = InvalidNumber,
            unit: str = "") -> int:
    """``value`` as an int (not a bool, not a float) in [low, high], else
    ``error("<name> must be an integer low..high [unit], got …")``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{name} must be an integer {low}..{high}{' ' + unit if unit else ''}, got {value!r}")
    return value
