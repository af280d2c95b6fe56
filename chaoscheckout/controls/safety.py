"""Safety control: this run's faults never outlive it; other runs' faults are never touched.

Before the experiment it judges every activity's arguments and pauses
(:mod:`chaoscheckout.arguments`): a bad one stops the run before anything starts. Then it
gives the run an id (recorded in the journal) that owns every fault the run injects (see
:mod:`chaoscheckout.faults.owner`), and deals with leases
whose owner is dead (an earlier run that was SIGKILLed or froze): ``on_stale: "revert"``
(default) reverts them and says so, ``"refuse"`` interrupts the run before anything
starts. Faults of other live runs are left alone. It also refuses to start while
injections are halted (``chaoscheckout halt``).

Before each activity it interrupts the run when a halt was set or when the reaper
declared this run dead (it was frozen and its faults were reverted for it): such a run
never injects again.

At the end of the experiment (completed, failed, aborted, interrupted) it reverts this
run's live faults only, whatever ``--rollback-strategy`` says, and records it in the
journal under ``chaoscheckout_safety``. (A SIGKILLed ``chaos run`` runs no control at
all: the reaper's dead-man switch reverts its faults within seconds.)

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
import os
import signal
import sys
import threading
import time
from typing import Any

from chaoslib.exceptions import InterruptExecution, InvalidControl
from chaoslib.types import Configuration, Control, Experiment, Journal

from chaoscheckout.arguments import argument_problems
from chaoscheckout.context import activity_context
from chaoscheckout.faults.halt import halt_record
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.owner import (
    clear_run_id,
    current_owner,
    declared_dead,
    ensure_heartbeat,
    set_run_id,
)
from chaoscheckout.faults.revert import owner_verdict, revert_dead, revert_own
from chaoscheckout.sli import guards

__all__ = ["validate_control", "before_experiment_control", "before_activity_control",
           "before_rollback_control", "after_experiment_control", "cleanup_control"]

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
    Before the experiment: start this run (its id owns its faults); faults whose owner
    is dead are reverted (`on_stale: "revert"`, the default) or stop this run before it
    starts (`on_stale: "refuse"`); faults of other live runs are left alone. A halt
    stops the run.
    """
    guards.reset()
    _RUN.clear()
    if on_stale not in ON_STALE:
        raise InterruptExecution(f"safety control: on_stale must be one of {ON_STALE}, got {on_stale!r}")
    problems = argument_problems(context, configuration, kwargs.get("secrets"))
    if problems:
        _RUN["refused_arguments"] = problems
        raise InterruptExecution("safety control: invalid arguments, nothing was injected: "
                                 + "; ".join(problems))
    ctx = activity_context(configuration)
    settings = ctx.settings
    run_id = set_run_id()
    _RUN["run_id"] = run_id
    ensure_heartbeat(settings.state_dir / "owners")
    _revert_on_signals(configuration)
    logger.info("safety control: run %s (pid %s)", run_id, current_owner().pid)
    halt = halt_record(settings.state_dir)
    if halt is not None:
        raise InterruptExecution(f"safety control: fault injection is halted by {halt.get('by')} "
                                 f"({halt.get('reason')}): run `chaoscheckout halt --clear` first")
    owners_dir = settings.state_dir / "owners"
    stale, others = [], []
    for lease in LeaseStore(settings.leases_dir).live():
        (stale if owner_verdict(lease, owners_dir).alive is False else others).append(lease)
    for lease in others:
        logger.info("safety control: %s (%s on %s) belongs to %s, alive: left alone", lease.fault_id,
                    lease.kind, lease.service, lease.owner.describe())
    _RUN["left_alone"] = [{"fault_id": lease.fault_id, "run_id": lease.owner.run_id} for lease in others]
    if not stale:
        return
    names = ", ".join(f"{lease.fault_id} of {lease.owner.describe()}" for lease in stale)
    if on_stale == "refuse":
        raise InterruptExecution(
            f"safety control: live faults of dead runs: {names}; revert them "
            "(or wait for the reaper) before starting another experiment"
        )
    logger.warning("safety control: reverting faults whose owner is dead: %s", names)
    _RUN["stale_reverted"] = revert_dead(ctx)
    for result in _RUN["stale_reverted"]:
        logger.info("safety control: stale fault reverted: %s", result)


