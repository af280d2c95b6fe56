"""`chaos report`: rendering real journals (written by `chaos run`), bad inputs, the CLI plugin.

The fixture journals in tests/fixtures/journals were produced by real `chaos run` executions
(sources in tests/fixtures/journal-sources). When the experiments' journals land in
journals/, they are rendered too (test_render_committed_experiment_journals).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from chaoscheckout.report.build import ReportError, write_report
from chaoscheckout.report.model import Run, load_journal, parse_time

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "journals"
VENV_BIN = Path(sys.executable).parent
CHAOS = str(VENV_BIN / "chaos")
EXPECTED_VERDICTS = {
    "01-failed": "failed",
    "02-broke": "broke",
    "03-held": "held",
    "04-interrupted": "aborted",
    "05-foreign": "held",
    "06-stack-kill-catalog": "held",  # these two: the real stack, load and safety controls
    "07-stack-kill-catalog-guarded": "aborted",
}
RENDERING_MODULES = {
    "chaoscheckout.report.build",
    "chaoscheckout.report.model",
    "chaoscheckout.report.analysis",
    "chaoscheckout.report.document",
    "chaoscheckout.report.svg",
    "chaoscheckout.report.html",
    "chaoscheckout.report.markdown",
    "chaoscheckout.report.findings",
    "chaoscheckout.report.blocks",
    "chaoscheckout.report.verify",
}


@pytest.fixture()
def journals(tmp_path: Path) -> Path:
    folder = tmp_path / "journals"
    folder.mkdir()
    for path in FIXTURES.glob("*.json"):
        shutil.copy(path, folder / path.name)
    return folder


def _raw(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _fault_outputs(raw: dict) -> list[dict]:
    outputs = [a.get("output") for a in raw["run"]]
    return [o for o in outputs if isinstance(o, dict) and "fault_id" in o and "injected_at" in o]


def _runs(result) -> dict[str, Run]:
    return {run.run_id: run for run in result.runs}


# --------------------------------------------------------------------------- contents


def test_verdicts_match_the_journals(journals: Path) -> None:
    result = write_report([journals], None, ("md", "html", "json"))
    runs = _runs(result)
    assert {rid: run.verdict for rid, run in runs.items()} == EXPECTED_VERDICTS
    assert result.skipped == []
    for rid, run in runs.items():  # the verdict follows the journal's own fields
        raw = _raw(rid)
        assert run.status == raw["status"]
        assert run.deviated == raw["deviated"]
    assert runs["01-failed"].before.met is False and runs["01-failed"].after is None
    assert runs["04-interrupted"].aborted_at == parse_time(_raw("04-interrupted")["end"])
    assert not runs["05-foreign"].has_extension
    names = [p.name for p in result.written]
    assert names == ["experiment-log.md", "experiment-log.html", "experiment-log.json"]


def test_fault_windows_come_from_the_action_outputs(journals: Path) -> None:
    runs = _runs(write_report([journals], None, ("json",)))
    for rid in ("02-broke", "03-held", "04-interrupted"):
        raw = _raw(rid)
        outputs = _fault_outputs(raw)
        assert len(outputs) == 1
        fault = runs[rid].faults[0]
        assert fault.fault_id == outputs[0]["fault_id"]
        assert fault.injected_at == parse_time(outputs[0]["injected_at"])
        assert (fault.kind, fault.backend, fault.target) == ("kill", "local", "web")
    held = _raw("03-held")
    revert = next(a for a in held["run"] if a["activity"]["name"] == "revert-web")
    assert runs["03-held"].faults[0].reverted_at == parse_time(revert["output"]["reverted_at"])
    assert runs["03-held"].faults[0].reverted_by == "revert-web"
    broke = _raw("02-broke")  # reverted by the rollback, not in the method
    rollback = broke["rollbacks"][0]["output"]
    assert runs["02-broke"].faults[0].reverted_at == parse_time(rollback["reverted_at"])
    aborted = _raw("04-interrupted")  # no rollback ran: the safety control's record reverted it
    assert aborted["rollbacks"] == []
    safety = aborted["chaoscheckout_safety"]
    assert safety["reverted"][0]["fault_id"] == runs["04-interrupted"].faults[0].fault_id
    assert runs["04-interrupted"].faults[0].reverted_at == parse_time(safety["at"])
    assert runs["04-interrupted"].faults[0].reverted_by == "safety control"
    stack = _raw("06-stack-kill-catalog")  # start_service names the leases it reverted
    start = next(a for a in stack["run"] if a["activity"]["name"] == "start-catalog")
    assert runs["06-stack-kill-catalog"].faults[0].fault_id in start["output"]["reverted_leases"]
    assert runs["06-stack-kill-catalog"].faults[0].reverted_at == parse_time(start["end"])
    guarded = runs["07-stack-kill-catalog-guarded"].faults[0]
    assert guarded.reverted_at == _raw("07-stack-kill-catalog-guarded")["chaoscheckout_safety"]["at"]
    assert guarded.reverted_by == "safety control"
    assert "availability reached" in runs["06-stack-kill-catalog"].reason  # held, yet the SLI broke meanwhile
    held_run = runs["03-held"]  # its 10 s samples all reach back before the run's start: the previous
    assert held_run.time_to_detect_s is None  # run's tail, never counted as this run's breach
    assert held_run.sli_phases["availability_10s"]["during"] is None
    guarded_run = runs["07-stack-kill-catalog-guarded"]  # a real run: its own samples breach after the kill
    assert guarded_run.time_to_detect_s is not None and 0 <= guarded_run.time_to_detect_s < 10


def test_json_summary_and_history_rows(journals: Path) -> None:
    write_report([journals], None, ("json",))
    data = json.loads((journals / "experiment-log.json").read_text())
    rows = data["summary"]["rows"]
    expected = sorted(EXPECTED_VERDICTS.items(), key=lambda kv: _raw(kv[0])["start"])
    assert [(r[1], r[3]) for r in rows] == expected
    titles = {r[1]: r[0] for r in rows}
    assert titles == {rid: _raw(rid)["experiment"]["title"] for rid in EXPECTED_VERDICTS}
    assert [h["title"] for h in data["history"]] == ["Web survives a kill"]
    assert [r["verdict"] for r in data["history"][0]["runs"]] == ["failed", "broke", "held"]


def test_markdown_structure(journals: Path) -> None:
    write_report([journals], None, ("md",))
    text = (journals / "experiment-log.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    not_runs = ("Summary", "History", "Skipped", "Runs at a glance", "Findings", "Baseline and peak")
    run_sections = [s for s in sections if not s.startswith(not_runs)]
    assert len(run_sections) == len(EXPECTED_VERDICTS)
    order = ["**Hypothesis**", "**Blast radius**", "**Abort condition**", "**Verdict:", "### Steady state",
             "### Fault injected", "**Safeguard fired**", "### Rollbacks", "### Load (k6)", "![SLI timeline"]
    for section in run_sections:
        positions = [section.index(marker) for marker in order]
        assert positions == sorted(positions), section[:80]
    headings = [s.split("\n", 1)[0] for s in sections]
    assert headings[-2].startswith("Summary") and headings[-1].startswith("History")
    summary = sections[-2]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 1 + len(EXPECTED_VERDICTS)  # header + one row per run
    assert "failed (2026" in sections[-1] and "→ broke" in sections[-1] and "→ held" in sections[-1]
    for link in re.findall(r"\]\((experiment-log-charts/[^)]+\.svg)\)", text):
        svg = ET.parse(journals / link).getroot()  # each linked chart exists and is well-formed XML
        assert svg.tag.endswith("svg")
    assert len(set(re.findall(r"!\[SLI timeline[^\]]*\]\(([^)]+)\)", text))) == len(EXPECTED_VERDICTS)


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "input", "link", "rect", "line", "circle", "polyline", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.charts: list[dict[str, str]] = []
        self.current: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg" and "sli-chart" in attrs.get("class", ""):
            self.current = {"label": attrs.get("aria-label", ""), "classes": ""}
            self.charts.append(self.current)
        if self.current is not None and attrs.get("class"):
            self.current["classes"] += " " + attrs["class"]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if self.current is not None and dict(attrs).get("class"):
            self.current["classes"] += " " + dict(attrs)["class"]

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()
        if tag == "svg":
            self.current = None


def test_html_is_well_formed_with_one_chart_per_run(journals: Path) -> None:
    write_report([journals], None, ("html",))
    checker = _Checker()
    checker.feed((journals / "experiment-log.html").read_text())
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert len(checker.charts) == len(EXPECTED_VERDICTS)
    by_run = {rid: next(c for c in checker.charts if f"({rid})" in c["label"]) for rid in EXPECTED_VERDICTS}
    assert "abort" in by_run["04-interrupted"]["classes"].split()
    for rid in ("02-broke", "03-held"):
        assert "abort" not in by_run[rid]["classes"].split()
    for rid in ("02-broke", "03-held", "04-interrupted"):
        assert "fault-window" in by_run[rid]["classes"].split()
        assert "slo" in by_run[rid]["classes"].split()
    assert "fault-window" not in by_run["01-failed"]["classes"].split()


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_are_skipped_with_a_reason(journals: Path) -> None:
    good = (journals / "03-held.json").read_text()
    (journals / "truncated.json").write_text(good[: len(good) // 2])
    (journals / "not-json.json").write_text("this is not json\n")
    (journals / "empty.json").write_text("")
    (journals / "list.json").write_text("[1, 2, 3]\n")
    (journals / "other-tool.json").write_text(json.dumps({"kind": "k6 summary", "metrics": {}}))
    broken = json.loads(good)
    broken["run"] = "not a list"
    broken["steady_states"] = {"before": {"probes": [None, 3]}}
    (journals / "odd-shapes.json").write_text(json.dumps(broken))
    result = write_report([journals, journals / "missing.json"], None, ("md", "html"))
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert "not valid JSON" in reasons["truncated.json"]
    assert "not valid JSON" in reasons["not-json.json"]
    assert reasons["empty.json"] == "empty file"
    assert "not a chaostoolkit journal" in reasons["list.json"]
    assert "not a chaostoolkit journal" in reasons["other-tool.json"]
    assert reasons["missing.json"] == "no such file or directory"
    rendered = {r.run_id for r in result.runs}
    assert set(EXPECTED_VERDICTS) | {"odd-shapes"} == rendered  # rendered with what it has
    md = (journals / "experiment-log.md").read_text()
    assert "## Skipped inputs" in md and "truncated.json" in md


def test_never_overwrites_the_log_with_an_empty_one(tmp_path: Path) -> None:
    folder = tmp_path / "journals"
    folder.mkdir()
    (folder / "bad.json").write_text("{")
    (folder / "experiment-log.md").write_text("previous log\n")
    with pytest.raises(ReportError, match="no readable journal"):
        write_report([folder], None, ("md", "html"))
    assert (folder / "experiment-log.md").read_text() == "previous log\n"
    assert not (folder / "experiment-log.html").exists()
    proc = subprocess.run([CHAOS, "--no-version-check", "report", str(folder)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "no readable journal" in proc.stderr
    assert (folder / "experiment-log.md").read_text() == "previous log\n"


def test_slo_lines_come_from_the_experiments_own_probes(tmp_path: Path) -> None:
    journal = _raw("03-held")
    assert load_journal(FIXTURES / "03-held.json").availability.objective == 0.99  # default
    journal["experiment"]["steady-state-hypothesis"]["probes"] += [
        {"type": "probe", "name": "availability", "tolerance": {"type": "range", "range": [0.95, 1.0]},
         "provider": {"type": "python", "module": "chaoscheckout.sli.probes",
                      "func": "checkout_availability"}},
        {"type": "probe", "name": "p95", "tolerance": {"type": "range", "range": [0, 300]},
         "provider": {"type": "python", "module": "chaoscheckout.sli.probes", "func": "checkout_latency_ms",
                      "arguments": {"quantile": 0.95, "window": "30s"}}},
    ]
    (tmp_path / "j.json").write_text(json.dumps(journal))
    run = load_journal(tmp_path / "j.json")
    assert (run.availability.objective, run.latency.objective) == (0.95, 300.0)


def test_interrupted_journal_loads_with_what_it_has() -> None:
    run = load_journal(FIXTURES / "04-interrupted.json")
    assert isinstance(run, Run) and run.after is None and run.rollbacks == []


# --------------------------------------------------------------------------- the plugin


def test_chaos_help_lists_the_plugin() -> None:
    proc = subprocess.run([CHAOS, "--no-version-check", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+report\s+Write the experiment log", proc.stdout, flags=re.M), proc.stdout


def test_cli_writes_default_outputs_and_honours_output(journals: Path, tmp_path: Path) -> None:
    proc = subprocess.run([CHAOS, "--no-version-check", "report", str(journals)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (journals / "experiment-log.md").is_file() and (journals / "experiment-log.html").is_file()
    assert re.search(r"^aborted +Web kill with safeguard", proc.stdout, re.M)
    out = tmp_path / "elsewhere" / "log.html"
    out.parent.mkdir()
    proc = subprocess.run([CHAOS, "--no-version-check", "report", str(journals / "03-held.json"), "--output",
                           str(out), "--format", "html"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["log.html"]


def test_chaos_run_does_not_import_the_rendering_code(tmp_path: Path) -> None:
    experiment = {
        "version": "1.0.0", "title": "import check", "description": "stdlib probe only",
        "steady-state-hypothesis": {"title": "root exists", "probes": [{
            "type": "probe", "name": "root-exists", "tolerance": True,
            "provider": {"type": "python", "module": "os.path", "func": "exists",
                         "arguments": {"path": "/"}}}]},
        "method": [{"type": "probe", "name": "again", "provider": {
            "type": "python", "module": "os.path", "func": "exists", "arguments": {"path": "/"}}}],
    }
    (tmp_path / "exp.json").write_text(json.dumps(experiment))
    code = (
        "import json, sys\n"
        "from chaostoolkit.cli import cli\n"
        "try:\n"
        "    cli(['--no-version-check', 'run', '--journal-path', sys.argv[2], sys.argv[1]])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('MODULES=' + json.dumps(sorted(m for m in sys.modules if m.startswith('chaoscheckout'))))\n"
    )
    argv = [sys.executable, "-c", code, str(tmp_path / "exp.json"), str(tmp_path / "j.json")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    modules = set(json.loads(line.removeprefix("MODULES=")))
    assert json.loads((tmp_path / "j.json").read_text())["status"] == "completed"
    assert "chaoscheckout.report.plugin" in modules  # the plugin was loaded (so the check means something)
    assert not modules & RENDERING_MODULES, modules & RENDERING_MODULES


# --------------------------------------------------------------------------- the experiments' journals


def test_render_committed_experiment_journals(tmp_path: Path) -> None:
    committed = sorted((ROOT / "journals").glob("*.json")) if (ROOT / "journals").is_dir() else []
    committed = [p for p in committed if not p.name.startswith("experiment-log")]
    if not committed:
        pytest.skip("no experiment journals committed in journals/ yet")
    result = write_report(committed, tmp_path / "log", ("md", "html"))
    assert result.skipped == []
    for run in result.runs:
        raw = json.loads(Path(run.path).read_text())
        before = (raw.get("steady_states") or {}).get("before") or {}
        expected = ("aborted" if raw["status"] in ("interrupted", "aborted") else
                    "failed" if before.get("steady_state_met") is False
                    # a run whose before-check was skipped (--hypothesis-strategy after-method-only)
                    else "inconclusive" if not before
                    else "broke" if raw["deviated"] else "held")
        assert run.verdict == expected, run.path
        assert [f.fault_id for f in run.faults] == [f["fault_id"] for f in _fault_outputs(raw)]
        if "chaoscheckout_safety" in raw:  # the safety control runs last: every fault has a recorded revert
            assert all(f.reverted_at is not None for f in run.faults), run.path


# --------------------------------------------------------------------------- findings, aborts, reverts
# On the experiments' real journals in journals/, picked by what they contain (more will be added).


def _committed_journals() -> list[Path]:
    folder = ROOT / "journals"
    found = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [p for p in found if not p.name.startswith("experiment-log")]


def _pick(predicate) -> list[tuple[Path, dict]]:
    picked = []
    for path in _committed_journals():
        raw = json.loads(path.read_text())
        if predicate(raw):
            picked.append((path, raw))
    return picked


def _entries(raw: dict) -> list[dict]:
    return [e for e in (raw.get("run") or []) + (raw.get("rollbacks") or []) if isinstance(e, dict)]


def _first_breach(raw: dict) -> dict | None:
    abort = (raw.get("chaoscheckout_safety") or {}).get("abort")
    return abort.get("first_breach") if isinstance(abort, dict) else None


def _run_section(md: str, run_id: str) -> str:
    start = md.index(f'<a id="{run_id}"></a>')
    end = md.find("\n## ", start)
    return md[start:end]


def _copy(tmp_path: Path, picked: list[tuple[Path, dict]]) -> Path:
    folder = tmp_path / "j"
    folder.mkdir(exist_ok=True)
    for path, raw in picked:
        (folder / path.name).write_text(json.dumps(raw))
    return folder


def test_aborted_runs_say_which_guard_fired_and_how_fast_the_fault_was_reverted(tmp_path: Path) -> None:
    guarded = _pick(lambda raw: raw["status"] == "interrupted" and isinstance(_first_breach(raw), dict))
    if not guarded:
        pytest.skip("no interrupted journal with a chaoscheckout_safety.abort record in journals/")
    result = write_report([_copy(tmp_path, guarded)], tmp_path / "log", ("md",))
    md = (tmp_path / "log.md").read_text()
    for run in result.runs:
        raw = json.loads((ROOT / "journals" / Path(run.path).name).read_text())
        breach, abort = _first_breach(raw), raw["chaoscheckout_safety"]["abort"]
        assert run.verdict == "aborted"
        assert run.reason.startswith(f"safeguard fired: {breach['guard']} measured "), run.reason
        value, threshold = breach["value"], breach["threshold"]
        if breach["guard"] == "availability_guard":  # a ratio shown as a percentage, threshold too
            assert f"{value * 100:.1f} %" in run.reason
            op, bound = threshold.split()
            assert f"(abort threshold {op} {float(bound) * 100:g} %)" in run.reason
        else:
            assert str(threshold) in run.reason
        assert f"at t+{parse_time(breach['at']) - parse_time(raw['start']):.3f} s" in run.reason
        assert f"first breach → fault reverted in {abort['breach_to_revert_s']:.3f} s" in run.reason
        section = _run_section(md, run.run_id)
        assert f"- **First breach → fault reverted**: {abort['breach_to_revert_s']:.3f} s" in section
        assert f"{abort['breaches']} breaches in all" in section or abort["breaches"] == 1


def test_aborted_run_without_an_abort_record_keeps_the_plain_wording(tmp_path: Path) -> None:
    """Journals written before the safety control recorded breaches have no abort record:
    taken from a real interrupted journal with the record removed (as such a journal is)."""
    plain = _pick(lambda raw: raw["status"] == "interrupted")
    assert plain, "journals/ holds no interrupted run"
    for _, raw in plain:
        if isinstance(raw.get("chaoscheckout_safety"), dict):
            raw["chaoscheckout_safety"]["abort"] = None
    result = write_report([_copy(tmp_path, plain)], tmp_path / "log", ("md",))
    for run in result.runs:
        expected = f"run interrupted {run.duration_s:.3f} s into the run (a safeguard or control stopped it)"
        assert run.reason == expected
    md = (tmp_path / "log.md").read_text()
    assert "**First guard breach**: not recorded in the journal" in md
    assert "First breach → fault reverted" not in md


def _expected_revert(raw: dict, fault_id: str) -> tuple[float, str] | None:
    """The earliest succeeded action whose reverted/reverted_leases list names the fault."""
    found = []
    for entry in _entries(raw):
        output = entry.get("output")
        if entry.get("status") != "succeeded" or entry["activity"].get("type") != "action":
            continue
        if isinstance(output, dict) and any(fault_id in (output.get(k) or []) for k in ("reverted",
                                                                                           "reverted_leases")):
            found.append((parse_time(entry["end"]), entry["activity"]["name"]))
    return min(found) if found else None


def test_reverts_are_matched_by_the_ids_their_outputs_name(tmp_path: Path) -> None:
    named = _pick(lambda raw: raw["status"] == "completed" and any(
        _expected_revert(raw, o["fault_id"]) for o in _fault_outputs(raw)))
    if not named:
        pytest.skip("no completed journal with a revert output naming its fault in journals/")
    kinds = set()
    result = write_report([_copy(tmp_path, named)], tmp_path / "log", ("md",))
    md = (tmp_path / "log.md").read_text()
    for run in result.runs:
        raw = json.loads((ROOT / "journals" / Path(run.path).name).read_text())
        probes = {e["activity"]["name"] for e in _entries(raw) if e["activity"].get("type") == "probe"}
        for fault in run.faults:
            expected = _expected_revert(raw, fault.fault_id)
            assert expected is not None
            assert (fault.reverted_at, fault.reverted_by) == expected, run.path
            assert fault.reverted_by not in probes  # a measuring probe names the fault but reverts nothing
            assert fault.reverted_at < fault.expires_at
            kinds.add(fault.kind)
        assert "not recorded (lease expires" not in _run_section(md, run.run_id)
    assert kinds  # the rendered runs had faults to match


def test_a_probe_or_an_empty_id_list_never_counts_as_the_revert(tmp_path: Path) -> None:
    cases = 0
    folder = tmp_path / "j"
    folder.mkdir()
    for path, raw in _pick(lambda raw: raw["status"] == "completed" and _fault_outputs(raw)):
        fault_ids = {o["fault_id"] for o in _fault_outputs(raw)}
        keep = []
        for entry in raw["run"]:  # drop every revert naming the fault; keep probes and the rest
            output = entry.get("output")
            names = isinstance(output, dict) and any(set(output.get(k) or []) & fault_ids
                                                     for k in ("reverted", "reverted_leases"))
            if not names:
                keep.append(entry)
        raw["run"] = keep
        raw["rollbacks"] = [e for e in raw.get("rollbacks") or []
                            if not set((e.get("output") or {}).get("reverted") or []) & fault_ids
                            and not set((e.get("output") or {}).get("reverted_leases") or []) & fault_ids]
        probe_names = any(isinstance(e.get("output"), dict) and e["output"].get("fault_id") in fault_ids
                          and e["activity"].get("type") == "probe" for e in keep)
        empty_lists = any(isinstance(e.get("output"), dict) and e["output"].get("reverted_leases") == []
                          for e in raw["rollbacks"])
        if probe_names or empty_lists:
            cases += 1
            (folder / path.name).write_text(json.dumps(raw))
    if not cases:
        pytest.skip("no journal with a probe naming its fault or an empty reverted_leases list")
    result = write_report([folder], tmp_path / "log", ("md",))
    for run in result.runs:
        assert all(f.reverted_at is None for f in run.faults), (run.path, [f.reverted_by for f in run.faults])
    assert "not recorded (lease expires" in (tmp_path / "log.md").read_text()


def _latest_effect(raw: dict, fault_id: str) -> dict | None:
    found = []
    for entry in _entries(raw):
        output = entry.get("output")
        if entry.get("status") != "succeeded" or not isinstance(output, dict):
            continue
        if entry["activity"].get("provider", {}).get("func") == "latency_fault_effect":
            effect = output
        else:
            effect = output.get("effect") if isinstance(output.get("effect"), dict) else None
        if effect and effect.get("fault_id") == fault_id:
            found.append((parse_time(entry["end"]), effect))
    return max(found, key=lambda item: item[0])[1] if found else None


def test_latency_fault_evidence_is_shown_in_the_fault_section_and_the_summary(tmp_path: Path) -> None:
    latency = _pick(lambda raw: any(o["kind"] == "latency" for o in _fault_outputs(raw)))
    if not latency:
        pytest.skip("no latency-fault journal in journals/")
    result = write_report([_copy(tmp_path, latency)], tmp_path / "log", ("md",))
    md = (tmp_path / "log.md").read_text()
    summary = md[md.index("## Summary"):]
    measured = unmeasured = 0
    for run in result.runs:
        raw = json.loads((ROOT / "journals" / Path(run.path).name).read_text())
        section = _run_section(md, run.run_id)
        row = next(line for line in summary.splitlines() if f"| {run.run_id} |" in line)
        for fault in run.faults:
            effect = _latest_effect(raw, fault.fault_id)
            if effect is None:
                unmeasured += 1
                assert "no evidence the fault bit" in section and "latency effect not measured" in row
                if run.verdict == "held":
                    assert "no evidence recorded that the latency fault slowed any traffic" in run.reason
                continue
            measured += 1
            seen, delayed = effect["exchanges_seen"], effect["exchanges_delayed"]
            text = f"{delayed} of {seen} requests ({delayed / seen * 100:.1f} %)"
            assert f"- **Traffic really slowed ({fault.target})**: {text}" in section
            assert f"requested {fault.parameters['fraction'] * 100:g} %" in section
            assert f"traffic really slowed: {text}" in row
    assert measured + unmeasured == sum(len(r.faults) for r in result.runs) > 0


def test_a_held_latency_run_whose_fault_barely_bit_says_so(tmp_path: Path) -> None:
    measured = _pick(lambda raw: raw["status"] == "completed" and not raw["deviated"] and any(
        _latest_effect(raw, o["fault_id"]) for o in _fault_outputs(raw) if o["kind"] == "latency"))
    if not measured:
        pytest.skip("no held latency run with effect counts in journals/")
    path, raw = measured[0]
    for entry in _entries(raw):  # the same run, had the fault slowed only 2 requests
        output = entry.get("output")
        for effect in (output, (output or {}).get("effect")) if isinstance(output, dict) else ():
            if isinstance(effect, dict) and "exchanges_delayed" in effect:
                effect["exchanges_delayed"] = 2
    result = write_report([_copy(tmp_path, [(path, raw)])], tmp_path / "log", ("md",))
    run = result.runs[0]
    effect = _latest_effect(raw, run.faults[0].fault_id)
    seen = effect["exchanges_seen"]
    assert run.verdict == "held"
    assert (f"but the fault slowed only 2 of {seen} requests ({2 / seen * 100:.1f} %), requested "
            f"{run.faults[0].parameters['fraction'] * 100:g} %") in run.reason
    (tmp_path / "real").mkdir()
    untouched = write_report([_copy(tmp_path / "real", [(path, json.loads(path.read_text()))])],
                             tmp_path / "log2", ("md",))
    real = _latest_effect(json.loads(path.read_text()), run.faults[0].fault_id)
    barely = real["exchanges_delayed"] / real["exchanges_seen"] < run.faults[0].parameters["fraction"] / 2
    assert ("slowed only" in untouched.runs[0].reason) == barely  # the real run says so only if it barely bit


def test_a_held_run_whose_fault_never_took_effect_is_inconclusive(tmp_path: Path) -> None:
    """A run held without its fault biting tested nothing: the wait for the effect decides."""
    held = _pick(lambda raw: raw["status"] == "completed" and not raw["deviated"]
                 and any(o["kind"] == "disk" for o in _fault_outputs(raw)))
    if not held:
        pytest.skip("no held fill-pg-disk journal in journals/")
    path, raw = held[0]
    fill = next(i for i, e in enumerate(raw["run"]) if (e.get("output") or {}).get("kind") == "disk")
    verdicts = {}
    for case, output, status in (("seen", {"increased": True, "before": 0, "after": 3}, "succeeded"),
                                 ("never", {"increased": False, "before": 0, "after": 0}, "succeeded"),
                                 ("failed", None, "failed")):
        copy = json.loads(json.dumps(raw))  # the same run, had its method waited for the effect
        query = 'sum(checkout_store_write_errors_total{kind="refused"})'
        wait = {"activity": {"type": "probe", "name": "wait-for-the-effect",
                             "provider": {"type": "python", "module": "chaoscheckout.sli.probes",
                                          "func": "wait_for_increase", "arguments": {"query": query}}},
                "status": status, "start": copy["run"][fill]["end"], "end": copy["run"][fill]["end"],
                "duration": 0.0,
                "output": None if output is None else {**output, "query": query, "timeout_s": 90.0,
                                                       "waited_s": 1.0}}
        copy["run"].insert(fill + 1, wait)
        (tmp_path / case).mkdir()
        result = write_report([_copy(tmp_path / case, [(path, copy)])], tmp_path / f"log-{case}", ("md",))
        verdicts[case] = (result.runs[0].verdict, result.runs[0].reason)
    assert verdicts["seen"][0] == "held", verdicts
    assert verdicts["never"] == ("inconclusive", f"steady state held, but the fault never took effect: "
                                 f"wait-for-the-effect saw {query} stay at 0 for 90.0 s: the hypothesis "
                                 "was not exercised"), verdicts
    assert verdicts["failed"][0] == "inconclusive" and "could not tell" in verdicts["failed"][1]


def test_a_run_refused_for_its_arguments_is_inconclusive_and_says_why(tmp_path: Path) -> None:
    """The safety control refused the run before anything started: no verdict on the
    hypothesis, and the log says which argument was bad (not "a safeguard stopped it")."""
    raw = _raw("03-held")
    problem = ("method activity 'wait-until-postgres-refuses-an-order-write': "
               "timeout_s must be a finite number in (0, 600], got 0")
    raw.update(status="interrupted", run=[], rollbacks=[], steady_states={"before": None, "after": None,
                                                                          "during": []})
    raw["chaoscheckout_safety"] = {"status_seen": "interrupted", "reverted": [], "at": raw["end"],
                                   "refused_arguments": [problem]}
    folder = tmp_path / "j"
    folder.mkdir()
    (folder / "refused.json").write_text(json.dumps(raw))
    result = write_report([folder], tmp_path / "log", ("md",))
    assert (result.runs[0].verdict, result.runs[0].reason) == (
        "inconclusive", f"refused before it started, nothing injected: invalid arguments: {problem}")


FINDINGS_TEXT = """# Readiness review

