"""The experiment log as format-neutral blocks, rendered by the markdown and html modules.

Per run, in this order: hypothesis, blast radius, abort condition, verdict, steady state
before/after, faults injected (and when reverted), safeguard, rollbacks, time to detect and
recover, k6 summary, SLI chart. Then the summary table and the history.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chaoscheckout.report.analysis import (
    HistoryEntry,
    breach_text,
    breach_to_revert_s,
    effect_text,
    fault_window,
    history,
)
from chaoscheckout.report.model import Fault, Run, Series, Skipped, compact, parse_time

__all__ = ["Block", "Document", "build_document", "fmt_time"]

NOT_DECLARED = "not declared (the experiment has no chaoscheckout extension entry)"


@dataclass
class Block:
    kind: str  # "h" | "p" | "kv" | "table" | "verdict" | "chart" | "findings" (Markdown source)
    text: str = ""
    level: int = 2
    anchor: str = ""
    rows: list[list[str]] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    run: Run | None = None


@dataclass
class Document:
    title: str
    generated_at: str
    runs: list[Run]
    skipped: list[Skipped]
    blocks: list[Block]
    summary_rows: list[list[str]]
    histories: list[HistoryEntry]
    findings: list[tuple[str, str]] = field(default_factory=list)  # (FINDINGS.md path, its text)

    def anchors(self) -> dict[str, str]:
        """Journal file names (and run ids) → their run section ids, for links from the findings."""
        found: dict[str, str] = {}
        for run in self.runs:
            name = run.path.replace("\\", "/").rsplit("/", 1)[-1]
            found[name] = run.run_id
            found.setdefault(name.removesuffix(".json"), run.run_id)
            found.setdefault(run.run_id, run.run_id)
        return found


SUMMARY_HEADERS = ["experiment", "run", "date (UTC)", "verdict", "availability before / worst during / after",
                   "p95 before / worst during / after", "fault evidence"]
SUMMARY_NOTE = ("Before and after: mean over the timeline before the fault and after its revert; "
                "during: the worst sample in the fault window; ✗: outside the SLO. Fault evidence: "
                "requests a latency fault really slowed (latency_fault_effect), or how fast a "
                "safeguard's first breach led to the revert.")


def fmt_time(ts: float | None, with_date: bool = False) -> str:
    if ts is None:
        return "—"
    moment = datetime.fromtimestamp(ts, UTC)
    if with_date:
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 100000}"


def build_document(runs: list[Run], skipped: list[Skipped], title: str = "Experiment log",
                   findings: list[tuple[str, str]] | None = None) -> Document:
    """The log's blocks. findings: (path, text) of each FINDINGS.md, shown verbatim near the top."""
    runs = sorted(runs, key=lambda r: (r.start or 0.0, r.run_id))
    generated = fmt_time(datetime.now(UTC).timestamp(), with_date=True)
    blocks: list[Block] = [Block("h", title, level=1, anchor="top"),
                           Block("p", f"Generated {generated} by chaos report from {len(runs)} journal(s).")]
    counts = Counter(r.verdict for r in runs)
    tally = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    blocks.append(Block("p", f"{len(runs)} run(s): {tally}. {len(skipped)} file(s) skipped. "
                             "Summary table and history at the end."))
    for source, text in findings or []:
        blocks.append(Block("h", "Findings", level=2, anchor="findings"))
        if len(findings or []) > 1:
            blocks.append(Block("p", f"From {source}."))
        blocks.append(Block("findings", text, anchor=source))
    if runs:
        blocks.append(Block("h", "Runs at a glance", level=2, anchor="at-a-glance"))
        blocks.append(Block("table", headers=["run", "experiment", "verdict", "why"],
                            rows=[[r.run_id, r.title, r.verdict, r.reason] for r in runs]))
    if skipped:
        blocks.append(Block("h", "Skipped inputs", level=2, anchor="skipped"))
        blocks.append(Block("table", headers=["file", "reason"], rows=[[s.path, s.reason] for s in skipped]))
    for run in runs:
        blocks.extend(_run_blocks(run))
    summary = [_summary_row(r) for r in runs]
    blocks.append(Block("h", "Summary", level=2, anchor="summary"))
    blocks.append(Block("table", headers=SUMMARY_HEADERS, rows=summary))
    blocks.append(Block("p", SUMMARY_NOTE))
    entries = history(runs)
    blocks.append(Block("h", "History of experiments run several times", level=2, anchor="history"))
    if entries:
        blocks.append(Block("table", headers=["experiment", "runs, oldest first"],
                            rows=[[e.title, e.line()] for e in entries]))
        for entry in entries:
            actions = [_result_text(r.result) for r in entry.runs if r.result]
            if actions:
                blocks.append(Block("p", f"{entry.title}: {' / '.join(actions)}"))
    else:
        blocks.append(Block("p", "No experiment has been run more than once in these journals."))
    return Document(title, generated, runs, skipped, blocks, summary, entries, list(findings or []))


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _rel(run: Run, ts: float | None) -> str:
    if ts is None:
        return "—"
    offset = f" (t+{ts - run.start:.1f} s)" if run.start else ""
    return fmt_time(ts) + offset