def before_activity_control(context: Any, configuration: Configuration = None, **kwargs: Any) -> None:
    """Before each activity: interrupt the run when halted or declared dead."""
    settings = activity_context(configuration).settings
    halt = halt_record(settings.state_dir)
    if halt is not None:
        _RUN.setdefault("halt", halt)
        raise InterruptExecution(f"safety control: halted by {halt.get('by')} ({halt.get('reason')})")
    if "run_id" in _RUN:
        dead = declared_dead(settings.state_dir / "owners")
        if dead is not None:
            raise InterruptExecution(
                f"safety control: this run was declared dead ({dead.get('cause')}) and its faults were "
                "reverted for it: it stops here and never injects again"
            )


def before_rollback_control(context: Any, configuration: Configuration = None, **kwargs: Any) -> None:
    """Before the rollbacks: from here on a safeguard's interruption is recorded, not obeyed
    (the run is already undoing its faults; obeyed, it would end the rollbacks half-way and
    lose the journal)."""
    _defer_interrupts("the rollbacks")


def after_experiment_control(
    context: Experiment, state: Journal, configuration: Configuration = None, **kwargs: Any
) -> None:
    """
    After the experiment, whatever its status: revert this run's live faults and record
    `{run_id, status_seen, reverted: [...], at, abort, halt, declared_dead, stale_reverted,
    left_alone, refused_arguments, late_interrupts}` in the journal under
    `chaoscheckout_safety`. A safeguard's interruption arriving from now on is recorded and
    ignored: the run has ended.
    """
    _defer_interrupts("the end of the experiment")
    status = state.get("status") if isinstance(state, dict) else None
    ctx = activity_context(configuration)
    settings = ctx.settings
    _restore_signals()
    on_signal = _RUN.get("on_signal")
    if on_signal is not None:
        logger.debug("safety control: after-experiment joins the signal revert (monotonic %.3f)",
                     time.monotonic())
        on_signal["thread"].join(timeout=60)  # never two reverts of one fault at once
    try:
        reverted = revert_own(ctx)
    except Exception as exc:  # noqa: BLE001 - chaoslib would swallow it at debug level
        logger.error("safety control: could not revert live faults: %s (the reaper reverts them when "
                     "this run ends)", exc)
        reverted = [{"error": str(exc)}]
    if reverted:
        logger.warning("safety control: reverted %d live fault(s) of this run at the end of a %s run",
                       len(reverted), status)
    else:
        logger.info("safety control: no live fault of this run at the end of the experiment")
    dead = declared_dead(settings.state_dir / "owners") if "run_id" in _RUN else None
    if dead is not None:
        logger.warning("safety control: this run was declared dead meanwhile (%s); the reaper reverted "
                       "its faults at %s", dead.get("cause"), dead.get("reverted_at"))
    if isinstance(state, dict):
        now = time.time()
        state[JOURNAL_KEY] = {"run_id": _RUN.get("run_id"), "status_seen": status, "reverted": reverted,
                              "at": now, "abort": _abort_record(now),
                              "halt": _RUN.get("halt") or halt_record(settings.state_dir),
                              "declared_dead": dead, "stale_reverted": _RUN.get("stale_reverted", []),
                              "left_alone": _RUN.get("left_alone", []),
                              "refused_arguments": _RUN.get("refused_arguments", []),
                              "late_interrupts": _LATE_INTERRUPTS,
                              "on_signal": {k: v for k, v in on_signal.items() if k != "thread"}
                              if on_signal else None}
    clear_run_id()
    _RUN.clear()


