"""What a run means: its verdict, fault window, detection/recovery times, and the history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import fmean

from chaoscheckout.report.model import Run, Series

__all__ = ["HistoryEntry", "analyse", "fault_window", "history"]

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
    return run


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