def _result_text(result: Any) -> str:
    if isinstance(result, dict):
        return "; ".join(f"{k}: {compact(v, 200)}" for k, v in result.items())
    return compact(result, 300)


def _run_blocks(run: Run) -> list[Block]:
    blocks = [Block("h", f"{run.title} — {fmt_time(run.start, with_date=True)}", level=2, anchor=run.run_id)]
    declared = run.has_extension
    blocks.append(Block("kv", rows=[
        ["Hypothesis", (run.hypothesis or "not stated") if declared else NOT_DECLARED],
        ["Blast radius", (run.blast_radius or "not stated") if declared else NOT_DECLARED],
        ["Abort condition", (run.abort_condition or "not stated") if declared else NOT_DECLARED],
    ]))
    blocks.append(Block("verdict", run.reason, anchor=run.verdict))
    blocks.append(Block("h", "Steady state", level=3))
    rows = []
    for phase, state in (("before", run.before), ("after", run.after)):
        if state is None:
            rows.append([phase, "—", "not run", "—", "—"])
            continue
        for probe in state.probes:
            met = {True: "yes", False: "NO", None: "?"}[probe.met]
            rows.append([phase, probe.name, probe.value, probe.tolerance, met])
    blocks.append(Block("table", headers=["phase", "probe", "value", "tolerance", "within"], rows=rows))
    blocks.append(Block("h", "Fault injected", level=3))
    if run.faults:
        blocks.append(Block("table", headers=["kind", "backend", "target", "parameters", "injected",
                                              "reverted", "reverted by"],
                            rows=[_fault_row(run, f) for f in run.faults]))
    else:
        blocks.append(Block("p", "No fault action output in this journal (no fault injected)."))
    evidence = [[f"Traffic really slowed ({f.target})", effect_text(f)] for f in run.faults if f.effect]
    evidence += [[f"Traffic really slowed ({f.target})", "not measured (no latency_fault_effect probe or "
                  "revert effect in this journal): no evidence the fault bit"]
                 for f in run.faults if f.kind == "latency" and not f.effect]
    blocks.append(Block("kv", rows=evidence + _timing_rows(run)))
    blocks.append(Block("h", "Rollbacks", level=3))
    if run.rollbacks:
        blocks.append(Block("table", headers=["activity", "status", "at", "output"],
                            rows=[[a.name, a.status, _rel(run, a.end), a.output] for a in run.rollbacks]))
    else:
        blocks.append(Block("p", "No rollbacks ran" + (" (an interrupted run skips them under the default "
                                                          "rollback strategy)." if run.aborted_at else ".")))
    if run.safety_reverts:
        blocks.append(Block("p", "Safety control reverted at experiment end: "
                                 + "; ".join(_revert_text(run, r) for r in run.safety_reverts)))
    blocks.append(Block("h", "Load (k6)", level=3))
    if run.k6:
        blocks.append(Block("kv", rows=_k6_rows(run.k6)))
    else:
        blocks.append(Block("p", "No k6 summary in this journal."))
    if run.result:
        blocks.append(Block("kv", rows=[["Result noted in the experiment", _result_text(run.result)]]))
    blocks.append(Block("chart", run=run))
    return blocks


K6_GROUPS = (
    ("Traffic", ("requests", "rate_per_s", "failed_rate", "failed_requests", "dropped_iterations")),
    ("Latency", ("p95_ms", "p99_ms", "max_ms")),
    ("Thresholds", ("thresholds_ok", "thresholds")),
    ("k6 run", ("exit_code", "exit_meaning", "stopped_by", "rate", "duration_s", "error")),
)


def _k6_rows(k6: dict[str, Any]) -> list[list[str]]:
    """The k6 record grouped into a few readable lines; unknown keys go to "Other"."""
    rows, used = [], set()
    for label, names in K6_GROUPS:
        parts = [f"{name} {_number_text(k6[name])}" for name in names if k6.get(name) is not None]
        used.update(names)
        if parts:
            rows.append([label, " · ".join(parts)])
    rest = [f"{k} {_number_text(v)}" for k, v in k6.items() if k not in used and v is not None]
    if rest:
        rows.append(["Other", " · ".join(rest)])
    return rows


def _number_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return compact(value, 120)


