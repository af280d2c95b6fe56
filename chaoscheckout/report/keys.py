"""Where the report finds things in a journal: every key lookup the report depends on.

The journal is chaostoolkit's (1.19); the parts chaoscheckout adds are looked up here and
only here (contract: docs/architecture.md, "Journal additions"), so a change in what the
controls store is a change in this one module.

- Experiment metadata: ``experiment.extensions[name == "chaoscheckout"]`` holding
  ``hypothesis``, ``blast_radius``, ``abort_condition`` and optionally ``result``.
- ``chaoscheckout_timeline`` (load control): ``{start, end, step_s, series: {availability_10s:
  [[t, v], ...], p95_ms_10s: [[t, v], ...]}}``, or ``error`` when Prometheus was unreachable.
- ``chaoscheckout_load`` (load control): k6 run record with ``summary`` (requests,
  failed_rate, p95_ms, ...), ``exit_code``, ``exit_meaning``, ``stopped_by``, ``error``,
  ``rate`` (what k6 was asked to hold) and ``profile`` (``{name, rate, start_rate, ramp_s,
  share, capacity_file, capacity: {capacity_per_s, measured_at, host, build, method},
  capacity_sha256}``; absent in journals older than load profiles: those ran the baseline).
- ``chaoscheckout_safety`` (safety control): ``{status_seen, reverted: [{fault_id, kind,
  service, ...}], at}``.
- A fault is an activity output dict carrying ``fault_id``, ``kind`` and ``injected_at``
  (``{fault_id, kind, backend, target, parameters, injected_at, expires_at}``).
- A revert is an *action* output naming the fault: an id list (``reverted`` of
  ``remove_latency``, ``reverted_leases`` of ``start_service`` / ``release_disk``, decisive
  even when empty), else ``fault_id``, else (no id at all) ``service``/``target``. Probe
  outputs never revert (``latency_fault_effect`` carries the ``fault_id`` it measured).
- Evidence that a latency fault bit: ``latency_fault_effect`` probe output, or the
  ``effect`` dict of the ``remove_latency`` output: ``{fault_id, scope, fraction,
  exchanges_seen, exchanges_delayed, exchanges_delayed_ratio, connections_decided,
  connections_picked, ...}``.
- ``chaoscheckout_guards`` (load control): ``{samples: [{guard, at, value, threshold, ok}]}``,
  every measurement the chaoscheckout guards took (the money-safety series comes from here).
- ``chaoscheckout_provenance`` (provenance control): ``{experiment_digest, system_build,
  system_label, tool, host, runtime, k6, prometheus, load, configuration, services,
  services_at_end}`` or ``{error}``.
- Guards declared in a ``chaosaddons.controls.safeguards`` control: ``probes[].provider``
  with ``func`` availability_guard (``min_ratio``), latency_guard (``max_ms``, ``quantile``)
  or money_guard.
- ``FINDINGS.md`` in an input directory: the team's hand-written findings.
"""

from __future__ import annotations

from typing import Any

EXTENSION_NAME = "chaoscheckout"
TIMELINE_KEY = "chaoscheckout_timeline"
LOAD_KEY = "chaoscheckout_load"
SAFETY_KEY = "chaoscheckout_safety"
GUARDS_KEY = "chaoscheckout_guards"
PROVENANCE_KEY = "chaoscheckout_provenance"
GUARD_MODULE = "chaoscheckout.sli.guards"
SAFEGUARDS_MODULE = "chaosaddons.controls.safeguards"
MONEY_GUARD = "money_guard"
AVAILABILITY_GUARD = "availability_guard"
LATENCY_GUARD = "latency_guard"
LEGACY_RECORD_KEY = "chaoscheckout"  # one dict holding timeline/k6/safety (early drafts)
K6_RUN_FIELDS = ("exit_code", "exit_meaning", "stopped_by", "error", "rate", "duration_s")

# SLI series drawn per run: (series key, label, unit, SLO objective, "min" | "max").
# "min": the SLI must stay at or above the objective; "max": at or below it.
AVAILABILITY_SERIES = ("availability_10s", "availability_30s", "availability")
LATENCY_SERIES = ("p95_ms_10s", "p95_ms_30s", "p95_ms", "p95_10s_ms")
DEFAULT_AVAILABILITY_SLO = 0.99
DEFAULT_P95_SLO_MS = 500.0

AVAILABILITY_PROBE = "checkout_availability"  # chaoscheckout.sli.probes
LATENCY_PROBE = "checkout_latency_ms"

