"""Settings shared by every activity: where the stack's state lives and its limits.

Values come from the experiment ``configuration`` first, then the environment, then
defaults. Names (configuration key / environment variable):

- ``chaoscheckout_state_dir`` / ``CHAOSCHECKOUT_STATE_DIR`` (default
  ``/var/lib/chaoscheckout``): holds ``services.json`` (the service registry written by
  whoever brought the stack up), ``leases/`` (live faults) and run files.
- ``chaoscheckout_runtime`` / ``CHAOSCHECKOUT_RUNTIME`` (default: the registry's
  ``runtime`` field, else ``local``).
- ``chaoscheckout_max_fault_duration_s`` / ``CHAOSCHECKOUT_MAX_FAULT_DURATION_S``
  (default 600): no lease may be longer.
- ``chaoscheckout_io_timeout_s`` / ``CHAOSCHECKOUT_IO_TIMEOUT_S`` (default 5): the
  timeout given to every HTTP, XML-RPC, SQL and subprocess call that has no better one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Settings", "settings_from", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = "/var/lib/chaoscheckout"


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


def settings_from(configuration: dict[str, Any] | None = None) -> Settings:
    """Build :class:`Settings` from a chaoslib configuration dict and the environment."""
    return Settings(
        state_dir=Path(_pick(configuration, "chaoscheckout_state_dir", DEFAULT_STATE_DIR)),
        runtime=_pick(configuration, "chaoscheckout_runtime", None),
        max_fault_duration_s=float(_pick(configuration, "chaoscheckout_max_fault_duration_s", 600)),
        io_timeout_s=float(_pick(configuration, "chaoscheckout_io_timeout_s", 5)),
    )
