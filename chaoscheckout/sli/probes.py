"""SLI probes: checkout availability and latency from Prometheus, and money safety.

Each probe returns a plain number that the journal records as the probe's output, so
the measured value is always visible. Judge it with a **range tolerance** (chaoslib
ranges are inclusive; a bare float tolerance never matches anything)::

    {
      "type": "probe", "name": "checkout-availability-30s",
      "provider": {"type": "python", "module": "chaoscheckout.sli.probes",
                   "func": "checkout_availability", "arguments": {"window": "30s"}},
      "tolerance": {"type": "range", "range": [0.99, 1.0]}
    },
    {
      "type": "probe", "name": "checkout-p95-latency-ms-30s",
      "provider": {"type": "python", "module": "chaoscheckout.sli.probes",
                   "func": "checkout_latency_ms", "arguments": {"quantile": 0.95, "window": "30s"}},
      "tolerance": {"type": "range", "range": [0, 300]}
    },
    {
      "type": "probe", "name": "charges-without-order",
      "provider": {"type": "python", "module": "chaoscheckout.sli.probes",
                   "func": "charges_without_order", "arguments": {"grace_s": 5}},
      "tolerance": 0
    }

No traffic in the window (NaN / empty result) raises ``ActivityFailed``: the probe fails
and so does its tolerance — silence is never read as "healthy". Run the load control
(``chaoscheckout.load.control``) so traffic flows during every check.

The Prometheus URL is configuration ``prometheus_url``, else the service registry's.
Windows ``30s`` and ``10s`` read the stack's recording rules
(``checkout:availability:ratio_<w>``, ``checkout:latency_seconds:p95_<w>`` / ``p99_<w>``);
any other window evaluates the same expression from the raw metrics
``checkout_requests_total{outcome}`` and ``checkout_request_duration_seconds_bucket``.
As in the rules, only ``outcome="ok"|"error"`` count: ``client_error`` (a malformed
request, HTTP 400/422) is the caller's fault, not an availability loss.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from chaoslib.exceptions import ActivityFailed, InterruptExecution

from chaoscheckout import validate
from chaoscheckout.arguments import checked_before_the_run
from chaoscheckout.context import activity_context
from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.sli.money import (
    DoubleChargeCheck,
    MoneyCheck,
    check_window_arguments,
    find_charges_without_order,
    find_double_charges,
)
from chaoscheckout.sli.money_watch import watch_charges_without_order, watch_double_charges, watch_for
from chaoscheckout.sli.prometheus import NoData, prometheus_client_from

__all__ = [
    "checkout_availability",
    "checkout_latency_ms",
    "prometheus_value",
    "prometheus_range",
    "wait_for_increase",
    "observe",
    "charges_without_order",
    "charges_without_order_details",
    "double_charges",
    "double_charges_details",
]

logger = logging.getLogger("chaostoolkit")

RULE_WINDOWS = ("10s", "30s")
RULE_QUANTILES = {0.95: "p95", 0.99: "p99"}


def checkout_availability(window: str = "30s", configuration: dict[str, Any] | None = None) -> float:
    """Fraction of checkout requests that succeeded over the last ``window``.

    :param window: a Prometheus duration (``"30s"``, ``"10s"``, ``"2m"``). ``30s`` and
        ``10s`` read the recording rule ``checkout:availability:ratio_<window>``; other
        windows compute ``sum(rate(checkout_requests_total{outcome="ok"}[w])) /
        sum(rate(checkout_requests_total{outcome=~"ok|error"}[w]))``.
    :returns: a float in [0, 1] (1.0 = every request succeeded). Use the tolerance
        ``{"type": "range", "range": [0.99, 1.0]}`` for a 99 % objective.
    :raises ActivityFailed: no requests in the window, or Prometheus unreachable.

    A probe: changes nothing, nothing to undo.
    """
    check_window(window)
    if window in RULE_WINDOWS:
        expr = f"checkout:availability:ratio_{window}"
    else:
        expr = (f'sum(rate(checkout_requests_total{{outcome="ok"}}[{window}])) / '
                f"sum(rate(checkout_requests_total{{outcome=~\"ok|error\"}}[{window}]))")
    value = prometheus_client_from(configuration).value(expr)
    logger.info(f"checkout availability over {window}: {value:.4f}")
    return value


def checkout_latency_ms(quantile: float = 0.95, window: str = "30s",
                        configuration: dict[str, Any] | None = None) -> float:
    """A quantile of checkout request latency (all outcomes) over ``window``, in milliseconds.

    :param quantile: between 0 and 1 exclusive, e.g. 0.95 or 0.99.
    :param window: a Prometheus duration. 0.95/0.99 over ``30s``/``10s`` read the
        recording rules ``checkout:latency_seconds:p95_<window>`` / ``p99_<window>``;
        other combinations compute ``histogram_quantile(q, sum by (le)
        (rate(checkout_request_duration_seconds_bucket{outcome=~"ok|error"}[w])))``.
    :returns: milliseconds as a float. Use e.g. ``{"type": "range", "range": [0, 300]}``.
    :raises ActivityFailed: no requests in the window; a quantile beyond the largest
        histogram bucket (reported with that bucket's bound); Prometheus unreachable.

    A probe: changes nothing, nothing to undo.
    """
    check_window(window)
    check_quantile(quantile)
    name = RULE_QUANTILES.get(round(float(quantile), 6))
    if name and window in RULE_WINDOWS:
        expr = f"checkout:latency_seconds:{name}_{window}"
    else:
        expr = (f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(checkout_request_duration_seconds_bucket{{outcome=~\"ok|error\"}}[{window}])))")
    seconds = prometheus_client_from(configuration).value(expr)
    if seconds == float("inf"):
        raise ActivityFailed(f"checkout p{quantile * 100:g} over {window} is above the largest "
                             "finite histogram bucket of checkout_request_duration_seconds")
    value = seconds * 1000.0
    logger.info(f"checkout p{quantile * 100:g} latency over {window}: {value:.1f} ms")
    return value


def prometheus_value(query: str, configuration: dict[str, Any] | None = None) -> float:
    """Evaluate a PromQL expression that yields one series and return its value.

    :param query: PromQL, e.g. ``sum(rate(checkout_requests_total[1m]))``.
    :returns: the value as a float (judge it with a range tolerance).
    :raises ActivityFailed: empty result or NaN, several series, Prometheus unreachable.

    A probe: changes nothing, nothing to undo.
    """
    if not isinstance(query, str) or not query.strip():
        raise InvalidFaultArgument("query must be a non-empty PromQL expression")
    value = prometheus_client_from(configuration).value(query)
    logger.info(f"prometheus {query!r} = {value}")
    return value


def prometheus_range(query: str, start: float, end: float | None = None, step: float = 1.0,
                     configuration: dict[str, Any] | None = None) -> list[list[float | None]]:
    """The time series of a one-series PromQL expression between ``start`` and ``end``.

    :param query: PromQL yielding at most one series.
    :param start: unix timestamp (seconds).
    :param end: unix timestamp, default now.
    :param step: resolution in seconds (> 0).
    :returns: ``[[unix_ts, value], ...]``; NaN/Inf values are ``null``; no data is ``[]``.

    A probe (used for SLI timelines in reports): changes nothing, nothing to undo.
    """
    end = time.time() if end is None else end
    return prometheus_client_from(configuration).query_range(query, float(start), float(end), float(step))


MAX_WAIT_S = 600.0


def _wait_arguments(query: Any, timeout_s: Any = 90, interval_s: Any = 1.0) -> tuple[str, float, float]:
    if not isinstance(query, str) or not query.strip():
        raise InvalidFaultArgument("query must be a non-empty PromQL expression")
    timeout = validate.in_range("timeout_s", timeout_s, 0, MAX_WAIT_S, error=InvalidFaultArgument,
                                parse_strings=True)
    interval = validate.in_range("interval_s", interval_s, 0, timeout, error=InvalidFaultArgument,
                                 parse_strings=True)
    return query, timeout, interval


@checked_before_the_run(_wait_arguments)
def wait_for_increase(query: str, timeout_s: float = 90, interval_s: float = 1.0,
                      configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait until a one-series PromQL value rises above what it was when the probe started:
    the evidence that a fault took effect (a full disk bites only when the service needs a
    new block; Postgres first fills the pages it already holds). Follow it with `observe`
    for the observation window, counted from the effect.

    :param query: PromQL yielding one series, e.g.
        ``sum(checkout_store_write_errors_total{kind="refused"})``.
    :param timeout_s: give up after this long (0 < timeout_s <= 600).
    :param interval_s: time between reads (0 < interval_s <= timeout_s).
    :returns: ``{increased, before, after, waited_s, timeout_s, query}``; ``increased`` is
        false when the value never rose within ``timeout_s`` (the report then says the fault
        did not take effect). A read that fails mid-wait is retried.
    :raises ActivityFailed: the first read has no data or Prometheus cannot be reached.

    An interruption while it waits (SIGTERM, a safeguard's breach) ends the run at once, as in
    a pause (chaoslib would turn SIGTERM into this probe's failure and run on). Give it no
    ``pauses``: chaoslib sleeps a pause to its end after an activity it interrupted. A probe:
    changes nothing, nothing to undo.
    """
    query, timeout, interval = _wait_arguments(query, timeout_s, interval_s)
    client = prometheus_client_from(configuration)
    started = time.monotonic()
    try:
        before = after = client.value(query)
    except (NoData, ActivityFailed) as exc:
        raise ActivityFailed(f"wait_for_increase: cannot read {query!r} at the start: {exc}") from None
    logger.info(f"waiting up to {timeout:g}s for {query!r} to rise above {before:g}")
    next_note = started + 10
    with _interruption_ends_the_run("wait_for_increase"):
        while after <= before and time.monotonic() - started < timeout:
            time.sleep(interval)
            try:
                after = client.value(query)
            except (NoData, ActivityFailed) as exc:
                logger.warning(f"wait_for_increase: read failed ({exc}); retrying")
            if time.monotonic() >= next_note and after <= before:
                logger.info(f"still {after:g} after {time.monotonic() - started:.0f}s")
                next_note += 10
    waited = round(time.monotonic() - started, 3)
    increased = after > before
    logger.info(f"{query!r}: {before:g} -> {after:g} after {waited}s" if increased else
                f"{query!r} did not rise within {timeout:g}s (still {after:g})")
    return {"increased": increased, "before": before, "after": after, "waited_s": waited,
            "timeout_s": timeout, "query": query}


def _observe_seconds(seconds: Any) -> float:
    return validate.in_range("seconds", seconds, 0, MAX_WAIT_S, low_inclusive=True,
                             error=InvalidFaultArgument, parse_strings=True)


@checked_before_the_run(_observe_seconds)
def observe(seconds: float, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hold the observation window: wait `seconds` (0 <= seconds <= 600) while the fault acts.

    Use it instead of an activity's ``pauses`` where the run may be interrupted: a safeguard's
    breach or SIGTERM ends the run inside it at once, and the activities before it keep their
    recorded outputs. Returns ``{held_s}``. A probe: changes nothing, nothing to undo.
    """
    hold = _observe_seconds(seconds)
    logger.info(f"observing for {hold:g}s")
    with _interruption_ends_the_run("observe"):
        time.sleep(hold)
    return {"held_s": hold}


@contextlib.contextmanager
def _interruption_ends_the_run(name: str) -> Iterator[None]:
    """chaoslib's SIGTERM handler raises InterruptExecution, which a Python activity's failure
    swallows (the run goes on); leave the run as a pause would."""
    try:
        yield
    except InterruptExecution as exc:
        logger.warning(f"{name}: {exc}: ending the run")
        raise SystemExit(20) from None


def _money_window(grace_s: Any = 5, since_s: Any = 600, since: Any = None) -> None:
    check_window_arguments(grace_s, since_s, since)


@checked_before_the_run(_money_window)
def charges_without_order(grace_s: float = 5, since_s: float = 600, since: float | None = None,
                          configuration: dict[str, Any] | None = None) -> int:
    """Count captured payment-provider charges that have no recorded order (money safety).

    Reads the provider's charge log (``GET <provider_url>/charges?since=``) for the last
    ``since_s`` seconds, ignores charges younger than ``grace_s`` (checkouts still in
    flight), and looks each ``order_ref`` up in Postgres ``orders``.

    :param grace_s: seconds a charge may legitimately precede its order row (>= 0).
    :param since_s: how far back to look, seconds (> grace_s). Charges stay in the
        provider's log: an earlier run that broke money safety keeps failing this probe
        until its charges are older than ``since_s``, so keep it close to the run length.
    :returns: the number of charges without an order; 0 is the steady state (use the
        tolerance ``0``). Charges all within the grace period are waited for (at most
        ``grace_s``) and then judged.
    :raises ActivityFailed: Postgres or the provider unreachable, or no captured charge
        in the window at all: money safety unknown, never reported as 0.
    :raises InvalidFaultArgument: ``grace_s`` not in [0, 600], ``since_s`` not in
        (grace_s, 30 days], ``since`` not a finite past timestamp (NaN, inf refused).

    Configuration: ``provider_url`` and ``database_url``, else the registry's
    ``extra.provider_url`` / ``extra.database_url``. A probe: nothing to undo.
    """
    check = _money_check(grace_s, since_s, since, configuration)
    if not check.judged:
        raise ActivityFailed(f"money safety not judged: no captured charge older than grace_s={grace_s} "
                             "in the window (no traffic?); 0 would be a guess")
    return len(check.orphans)


@checked_before_the_run(_money_window)
def charges_without_order_details(grace_s: float = 5, since_s: float = 600, since: float | None = None,
                                  configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Like :func:`charges_without_order`, but return the evidence for the journal.

    :returns: ``{"count", "judged", "checked", "in_grace", "order_refs" (first 20),
        "amount_cents"}``; ``judged`` False (``checked`` 0) means the count proves nothing.
        Use it in the method (its output lands in the journal) next to the steady-state
        probe :func:`charges_without_order` (tolerance ``0``). chaoslib's ``jsonpath``
        tolerance needs an extra package not installed here, so do not judge this dict.

    A probe: nothing to undo.
    """
    return _money_check(grace_s, since_s, since, configuration).to_dict()


def _double_window(since_s: Any = 600, since: Any = None) -> None:
    check_window_arguments(0, since_s, since)


@checked_before_the_run(_double_window)
def double_charges(since_s: float = 600, since: float | None = None,
                   configuration: dict[str, Any] | None = None) -> int:
    """Count orders the payment provider charged more than once (money safety).

    Reads the provider's charge log (``GET <provider_url>/charges?since=``) and groups
    captured charges by ``order_ref``: an order reference with two or more captured
    charges (each has its own idempotency key: the provider replays a key) was charged
    twice. No grace period: a second charge is wrong the moment it exists.

    :param since_s: how far back to look, seconds (> 0, at most 30 days).
    :param since: unix timestamp to look back to (e.g. the run's start); overrides
        ``since_s``.
    :returns: the number of order references charged more than once; 0 is the steady
        state (use the tolerance ``0``).
    :raises ActivityFailed: the provider unreachable, or no captured charge in the window
        at all: never reported as 0.
    :raises InvalidFaultArgument: ``since_s`` or ``since`` not finite, negative, or
        ``since`` in the future.

    Configuration: ``provider_url``, else the registry's ``extra.provider_url``. A
    probe: nothing to undo.
    """
    check = _double_check(since_s, since, configuration)
    if not check.judged:
        raise ActivityFailed("double charges not judged: no captured charge in the window (no traffic?); "
                             "0 would be a guess")
    return len(check.doubled)


@checked_before_the_run(_double_window)
def double_charges_details(since_s: float = 600, since: float | None = None,
                           configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Like :func:`double_charges`, but return the evidence for the journal.

    :returns: ``{"count", "judged", "checked", "order_refs" (first 20), "charges" (their
        charge ids), "extra_amount_cents"}``; ``judged`` False means the count proves
        nothing.

    A probe: nothing to undo.
    """
    return _double_check(since_s, since, configuration).to_dict()


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
_WINDOW = re.compile(r"^[1-9][0-9]*(ms|s|m|h)$")


def check_window(window: str) -> None:
    """Raise InvalidFaultArgument unless ``window`` is a Prometheus duration like ``30s``."""
    if not isinstance(window, str) or not _WINDOW.match(window):
        raise InvalidFaultArgument(f"window must be a Prometheus duration like '30s' or '2m', got {window!r}")


def check_quantile(quantile: float) -> None:
    """Raise InvalidFaultArgument unless 0 < ``quantile`` < 1 (a number, not a bool)."""
    validate.in_range("quantile", quantile, 0, 1, high_inclusive=False, error=InvalidFaultArgument)


def _money_check(grace_s: Any, since_s: Any, since: Any, configuration: Any) -> MoneyCheck:
    """A fixed window (``since``): its watch, reading only what is new (sli/money_watch.py);
    a sliding one: the full check."""
    if since is None:
        return find_charges_without_order(grace_s, since_s, configuration, since=since)
    grace, start, _ = check_window_arguments(grace_s, since_s, since)
    return watch_charges_without_order(watch_for("money", start, grace), activity_context(configuration))


def _double_check(since_s: Any, since: Any, configuration: Any) -> DoubleChargeCheck:
    if since is None:
        return find_double_charges(since_s, configuration, since=since)
    _, start, _ = check_window_arguments(0, since_s, since)
    return watch_double_charges(watch_for("double", start), activity_context(configuration))
