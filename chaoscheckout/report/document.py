"""The experiment log as typed blocks (:mod:`blocks`), rendered by the markdown and html modules.

Near the top: findings, runs at a glance, and baseline and peak verdicts side by side per
hypothesis (:mod:`profiles`). Per run, in this order: hypothesis, blast radius, abort
condition, what was tested (build, settings, load profile, experiment digest), verdict,
consistency warnings, steady state before/after, faults injected (and when reverted),
safeguard, rollbacks, time to detect and recover, k6 summary, SLI chart. Then the summary
table and the history.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chaoscheckout.report import keys
from chaoscheckout.report.analysis import (
    HistoryEntry,
    breach_text,
    breach_to_revert_s,
    effect_text,
    fault_window,
    guard_threshold_text,
    guard_value_text,
    history,
    probe_figure,
)
from chaoscheckout.report.blocks import (
    Block,
    Chart,
    Findings,
    GlanceRow,
    Heading,
    KeyValues,
    Paragraph,
    RunsAtAGlance,
    SummaryRow,
    SummaryTable,
    Table,
    Verdict,
    Warnings,
)
from chaoscheckout.report.model import Fault, Run, Series, Skipped, compact, parse_time
from chaoscheckout.report.profiles import HEADERS as PROFILE_HEADERS
from chaoscheckout.report.profiles import NOTE as PROFILE_NOTE
from chaoscheckout.report.profiles import ProfileRow, side_by_side

__all__ = ["Document", "build_document", "fmt_time", "build_text"]

NOT_DECLARED = "not declared (the experiment has no chaoscheckout extension entry)"
SUMMARY_NOTE = ("Before and after: the steady-state probes' own values (✗: outside the probe's tolerance; "
                "not run: the probe was not evaluated). During: the worst sample of this run inside the "
                "fault window, from the SLI timeline and the availability guard (timeline samples whose "
                "window reaches back before the run's start measure the previous run's tail and are not "
                "counted). "
                "System tested: the build and settings the provenance control read from the services. "
                "Fault evidence: requests a latency fault really slowed (latency_fault_effect), or how fast "
                "a safeguard's first breach led to the revert.")
CHECKOUT_BEHAVIOUR = ("price_cache", "catalog_timeout_s", "order_first", "payments_timeout_s",
                      "payments_retries", "budget_s")


@dataclass
class Document:
    title: str
    generated_at: str
    runs: list[Run]
    skipped: list[Skipped]
    blocks: list[Block]
    summary_rows: list[SummaryRow]
    histories: list[HistoryEntry]
    findings: list[tuple[str, str]] = field(default_factory=list)  # (FINDINGS.md path, its text)
    dead_runs: list[dict[str, Any]] = field(default_factory=list)  # the state dir's dead-run record
    profile_rows: list[ProfileRow] = field(default_factory=list)  # baseline and peak side by side

    def anchors(self) -> dict[str, str]:
        """Journal file names (and run ids) → their run section ids, for links from the findings."""
        found: dict[str, str] = {}
        for run in self.runs:
            name = run.path.replace("\\", "/").rsplit("/", 1)[-1]
            found[name] = run.run_id
            found.setdefault(name.removesuffix(".json"), run.run_id)
            found.setdefault(run.run_id, run.run_id)
        return found


def fmt_time(ts: float | None, with_date: bool = False) -> str:
    """UTC time with millisecond precision ("16:41:48.123"; with the date: "2026-11-27 16:41:48.123 UTC")."""
    if ts is None:
        return "—"
    moment = datetime.fromtimestamp(ts, UTC)
    text = moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return f"{moment.strftime('%Y-%m-%d')} {text} UTC" if with_date else text


def build_text(run: Run) -> str:
    """The system a run tested, in one line ("checkout first-version; commit 3e286c8 … [build 70f1…]")."""
    prov = run.provenance
    if prov is None:
        return "not recorded (no provenance in this journal)"
    if prov.error:
        return f"not recorded (provenance failed: {prov.error})"
    return f"{prov.system_label or 'unknown'} [build {prov.system_build or '?'}]"


def build_document(runs: list[Run], skipped: list[Skipped], title: str = "Experiment log",
                   findings: list[tuple[str, str]] | None = None,
                   dead_runs: list[dict[str, Any]] | None = None) -> Document:
    """The log's blocks. findings: (path, text) of each FINDINGS.md, shown verbatim near the top;
    dead_runs: records of faults reverted for runs that died without a journal."""
    runs = sorted(runs, key=lambda r: (r.start or 0.0, r.run_id))
    generated = fmt_time(datetime.now(UTC).timestamp(), with_date=True)
    blocks: list[Block] = [Heading(title, 1, "top"),
                           Paragraph(f"Generated {generated} by chaos report from {len(runs)} journal(s).")]
    counts = Counter(r.verdict for r in runs)
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    blocks.append(Paragraph(f"{len(runs)} run(s): {tally}. {len(skipped)} file(s) skipped. "
                            "Summary table and history at the end."))
    flagged = [(r, p) for r in runs for p in r.problems]
    if flagged:
        blocks.append(Warnings("Journals that contradict themselves",
                               [f"{r.run_id}: {p}" for r, p in flagged]))
    for source, text in findings or []:
        blocks.append(Heading("Findings", 2, "findings"))
        if len(findings or []) > 1:
            blocks.append(Paragraph(f"From {source}."))
        blocks.append(Findings(source, text))
    if runs:
        blocks.append(Heading("Runs at a glance", 2, "at-a-glance"))
        blocks.append(RunsAtAGlance([GlanceRow(r.run_id, r.title, r.verdict, r.reason) for r in runs]))
    profile_rows = side_by_side(runs)
    if profile_rows:
        blocks.append(Heading("Baseline and peak load, side by side", 2, "profiles"))
        blocks.append(Table(PROFILE_HEADERS, [row.cells_text() for row in profile_rows]))
        blocks.append(Paragraph(PROFILE_NOTE))
    if dead_runs:
        blocks.extend(_dead_run_blocks(dead_runs))
    if skipped:
        blocks.append(Heading("Skipped inputs", 2, "skipped"))
        blocks.append(Table(["file", "reason"], [[s.path, s.reason] for s in skipped]))
    for run in runs:
        blocks.extend(_run_blocks(run))
    summary = [_summary_row(r) for r in runs]
    blocks.append(Heading("Summary", 2, "summary"))
    blocks.append(SummaryTable(summary))
    blocks.append(Paragraph(SUMMARY_NOTE))
    entries = history(runs)
    blocks.append(Heading("History of experiments run several times", 2, "history"))
    if entries:
        blocks.append(Paragraph("Grouped by experiment definition (digest of the experiment and its resolved "
                                "configuration) and system build (the services' code and behaviour "
                                "settings): a change of either starts a new row."))
        blocks.append(Table(["experiment", "definition", "system tested", "runs, oldest first"],
                            [[e.title, e.experiment_digest, f"{e.system_label} [build {e.system_build}]",
                              e.line()] for e in entries]))
        for title in dict.fromkeys(e.title for e in entries):
            actions = [_result_text(r.result) for e in entries if e.title == title
                       for r in e.runs if r.result]
            if actions:
                blocks.append(Paragraph(f"{title}: {' / '.join(actions)}"))
    else:
        blocks.append(Paragraph("No experiment has been run more than once in these journals."))
    return Document(title, generated, runs, skipped, blocks, summary, entries, list(findings or []),
                    list(dead_runs or []), profile_rows)


DEAD_RUN_NOTE = ("A run killed (SIGKILL, OOM, a CI timeout) or frozen writes no journal. The reaper's "
                 "dead-man switch reverted these faults for it and recorded each in the state dir's "
                 "dead-run record: the run is accounted for, but it has no verdict.")


def _dead_run_blocks(records: list[dict[str, Any]]) -> list[Block]:
    rows = []
    for r in records:
        if "fault_id" not in r:
            rows.append(["?", "?", "?", "?", str(r.get("error", "unreadable record")), "", "", ""])
            continue
        seen, reverted = r.get("owner_last_seen_at"), r.get("reverted_at")
        numbers = isinstance(seen, int | float) and isinstance(reverted, int | float)
        lag = f"{reverted - seen:.3f} s" if numbers else ""
        rows.append([str(r.get("run_id") or "(no run: a library caller)"), str(r["fault_id"]),
                     f"{r.get('kind', '?')} on {r.get('service', '?')}", str(r.get("cause", "")),
                     _when(seen), _when(reverted), lag,
                     "yes" if r.get("verified") else f"no ({r.get('error') or 'not verified'})"])
    return [Heading("Runs that died without a journal", 2, "dead-runs"), Paragraph(DEAD_RUN_NOTE),
            Table(["run", "fault", "what", "cause", "owner last seen (UTC)", "reverted (UTC)",
                   "last seen → reverted", "effect gone (verified)"], rows)]


def _when(value: Any) -> str:
    return fmt_time(value, with_date=True) if isinstance(value, int | float) else ""


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _rel(run: Run, ts: float | None) -> str:
    if ts is None:
        return "—"
    offset = f" (t+{ts - run.start:.3f} s)" if run.start else ""
    return fmt_time(ts) + offset


def _result_text(result: Any) -> str:
    if isinstance(result, dict):
        return "; ".join(f"{k}: {compact(v, 200)}" for k, v in result.items())
    return compact(result, 300)


def _tested_rows(run: Run) -> list[tuple[str, str]]:
    prov = run.provenance
    if prov is None or prov.error:
        return [("System tested", build_text(run))]
    rows = [("System tested", build_text(run))]
    checkout = prov.services.get("checkout")
    if isinstance(checkout, dict) and checkout.get("status") == "known":
        settings = checkout.get("settings") or {}
        shown = ", ".join(f"{k}={settings[k]}" for k in CHECKOUT_BEHAVIOUR if k in settings)
        profile = checkout.get("profile") or "custom"
        rows.append(("Checkout settings (from its /version)", f"{profile}: {shown}"))
    unknown = [n for n, e in prov.services.items()
               if not (isinstance(e, dict) and e.get("status") == "known")]
    if unknown:
        rows.append(("Services with unknown build", ", ".join(sorted(unknown))))
    if prov.changed_during_run:
        rows.append(("Changed during the run", ", ".join(sorted(prov.changed_during_run))))
    tool = prov.tool
    commit = str(tool.get("commit") or "")[:12]
    dirty = " (dirty tree)" if tool.get("dirty") else ""
    rows.append(("Tool", f"chaoscheckout {tool.get('chaoscheckout', '?')}"
                         + (f" at {commit}{dirty}" if commit else " (not a git checkout)")
                         + f"; chaostoolkit {tool.get('chaostoolkit', '?')}, "
                           f"lib {tool.get('chaostoolkit-lib', '?')}, "
                           f"addons {tool.get('chaostoolkit-addons', '?')}; "
                           f"Python {tool.get('python', '?')}"))
    prom = prov.prometheus.get("version") or prov.prometheus.get("status") or "?"
    rate = f"k6 rate {prov.load.get('rate', '?')}/s"
    profile = run.load_profile
    if profile is not None and profile.recorded:
        rate = f"{profile.name} profile, k6 rate {'?' if profile.rate is None else f'{profile.rate:g}'}/s"
        if profile.ramp_s and profile.start_rate is not None:
            rate += f" after a {profile.ramp_s:g} s ramp from {profile.start_rate:g}/s"
        if profile.capacity_per_s is not None and profile.share is not None:
            rate += (f" = {profile.share:g} x capacity {profile.capacity_per_s:g}/s (measured "
                     f"{profile.capacity_measured_at} on {profile.capacity_host or '?'}, build "
                     f"{profile.capacity_build or '?'})")
    rows.append(("Load and observation", f"{rate} ({prov.k6 or 'k6 unknown'}); "
                                         f"Prometheus {prom}; runtime {prov.runtime.get('name', '?')} on "
                                         f"{prov.host.get('name', '?')}"))
    load = prov.host.get("loadavg")
    if isinstance(load, list) and load:
        rows.append(("Host load average at start", f"{load[0]} (1 min), {prov.host.get('cpus', '?')} CPUs"))
    rows.append(("Experiment digest", prov.experiment_digest[:16] or "?"))
    return rows


def _run_blocks(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading(f"{run.title} — {fmt_time(run.start, with_date=True)}", 2, run.run_id)]
    declared = run.has_extension
    blocks.append(KeyValues([
        ("Hypothesis", (run.hypothesis or "not stated") if declared else NOT_DECLARED),
        ("Blast radius", (run.blast_radius or "not stated") if declared else NOT_DECLARED),
        ("Abort condition", (run.abort_condition or "not stated") if declared else NOT_DECLARED),
        *_tested_rows(run),
    ]))
    blocks.append(Verdict(run.verdict, run.reason))
    if run.problems:
        blocks.append(Warnings("This journal contradicts itself", list(run.problems)))
    blocks.append(Heading("Steady state", 3))
    rows = []
    for phase, state in (("before", run.before), ("after", run.after)):
        if state is None:
            rows.append([phase, "—", "not run", "—", "—"])
            continue
        for probe in state.probes:
            met = {True: "yes", False: "NO", None: "?"}[probe.derived_met]
            if probe.met is not None and probe.derived_met is not None and probe.met != probe.derived_met:
                met += f" (journal says {'yes' if probe.met else 'no'})"
            rows.append([phase, probe.name, probe.value, probe.tolerance, met])
        rows += [[phase, name, "not run", "—", "—"] for name in state.not_run]
    blocks.append(Table(["phase", "probe", "value", "tolerance", "within"], rows))
    blocks.append(Heading("Fault injected", 3))
    if run.faults:
        headers = ["kind", "backend", "target", "parameters", "injected", "reverted", "reverted by"]
        blocks.append(Table(headers, [_fault_row(run, f) for f in run.faults]))
    else:
        blocks.append(Paragraph("No fault action output in this journal (no fault injected)."))
    evidence = [(f"Traffic really slowed ({f.target})", effect_text(f)) for f in run.faults if f.effect]
    evidence += [(f"Traffic really slowed ({f.target})", "not measured (no latency_fault_effect probe or "
                  "revert effect in this journal): no evidence the fault bit")
                 for f in run.faults if f.kind == "latency" and not f.effect]
    evidence += _method_probe_rows(run)
    blocks.append(KeyValues(evidence + _timing_rows(run)))
    blocks.append(Heading("Rollbacks", 3))
    if run.rollbacks:
        blocks.append(Table(["activity", "status", "at", "output"],
                            [[a.name, a.status, _rel(run, a.end), a.output] for a in run.rollbacks]))
    else:
        blocks.append(Paragraph("No rollbacks ran" + (" (an interrupted run skips them under the default "
                                                      "rollback strategy)." if run.aborted_at else ".")))
    if run.safety_reverts:
        blocks.append(Paragraph("Safety control reverted at experiment end: "
                                + "; ".join(_revert_text(run, r) for r in run.safety_reverts)))
    blocks.append(Heading("Load (k6)", 3))
    if run.k6:
        blocks.append(KeyValues(_k6_rows(run.k6)))
    else:
        blocks.append(Paragraph("No k6 summary in this journal."))
    if run.result:
        blocks.append(KeyValues([("Result noted in the experiment", _result_text(run.result))]))
    blocks.append(Chart(run))
    return blocks


def _method_probe_rows(run: Run) -> list[tuple[str, str]]:
    """Evidence probes of the method (counters read in the fault window), with their values."""
    rows = []
    for activity in run.run_activities:
        if activity.type == keys.PROBE_TYPE and activity.func not in keys.EFFECT_PROBE_FUNCS:
            rows.append((f"Probe {activity.name} (at {_rel(run, activity.end)})",
                         activity.output if activity.status == "succeeded" else f"{activity.status}: "
                                                                                  f"{activity.output}"))
    return rows


K6_GROUPS = (
    ("Traffic", ("requests", "rate_per_s", "failed_rate", "failed_requests", "dropped_iterations")),
    ("Latency", ("p95_ms", "p99_ms", "max_ms")),
    ("Thresholds", ("thresholds_ok", "thresholds")),
    ("k6 run", ("exit_code", "exit_meaning", "stopped_by", "rate", "duration_s", "error")),
)


def _k6_rows(k6: dict[str, Any]) -> list[tuple[str, str]]:
    """The k6 record grouped into a few readable lines; unknown keys go to "Other"."""
    rows, used = [], set()
    for label, names in K6_GROUPS:
        parts = [f"{name} {_number_text(k6[name])}" for name in names if k6.get(name) is not None]
        used.update(names)
        if parts:
            rows.append((label, " · ".join(parts)))
    rest = [f"{k} {_number_text(v)}" for k, v in k6.items() if k not in used and v is not None]
    if rest:
        rows.append(("Other", " · ".join(rest)))
    return rows


def _number_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return compact(value, 120)


def _fault_row(run: Run, f: Fault) -> list[str]:
    reverted = (_rel(run, f.reverted_at) if f.reverted_at
                else f"not recorded (lease expires {fmt_time(f.expires_at)})")
    target = f"{f.target} ({f.target_detail})" if f.target_detail else f.target
    return [f.kind, f.backend, target, compact(f.parameters, None), _rel(run, f.injected_at), reverted,
            f.reverted_by or "—"]


def _timing_rows(run: Run) -> list[tuple[str, str]]:
    window = fault_window(run)
    unreverted = any(f.reverted_at is None for f in run.faults)
    note = " (no revert recorded: ends at lease expiry)" if unreverted else ""
    rows = [("Fault window", f"{_rel(run, window[0])} → {_rel(run, window[1])} "
                             f"({window[1] - window[0]:.3f} s){note}" if window else "none")]
    if run.aborted_at is not None:
        after = f", {run.aborted_at - window[0]:.3f} s after injection" if window else ""
        reverts = [f.reverted_at for f in run.faults if f.reverted_at is not None]
        if reverts and len(reverts) == len(run.faults):
            lag = max(reverts) - run.aborted_at
            side = "after" if lag >= 0 else "before"
            after += f"; fault(s) reverted {abs(lag):.3f} s {side} the interruption"
        rows.append(("Safeguard fired", f"yes: run {run.status} at {_rel(run, run.aborted_at)}{after}"))
        breach = breach_text(run)
        if breach:
            breaches = run.abort.get("breaches")
            more = f" ({breaches} breaches in all)" if isinstance(breaches, int) and breaches > 1 else ""
            rows.append(("First guard breach", breach + more))
            to_revert = breach_to_revert_s(run)
            rows.append(("First breach → fault reverted",
                         f"{to_revert:.3f} s" if to_revert is not None else "not recorded"))
        else:
            rows.append(("First guard breach", "not recorded in the journal (no chaoscheckout_safety.abort "
                                               "record: a safeguard probe failed, or another control stopped "
                                               "the run)"))
    else:
        rows.append(("Safeguard fired", "no"))
    if window:
        detect = (f"{run.time_to_detect_s:.3f} s (first SLI sample of this run outside its SLO after "
                  "injection)"
                  if run.time_to_detect_s is not None else "no SLI sample of this run outside its SLO")
        last_sample = max((s.points[-1][0] for s in (run.availability, run.latency) if s and s.points),
                          default=None)
        if run.time_to_recover_s is not None:
            recover = f"{run.time_to_recover_s:.3f} s (revert → first sample with every SLI within SLO)"
        elif run.time_to_detect_s is None:
            recover = "n/a (no breach)"
        elif last_sample is not None and last_sample < window[1]:
            recover = "not measured: the recorded timeline ends before the revert"
        else:
            recover = "not recovered within the recorded timeline"
        rows += [("Time to detect", detect), ("Time to recover", recover)]
        worst = [_worst_text(s, run.sli_phases.get(s.name, {}).get("during"))
                 for s in (run.availability, run.latency) if s is not None]
        worst += [f"{guard} {guard_value_text(guard, value)} (abort threshold "
                  f"{guard_threshold_text(guard, run.guard_thresholds.get(guard))})"
                  for guard, value in sorted(run.guard_worst.items())]
        if any(worst):
            rows.append(("Worst during the fault (timeline and guards)", "; ".join(w for w in worst if w)))
    money = [s for s in run.guard_samples if s.guard == keys.MONEY_GUARD and s.value is not None]
    if money:
        worst_money = max(s.value for s in money if s.value is not None)
        rows.append(("Money safety (money_guard samples)",
                     f"{len(money)} samples from {_rel(run, money[0].at)} to {_rel(run, money[-1].at)}; "
                     f"most charges without an order in one sample: {worst_money:g}"))
    return rows


def _worst_text(series: Series, value: float | None) -> str:
    if value is None:
        return ""
    factor = 100.0 if series.unit == "%" else 1.0
    verdict = "within" if series.good(value) else "OUTSIDE"
    return f"{series.label} {value * factor:.1f} {series.unit} ({verdict} SLO)"


def _revert_text(run: Run, revert: dict[str, Any]) -> str:
    what = " ".join(str(revert[k]) for k in ("kind", "service", "target", "fault_id") if revert.get(k)) or "?"
    if revert.get("error"):
        return f"{what}: FAILED to revert ({compact(revert['error'], 120)})"
    when = next((parse_time(revert.get(k)) for k in ("reverted_at", "at", "time") if revert.get(k)), None)
    return f"{what} at {_rel(run, when)}" if when else compact(revert, 160)


def _figure_text(run: Run, func: str, series: Series | None, factor: float, unit: str) -> str:
    parts = []
    for phase, state in (("before", run.before), ("after", run.after)):
        value, met, note = probe_figure(state, func)
        parts.append(note if value is None else f"{value * factor:.{1 if factor == 100 else 1}f}"
                     + (" ✗" if met is False else ""))
        if phase == "before":
            during = run.sli_phases.get(series.name, {}).get("during") if series is not None else None
            mark = " ✗" if series is not None and during is not None and not series.good(during) else ""
            parts.append("—" if during is None else f"{during * factor:.1f}{mark}")
    return " / ".join(parts) + f" {unit}"


def _summary_row(run: Run) -> SummaryRow:
    return SummaryRow(
        title=run.title,
        run_id=run.run_id,
        date=fmt_time(run.start, with_date=True).replace(" UTC", ""),
        verdict=run.verdict,
        availability=_figure_text(run, keys.AVAILABILITY_PROBE, run.availability, 100.0, "%"),
        latency=_figure_text(run, keys.LATENCY_PROBE, run.latency, 1.0, "ms"),
        build=build_text(run),
        evidence=_evidence_cell(run),
    )


def _evidence_cell(run: Run) -> str:
    parts = [f"traffic really slowed: {effect_text(f, short=True)}" for f in run.faults if f.effect]
    parts += ["latency effect not measured" for f in run.faults if f.kind == "latency" and not f.effect]
    to_revert = breach_to_revert_s(run)
    breach = run.abort.get("first_breach")
    if isinstance(breach, dict):
        guard = breach.get("guard", "guard")
        parts.append(f"{guard}: breach → revert {to_revert:.3f} s" if to_revert is not None
                     else f"{guard} fired")
    elif run.aborted_at is not None:
        parts.append("stopped; no guard breach recorded")
    return "; ".join(parts) or "—"
