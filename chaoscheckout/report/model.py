"""The report's own view of a journal: dataclasses holding the journal's facts, and loading.

Facts only: what the journal recorded, parsed into types. What the facts mean (verdict,
fault window, which action reverted which fault, consistency) is :mod:`analysis`'s job.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from operator import itemgetter, lt
from pathlib import Path
from typing import Any

from chaoscheckout.report import keys

__all__ = [
    "Activity",
    "Fault",
    "GuardSample",
    "LoadProfileFacts",
    "ProbeResult",
    "Provenance",
    "Run",
    "Series",
    "Skipped",
    "SteadyState",
    "compact",
    "load_journal",
    "parse_time",
]

MAX_JOURNAL_BYTES = 64 * 1024 * 1024
CHAOSTOOLKIT_KEYS = ("experiment", "status", "start")
RAW = {"json": False}  # field metadata: raw journal values kept for analysis, left out of JSON output


@dataclass
class ProbeResult:
    name: str
    value: str
    tolerance: str
    met: bool | None  # as recorded (tolerance_met)
    status: str
    func: str = ""
    window_s: float | None = None  # the probe's measurement window (its "window" argument)
    quantile: float | None = None  # its "quantile" argument (latency probes)
    start: float | None = None
    end: float | None = None
    raw_value: Any = field(default=None, metadata=RAW)
    raw_tolerance: Any = field(default=None, metadata=RAW)
    derived_met: bool | None = None  # re-derived from raw_value and raw_tolerance (analysis)


@dataclass
class SteadyState:
    met: bool | None  # as recorded (steady_state_met)
    probes: list[ProbeResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # declared probes with no result (analysis)


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
    reverted_at: float | None = None  # analysis: matched from revert outputs
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
    type: str = ""
    func: str = ""
    raw_output: Any = field(default=None, metadata=RAW)


@dataclass
class Series:
    name: str
    label: str
    unit: str
    # the samples as two columns, sorted by time: a long run has hundreds of thousands of them,
    # and columns cost no per-sample object (JSON output: as ``points``, [[t, v], ...])
    times: Sequence[float] = field(metadata={"json": "points"})
    values: Sequence[float] = field(metadata=RAW)
    objective: float
    direction: str  # "min": SLI >= objective is good; "max": SLI <= objective is good
    window_s: float | None = None  # each sample covers the window_s seconds before its time
    fresh_from: float | None = None  # analysis: samples before this also cover the previous run

    @property
    def points(self) -> list[tuple[float, float]]:
        """The samples as (time, value) pairs (built on each call: prefer the columns)."""
        return list(zip(self.times, self.values, strict=True))

    def good(self, value: float) -> bool:
        return value >= self.objective if self.direction == "min" else value <= self.objective

    def own(self, t: float) -> bool:
        """Whether the sample at t measures only this run (not the previous run's tail)."""
        return self.fresh_from is None or t >= self.fresh_from


@dataclass
class GuardSample:
    guard: str
    at: float
    value: float | None
    threshold: str
    ok: bool


@dataclass
class Provenance:
    experiment_digest: str = ""
    system_build: str = ""
    system_label: str = ""
    tool: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    configuration: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    k6: str = ""
    prometheus: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    changed_during_run: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class LoadProfileFacts:
    """The load a run ran at: its profile as recorded (``recorded`` false: a journal older than
    load profiles, which ran the baseline at the k6 record's rate)."""
    name: str
    rate: float | None
    recorded: bool
    k6_rate: float | None = None  # the rate the load control's k6 record says it asked for
    start_rate: float | None = None
    ramp_s: float | None = None
    share: float | None = None
    capacity_per_s: float | None = None
    capacity_measured_at: str = ""
    capacity_host: str = ""
    capacity_build: str = ""
    capacity_file: str = ""
    capacity_sha256: str = ""
    raw: Any = field(default=None, metadata=RAW)


@dataclass
class Run:
    path: str
    run_id: str
    title: str
    start: float | None
    end: float | None
    duration_s: float | None
    status: str
    deviated: bool | None
    has_extension: bool
    hypothesis: str
    blast_radius: str
    abort_condition: str
    result: Any
    has_hypothesis: bool
    declared_probes: list[str]
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
    guard_samples: list[GuardSample] = field(default_factory=list)
    guard_thresholds: dict[str, str] = field(default_factory=dict)  # guard → abort threshold text
    provenance: Provenance | None = None
    refused_arguments: list[str] = field(default_factory=list)  # refused before the run started
    load_profile: LoadProfileFacts | None = None
    # derived by analysis
    verdict: str = ""
    reason: str = ""
    aborted_at: float | None = None
    time_to_detect_s: float | None = None
    time_to_recover_s: float | None = None
    sli_phases: dict[str, dict[str, float | None]] = field(default_factory=dict)
    guard_worst: dict[str, float] = field(default_factory=dict)  # guard → worst sample in the fault window
    problems: list[str] = field(default_factory=list)  # contradictions found by verification


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


def compact(value: Any, limit: int | None = 90) -> str:
    """A one-line rendering of a JSON value (cut at limit characters; None: never cut)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


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


def _loads(text: bytes) -> Any:
    """JSON text as Python: orjson when installed (a long run's journal is tens of MB), else json."""
    try:
        import orjson
    except ImportError:
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN/Infinity (Python's json writes them), or a real error to report


def load_journal(path: Path) -> Run | Skipped:
    """Read one journal file; never raises for bad content (returns Skipped with a reason).

    The cyclic garbage collector is paused meanwhile: a long run's timeline parses into
    millions of small lists, and each few hundred of them would otherwise start a collection
    that walks every object allocated so far (measured: it made the parse of a 56 MB journal
    1.5 to 4.6 times slower). Parsing creates no reference cycles worth collecting early."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_journal(path)
    finally:
        if enabled:
            gc.enable()


def _load_journal(path: Path) -> Run | Skipped:
    try:
        size = path.stat().st_size
        if size == 0:
            return Skipped(str(path), "empty file")
        if size > MAX_JOURNAL_BYTES:
            return Skipped(str(path), f"too large ({size} bytes > {MAX_JOURNAL_BYTES})")
        text = path.read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        return Skipped(str(path), f"cannot read: {exc}")
    try:
        journal = _loads(text)
    except ValueError as exc:
        return Skipped(str(path), f"not valid JSON (truncated or not a journal): {exc}")
    del text  # tens of MB not kept while the model is built (the peak is the parse's own: bytes + objects)
    if not isinstance(journal, dict) or not all(k in journal for k in CHAOSTOOLKIT_KEYS):
        return Skipped(str(path), "not a chaostoolkit journal (no experiment/status/start)")
    if not isinstance(journal.get("experiment"), dict):
        return Skipped(str(path), "not a chaostoolkit journal (experiment is not an object)")
    try:
        return parse_journal(path, journal)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # malformed parts
        return Skipped(str(path), f"malformed journal ({type(exc).__name__}: {exc})")


def parse_journal(path: Path, journal: dict[str, Any]) -> Run:
    """A journal dict as a :class:`Run` (facts only; :func:`analysis.analyse` derives the rest)."""
    experiment = journal["experiment"]
    ext = keys.extension(experiment)
    rec = keys.record(journal)
    activities = [a for a in journal.get("run") or [] if isinstance(a, dict)]
    rollbacks = [a for a in journal.get("rollbacks") or [] if isinstance(a, dict)]
    steady = journal.get("steady_states") or {}
    hypothesis = experiment.get("steady-state-hypothesis")
    declared = ([str(p.get("name", "?")) for p in hypothesis.get("probes") or [] if isinstance(p, dict)]
                if isinstance(hypothesis, dict) else [])
    deviated = journal.get("deviated")
    samples = _guard_samples(rec)
    return Run(
        path=str(path),
        run_id=path.stem,
        title=str(experiment.get("title") or "(untitled experiment)"),
        start=parse_time(journal.get("start")),
        end=parse_time(journal.get("end")),
        duration_s=_number(journal.get("duration")),
        status=str(journal.get("status") or "unknown"),
        deviated=deviated if isinstance(deviated, bool) else None,
        has_extension=bool(ext),
        hypothesis=_text(ext.get("hypothesis")),
        blast_radius=_text(ext.get("blast_radius")),
        abort_condition=_text(ext.get("abort_condition")),
        result=ext.get("result"),
        has_hypothesis=bool(declared),
        declared_probes=declared,
        before=_steady(steady.get("before"), hypothesis),
        after=_steady(steady.get("after"), hypothesis),
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
        refused_arguments=keys.refused_arguments(rec),
        guard_samples=samples,
        guard_thresholds=_guard_thresholds(journal, samples, rec),
        provenance=_provenance(journal.get(keys.PROVENANCE_KEY)),
        load_profile=_load_profile(journal),
    )


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def window_seconds(text: Any) -> float | None:
    """A Prometheus duration ("30s", "1m") or a series name ending in one ("p95_ms_10s") in seconds."""
    match = re.search(r"(\d+(?:\.\d+)?)(ms|s|m|h)$", str(text or ""))
    if not match:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]
    return float(match.group(1)) * scale


def _declared_probe(hypothesis: Any, name: str) -> dict[str, Any]:
    for probe in (hypothesis or {}).get("probes") or [] if isinstance(hypothesis, dict) else []:
        if isinstance(probe, dict) and probe.get("name") == name:
            return probe
    return {}


def _steady(block: Any, hypothesis: Any) -> SteadyState | None:
    if not isinstance(block, dict):
        return None
    probes = []
    for probe in block.get("probes") or []:
        if not isinstance(probe, dict):
            continue
        activity = probe.get("activity") or {}
        met = probe.get("tolerance_met")
        succeeded = probe.get("status") == "succeeded"
        value = probe.get("output") if succeeded else probe.get("exception")
        if isinstance(value, list) and not succeeded:  # an exception is a list of traceback lines
            value = (value[-1] if value else "").strip()
        provider = activity.get("provider") if isinstance(activity.get("provider"), dict) else {}
        args = provider.get("arguments") if isinstance(provider.get("arguments"), dict) else {}
        declared = _declared_probe(hypothesis, str(activity.get("name")))
        tolerance = activity.get("tolerance", declared.get("tolerance"))
        probes.append(ProbeResult(
            name=str(activity.get("name", "?")),
            value=compact(round_value(value)),
            tolerance=tolerance_text(tolerance),
            met=met if isinstance(met, bool) else None,
            status=str(probe.get("status", "?")),
            func=str(provider.get("func") or ""),
            window_s=window_seconds(args.get("window")),
            quantile=_number(args.get("quantile")),
            start=parse_time(probe.get("start")),
            end=parse_time(probe.get("end")),
            raw_value=probe.get("output") if succeeded else None,
            raw_tolerance=tolerance,
        ))
    met = block.get("steady_state_met")
    return SteadyState(met=met if isinstance(met, bool) else None, probes=probes)


def _activity(entry: dict[str, Any]) -> Activity:
    activity = entry.get("activity") or {}
    if entry.get("status") == "succeeded" and keys.activity_func(entry) in keys.QDISC_PROBE_FUNCS:
        output = qdisc_text(entry.get("output"))
    elif entry.get("status") == "succeeded":
        output = compact(_ordered(entry.get("output")), 140)
    else:
        exc = entry.get("exception") or []
        output = compact(exc[-1].strip() if isinstance(exc, list) and exc else exc) if exc else ""
    return Activity(
        name=str(activity.get("name", "?")),
        # chaoslib records no status for an activity the run's interruption cut short
        status=str(entry.get("status", "cut short by the interruption")),
        start=parse_time(entry.get("start")),
        end=parse_time(entry.get("end")),
        output=output,
        type=keys.activity_type(entry),
        func=keys.activity_func(entry),
        raw_output=entry.get("output"),
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
            backend=_backend(output, params if isinstance(params, dict) else {}),
            target=target,
            target_detail=detail,
            parameters=params if isinstance(params, dict) else {},
            injected_at=parse_time(output.get("injected_at")) or parse_time(entry.get("end")),
            expires_at=parse_time(output.get("expires_at")),
            action=str((entry.get("activity") or {}).get("name", "?")),
        ))
    return faults


def _backend(output: dict[str, Any], params: dict[str, Any]) -> str:
    """The backend that did the work: a remote fault's own backend and where it ran."""
    backend = str(output.get("backend", "?"))
    if params.get("remote") and params.get("remote_backend"):
        return (f"{params['remote_backend']} on {params.get('ssh_host')}:{params.get('ssh_port')} "
                f"(remote, via {backend})")
    return backend


def qdisc_text(output: Any) -> str:
    """A ``netem_qdisc_stats`` output in one line: each qdisc with its tc -s counters."""
    if not isinstance(output, dict) or not isinstance(output.get("qdiscs"), list):
        return compact(output)
    parts = []
    for q in output["qdiscs"]:
        if not isinstance(q, dict):
            continue
        options = q.get("options") if isinstance(q.get("options"), dict) else {}
        delay = options.get("delay") if isinstance(options.get("delay"), dict) else {}
        shown = ""
        if q.get("kind") == "netem":
            shown = (f" delay {delay.get('delay', 0) * 1000:g} ms ± {delay.get('jitter', 0) * 1000:g} ms"
                     if delay else "")
        parts.append(f"{q.get('kind')} on {q.get('device')}{shown}: sent {q.get('packets')} pkt / "
                     f"{q.get('bytes')} B, dropped {q.get('drops')}, overlimits {q.get('overlimits')}, "
                     f"requeues {q.get('requeues')}, backlog {q.get('backlog')} B")
    where = f"{output.get('host')} netns {output.get('netns')}"
    netem = "netem present" if output.get("netem") else "no netem qdisc"
    return f"{netem} ({where}): " + ("; ".join(parts) or output.get("reason") or "no qdisc")


def _target(value: Any) -> tuple[str, str]:
    """A fault target as (service name, details): targets may be a name or a dict (proxy route)."""
    if isinstance(value, dict):
        name = value.get("service") or value.get("name") or value.get("route") or "?"
        rest = {k: v for k, v in value.items() if k not in ("service", "name")}
        return str(name), compact(rest, None) if rest else ""
    return str(value), ""


def _series(
    journal: dict[str, Any], rec: dict[str, Any], kind: str, names: tuple[str, ...], label: str, unit: str,
    direction: str,
) -> Series | None:
    series = keys.timeline_series(rec)
    for name in names:
        raw = series.get(name)
        if not isinstance(raw, list):
            continue
        times, values = _columns(raw)
        return Series(name=name, label=label, unit=unit, times=times, values=values,
                      objective=keys.objective(journal, rec, kind, name), direction=direction,
                      window_s=window_seconds(name))
    return None


def _columns(raw: list[Any]) -> tuple[Sequence[float], Sequence[float]]:
    """``[[t, v], ...]`` as (times, values) sorted by time; a null or unparsable value is a gap.
    A long run's timeline holds hundreds of thousands of samples: the common case (every
    sample a pair of finite floats, a positive time, times strictly increasing: what the
    timeline writes) is checked and split by C-level passes (map, set, sum), no Python
    loop per sample; anything else takes the general loop, which gives the same answer for
    that common case."""
    try:
        if raw and set(map(len, raw)) == {2}:  # TypeError: an item without a length
            times, values = list(map(itemgetter(0), raw)), list(map(itemgetter(1), raw))  # KeyError: a dict
            # strictly increasing (NaN compares false) from a positive first to a finite last time
            if (set(map(type, times)) == {float} and set(map(type, values)) == {float}
                    and all(map(lt, times, islice(times, 1, None)))
                    and times[0] > 0 and math.isfinite(times[-1]) and math.isfinite(sum(values))):
                return times, values
    except (TypeError, ValueError, KeyError):
        pass
    points = _points_general(raw)
    return [t for t, _ in points], [v for _, v in points]


def _points(raw: list[Any]) -> list[tuple[float, float]]:
    """``[[t, v], ...]`` as sorted (unix seconds, float) pairs (:func:`_columns` as pairs)."""
    return list(zip(*_columns(raw), strict=True))


def _points_general(raw: list[Any]) -> list[tuple[float, float]]:
    points = []
    append, isfinite = points.append, math.isfinite
    for item in raw:
        if type(item) is not list or len(item) != 2:  # noqa: E721 - exact JSON types, fast
            if isinstance(item, tuple) and len(item) == 2:
                item = list(item)
            else:
                continue
        t, v = item
        kind_t, kind_v = type(t), type(v)
        if kind_t is float or kind_t is int:
            if not (t > 0 and isfinite(t)):
                continue
        else:
            t = parse_time(t)
            if t is None:
                continue
        if kind_v is str:
            try:
                v = float(v)  # Prometheus returns sample values as strings
            except ValueError:
                continue
        elif kind_v is not float and kind_v is not int:
            continue  # None (Prometheus had no value: a gap), bools, anything else
        if isfinite(v):
            append((float(t), float(v)))
    points.sort()
    return points


def _guard_samples(rec: dict[str, Any]) -> list[GuardSample]:
    out = []
    for raw in keys.guard_samples(rec):
        at = parse_time(raw.get("at"))
        if at is None:
            continue
        value = _number(raw.get("value"))
        out.append(GuardSample(str(raw.get("guard") or "?"), at, value, str(raw.get("threshold") or ""),
                               bool(raw.get("ok"))))
    return sorted(out, key=lambda s: s.at)


def _guard_thresholds(journal: dict[str, Any], samples: list[GuardSample],
                      rec: dict[str, Any]) -> dict[str, str]:
    """Each chaoscheckout guard's abort threshold as it judged: from its samples or breach record,
    else from the safeguard's arguments (resolved with the provenance configuration)."""
    found: dict[str, str] = {}
    for sample in samples:
        if sample.value is not None and sample.threshold:
            found.setdefault(sample.guard, sample.threshold)
    breach = keys.abort_record(rec).get("first_breach")
    if isinstance(breach, dict) and breach.get("guard") and breach.get("threshold"):
        found.setdefault(str(breach["guard"]), str(breach["threshold"]))
    provenance = journal.get(keys.PROVENANCE_KEY)
    configuration = provenance.get("configuration") if isinstance(provenance, dict) else None
    for func, args in keys.guard_declarations(journal.get("experiment") or {}):
        if func in found:
            continue
        text = keys.guard_threshold_from_arguments(func, args, configuration or {})
        if text:
            found[func] = text
    return found


def _load_profile(journal: dict[str, Any]) -> LoadProfileFacts | None:
    load = keys.load_record(journal)
    k6_rate = _number(load.get("rate"))
    raw = keys.load_profile(journal)
    if raw is None:
        return LoadProfileFacts("baseline", k6_rate, False, k6_rate) if load else None
    capacity = raw.get("capacity") if isinstance(raw.get("capacity"), dict) else {}
    host = capacity.get("host") if isinstance(capacity.get("host"), dict) else {}
    build = capacity.get("build") if isinstance(capacity.get("build"), dict) else {}
    return LoadProfileFacts(
        name=str(raw.get("name") or "?"), rate=_number(raw.get("rate")), recorded=True, k6_rate=k6_rate,
        start_rate=_number(raw.get("start_rate")), ramp_s=_number(raw.get("ramp_s")),
        share=_number(raw.get("share")), capacity_per_s=_number(capacity.get("capacity_per_s")),
        capacity_measured_at=str(capacity.get("measured_at") or ""),
        capacity_host=str(host.get("name") or ""), capacity_build=str(build.get("system_build") or ""),
        capacity_file=str(raw.get("capacity_file") or ""),
        capacity_sha256=str(raw.get("capacity_sha256") or ""), raw=raw)


def _provenance(raw: Any) -> Provenance | None:
    if not isinstance(raw, dict):
        return None

    def mapping(key: str) -> dict[str, Any]:
        value = raw.get(key)
        return value if isinstance(value, dict) else {}

    return Provenance(
        experiment_digest=str(raw.get("experiment_digest") or ""),
        system_build=str(raw.get("system_build") or ""),
        system_label=str(raw.get("system_label") or ""),
        tool=mapping("tool"),
        services=mapping("services"),
        configuration=mapping("configuration"),
        load=mapping("load"),
        k6=str(raw.get("k6") or ""),
        prometheus=mapping("prometheus"),
        host=mapping("host"),
        runtime=mapping("runtime"),
        changed_during_run=mapping("services_at_end"),
        error=str(raw.get("error") or ""),
    )
