"""What a run means: its verdict, fault window, detection/recovery times, and the history."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import fmean
from typing import Any

from chaoscheckout.report.model import Fault, Run, Series, parse_time

__all__ = ["HistoryEntry", "analyse", "breach_text", "effect_text", "fault_window", "history"]

INTERRUPTED = ("interrupted", "aborted")


@dataclass
class HistoryEntry:
    title: str
    runs: list[Run]

    def line(self) -> str:
        return " → ".join(f"{r.verdict} ({_stamp(r.start)})" for r in self.runs)


def analyse(run: Run) -> Run:
    """Fill the derived fields of a run (verdict, reason, times, SLI phases). Returns it."""
    run.verdict, run.reason = _verdict(run)
    if run.status in INTERRUPTED:
        run.aborted_at = run.end
    window = fault_window(run)
    run.sli_phases = {
        s.name: _phases(s, window) for s in (run.availability, run.latency) if s is not None and s.points
    }
    run.time_to_detect_s, run.time_to_recover_s = _detect_recover(run, window)
    if run.verdict == "held":
        breached = _breached_during(run)
        if breached:
            run.reason += f"; but {breached} during the fault, between the before and after checks"
        for fault in run.faults:
            run.reason += _weak_fault_note(fault)
    return run


def breach_text(run: Run) -> str:
    """The first guard breach as a reader says it ("availability_guard measured 43.9 % (abort
    threshold >= 50 %) at … (t+38.5 s), 6.0 s after injection"); "" without an abort record."""
    breach = run.abort.get("first_breach")
    if not isinstance(breach, dict):
        return ""
    guard = str(breach.get("guard") or "a guard")
    value = _guard_value(guard, breach.get("value"))
    threshold = _guard_threshold(guard, breach.get("threshold"))
    at = parse_time(breach.get("at"))
    when = ""
    if at is not None and run.start:
        when = f" at t+{at - run.start:.1f} s"
    starts = [f.injected_at for f in run.faults if f.injected_at is not None]
    if at is not None and starts:
        when += f", {at - min(starts):.1f} s after injection"
    measured = f"measured {value}" if value else "could not observe the system"
    return f"{guard} {measured} (abort threshold {threshold}){when}"


def breach_to_revert_s(run: Run) -> float | None:
    value = run.abort.get("breach_to_revert_s")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def effect_text(fault: Fault, short: bool = False) -> str:
    """How much traffic a latency fault really slowed ("40 of 390 requests (10.3 %)"), from its
    latency_fault_effect counts; "" when none were recorded."""
    effect = fault.effect
    if not effect:
        return ""
    seen, delayed = _count(effect.get("exchanges_seen")), _count(effect.get("exchanges_delayed"))
    if seen is not None and delayed is not None:
        share = f" ({delayed / seen * 100:.1f} %)" if seen else ""
        text = f"{delayed} of {seen} requests{share}"
    else:
        reason = effect.get("reason")
        text = "request counts not available" + (f" ({reason})" if reason else "")
    decided, picked = _count(effect.get("connections_decided")), _count(effect.get("connections_picked"))
    if decided:
        text += f"; {picked or 0} of {decided} connections picked"
    if short:
        return text
    fraction = fault.parameters.get("fraction", effect.get("fraction"))
    scope = fault.parameters.get("scope") or effect.get("scope")
    if isinstance(fraction, int | float) and not isinstance(fraction, bool):
        text += f"; requested {fraction * 100:g} %" + (f" of {scope}s" if scope else "")
    return text + f" (counted by {fault.effect_by})" if fault.effect_by else text


def fault_window(run: Run) -> tuple[float, float] | None:
    """(start, end) of the faults in unix seconds; an unreverted fault ends at its expiry/run end."""
    starts = [f.injected_at for f in run.faults if f.injected_at is not None]
    if not starts:
        return None
    ends = []
    for f in run.faults:
        end = f.reverted_at or f.expires_at or run.end
        if end is not None:
            ends.append(end)
    start = min(starts)
    return start, max(ends) if ends else start