FAULT_KEYS = ("fault_id", "kind")
TIME_KEYS_REVERTED = ("reverted_at", "at", "time", "ts")
REVERTED_ID_LISTS = ("reverted", "reverted_leases", "reverted_faults")  # ids a revert output undid
MEASUREMENT_KEYS = ("effect",)  # nested dicts in a revert output that measure, not revert
# shown first when an action output is summarised (what was undone, before the details)
OUTPUT_FIRST_KEYS = ("message", "reverted", "reverted_leases", "removed", "started", "service", "fault_id")
PROBE_TYPE = "probe"
EFFECT_KEY = "effect"
EFFECT_PROBE_FUNCS = ("latency_fault_effect",)
# a method probe waiting for a fault's effect: {increased, before, after, waited_s, timeout_s,
# query}; a run whose wait never saw it is inconclusive, not held (the fault did not bite)
EFFECT_WAIT_FUNCS = ("wait_for_increase",)
# netem evidence read on the service's host: the qdiscs with their own tc -s counters
QDISC_PROBE_FUNCS = ("netem_qdisc_stats",)
FINDINGS_FILE = "FINDINGS.md"
MAX_FINDINGS_BYTES = 256 * 1024


def extension(experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment's chaoscheckout extension entry ({} when absent)."""
    for entry in experiment.get("extensions") or []:
        if isinstance(entry, dict) and entry.get("name") == EXTENSION_NAME:
            return entry
    return {}


def record(journal: dict[str, Any]) -> dict[str, Any]:
    """What chaoscheckout's controls stored in the journal, as {timeline, k6, safety}."""
    legacy = journal.get(LEGACY_RECORD_KEY)
    found: dict[str, Any] = dict(legacy) if isinstance(legacy, dict) else {}
    if not found:
        ext = extension(journal.get("experiment") or {})
        found = {k: ext[k] for k in ("timeline", "k6", "safety") if k in ext}
    for key, name in ((TIMELINE_KEY, "timeline"), (SAFETY_KEY, "safety"), (GUARDS_KEY, "guards")):
        if isinstance(journal.get(key), dict):
            found[name] = journal[key]
    load = journal.get(LOAD_KEY)
    if isinstance(load, dict):
        summary = load.get("summary") if isinstance(load.get("summary"), dict) else {}
        found["k6"] = {**{k: load[k] for k in K6_RUN_FIELDS if load.get(k) is not None}, **summary}
    return found


def load_record(journal: dict[str, Any]) -> dict[str, Any]:
    """The load control's record ({} when absent)."""
    load = journal.get(LOAD_KEY)
    return load if isinstance(load, dict) else {}


def load_profile(journal: dict[str, Any]) -> dict[str, Any] | None:
    """The load profile the run recorded (None: a journal older than profiles, or none stored)."""
    profile = load_record(journal).get("profile")
    return profile if isinstance(profile, dict) else None


def timeline_series(rec: dict[str, Any]) -> dict[str, Any]:
    timeline = rec.get("timeline")
    if not isinstance(timeline, dict):
        return {}
    series = timeline.get("series", timeline)
    return series if isinstance(series, dict) else {}


def objective(journal: dict[str, Any], rec: dict[str, Any], kind: str, series_name: str) -> float:
    """The SLO drawn for a series ("availability" or "latency"): the timeline's own ``slo``, else
    the bound of the experiment's steady-state probe on that SLI, else the default."""
    timeline = rec.get("timeline")
    if isinstance(timeline, dict) and isinstance(timeline.get("slo"), dict):
        value = timeline["slo"].get(series_name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    experiment = journal.get("experiment") or {}
    hypothesis = experiment.get("steady-state-hypothesis") or {}
    for probe in hypothesis.get("probes") or [] if isinstance(hypothesis, dict) else []:
        bound = _probe_bound(probe, kind)
        if bound is not None:
            return bound
    return DEFAULT_AVAILABILITY_SLO if kind == "availability" else DEFAULT_P95_SLO_MS


def _probe_bound(probe: Any, kind: str) -> float | None:
    if not isinstance(probe, dict) or not isinstance(probe.get("provider"), dict):
        return None
    provider = probe["provider"]
    func, args = provider.get("func"), provider.get("arguments") or {}
    tolerance = probe.get("tolerance")
    bounds = tolerance.get("range") if isinstance(tolerance, dict) else tolerance
    if not (isinstance(bounds, list) and len(bounds) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)):
        return None
    if kind == "availability" and func == AVAILABILITY_PROBE:
        return float(bounds[0])
    if kind == "latency" and func == LATENCY_PROBE and float(args.get("quantile", 0.95)) == 0.95:
        return float(bounds[1])
    return None


def timeline_error(rec: dict[str, Any]) -> str:
    timeline = rec.get("timeline")
    error = timeline.get("error") if isinstance(timeline, dict) else None
    return str(error) if error else ""


def k6_summary(rec: dict[str, Any]) -> dict[str, Any]:
    found = rec.get("k6")
    return found if isinstance(found, dict) else {}


def safety_reverts(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The safety control's reverts, each with a time (the record's ``at`` when it has none)."""
    safety = rec.get("safety")
    at = None
    if isinstance(safety, dict):
        reverts = safety.get("reverted") or safety.get("reverts") or []
        at = safety.get("at")
    elif isinstance(safety, list):
        reverts = safety
    else:
        reverts = []
    out = []
    for revert in reverts if isinstance(reverts, list) else []:
        if isinstance(revert, dict):
            has_time = any(revert.get(k) for k in TIME_KEYS_REVERTED)
            out.append(revert if has_time or at is None else {**revert, "at": at})
    return out


def abort_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The safety control's ``abort`` record: ``{first_breach: {guard, at, value, threshold},
    breaches, breach_to_revert_s}`` ({} when no chaoscheckout guard breached)."""
    safety = rec.get("safety")
    abort = safety.get("abort") if isinstance(safety, dict) else None
    return abort if isinstance(abort, dict) else {}


def refused_arguments(rec: dict[str, Any]) -> list[str]:
    """What the safety control's pre-run argument check refused ([] when nothing was)."""
    safety = rec.get("safety")
    refused = safety.get("refused_arguments") if isinstance(safety, dict) else None
    return [str(problem) for problem in refused] if isinstance(refused, list) else []


def is_fault_output(output: Any) -> bool:
    return isinstance(output, dict) and all(k in output for k in FAULT_KEYS) and "injected_at" in output


def activity_type(entry: dict[str, Any]) -> str:
    """"action" or "probe" (chaostoolkit's activity type; "" when absent)."""
    activity = entry.get("activity")
    return str(activity.get("type") or "") if isinstance(activity, dict) else ""


def activity_func(entry: dict[str, Any]) -> str:
    activity = entry.get("activity")
    provider = activity.get("provider") if isinstance(activity, dict) else None
    return str(provider.get("func") or "") if isinstance(provider, dict) else ""


def reverted_ids(output: dict[str, Any]) -> list[str] | None:
    """The fault ids a revert output says it undid (None when it has no such list)."""
    for key in REVERTED_ID_LISTS:
        ids = output.get(key)
        if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
            return ids
    return None


def effect(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The latency-fault effect an activity recorded: a ``latency_fault_effect`` probe output, or
    the ``effect`` dict of a revert output (None when it has none)."""
    output = entry.get("output")
    if not isinstance(output, dict):
        return None
    if activity_func(entry) in EFFECT_PROBE_FUNCS:
        return output
    found = output.get(EFFECT_KEY)
    return found if isinstance(found, dict) else None


def guard_samples(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The guards' recorded measurements ([] when the journal has none)."""
    guards = rec.get("guards")
    samples = guards.get("samples") if isinstance(guards, dict) else None
    return [s for s in samples if isinstance(s, dict)] if isinstance(samples, list) else []


def guard_declarations(experiment: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(guard func, arguments) of each chaoscheckout guard in the experiment's safeguards."""
    found = []
    for control in experiment.get("controls") or []:
        provider = control.get("provider") if isinstance(control, dict) else None
        if not isinstance(provider, dict) or provider.get("module") != SAFEGUARDS_MODULE:
            continue
        for probe in (provider.get("arguments") or {}).get("probes") or []:
            inner = probe.get("provider") if isinstance(probe, dict) else None
            if not isinstance(inner, dict):
                continue
            args = inner.get("arguments") if isinstance(inner.get("arguments"), dict) else {}
            if inner.get("module") == GUARD_MODULE:
                found.append((str(inner.get("func") or ""), args))
                continue
            bounds = _range(probe.get("tolerance"))  # an SLI probe as a safeguard, judged by its range
            if bounds and inner.get("func") == AVAILABILITY_PROBE:
                found.append((AVAILABILITY_GUARD, {"min_ratio": bounds[0]}))
            elif bounds and inner.get("func") == LATENCY_PROBE:
                found.append((LATENCY_GUARD, {"max_ms": bounds[1]}))
    return found


def _range(tolerance: Any) -> list[float] | None:
    bounds = tolerance.get("range") if isinstance(tolerance, dict) else tolerance
    if isinstance(bounds, list) and len(bounds) == 2 and all(
            isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        return [float(b) for b in bounds]
    return None


def guard_threshold_from_arguments(func: str, args: dict[str, Any], configuration: dict[str, Any]) -> str:
    """A guard's threshold as the guard writes it (">= 0.5", "<= 3000 ms", "== 0"), "" when the
    arguments cannot be resolved (a ``${key}`` the configuration does not hold)."""

    def value(name: str, default: Any) -> Any:
        raw = args.get(name, default)
        if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}"):
            raw = configuration.get(raw[2:-1])
        return raw

    if func == AVAILABILITY_GUARD:
        bound = value("min_ratio", 0.5)
        return f">= {bound}" if isinstance(bound, int | float) else ""
    if func == LATENCY_GUARD:
        bound = value("max_ms", 1000)
        return f"<= {bound} ms" if isinstance(bound, int | float) else ""
    if func == MONEY_GUARD:
        return "== 0"
    return ""
