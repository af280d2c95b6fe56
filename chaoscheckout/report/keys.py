"""Where the report finds things in a journal: every key lookup the report depends on.

The journal is chaostoolkit's (1.19); the parts chaoscheckout adds are looked up here and
only here, so a change in what the controls store is a change in this one module.

- Experiment metadata: ``experiment.extensions[name == "chaoscheckout"]`` holding
  ``hypothesis``, ``blast_radius``, ``abort_condition`` and optionally ``result``.
- The record the controls store at experiment end: ``journal["chaoscheckout"]`` (or, as a
  fallback, the same keys inside the experiment's chaoscheckout extension entry):
  ``timeline.series.<name> = [[unix_ts, value], ...]``, ``k6`` (summary dict) and
  ``safety`` (``reverts`` list, each with ``fault_id``/``service``/``target`` and a time).
- A fault is an activity output dict carrying ``fault_id`` and ``kind`` (the contract in
  docs/architecture.md: ``{fault_id, kind, backend, target, parameters, injected_at,
  expires_at}``).
"""

from __future__ import annotations

from typing import Any

EXTENSION_NAME = "chaoscheckout"
JOURNAL_RECORD_KEY = "chaoscheckout"

# SLI series drawn per run: (series key, label, unit, SLO objective, "min" | "max").
# "min": the SLI must stay at or above the objective; "max": at or below it.
AVAILABILITY_SERIES = ("availability_10s", "availability_30s", "availability")
LATENCY_SERIES = ("p95_ms_10s", "p95_ms_30s", "p95_ms", "p95_10s_ms")
DEFAULT_AVAILABILITY_SLO = 0.99
DEFAULT_P95_SLO_MS = 500.0

FAULT_KEYS = ("fault_id", "kind")
TIME_KEYS_REVERTED = ("reverted_at", "at", "time", "ts")


def extension(experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment's chaoscheckout extension entry ({} when absent)."""
    for entry in experiment.get("extensions") or []:
        if isinstance(entry, dict) and entry.get("name") == EXTENSION_NAME:
            return entry
    return {}


def record(journal: dict[str, Any]) -> dict[str, Any]:
    """What chaoscheckout's controls stored in the journal ({} when nothing)."""
    found = journal.get(JOURNAL_RECORD_KEY)
    if isinstance(found, dict):
        return found
    ext = extension(journal.get("experiment") or {})
    return {k: ext[k] for k in ("timeline", "k6", "safety", "load") if k in ext}


def timeline_series(rec: dict[str, Any]) -> dict[str, Any]:
    timeline = rec.get("timeline")
    if not isinstance(timeline, dict):
        return {}
    series = timeline.get("series", timeline)
    return series if isinstance(series, dict) else {}


def slo(rec: dict[str, Any], ext: dict[str, Any], name: str, default: float) -> float:
    """An SLO objective: from the timeline record, then the extension, then the default."""
    for source in (rec.get("timeline"), ext):
        if isinstance(source, dict):
            objectives = source.get("slo") or source.get("objectives") or {}
            value = objectives.get(name) if isinstance(objectives, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
    return default


def k6_summary(rec: dict[str, Any]) -> dict[str, Any]:
    found = rec.get("k6")
    if not isinstance(found, dict):
        load = rec.get("load")
        found = load.get("k6") if isinstance(load, dict) else None
    return found if isinstance(found, dict) else {}


def safety_reverts(rec: dict[str, Any]) -> list[dict[str, Any]]:
    safety = rec.get("safety")
    if isinstance(safety, dict):
        reverts = safety.get("reverts") or safety.get("reverted") or []
    elif isinstance(safety, list):
        reverts = safety
    else:
        reverts = []
    return [r for r in reverts if isinstance(r, dict)]


def is_fault_output(output: Any) -> bool:
    return isinstance(output, dict) and all(k in output for k in FAULT_KEYS) and "injected_at" in output