def history(runs: list[Run]) -> list[HistoryEntry]:
    """Experiments run more than once, each with its runs oldest first."""
    by_title: dict[str, list[Run]] = {}
    for run in runs:
        by_title.setdefault(run.title, []).append(run)
    return [
        HistoryEntry(title, sorted(group, key=lambda r: r.start or 0.0))
        for title, group in sorted(by_title.items())
        if len(group) > 1
    ]


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _stamp(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "undated"


def _first_failing(state) -> str:
    for probe in state.probes if state else []:
        if probe.met is False or probe.status != "succeeded":
            return f"probe {probe.name} = {probe.value} (tolerance {probe.tolerance})"
    return "a probe outside its tolerance"


def _verdict(run: Run) -> tuple[str, str]:
    if run.status in INTERRUPTED:
        when = f" {run.duration_s:.1f} s into the run" if run.duration_s is not None else ""
        breach = breach_text(run)
        if breach:
            to_revert = breach_to_revert_s(run)
            revert = f"; first breach → fault reverted in {to_revert:.1f} s" if to_revert is not None else ""
            return "aborted", f"safeguard fired: {breach}{revert}; run {run.status}{when}"
        return "aborted", f"run {run.status}{when} (a safeguard or control stopped it)"
    if run.before is not None and run.before.met is False:
        return "failed", f"steady state not met before the method: {_first_failing(run.before)}; no fault run"
    if run.status == "failed":
        return "failed", "chaostoolkit marked the run failed"
    if run.deviated or (run.after is not None and run.after.met is False):
        return "broke", f"steady state deviated after the method: {_first_failing(run.after)}"
    if run.status == "completed":
        if run.after is None:
            return "held", "completed; no steady-state check after the method"
        return "held", f"all {len(run.after.probes)} steady-state probe(s) within tolerance before and after"
    return run.status, f"chaostoolkit status {run.status}"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _unit(guard: str) -> str:
    return "%" if "availability" in guard else "ms" if "latency" in guard else ""


def _guard_value(guard: str, value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    unit = _unit(guard)
    if unit == "%" and 0 <= value <= 1:
        return f"{value * 100:.1f} %"
    if unit == "ms":
        return f"{value:.0f} ms"
    if "money" in guard:
        return f"{value:g} charge(s) without an order"
    return f"{value:.4g}"


def _guard_threshold(guard: str, threshold: Any) -> str:
    text = str(threshold if threshold is not None else "?")
    match = re.fullmatch(r"\s*([<>=!]=?)\s*([0-9.]+)\s*", text)
    if match and _unit(guard) == "%" and float(match.group(2)) <= 1:
        return f"{match.group(1)} {float(match.group(2)) * 100:g} %"
    return text


def _weak_fault_note(fault: Fault) -> str:
    """For a held run: a latency fault with no evidence it bit, or that bit far less than asked."""
    if fault.kind != "latency":
        return ""
    if not fault.effect:
        return ("; no evidence recorded that the latency fault slowed any traffic "
                "(no latency_fault_effect probe or revert effect in the journal)")
    seen, delayed = _count(fault.effect.get("exchanges_seen")), _count(fault.effect.get("exchanges_delayed"))
    fraction = fault.parameters.get("fraction")
    if seen and delayed is not None and isinstance(fraction, int | float) and delayed / seen < fraction / 2:
        return (f"; but the fault slowed only {delayed} of {seen} requests ({delayed / seen * 100:.1f} %), "
                f"requested {fraction * 100:g} %")
    return ""


def _breached_during(run: Run) -> str:
    notes = []
    for series in (run.availability, run.latency):
        worst = run.sli_phases.get(series.name, {}).get("during") if series else None
        if series is not None and worst is not None and not series.good(worst):
            factor = 100.0 if series.unit == "%" else 1.0
            sign = "≥" if series.direction == "min" else "≤"
            notes.append(f"{series.label} reached {worst * factor:.1f} {series.unit} "
                         f"(SLO {sign} {series.objective * factor:g} {series.unit})")
    return " and ".join(notes)


def _phases(series: Series, window: tuple[float, float] | None) -> dict[str, float | None]:
    """Mean before the fault, worst during it, mean after it."""
    values = series.points
    if window is None:
        return {"before": fmean(v for _, v in values), "during": None, "after": None}
    start, end = window
    before = [v for t, v in values if t < start]
    during = [v for t, v in values if start <= t <= end]
    after = [v for t, v in values if t > end]
    worst = min if series.direction == "min" else max
    return {
        "before": fmean(before) if before else None,
        "during": worst(during) if during else None,
        "after": fmean(after) if after else None,
    }


def _detect_recover(run: Run, window: tuple[float, float] | None) -> tuple[float | None, float | None]:
    """Seconds from injection to the first SLI sample outside its SLO, and from the revert to the
    first sample after it with every SLI back within its SLO."""
    if window is None:
        return None, None
    start, end = window
    series = [s for s in (run.availability, run.latency) if s is not None and s.points]
    breaches = [t for s in series for t, v in s.points if t >= start and not s.good(v)]
    if not breaches:
        return None, None
    detect = min(breaches) - start
    reverted = [f.reverted_at for f in run.faults if f.reverted_at is not None]
    if not reverted:
        return detect, None
    revert = max(reverted)
    times = sorted({t for s in series for t, _ in s.points if t >= revert})
    for t in times:
        if all(_good_at(s, t) for s in series):
            return detect, t - revert
    return detect, None


def _good_at(series: Series, t: float) -> bool:
    """Whether the latest sample of series at or before t is within its SLO."""
    latest = None
    for ts, v in series.points:
        if ts > t:
            break
        latest = v
    return latest is None or series.good(latest)
