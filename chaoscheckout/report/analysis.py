"""What a run means: which action reverted which fault, its verdict, fault window,
detection/recovery times, the SLI figures the log shows, and the history.

Every figure comes from the journal: before/after are the steady-state probes' own values;
"during" is the worst sample inside the fault window from the SLI timeline and the guards;
timeline samples whose window reaches back before the run's start (the previous run's tail)
are never counted as this run's.
"""

from __future__ import annotations

import heapq
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from chaoscheckout.report import keys
from chaoscheckout.report.model import Activity, Fault, ProbeResult, Run, Series, SteadyState, parse_time
from chaoscheckout.report.verify import derive_met, find_problems

__all__ = ["HistoryEntry", "analyse", "breach_text", "breach_to_revert_s", "effect_text", "fault_window",
           "history", "probe_figure"]

INTERRUPTED = ("interrupted", "aborted")
INCONCLUSIVE = "inconclusive"
AVAILABILITY_GUARD_SERIES = {keys.AVAILABILITY_GUARD: "availability"}


@dataclass
class HistoryEntry:
    title: str
    experiment_digest: str
    system_build: str
    system_label: str
    runs: list[Run]

    def line(self) -> str:
        return " → ".join(f"{r.verdict} ({_stamp(r.start)})" for r in self.runs)


def analyse(run: Run) -> Run:
    """Fill the derived fields of a run (reverts, verdict, times, SLI figures). Returns it."""
    entries = run.run_activities + run.rollbacks
    _match_reverts(run, entries)
    _match_effects(run, entries)
    for series in (run.availability, run.latency):
        if series is not None and run.start is not None and series.window_s:
            series.fresh_from = run.start + series.window_s
    for state in (run.before, run.after):
        if state is not None:
            for probe in state.probes:
                probe.derived_met = derive_met(probe)
    _mark_not_run(run)
    run.problems = find_problems(run)
    run.verdict, run.reason = _verdict(run)
    if run.status in INTERRUPTED:
        run.aborted_at = run.end
    window = fault_window(run)
    run.sli_phases = {s.name: _phases(run, s, window)
                      for s in (run.availability, run.latency) if s is not None}
    run.guard_worst = _guard_worst(run, window)
    run.time_to_detect_s, run.time_to_recover_s = _detect_recover(run, window)
    if run.verdict == "held":
        breached = _breached_during(run)
        if breached:
            run.reason += f"; but {breached} during the fault, between the before and after checks"
        for fault in run.faults:
            run.reason += _weak_fault_note(fault)
    return run


def probe_figure(state: SteadyState | None, func: str) -> tuple[float | None, bool | None, str]:
    """(value, within tolerance, note) of the steady-state probe calling ``func`` in a phase;
    note is "not run" when the phase or that probe was not evaluated."""
    if state is None:
        return None, None, "not run"
    for probe in state.probes:
        if probe.func == func and (func != keys.LATENCY_PROBE or _is_p95(probe)):
            value = probe.raw_value
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return float(value), probe.derived_met, ""
            return None, probe.derived_met, "failed" if probe.status != "succeeded" else "no value"
    return None, None, "not run"


def breach_text(run: Run) -> str:
    """The first guard breach as a reader says it ("availability_guard measured 43.9 % (abort
    threshold >= 50 %) at … (t+38.512 s), 6.013 s after injection"); "" without an abort record."""
    breach = run.abort.get("first_breach")
    if not isinstance(breach, dict):
        return ""
    guard = str(breach.get("guard") or "a guard")
    value = guard_value_text(guard, breach.get("value"))
    threshold = guard_threshold_text(guard, breach.get("threshold"))
    at = parse_time(breach.get("at"))
    when = ""
    if at is not None and run.start:
        when = f" at t+{at - run.start:.3f} s"
    starts = [f.injected_at for f in run.faults if f.injected_at is not None]
    if at is not None and starts:
        when += f", {at - min(starts):.3f} s after injection"
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
    """Experiments run more than once: their runs grouped by (experiment digest, system build),
    each group oldest first, groups in the order they were first run."""
    by_title: dict[str, list[Run]] = {}
    for run in runs:
        by_title.setdefault(run.title, []).append(run)
    entries = []
    for title, group in sorted(by_title.items()):
        if len(group) < 2:
            continue
        keyed: dict[tuple[str, str], list[Run]] = {}
        for run in sorted(group, key=lambda r: r.start or 0.0):
            prov = run.provenance
            key = ((prov.experiment_digest[:12] if prov and prov.experiment_digest else "unknown"),
                   (prov.system_build if prov and prov.system_build else "unknown"))
            keyed.setdefault(key, []).append(run)
        for (digest, build), members in keyed.items():
            prov = members[0].provenance
            label = prov.system_label if prov and prov.system_label else "not recorded (no provenance)"
            entries.append(HistoryEntry(title, digest, build, label, members))
    return entries


