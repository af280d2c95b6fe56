"""Consistency check of a journal: re-derive what chaostoolkit recorded from the raw values.

A journal is flagged when its recorded ``tolerance_met`` contradicts the probe's own output
and tolerance, when ``steady_state_met`` contradicts its probes, when ``deviated`` or the
status contradicts the steady state, or when its timestamps are inconsistent (end before
start, a duration that is not end - start, an activity outside the run), or when its load
profile contradicts itself (an unknown profile; a rate other than the one k6 was asked for;
a peak rate that is not floor(capacity x share) of the capacity record the journal carries,
or above that capacity). ``chaos report
--verify`` prints these and exits non-zero; every render shows them as warnings and the
run's verdict becomes "inconclusive".

The tolerance is re-derived the way chaostoolkit-lib 1.44 does it (``within_tolerance``):
bool/int/str by equality, a two-item list as an inclusive range (else membership), a
``{"type": "range"}`` dict as an inclusive range of the (targeted) value. Tolerances that
need to run something (``probe``) or a library (``regex``, ``jsonpath``) are not re-derived:
the recorded value is taken as is.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from chaoscheckout.load.profile import PROFILES, peak_rate
from chaoscheckout.report.model import ProbeResult, Run

__all__ = ["derive_met", "find_problems", "profile_problems"]

CLOCK_SLACK_S = 1.0  # journal times are rounded and written by several threads
NOT_DERIVABLE = object()


def derive_met(probe: ProbeResult) -> bool | None:
    """Whether the probe's output is within its tolerance, re-derived; a probe that did not
    succeed is not within it; the recorded value when the tolerance cannot be re-derived."""
    if probe.status != "succeeded":
        return False
    found = _within(probe.raw_tolerance, probe.raw_value)
    return probe.met if found is NOT_DERIVABLE else bool(found)


def find_problems(run: Run) -> list[str]:
    """Every contradiction in the journal behind ``run`` (probes must already carry derived_met)."""
    problems: list[str] = []
    phases = (("before", run.before), ("after", run.after))
    for phase, state in phases:
        if state is None:
            continue
        for probe in state.probes:
            if probe.met is not None and probe.derived_met is not None and probe.met != probe.derived_met:
                problems.append(f"{phase}: probe {probe.name} output {probe.value} is "
                                f"{'within' if probe.derived_met else 'outside'} tolerance {probe.tolerance} "
                                f"but the journal records tolerance_met: {str(probe.met).lower()}")
        derived = all(p.derived_met for p in state.probes) if state.probes else None
        if state.met is True and (derived is False or (state.probes and state.not_run and derived)):
            problems.append(f"{phase}: steady_state_met is true but "
                            + ("a probe is outside its tolerance" if derived is False
                               else f"probe(s) {', '.join(state.not_run)} have no result"))
        elif state.met is False and derived is True and not state.not_run:
            problems.append(f"{phase}: steady_state_met is false but every probe is within its tolerance")
        if run.status == "completed" and any(p.status != "succeeded" for p in state.probes):
            problems.append(f"{phase}: a steady-state probe raised, yet the status is completed "
                            "(chaostoolkit marks such a run failed)")
    if run.deviated is not None and run.after is not None and run.after.probes:
        expected = not all(p.derived_met for p in run.after.probes)
        if run.deviated != expected:
            problems.append(f"deviated is {str(run.deviated).lower()} but the steady state after the method "
                            f"{'failed' if expected else 'held'}")
    if run.deviated is True and run.after is None:
        problems.append("deviated is true but no steady state was checked after the method")
    problems += _time_problems(run)
    problems += profile_problems(run)
    return problems


def profile_problems(run: Run) -> list[str]:
    """Contradictions in the run's recorded load profile (re-derived from its capacity record)."""
    p = run.load_profile
    if p is None or not p.recorded:
        return []
    if p.name not in PROFILES:
        return [f"load profile {p.name!r} is not one of {', '.join(PROFILES)}"]
    if p.rate is None:
        return [f"load profile {p.name} records no rate"]
    problems = []
    if p.k6_rate is not None and p.k6_rate != p.rate:
        problems.append(f"load profile {p.name} says {p.rate:g}/s but k6 was asked for {p.k6_rate:g}/s")
    if p.start_rate is not None and p.start_rate > p.rate:
        problems.append(f"the ramp starts at {p.start_rate:g}/s, above the profile's rate {p.rate:g}/s")
    if p.name == "peak":
        if p.capacity_per_s is None or p.share is None:
            return problems + ["a peak run without its capacity record (capacity_per_s and share)"]
        derived = peak_rate(p.capacity_per_s, p.share)
        if derived != p.rate:
            problems.append(f"peak rate {p.rate:g}/s is not floor({p.capacity_per_s:g}/s x {p.share:g}) = "
                            f"{derived}/s from its capacity record")
        if not 0 < p.share <= 1 or p.rate > p.capacity_per_s:
            problems.append(f"peak rate {p.rate:g}/s (share {p.share:g}) is above the measured capacity "
                            f"{p.capacity_per_s:g}/s")
    return problems


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _within(tolerance: Any, value: Any) -> Any:
    if isinstance(tolerance, bool):
        return value == tolerance
    if isinstance(tolerance, str):
        return value == tolerance
    if isinstance(tolerance, int):
        if isinstance(value, dict) and "status" in value:
            return value["status"] == tolerance
        return value == tolerance
    if isinstance(tolerance, list):
        if isinstance(value, dict) and "status" in value:
            return value["status"] in tolerance
        if len(tolerance) == 2:
            try:
                return tolerance[0] <= value <= tolerance[1]
            except TypeError:
                return False
        return value in tolerance
    if isinstance(tolerance, dict) and tolerance.get("type") == "range":
        target = tolerance.get("target")
        if target and isinstance(value, dict):
            value = value.get(target, value)
        bounds = tolerance.get("range")
        if not (isinstance(bounds, list) and len(bounds) == 2):
            return NOT_DERIVABLE
        try:
            return Decimal(str(bounds[0])) <= Decimal(str(value)) <= Decimal(str(bounds[1]))
        except (InvalidOperation, ValueError, TypeError):
            return False
    return NOT_DERIVABLE


def _time_problems(run: Run) -> list[str]:
    problems = []
    if run.start is not None and run.end is not None:
        if run.end < run.start:
            problems.append("the run ends before it starts (end < start)")
        elif run.duration_s is not None and abs((run.end - run.start) - run.duration_s) > CLOCK_SLACK_S:
            problems.append(f"duration {run.duration_s:.3f} s is not end - start "
                            f"({run.end - run.start:.3f} s)")
    if run.start is None or run.end is None:
        return problems
    lo, hi = run.start - CLOCK_SLACK_S, run.end + CLOCK_SLACK_S
    timed = [(f"activity {a.name}", a.start, a.end) for a in run.run_activities + run.rollbacks]
    for phase, state in (("before", run.before), ("after", run.after)):
        timed += [(f"{phase} probe {p.name}", p.start, p.end) for p in (state.probes if state else [])]
    for name, start, end in timed:
        if start is not None and end is not None and end < start:
            problems.append(f"{name} ends before it starts")
        for moment in (start, end):
            if moment is not None and not lo <= moment <= hi:
                problems.append(f"{name} is timed outside the run")
                break
    for fault in run.faults:
        if fault.injected_at is not None and not lo <= fault.injected_at <= hi:
            problems.append(f"fault {fault.fault_id} injected outside the run")
    return problems