**Held** after the fix: {held}.

- The surprise: `{surprise}` held, but the fault slowed only 2 requests.
- Broke: [the request-scope run]({broke}) — p95 441 ms.
- Not HTML: <script>alert(1)</script> and [bad](javascript:alert(1)) & friends.

Action taken: a 250 ms payments timeout budget.
"""


def test_findings_are_included_verbatim_in_markdown_and_safely_in_html(tmp_path: Path) -> None:
    picked = _pick(lambda raw: True)
    if len(picked) < 3:
        pytest.skip("fewer than 3 journals in journals/")
    folder = _copy(tmp_path, picked)
    names = [path.name for path, _ in picked]
    text = FINDINGS_TEXT.format(held=names[0], surprise=names[1], broke=names[2])
    (folder / "FINDINGS.md").write_text(text)
    write_report([folder], tmp_path / "log", ("md", "html"))
    md = (tmp_path / "log.md").read_text()
    findings_at = md.index("## Findings")
    assert md.index(text.rstrip("\n")) > findings_at  # verbatim
    first_run = min(md.index(f'<a id="{Path(n).stem}"></a>') for n in names)
    assert findings_at < first_run < md.index("## Summary")  # near the top, before the runs
    html = (tmp_path / "log.html").read_text()
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    block = html[html.index('<div class="findings">'):]
    block = block[:block.index("</div>")]
    assert "<h3>Readiness review</h3>" in block
    assert "<strong>Held</strong>" in block and block.count("<li>") == 3
    assert f'<a href="#{Path(names[0]).stem}">{names[0]}</a>' in block  # a bare file name links to its run
    assert f'<a href="#{Path(names[1]).stem}"><code>{names[1]}</code></a>' in block
    assert f'<a href="#{Path(names[2]).stem}">the request-scope run</a>' in block
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in block
    assert 'href="javascript:' not in html and "&amp; friends" in block
    for name in names[:3]:  # and the anchors it links to exist
        assert f'id="{Path(name).stem}"' in html


def test_no_findings_file_no_findings_section(tmp_path: Path) -> None:
    picked = _pick(lambda raw: True)
    if not picked:
        pytest.skip("no journals in journals/")
    write_report([_copy(tmp_path, picked[:1])], tmp_path / "log", ("md", "html"))
    assert "Findings" not in (tmp_path / "log.md").read_text()
    assert 'class="findings"' not in (tmp_path / "log.html").read_text()


def test_timeline_fast_path_reads_samples_as_the_general_loop_does():
    from chaoscheckout.report import model
    from chaoscheckout.report.svg import _gaps

    floats = [[1_700_000_000.0 + i * 0.5, 0.5 + (i % 7) / 10] for i in range(2000)]
    assert model._points(floats) == model._points_general(floats)
    assert len(model._points(floats)) == 2000
    # anything the fast path does not take (ints, nulls, strings, bools, ISO times, bad items,
    # non-finite values, unsorted) gives exactly what the general loop gives
    mixed = [[1_700_000_003.0, 1], [1_700_000_001.0, None], [1_700_000_002.0, "0.75"],
             ["2023-11-14T22:13:24Z", 0.5], [1_700_000_004.0, True], [1_700_000_005.0],
             "x", [1_700_000_006.0, float("inf")], [-1.0, 0.5], [1_700_000_000.5, 0.25]]
    later = 1_700_000_000.0 + 2000
    for raw in (mixed, floats[::-1], floats + [[1_700_000_000.0, float("nan")]],
                floats + [[later, 0.5, 0.7]], floats + [{"t": later, "v": 0.5}], floats + [[later, 1]],
                floats + [[later, True]], floats + [[floats[-1][0], 0.1]], floats + ["ab"], floats + [None],
                floats + [[float("inf"), 0.5]], [[float("nan"), 0.5]] + floats, [[0.0, 0.5]] + floats,
                floats + [[1e308, 1.0], [1.7e308, 1.0]]):
        assert model._points(raw) == model._points_general(raw)
    times, values = model._columns(floats)
    assert list(zip(times, values, strict=True)) == model._points_general(floats)
    assert [t for t, _ in model._points(mixed)] == sorted(t for t, _ in model._points(mixed))
    # gaps: a step over 2.5 times the usual one, at any series length
    times = [float(i) for i in range(50_000)]
    times[30_000:] = [t + 10 for t in times[30_000:]]
    assert _gaps(times) == [29_999.0]
    assert _gaps([1.0, 1.0, 1.0, 1.0]) == []