def guard_value_text(guard: str, value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    unit = _unit(guard)
    if unit == "%" and 0 <= value <= 1:
        return f"{value * 100:.1f} %"
    if unit == "ms":
        return f"{value:.1f} ms"
    if "money" in guard:
        return f"{value:g} charge(s) without an order"
    return f"{value:.4g}"


def guard_threshold_text(guard: str, threshold: Any) -> str:
    text = str(threshold if threshold is not None else "?")
    match = re.fullmatch(r"\s*([<>=!]=?)\s*([0-9.]+)\s*", text)
    if match and _unit(guard) == "%" and float(match.group(2)) <= 1:
        return f"{match.group(1)} {float(match.group(2)) * 100:g} %"
    return text


def threshold_number(threshold: str) -> float | None:
    match = re.search(r"[<>=]=?\s*([0-9.]+)", threshold or "")
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _stamp(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "undated"


def _is_p95(probe: ProbeResult) -> bool:
    return probe.quantile is None or probe.quantile == 0.95


def _failing(probe: ProbeResult) -> bool:
    return probe.status != "succeeded" or probe.derived_met is False


def _first_failing(state: SteadyState | None) -> str:
    for probe in state.probes if state else []:
        if _failing(probe):
            return f"probe {probe.name} = {probe.value} (tolerance {probe.tolerance})"
    return "a probe outside its tolerance"


def _mark_not_run(run: Run) -> None:
    for state in (run.before, run.after):
        if state is not None:
            seen = {p.name for p in state.probes}
            state.not_run = [name for name in run.declared_probes if name not in seen]


def _verdict(run: Run) -> tuple[str, str]:
    if run.status in INTERRUPTED and run.refused_arguments:
        return INCONCLUSIVE, ("refused before it started, nothing injected: invalid arguments: "
                              + "; ".join(run.refused_arguments))
    if run.status in INTERRUPTED:
        when = f" {run.duration_s:.3f} s into the run" if run.duration_s is not None else ""
        breach = breach_text(run)
        if breach:
            to_revert = breach_to_revert_s(run)
            revert = f"; first breach → fault reverted in {to_revert:.3f} s" if to_revert is not None else ""
            return "aborted", f"safeguard fired: {breach}{revert}; run {run.status}{when}"
        return "aborted", f"run {run.status}{when} (a safeguard or control stopped it)"
    if run.problems:
        return INCONCLUSIVE, f"the journal contradicts itself: {run.problems[0]}" + (
            f" (and {len(run.problems) - 1} more)" if len(run.problems) > 1 else "")
    if not run.has_hypothesis:
        return INCONCLUSIVE, "the experiment declares no steady-state hypothesis: nothing was judged"
    if run.before is None:
        return INCONCLUSIVE, f"steady state before the method was not evaluated (run {run.status})"
    if any(_failing(p) for p in run.before.probes):
        return "failed", f"steady state not met before the method: {_first_failing(run.before)}; no fault run"
    if run.before.not_run:
        return INCONCLUSIVE, f"before the method, probe(s) not evaluated: {', '.join(run.before.not_run)}"
    if run.status == "failed":
        return "failed", "chaostoolkit marked the run failed"
    if run.after is None:
        return INCONCLUSIVE, f"steady state after the method was not evaluated (run {run.status})"
    if any(_failing(p) for p in run.after.probes):
        missing = ", ".join(run.after.not_run)
        not_run = f"; not run after the deviation: {missing}" if missing else ""
        return "broke", f"steady state deviated after the method: {_first_failing(run.after)}{not_run}"
    if run.after.not_run:
        return INCONCLUSIVE, f"after the method, probe(s) not evaluated: {', '.join(run.after.not_run)}"
    if run.status == "completed":
        no_effect = _no_effect_seen(run)
        if no_effect:
            return INCONCLUSIVE, f"steady state held, but {no_effect}: the hypothesis was not exercised"
        return "held", f"all {len(run.after.probes)} steady-state probe(s) within tolerance before and after"
    return INCONCLUSIVE, f"chaostoolkit status {run.status}"


def _no_effect_seen(run: Run) -> str:
    """Why the method's wait for the fault's effect (``wait_for_increase``) says the fault never
    took effect or could not tell; "" when it saw the effect or the method has no such wait."""
    for entry in run.run_activities:
        if entry.func not in keys.EFFECT_WAIT_FUNCS:
            continue
        output = entry.raw_output
        if entry.status != "succeeded" or not isinstance(output, dict):
            return f"{entry.name} could not tell whether the fault took effect ({entry.status})"
        if output.get("increased") is not True:
            return (f"the fault never took effect: {entry.name} saw {output.get('query')} stay at "
                    f"{output.get('after')} for {output.get('timeout_s')} s")
    return ""


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _unit(guard: str) -> str:
    return "%" if "availability" in guard else "ms" if "latency" in guard else ""


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


def _phases(run: Run, series: Series, window: tuple[float, float] | None) -> dict[str, float | None]:
    """Before/after: the steady-state probe's own value; during: the worst sample of this run
    inside the fault window (timeline, and the availability guard's samples for availability)."""
    func = keys.AVAILABILITY_PROBE if series.unit == "%" else keys.LATENCY_PROBE
    before = probe_figure(run.before, func)[0]
    after = probe_figure(run.after, func)[0]
    during = None
    if window is not None:
        start, end = window
        lo = max(start, series.fresh_from) if series.fresh_from is not None else start
        values = list(series.values[slice(*_between(series.times, lo, end))])
        if series.unit == "%":
            values += [s.value for s in run.guard_samples
                       if s.guard == keys.AVAILABILITY_GUARD and s.value is not None and start <= s.at <= end]
            breach = run.abort.get("first_breach")
            if isinstance(breach, dict) and breach.get("guard") == keys.AVAILABILITY_GUARD:
                at, value = parse_time(breach.get("at")), breach.get("value")
                if at is not None and isinstance(value, int | float) and start <= at <= end + 1.0:
                    values.append(float(value))
        worst = min if series.direction == "min" else max
        during = worst(values) if values else None
    return {"before": before, "during": during, "after": after}


def _guard_worst(run: Run, window: tuple[float, float] | None) -> dict[str, float]:
    """Each guard's worst measured value inside the fault window (availability: lowest)."""
    if window is None:
        return {}
    start, end = window
    found: dict[str, float] = {}
    for sample in run.guard_samples:
        if sample.value is None or not start <= sample.at <= end + 1.0:
            continue
        pick = min if sample.guard == keys.AVAILABILITY_GUARD else max
        found[sample.guard] = pick(found.get(sample.guard, sample.value), sample.value)
    return found


def _detect_recover(run: Run, window: tuple[float, float] | None) -> tuple[float | None, float | None]:
    """Seconds from injection to the first SLI sample of this run outside its SLO, and from the
    revert to the first sample after it with every SLI back within its SLO."""
    if window is None:
        return None, None
    start, _ = window
    series = [s for s in (run.availability, run.latency) if s is not None and s.times]
    firsts = []
    for s in series:
        lo = max(start, s.fresh_from) if s.fresh_from is not None else start
        first = next((s.times[i] for i in range(*_between(s.times, lo, math.inf)) if not s.good(s.values[i])),
                     None)
        if first is not None:
            firsts.append(first)
    if not firsts:
        return None, None
    detect = min(firsts) - start
    reverted = [f.reverted_at for f in run.faults if f.reverted_at is not None]
    if not reverted:
        return detect, None
    revert = max(reverted)
    after = heapq.merge(*[islice(s.times, *_between(s.times, revert, math.inf)) for s in series])
    for t in after:  # lazily, oldest first: usually only a few samples are looked at
        if all(_good_at(s, t) for s in series):
            return detect, t - revert
    return detect, None


def _between(times: Sequence[float], lo: float, hi: float) -> tuple[int, int]:
    """The index range [start, stop) of the samples with lo <= t <= hi (times are sorted)."""
    return bisect_left(times, lo), bisect_right(times, hi)


def _good_at(series: Series, t: float) -> bool:
    """Whether the latest sample of series at or before t is within its SLO."""
    index = bisect_right(series.times, t)
    return index == 0 or series.good(series.values[index - 1])


# --- which action reverted which fault, and how much traffic a latency fault slowed ---------


def _mentions(output: Any, fault: Fault, depth: int = 0) -> bool:
    """Whether a revert output names this fault: its id lists (``reverted``/``reverted_leases``)
    decide when present, else its ``fault_id``, else (no id at all) its service/target. Nested
    measurements (``effect``) are not reverts."""
    if depth > 4:
        return False
    if isinstance(output, list):
        return any(_mentions(item, fault, depth + 1) for item in output)
    if not isinstance(output, dict) or keys.is_fault_output(output):
        return False
    ids = keys.reverted_ids(output)
    if ids is not None:
        return fault.fault_id in ids
    if "fault_id" in output:
        return output.get("fault_id") == fault.fault_id
    if fault.target in (output.get("service"), output.get("target")):
        return True
    return any(_mentions(v, fault, depth + 1) for k, v in output.items()
               if k not in keys.MEASUREMENT_KEYS and isinstance(v, dict | list))


def _reverted_time(output: Any) -> float | None:
    if isinstance(output, dict):
        for key in keys.TIME_KEYS_REVERTED:
            found = parse_time(output.get(key))
            if found:
                return found
    return None


def _match_reverts(run: Run, entries: list[Activity]) -> None:
    for fault in run.faults:
        candidates: list[tuple[float, str]] = []
        for entry in entries:
            is_probe = entry.type == keys.PROBE_TYPE  # probes measure, never revert
            if entry.status != "succeeded" or entry.end is None or is_probe or not _mentions(entry.raw_output,
                                                                                               fault):
                continue
            if fault.injected_at is not None and entry.end < fault.injected_at:
                continue
            candidates.append((_reverted_time(entry.raw_output) or entry.end, entry.name))
        for revert in run.safety_reverts:
            if revert.get("error"):
                continue
            if revert.get("fault_id") == fault.fault_id or fault.target in (
                revert.get("service"), revert.get("target")
            ):
                when = _reverted_time(revert)
                if when is not None:
                    candidates.append((when, "safety control"))
        breach = run.abort.get("first_breach")
        if isinstance(breach, dict) and fault.fault_id in (breach.get("reverted") or []):
            when = parse_time(breach.get("reverted_at"))
            if when is not None:  # the guard reverted on breach, before the safety control
                candidates.append((when, f"{breach.get('guard', 'guard')} on breach"))
        if candidates:
            fault.reverted_at, fault.reverted_by = min(candidates)


def _effect(entry: Activity) -> dict[str, Any] | None:
    output = entry.raw_output
    if not isinstance(output, dict):
        return None
    if entry.func in keys.EFFECT_PROBE_FUNCS:
        return output
    found = output.get(keys.EFFECT_KEY)
    return found if isinstance(found, dict) else None


def _match_effects(run: Run, entries: list[Activity]) -> None:
    """Attach to each fault the latest effect counts recorded for it (probe or revert output)."""
    for entry in sorted(entries, key=lambda e: e.end or 0.0):
        found = _effect(entry) if entry.status == "succeeded" else None
        if not found:
            continue
        for fault in run.faults:
            named = found.get("fault_id")
            if named == fault.fault_id or (named is None and _mentions(entry.raw_output, fault)):
                fault.effect, fault.effect_by = found, entry.name
