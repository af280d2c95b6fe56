"""Safety control: no fault outlives its experiment, whatever the run's status.

At the end of the experiment (completed, failed, aborted, or interrupted by a
chaostoolkit-addons safeguard) it reverts every live lease of the state dir, whatever
``--rollback-strategy`` says, and records what it reverted in the journal under
``chaoscheckout_safety``. Before the experiment it deals with leases left by an
earlier run: ``on_stale: "revert"`` (default) reverts them, ``"refuse"`` interrupts the
run before anything starts (the end-of-run revert still runs, so the next run starts
clean). (A SIGKILLed ``chaos run`` runs no control at all: the
reaper reverts its faults at lease expiry.)

Add it to an experiment::

    {
      "controls": [
        {
          "name": "chaoscheckout-safety",
          "provider": {
            "type": "python",
            "module": "chaoscheckout.controls.safety",
            "arguments": {"on_stale": "revert"}
          }
        }
      ]
    }
"""

from __future__ import annotations

import logging
import time
from typing import Any

from chaoslib.exceptions import InterruptExecution, InvalidControl
from chaoslib.types import Configuration, Control, Experiment, Journal

from chaoscheckout.config import settings_from
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.revert import revert_all
from chaoscheckout.sli import guards

__all__ = ["validate_control", "before_experiment_control", "after_experiment_control"]

logger = logging.getLogger("chaostoolkit")

ON_STALE = ("revert", "refuse")
JOURNAL_KEY = "chaoscheckout_safety"


def validate_control(control: Control, **kwargs: Any) -> None:
    """`chaos validate`: `on_stale` must be "revert" or "refuse"."""
    on_stale = control.get("provider", {}).get("arguments", {}).get("on_stale", "revert")
    if on_stale not in ON_STALE:
        raise InvalidControl(f"safety control: on_stale must be one of {ON_STALE}, got {on_stale!r}")


def before_experiment_control(
    context: Experiment, configuration: Configuration = None, on_stale: str = "revert", **kwargs: Any
) -> None:
    """
    Before the experiment: leases still live from an earlier run are reverted
    (`on_stale: "revert"`, the default) or stop this run before it starts
    (`on_stale: "refuse"`).
    """
    guards.reset()
    if on_stale not in ON_STALE:
        raise InterruptExecution(f"safety control: on_stale must be one of {ON_STALE}, got {on_stale!r}")
    stale = LeaseStore(settings_from(configuration).leases_dir).live()
    if not stale:
        return
    names = ", ".join(lease.fault_id for lease in stale)
    if on_stale == "refuse":
        raise InterruptExecution(
            f"safety control: live faults from an earlier run: {names}; revert them "
            "(or wait for the reaper) before starting another experiment"
        )
    logger.warning("safety control: reverting faults left by an earlier run: %s", names)
    for result in revert_all(configuration):
        logger.info("safety control: stale fault reverted: %s", result)


def after_experiment_control(
    context: Experiment, state: Journal, configuration: Configuration = None, **kwargs: Any
) -> None:
    """
    After the experiment, whatever its status: revert every live lease and record
    `{status, reverted: [...], at}` in the journal under `chaoscheckout_safety`.
    """
    status = state.get("status") if isinstance(state, dict) else None
    try:
        reverted = revert_all(configuration)
    except Exception as exc:  # noqa: BLE001 - chaoslib would swallow it at debug level
        logger.error("safety control: could not revert live faults: %s (the reaper reverts them at "
                     "lease expiry)", exc)
        reverted = [{"error": str(exc)}]
    if reverted:
        logger.warning("safety control: reverted %d live fault(s) at the end of a %s run",
                       len(reverted), status)
    else:
        logger.info("safety control: no live fault at the end of the experiment")
    if isinstance(state, dict):
        now = time.time()
        state[JOURNAL_KEY] = {"status_seen": status, "reverted": reverted, "at": now,
                              "abort": _abort_record(now)}


def _abort_record(reverted_at: float) -> dict[str, Any] | None:
    """When a guard of ``chaoscheckout.sli.guards`` breached: first breach and time to revert."""
    breaches = guards.breaches()
    if not breaches:
        return None
    first = breaches[0]
    reverted_at = first.get("reverted_at") or reverted_at
    return {"first_breach": first, "breaches": len(breaches),
            "breach_to_revert_s": round(reverted_at - first["at"], 3)}