def _fault_row(run: Run, f: Fault) -> list[str]:
    reverted = (_rel(run, f.reverted_at) if f.reverted_at
                else f"not recorded (lease expires {fmt_time(f.expires_at)})")
    target = f"{f.target} ({f.target_detail})" if f.target_detail else f.target
    return [f.kind, f.backend, target, compact(f.parameters, 120), _rel(run, f.injected_at), reverted,
            f.reverted_by or "—"]


def _timing_rows(run: Run) -> list[list[str]]:
    window = fault_window(run)
    unreverted = any(f.reverted_at is None for f in run.faults)
    note = " (no revert recorded: ends at lease expiry)" if unreverted else ""
    rows = [["Fault window", f"{_rel(run, window[0])} → {_rel(run, window[1])} "
                             f"({window[1] - window[0]:.1f} s){note}" if window else "none"]]
    if run.aborted_at is not None:
        after = f", {run.aborted_at - window[0]:.1f} s after injection" if window else ""
        reverts = [f.reverted_at for f in run.faults if f.reverted_at is not None]
        if reverts and len(reverts) == len(run.faults):
            lag = max(reverts) - run.aborted_at
            side = "after" if lag >= 0 else "before"
            after += f"; fault(s) reverted {abs(lag):.1f} s {side} the interruption"
        rows.append(["Safeguard fired", f"yes: run {run.status} at {_rel(run, run.aborted_at)}{after}"])
        breach = breach_text(run)
        if breach:
            breaches = run.abort.get("breaches")
            more = f" ({breaches} breaches in all)" if isinstance(breaches, int) and breaches > 1 else ""
            rows.append(["First guard breach", breach + more])
            to_revert = breach_to_revert_s(run)
            rows.append(["First breach → fault reverted",
                         f"{to_revert:.1f} s" if to_revert is not None else "not recorded"])
        else:
            rows.append(["First guard breach", "not recorded in the journal (no chaoscheckout_safety.abort "
                                               "record: a safeguard probe failed, or another control stopped "
                                               "the run)"])
    else:
        rows.append(["Safeguard fired", "no"])
    if window:
        detect = (f"{run.time_to_detect_s:.1f} s (first SLI sample outside its SLO after injection)"
                  if run.time_to_detect_s is not None else "no SLI sample outside its SLO")
        last_sample = max((s.points[-1][0] for s in (run.availability, run.latency) if s and s.points),
                          default=None)
        if run.time_to_recover_s is not None:
            recover = f"{run.time_to_recover_s:.1f} s (revert → first sample with every SLI within SLO)"
        elif run.time_to_detect_s is None:
            recover = "n/a (no breach)"
        elif last_sample is not None and last_sample < window[1]:
            recover = "not measured: the recorded timeline ends before the revert"
        else:
            recover = "not recovered within the recorded timeline"
        rows += [["Time to detect", detect], ["Time to recover", recover]]
        worst = [_worst_text(s, run.sli_phases.get(s.name, {}).get("during"))
                 for s in (run.availability, run.latency) if s is not None]
        if any(worst):
            rows.append(["Worst SLI during the fault", "; ".join(w for w in worst if w)])
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


def _phase_text(run: Run, name: str | None, factor: float, unit: str) -> str:
    phases = run.sli_phases.get(name or "")
    if not phases:
        return "—"
    series = run.availability if factor == 100.0 else run.latency
    parts = []
    for key in ("before", "during", "after"):
        value = phases[key]
        if value is None:
            parts.append("—")
            continue
        mark = " ✗" if series is not None and not series.good(value) else ""
        parts.append(f"{value * factor:.{1 if factor == 100 else 0}f}{mark}")
    return " / ".join(parts) + f" {unit}"


def _summary_row(run: Run) -> list[str]:
    return [
        run.title,
        run.run_id,
        fmt_time(run.start, with_date=True).replace(" UTC", ""),
        run.verdict,
        _phase_text(run, run.availability.name if run.availability else None, 100.0, "%"),
        _phase_text(run, run.latency.name if run.latency else None, 1.0, "ms"),
        _evidence_cell(run),
    ]


def _evidence_cell(run: Run) -> str:
    parts = [f"traffic really slowed: {effect_text(f, short=True)}" for f in run.faults if f.effect]
    parts += ["latency effect not measured" for f in run.faults if f.kind == "latency" and not f.effect]
    to_revert = breach_to_revert_s(run)
    breach = run.abort.get("first_breach")
    if isinstance(breach, dict):
        guard = breach.get("guard", "guard")
        parts.append(f"{guard}: breach → revert {to_revert:.1f} s" if to_revert is not None
                     else f"{guard} fired")
    elif run.aborted_at is not None:
        parts.append("stopped; no guard breach recorded")
    return "; ".join(parts) or "—"
