"""Settings shared by every activity: where the stack's state lives and its limits.

Values come from the experiment ``configuration`` first, then the environment, then
defaults. Names (configuration key / environment variable):

- ``chaoscheckout_state_dir`` / ``CHAOSCHECKOUT_STATE_DIR`` (default
  ``/var/lib/chaoscheckout``): holds ``services.json`` (the service registry written by
  whoever brought the stack up), ``leases/`` (live faults) and run files.
- ``chaoscheckout_runtime`` / ``CHAOSCHECKOUT_RUNTIME`` (default: the registry's
  ``runtime`` field, else ``local``).
- ``chaoscheckout_max_fault_duration_s`` / ``CHAOSCHECKOUT_MAX_FAULT_DURATION_S``
  (default 600, at most 86400): no lease may be longer.
- ``chaoscheckout_io_timeout_s`` / ``CHAOSCHECKOUT_IO_TIMEOUT_S`` (default 5, at most
  300): the timeout given to every HTTP, XML-RPC, SQL and subprocess call that has no
  better one.

A limit cannot be switched off: a value that is not a finite number within its bounds
(``nan``, ``inf``, negative, zero, too large) is rejected with :class:`InvalidFaultArgument`
by every activity, before it changes anything. ``chaos validate`` cannot check these
values (chaoslib hands no configuration to an extension at validation time), so the first
activity of the run does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaoscheckout import validate
from chaoscheckout.errors import InvalidFaultArgument

__all__ = ["Settings", "settings_from", "DEFAULT_STATE_DIR", "MAX_FAULT_DURATION_CAP_S", "MAX_IO_TIMEOUT_S",
           "finite_number"]

DEFAULT_STATE_DIR = "/var/lib/chaoscheckout"
MAX_FAULT_DURATION_CAP_S = 86400.0  # the fault proxy refuses a toxic further ahead, too
MAX_IO_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    runtime: str | None
    max_fault_duration_s: float
    io_timeout_s: float

    @property
    def registry_file(self) -> Path:
        return self.state_dir / "services.json"

    @property
    def leases_dir(self) -> Path:
        return self.state_dir / "leases"


def _pick(configuration: dict[str, Any] | None, key: str, default: Any) -> Any:
    configuration = configuration or {}
    if configuration.get(key) not in (None, ""):
        return configuration[key]
    env = os.environ.get(key.upper())
    if env not in (None, ""):
        return env
    return default


def finite_number(name: str, value: Any, low: float, high: float, low_inclusive: bool = False) -> float:
    """``value`` as a float in (low, high] (or [low, high]); else InvalidFaultArgument.

    Numbers given as strings (environment variables, ``${...}`` substitution) are parsed;
    bools, NaN and infinities are refused."""
    return validate.in_range(name, value, low, high, low_inclusive=low_inclusive,
                             error=InvalidFaultArgument, parse_strings=True)


def settings_from(configuration: dict[str, Any] | None = None) -> Settings:
    """Build :class:`Settings` from a chaoslib configuration dict and the environment;
    raise InvalidFaultArgument for a value out of bounds (nothing is changed then)."""
    state_dir = Path(str(_pick(configuration, "chaoscheckout_state_dir", DEFAULT_STATE_DIR)))
    if not state_dir.is_absolute():
        raise InvalidFaultArgument(f"chaoscheckout_state_dir must be an absolute path, got {state_dir}")
    return Settings(
        state_dir=state_dir,
        runtime=_pick(configuration, "chaoscheckout_runtime", None),
        max_fault_duration_s=finite_number(
            "chaoscheckout_max_fault_duration_s (CHAOSCHECKOUT_MAX_FAULT_DURATION_S)",
            _pick(configuration, "chaoscheckout_max_fault_duration_s", 600), 0, MAX_FAULT_DURATION_CAP_S),
        io_timeout_s=finite_number(
            "chaoscheckout_io_timeout_s (CHAOSCHECKOUT_IO_TIMEOUT_S)",
            _pick(configuration, "chaoscheckout_io_timeout_s", 5), 0, MAX_IO_TIMEOUT_S),
    )
