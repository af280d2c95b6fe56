"""Abort-condition probes for chaostoolkit-addons ``safeguards``: thresholds as arguments.

chaostoolkit-addons does not substitute ``${...}`` in a safeguard's tolerance, so a
configurable threshold has to be an argument. Each guard returns ``True`` while the
system is inside its abort threshold and ``False`` on a breach; use ``"tolerance": true``.
On a breach the guard reverts its own run's live faults at once, from its own thread, then
safeguards interrupt the run (which, unlike a rollback, cannot be delayed by a running
pause). Every breach is remembered in this process (time, guard, measured value, what was
reverted and when) so the safety control can record when the first breaching sample was
taken and how long it took to revert the fault (``chaoscheckout_safety.abort``); every
measurement a guard takes is remembered too (:func:`samples`, at most 20000), and the load
control stores them in the journal (``chaoscheckout_guards``), so the log can chart them
(the money-safety series) and count them in "worst during the fault". Paste::

    {
      "name": "safeguards",
      "provider": {
        "type": "python", "module": "chaosaddons.controls.safeguards",
        "arguments": {"probes": [
          {"name": "abort-if-money-without-order", "type": "probe", "frequency": 1,
           "tolerance": true,
           "provider": {"type": "python", "module": "chaoscheckout.sli.guards",
                        "func": "money_guard", "arguments": {"grace_s": 5}}},
          {"name": "abort-if-availability-below-50pct", "type": "probe", "frequency": 1,
           "tolerance": true,
           "provider": {"type": "python", "module": "chaoscheckout.sli.guards",
                        "func": "availability_guard",
                        "arguments": {"min_ratio": 0.5, "window": "10s"}}}
        ]}
      }
    }

A guard whose measurement fails (Prometheus unreachable, no traffic) raises, and
safeguards treat that as a breach: when the system cannot be observed, stop. The money
guard alone tolerates ``max_unobserved_s`` of blindness (a Postgres that PANICs on a full
disk restarts in a loop until space returns); past that it fails too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from chaoslib.exceptions import ActivityFailed

from chaoscheckout import validate
from chaoscheckout.config import finite_number
from chaoscheckout.context import ActivityContext, activity_context
from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults.halt import halt_record
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.owner import current_owner
from chaoscheckout.faults.revert import revert_own
from chaoscheckout.sli.money import check_window_arguments
from chaoscheckout.sli.money_watch import forget_watches
from chaoscheckout.sli.probes import (
    charges_without_order,
    check_quantile,
    check_window,
    checkout_availability,
    checkout_latency_ms,
    double_charges,
)

__all__ = ["availability_guard", "latency_guard", "money_guard", "double_charge_guard", "unix_time"]

logger = logging.getLogger("chaostoolkit")


def availability_guard(min_ratio: float = 0.5, window: str = "10s", during_fault: bool = False,
                       configuration: dict[str, Any] | None = None) -> bool:
    """Abort condition: checkout availability over ``window`` fell below ``min_ratio``.

    :param min_ratio: the abort threshold in [0, 1] (e.g. 0.5: abort when more than half
        of checkouts fail).
    :param window: Prometheus duration of the availability window (``10s`` reads a
        recording rule).
    :param during_fault: judge only while a fault of this package is live (a lease
        exists); outside a fault the guard passes without measuring.
    :returns: ``True`` while availability >= ``min_ratio``, ``False`` on a breach.

    A probe: changes nothing.
    """
    _check_ratio(min_ratio)
    check_window(window)
    ctx = activity_context(configuration)
    if _halted("availability_guard", ctx):
        return False
    if during_fault and not _fault_live(ctx):
        return True
    value = checkout_availability(window=window, configuration=ctx)
    return _judge("availability_guard", value >= min_ratio, value, f">= {min_ratio}", ctx)


def latency_guard(max_ms: float = 1000, quantile: float = 0.95, window: str = "10s",
                  during_fault: bool = False, configuration: dict[str, Any] | None = None) -> bool:
    """Abort condition: a checkout latency quantile over ``window`` rose above ``max_ms``.

    :param max_ms: the abort threshold in milliseconds (> 0).
    :param quantile: e.g. 0.95 or 0.99.
    :param window: Prometheus duration (``10s``/``30s`` read recording rules).
    :param during_fault: judge only while a fault of this package is live.
    :returns: ``True`` while the quantile <= ``max_ms``, ``False`` on a breach.

    A probe: changes nothing.
    """
    if isinstance(max_ms, str | bool):  # checked before anything else, fault live or not
        raise InvalidFaultArgument(f"max_ms must be a number, got {max_ms!r}")
    finite_number("max_ms", max_ms, 0, 3_600_000)
    check_quantile(quantile)
    check_window(window)
    ctx = activity_context(configuration)
    if _halted("latency_guard", ctx):
        return False
    if during_fault and not _fault_live(ctx):
        return True
    value = checkout_latency_ms(quantile=quantile, window=window, configuration=ctx)
    return _judge("latency_guard", value <= max_ms, value, f"<= {max_ms} ms", ctx)


def money_guard(grace_s: float = 5, since: float | None = None, since_s: float = 600,
                max_unobserved_s: float = 30, configuration: dict[str, Any] | None = None) -> bool:
    """Abort condition: any captured charge without a recorded order (money safety).

    :param grace_s: seconds a charge may precede its order row (in-flight checkouts).
    :param since: unix timestamp to look back to (e.g. the run's start); overrides
        ``since_s``.
    :param since_s: how far back to look when ``since`` is not given.
    :param max_unobserved_s: how long money safety may stay unknown (Postgres or the
        provider unreachable, e.g. Postgres restarting after a PANIC on a full disk)
        before the guard fails. Both stores are durable, so a breach that happened while
        unobserved is still caught once they answer again (and by the after-check).
    :returns: ``True`` while no such charge exists, ``False`` at the first one.

    Bad arguments (NaN, inf, negative, ``since_s`` <= ``grace_s``) raise
    InvalidFaultArgument at once: they are never taken for "unobservable".

    A probe: changes nothing.
    """
    check_window_arguments(grace_s, since_s, since)
    if isinstance(max_unobserved_s, str | bool):
        raise InvalidFaultArgument(f"max_unobserved_s must be a number, got {max_unobserved_s!r}")
    finite_number("max_unobserved_s", max_unobserved_s, 0, 600, low_inclusive=True)
    ctx = activity_context(configuration)
    if _halted("money_guard", ctx):
        return False
    try:  # with ``since``: only what is new since the last poll (sli/money_watch.py)
        count = charges_without_order(grace_s=grace_s, since_s=since_s, since=since,
                                      configuration=ctx)
    except ActivityFailed as exc:
        return _unobserved("money_guard", exc, max_unobserved_s, ctx)
    _UNOBSERVED_SINCE.pop("money_guard", None)
    return _judge("money_guard", count == 0, count, "== 0", ctx)


def double_charge_guard(since: float | None = None, since_s: float = 600, max_unobserved_s: float = 30,
                        configuration: dict[str, Any] | None = None) -> bool:
    """Abort condition: any order the payment provider charged more than once.

    :param since: unix timestamp to look back to (e.g. the run's start); overrides
        ``since_s``.
    :param since_s: how far back to look when ``since`` is not given.
    :param max_unobserved_s: how long it may stay unknown (the provider unreachable, or
        no captured charge yet in the window) before the guard fails.
    :returns: ``True`` while no order has two captured charges, ``False`` at the first.

    Bad arguments raise InvalidFaultArgument at once. A probe: changes nothing.
    """
    check_window_arguments(0, since_s, since)
    if isinstance(max_unobserved_s, str | bool):
        raise InvalidFaultArgument(f"max_unobserved_s must be a number, got {max_unobserved_s!r}")
    finite_number("max_unobserved_s", max_unobserved_s, 0, 600, low_inclusive=True)
    ctx = activity_context(configuration)
    if _halted("double_charge_guard", ctx):
        return False
    try:
        count = double_charges(since_s=since_s, since=since, configuration=ctx)
    except ActivityFailed as exc:
        return _unobserved("double_charge_guard", exc, max_unobserved_s, ctx)
    _UNOBSERVED_SINCE.pop("double_charge_guard", None)
    return _judge("double_charge_guard", count == 0, count, "== 0", ctx)


def unix_time() -> float:
    """The current unix time: a dynamic-configuration probe that marks the run's start.

    Chaos Toolkit runs configuration probes once when the run starts, so::

        "configuration": {"run_started_at": {"name": "run-started-at", "type": "probe",
            "provider": {"type": "python", "module": "chaoscheckout.sli.guards",
                         "func": "unix_time"}}}

    lets the money probes judge only this run's charges (``"since": "${run_started_at}"``).
    """
    return time.time()


@dataclass(frozen=True)
class Breach:
    guard: str
    at: float
    value: float | None
    threshold: str
    reverted_at: float | None = None
    reverted: tuple[str, ...] = ()


def breaches() -> list[dict[str, Any]]:
    """The breaches seen in this process since the last :func:`reset` (oldest first)."""
    with _LOCK:
        return [asdict(b) for b in _BREACHES]


def samples() -> list[dict[str, Any]]:
    """Every measurement taken since the last :func:`reset`, oldest first: ``{guard, at, value,
    threshold, ok}`` (``value`` None: the guard could not observe the system)."""
    with _LOCK:
        return [dict(s) for s in _SAMPLES]


def reset() -> None:
    """Forget recorded breaches and samples (the safety control calls it before each experiment)."""
    with _LOCK:
        _BREACHES.clear()
        _SAMPLES.clear()
        _UNOBSERVED_SINCE.clear()
        forget_watches()


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
_LOCK = threading.Lock()
_BREACHES: list[Breach] = []
_SAMPLES: list[dict[str, Any]] = []
MAX_SAMPLES = 20000
_UNOBSERVED_SINCE: dict[str, float] = {}


def _sample(guard: str, value: float | None, threshold: str, ok: bool) -> None:
    sample = {"guard": guard, "at": time.time(), "value": value, "threshold": threshold, "ok": ok}
    with _LOCK:
        if len(_SAMPLES) < MAX_SAMPLES:
            _SAMPLES.append(sample)


def _judge(guard: str, ok: bool, value: float, threshold: str, ctx: ActivityContext) -> bool:
    _sample(guard, float(value), threshold, ok)
    if not ok:
        logger.warning(f"{guard}: breach, measured {value:g} (abort threshold {threshold})")
        _breach(guard, float(value), threshold, ctx)
    return ok


def _unobserved(guard: str, exc: Exception, max_unobserved_s: float, ctx: ActivityContext) -> bool:
    now = time.time()
    _sample(guard, None, f"unobserved ({type(exc).__name__})", True)
    with _LOCK:
        since = _UNOBSERVED_SINCE.setdefault(guard, now)
    if now - since <= max_unobserved_s:
        logger.warning(f"{guard}: cannot observe for {now - since:.1f} s "
                       f"(fails after {max_unobserved_s:g} s): {exc}")
        return True
    _breach(guard, None, f"unobservable for > {max_unobserved_s:g} s", ctx)
    raise ActivityFailed(f"{guard}: unobservable for {now - since:.1f} s: {exc}")


def _breach(guard: str, value: float | None, threshold: str, ctx: ActivityContext) -> None:
    """Record the breach and revert this run's live faults NOW, from the guard's own thread.

    chaostoolkit-addons then interrupts the run, but its signal may only reach the main
    thread when the running pause ends (seen: up to the rest of a 30 s pause), and an
    interrupted run runs no rollbacks: so the guard does not wait for either.
    """
    at = time.time()
    reverted: tuple[str, ...] = ()
    reverted_at = None
    try:
        results = revert_own(ctx)
        reverted = tuple(r.get("fault_id", "?") for r in results if "error" not in r)
        reverted_at = time.time() if results else None
        if results:
            logger.warning(f"{guard}: reverted {len(results)} live fault(s) on breach: {', '.join(reverted)}")
    except Exception as exc:  # noqa: BLE001 - the safety control and the reaper retry
        logger.error(f"{guard}: could not revert live faults on breach: {exc}")
    with _LOCK:
        _BREACHES.append(Breach(guard, at, value, threshold, reverted_at, reverted))


def _fault_live(ctx: ActivityContext) -> bool:
    """A fault of this run is live (other runs' faults are theirs to judge)."""
    me = current_owner().run_id
    leases = LeaseStore(ctx.settings.leases_dir).live()
    return any(lease.owner.run_id == me for lease in leases)


def _halted(guard: str, ctx: ActivityContext) -> bool:
    """``chaoscheckout halt`` is on: every guard breaches (once recorded), so the run aborts."""
    halt = halt_record(ctx.settings.state_dir)
    if halt is None:
        return False
    with _LOCK:
        seen = any(b.threshold.startswith("halted") for b in _BREACHES)
    if not seen:
        logger.warning(f"{guard}: fault injection halted by {halt.get('by')} ({halt.get('reason')})")
        _breach(guard, None, f"halted by {halt.get('by')} at {halt.get('at')}: {halt.get('reason')}",
                ctx)
    return True


def _check_ratio(value: Any) -> None:
    validate.in_range("min_ratio", value, 0, 1, low_inclusive=True, error=InvalidFaultArgument)
