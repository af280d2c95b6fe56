"""The report's own view of a journal: dataclasses, and loading journal files into them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaoscheckout.report import keys

__all__ = [
    "Fault",
    "ProbeResult",
    "Run",
    "Series",
    "Skipped",
    "SteadyState",
    "load_journal",
    "parse_time",
]

MAX_JOURNAL_BYTES = 64 * 1024 * 1024
CHAOSTOOLKIT_KEYS = ("experiment", "status", "start")


@dataclass
class ProbeResult:
    name: str
    value: str
    tolerance: str
    met: bool | None
    status: str


@dataclass
class SteadyState:
    met: bool | None
    probes: list[ProbeResult] = field(default_factory=list)


@dataclass
class Fault:
    fault_id: str
    kind: str
    backend: str
    target: str
    parameters: dict[str, Any]
    injected_at: float | None
    expires_at: float | None
    action: str
    target_detail: str = ""
    reverted_at: float | None = None
    reverted_by: str = ""
    effect: dict[str, Any] = field(default_factory=dict)  # latency_fault_effect counts (latest)
    effect_by: str = ""


@dataclass
class Activity:
    name: str
    status: str
    start: float | None
    end: float | None
    output: str


@dataclass
class Series:
    name: str
    label: str
    unit: str
    points: list[tuple[float, float]]
    objective: float
    direction: str  # "min": SLI >= objective is good; "max": SLI <= objective is good

    def good(self, value: float) -> bool:
        return value >= self.objective if self.direction == "min" else value <= self.objective


@dataclass
class Run:
    path: str
    run_id: str
    title: str
    start: float | None
    end: float | None
    duration_s: float | None
    status: str
    deviated: bool
    has_extension: bool
    hypothesis: str
    blast_radius: str
    abort_condition: str
    result: Any
    before: SteadyState | None
    after: SteadyState | None
    faults: list[Fault]
    run_activities: list[Activity]
    rollbacks: list[Activity]
    k6: dict[str, Any]
    availability: Series | None
    latency: Series | None
    safety_reverts: list[dict[str, Any]]
    timeline_error: str = ""
    abort: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""
    reason: str = ""
    aborted_at: float | None = None
    time_to_detect_s: float | None = None
    time_to_recover_s: float | None = None
    sli_phases: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass
class Skipped:
    path: str
    reason: str


def parse_time(value: Any) -> float | None:
    """A journal time (ISO 8601 string or unix seconds) as unix seconds, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and value > 0 else None
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def load_journal(path: Path) -> Run | Skipped:
    """Read one journal file; never raises for bad content (returns Skipped with a reason)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return Skipped(str(path), "empty file")
        if size > MAX_JOURNAL_BYTES:
            return Skipped(str(path), f"too large ({size} bytes > {MAX_JOURNAL_BYTES})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Skipped(str(path), f"cannot read: {exc}")
    try:
        journal = json.loads(text)
    except ValueError as exc:
        return Skipped(str(path), f"not valid JSON (truncated or not a journal): {exc}")
    if not isinstance(journal, dict) or not all(k in journal for k in CHAOSTOOLKIT_KEYS):
        return Skipped(str(path), "not a chaostoolkit journal (no experiment/status/start)")
    if not isinstance(journal.get("experiment"), dict):
        return Skipped(str(path), "not a chaostoolkit journal (experiment is not an object)")
    try:
        return _parse(path, journal)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # malformed parts
        return Skipped(str(path), f"malformed journal ({type(exc).__name__}: {exc})")


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _parse(path: Path, journal: dict[str, Any]) -> Run:
    experiment = journal["experiment"]
    ext = keys.extension(experiment)
    rec = keys.record(journal)
    activities = [a for a in journal.get("run") or [] if isinstance(a, dict)]
    rollbacks = [a for a in journal.get("rollbacks") or [] if isinstance(a, dict)]
    steady = journal.get("steady_states") or {}
    start = parse_time(journal.get("start"))
    run = Run(
        path=str(path),
        run_id=path.stem,
        title=str(experiment.get("title") or "(untitled experiment)"),
        start=start,
        end=parse_time(journal.get("end")),
        duration_s=_number(journal.get("duration")),
        status=str(journal.get("status") or "unknown"),
        deviated=bool(journal.get("deviated")),
        has_extension=bool(ext),
        hypothesis=_text(ext.get("hypothesis")),
        blast_radius=_text(ext.get("blast_radius")),
        abort_condition=_text(ext.get("abort_condition")),
        result=ext.get("result"),
        before=_steady(steady.get("before")),
        after=_steady(steady.get("after")),
        faults=_faults(activities),
        run_activities=[_activity(a) for a in activities],
        rollbacks=[_activity(a) for a in rollbacks],
        k6=keys.k6_summary(rec),
        availability=_series(journal, rec, "availability", keys.AVAILABILITY_SERIES, "availability", "%",
                             "min"),
        latency=_series(journal, rec, "latency", keys.LATENCY_SERIES, "p95 latency", "ms", "max"),
        safety_reverts=keys.safety_reverts(rec),
        timeline_error=keys.timeline_error(rec),
        abort=keys.abort_record(rec),
    )
    _match_reverts(run, activities + rollbacks)
    _match_effects(run, activities + rollbacks)
    return run


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def compact(value: Any, limit: int = 90) -> str:
    """A short one-line rendering of a JSON value."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def round_value(value: Any) -> Any:
    """Floats to 4 significant digits (probe outputs like 46.58333333333332)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    return value


def tolerance_text(tolerance: Any) -> str:
    """A tolerance as a reader writes it: ranges as "range [min, max]"; others compact."""
    if not isinstance(tolerance, dict):
        return compact(tolerance)
    kind = tolerance.get("type")
    if kind == "range" and isinstance(tolerance.get("range"), list):
        target = f" of {tolerance['target']}" if tolerance.get("target") else ""
        return f"range {compact(tolerance['range'])}{target}"
    if kind in ("probe", "regex", "jsonpath"):
        detail = tolerance.get("pattern") or tolerance.get("path") or tolerance.get("name") or ""
        return compact(f"{kind} {detail}".strip())
    return compact(tolerance)


def _steady(block: Any) -> SteadyState | None:
    if not isinstance(block, dict):
        return None
    probes = []
    for probe in block.get("probes") or []:
        if not isinstance(probe, dict):
            continue
        activity = probe.get("activity") or {}
        met = probe.get("tolerance_met")
        value = probe.get("output") if probe.get("status") == "succeeded" else probe.get("exception")
        if isinstance(value, list):  # an exception is a list of traceback lines
            value = (value[-1] if value else "").strip() if probe.get("status") != "succeeded" else value
        probes.append(ProbeResult(
            name=str(activity.get("name", "?")),
            value=compact(round_value(value)),
            tolerance=tolerance_text(activity.get("tolerance")),
            met=met if isinstance(met, bool) else None,
            status=str(probe.get("status", "?")),
        ))
    met = block.get("steady_state_met")
    return SteadyState(met=met if isinstance(met, bool) else None, probes=probes)


def _activity(entry: dict[str, Any]) -> Activity:
    activity = entry.get("activity") or {}
    if entry.get("status") == "succeeded":
        output = compact(_ordered(entry.get("output")), 140)
    else:
        exc = entry.get("exception") or []
        output = compact(exc[-1].strip() if isinstance(exc, list) and exc else exc)
    return Activity(
        name=str(activity.get("name", "?")),
        status=str(entry.get("status", "?")),
        start=parse_time(entry.get("start")),
        end=parse_time(entry.get("end")),
        output=output,
    )


def _ordered(output: Any) -> Any:
    """An action output with what it undid first; nested measurements elided (shown elsewhere)."""
    if not isinstance(output, dict):
        return output
    first = [k for k in keys.OUTPUT_FIRST_KEYS if k in output]
    rest = sorted(k for k in output if k not in first)
    parts = []
    for key in first + rest:
        elided = key in keys.MEASUREMENT_KEYS and isinstance(output[key], dict)
        value = "{…}" if elided else json.dumps(output[key], default=str)
        parts.append(f"{json.dumps(str(key))}: {value}")
    return "{" + ", ".join(parts) + "}"


def _faults(activities: list[dict[str, Any]]) -> list[Fault]:
    faults = []
    for entry in activities:
        output = entry.get("output")
        if not keys.is_fault_output(output):
            continue
        params = output.get("parameters")
        target, detail = _target(output.get("target", output.get("service", "?")))
        faults.append(Fault(
            fault_id=str(output.get("fault_id")),
            kind=str(output.get("kind")),
            backend=str(output.get("backend", "?")),
            target=target,
            target_detail=detail,
            parameters=params if isinstance(params, dict) else {},
            injected_at=parse_time(output.get("injected_at")) or parse_time(entry.get("end")),
            expires_at=parse_time(output.get("expires_at")),
            action=str((entry.get("activity") or {}).get("name", "?")),
        ))
    return faults


def _target(value: Any) -> tuple[str, str]:
    """A fault target as (service name, details): targets may be a name or a dict (proxy route)."""
    if isinstance(value, dict):
        name = value.get("service") or value.get("name") or value.get("route") or "?"
        rest = {k: v for k, v in value.items() if k not in ("service", "name")}
        return str(name), compact(rest, 160) if rest else ""
    return str(value), ""


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


def _match_reverts(run: Run, entries: list[dict[str, Any]]) -> None:
    for fault in run.faults:
        candidates: list[tuple[float, str]] = []
        for entry in entries:
            output = entry.get("output")
            end = parse_time(entry.get("end"))
            is_probe = keys.activity_type(entry) == keys.PROBE_TYPE  # probes measure, never revert
            if entry.get("status") != "succeeded" or end is None or is_probe or not _mentions(output, fault):
                continue
            if fault.injected_at is not None and end < fault.injected_at:
                continue
            when = _reverted_time(output) or end
            candidates.append((when, str((entry.get("activity") or {}).get("name", "?"))))
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


def _match_effects(run: Run, entries: list[dict[str, Any]]) -> None:
    """Attach to each fault the latest effect counts recorded for it (probe or revert output)."""
    for entry in sorted(entries, key=lambda e: parse_time(e.get("end")) or 0.0):
        found = keys.effect(entry) if entry.get("status") == "succeeded" else None
        if not found:
            continue
        name = str((entry.get("activity") or {}).get("name", "?"))
        for fault in run.faults:
            named = found.get("fault_id")
            if named == fault.fault_id or (named is None and _mentions(entry.get("output"), fault)):
                fault.effect, fault.effect_by = found, name


def _series(
    journal: dict[str, Any], rec: dict[str, Any], kind: str, names: tuple[str, ...], label: str, unit: str,
    direction: str,
) -> Series | None:
    series = keys.timeline_series(rec)
    for name in names:
        raw = series.get(name)
        if not isinstance(raw, list):
            continue
        points = []
        for item in raw:
            if isinstance(item, list | tuple) and len(item) == 2:
                t, v = parse_time(item[0]), _number(_maybe_float(item[1]))
                if t is not None and v is not None:  # None: Prometheus had no value (a gap)
                    points.append((t, v))
        points.sort()
        return Series(name=name, label=label, unit=unit, points=points,
                      objective=keys.objective(journal, rec, kind, name), direction=direction)
    return None


def _maybe_float(value: Any) -> Any:
    if isinstance(value, str):  # Prometheus returns sample values as strings
        try:
            return float(value)
        except ValueError:
            return None
    return value