def cleanup_control(**kwargs: Any) -> None:
    """Last of all: stop chaostoolkit-addons' safeguards if they still run. They stop in
    their own after-experiment hook, which an exception in an earlier control skips; their
    threads then keep polling and ``chaos run`` never exits (seen: a run hung 900 s with
    no journal)."""
    module = sys.modules.get("chaosaddons.controls.safeguards")
    guardian = getattr(module, "guardian", None)
    if guardian is None:
        return
    try:
        guardian.terminate()
    except Exception as exc:  # noqa: BLE001 - best effort at the very end
        logger.error("safety control: could not stop the safeguards: %s", exc)


_RUN: dict[str, Any] = {}  # this process's run; reset by before_experiment_control
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _revert_on_signals(configuration: Configuration) -> None:
    """SIGINT / SIGTERM: start reverting this run's faults at once, in a thread, then let
    the previous handler act (KeyboardInterrupt, chaoslib's interruption). Without this
    the revert waits for the other controls' teardown (seen: 3-5 s after a Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _SIGNALS:
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue  # ignored (e.g. SIGINT of a background job): keep it ignored

        def handler(num: int, frame: Any, previous: Any = previous) -> Any:
            logger.debug("safety control: %s received (monotonic %.3f)", signal.Signals(num).name,
                         time.monotonic())
            if "on_signal" not in _RUN:
                thread = threading.Thread(target=_revert_now, args=(configuration, num),
                                          name="chaoscheckout-signal-revert", daemon=True)
                _RUN["on_signal"] = {"signal": signal.Signals(num).name, "at": time.time(),
                                     "thread": thread}
                thread.start()
            if callable(previous):
                return previous(num, frame)
            signal.signal(num, signal.SIG_DFL)  # default disposition: act as it would have
            os.kill(os.getpid(), num)
            return None

        _RUN.setdefault("previous_handlers", {})[signum] = previous
        signal.signal(signum, handler)


_LATE_INTERRUPTS: list[dict[str, Any]] = []  # safeguard interruptions that came after the method


def _defer_interrupts(phase: str) -> None:
    """SIGUSR1 (how chaostoolkit-addons' safeguards interrupt a run) no longer interrupts.

    chaoslib turns it into ``SystemExit`` in the main thread wherever that thread is. Inside
    the method that is the abort; during the rollbacks or the after-experiment controls it
    escapes ``run_experiment``: no journal is written and, the safeguards' own teardown
    skipped, their polling threads keep the process alive for good."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        return
    if getattr(signal.getsignal(signal.SIGUSR1), "chaoscheckout_deferred", False):
        return
    _LATE_INTERRUPTS.clear()

    def handler(num: int, frame: Any) -> None:
        _LATE_INTERRUPTS.append({"signal": "SIGUSR1", "at": time.time(), "phase": phase})
        logger.warning("safety control: a safeguard asked to interrupt the run during %s: recorded, "
                       "not obeyed (the run is already undoing its faults)", phase)

    handler.chaoscheckout_deferred = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGUSR1, handler)


def _revert_now(configuration: Configuration, signum: int) -> None:
    logger.debug("safety control: signal revert thread starts (monotonic %.3f)", time.monotonic())
    results = revert_own(configuration)
    _RUN["on_signal"].update(reverted=results, reverted_at=time.time())
    logger.warning("safety control: %s: reverted %d fault(s) of this run at once",
                   signal.Signals(signum).name, len(results))


def _restore_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in _RUN.pop("previous_handlers", {}).items():
        signal.signal(signum, previous)


def _abort_record(reverted_at: float) -> dict[str, Any] | None:
    """When a guard of ``chaoscheckout.sli.guards`` breached: first breach and time to revert."""
    breaches = guards.breaches()
    if not breaches:
        return None
    first = breaches[0]
    reverted_at = first.get("reverted_at") or reverted_at
    return {"first_breach": first, "breaches": len(breaches),
            "breach_to_revert_s": round(reverted_at - first["at"], 3)}
