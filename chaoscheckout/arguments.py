"""Every activity's arguments judged before the run starts, so a bad one injects nothing.

An activity checks its own arguments when it runs. In an experiment that is too late for
every activity after the first fault: a bad ``timeout_s`` on the probe that follows a disk
fill was refused with the disk already full. So an activity of this package whose argument
checks need no I/O names them with :func:`checked_before_the_run`, and the safety control
(:mod:`chaoscheckout.controls.safety`) runs :func:`argument_problems` over the whole
experiment, with chaoslib's own substitution of ``${...}`` values, before anything starts.
Pauses are judged there too (chaoslib sleeps them as given: a negative one fails the run
after the activity before it).

The activity calls the same check when it runs, so a library user calling it from Python
gets the same error; the check is the one place the rules live.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from chaoslib import substitute

from chaoscheckout.errors import InvalidFaultArgument

__all__ = ["checked_before_the_run", "argument_problems"]

PACKAGE = "chaoscheckout"
F = TypeVar("F", bound=Callable[..., Any])


def checked_before_the_run(check: Callable[..., Any]) -> Callable[[F], F]:
    """Mark an activity whose arguments ``check`` judges without I/O. ``check`` takes the
    activity's arguments (and ``configuration``) and raises :class:`InvalidFaultArgument`.
    The activity is returned unchanged (``chaos discover`` sees its own signature)."""
    def mark(func: F) -> F:
        func.check_arguments = check  # type: ignore[attr-defined]
        return func
    return mark


def argument_problems(experiment: dict[str, Any], configuration: dict[str, Any] | None = None,
                      secrets: dict[str, Any] | None = None) -> list[str]:
    """One line per bad argument or pause in ``experiment`` (its steady-state probes, method
    and rollbacks), after substitution; empty when all of them pass."""
    problems = []
    for section, activity in _activities(experiment):
        name = f"{section} activity {activity.get('name', '?')!r}"
        try:
            pauses = substitute(activity.get("pauses") or {}, configuration, secrets)
            for when in ("before", "after"):
                if when in pauses:
                    _check_pause(when, pauses[when])
            check = _check_of(activity.get("provider") or {})
            if check is not None:
                arguments = substitute((activity.get("provider") or {}).get("arguments") or {},
                                       configuration, secrets)
                _call(check, arguments, configuration)
        except InvalidFaultArgument as exc:
            problems.append(f"{name}: {exc}")
    return problems


def _activities(experiment: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    hypothesis = experiment.get("steady-state-hypothesis") or {}
    for section, activities in (("steady-state", hypothesis.get("probes")),
                                ("method", experiment.get("method")),
                                ("rollbacks", experiment.get("rollbacks"))):
        for activity in activities or []:
            if isinstance(activity, dict) and "ref" not in activity:
                yield section, activity


def _check_of(provider: dict[str, Any]) -> Callable[..., Any] | None:
    module = provider.get("module")
    if provider.get("type") != "python" or not isinstance(module, str) \
            or module.split(".")[0] != PACKAGE:
        return None
    try:
        func = getattr(importlib.import_module(module), str(provider.get("func")), None)
    except ImportError:
        return None  # chaoslib's own validation names a module that does not exist
    return getattr(func, "check_arguments", None)


def _call(check: Callable[..., Any], arguments: dict[str, Any], configuration: dict[str, Any] | None) -> None:
    signature = inspect.signature(check)
    if "configuration" in signature.parameters:
        arguments = {**arguments, "configuration": configuration}
    try:
        signature.bind(**arguments)
    except TypeError as exc:
        raise InvalidFaultArgument(f"arguments do not fit: {exc}") from None
    check(**arguments)


def _check_pause(when: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0:
        raise InvalidFaultArgument(f"pause {when} must be a number of seconds >= 0, got {value!r}")
