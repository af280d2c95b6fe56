"""The log as evidence a review can audit (issue 11): provenance, figures that agree with the
verdict, `chaos report --verify`, never destroying data, bounded charts.

Journals are real `chaos run` journals: the fixtures (tests/fixtures/journals) and the
experiments' journals in journals/. Edited ones are COPIES in tmp, edited as a test says.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chaoscheckout.report.build import GENERATED_MARK, ReportError, load_runs, write_report
from chaoscheckout.report.model import parse_time

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "journals"
CHAOS = str(Path(sys.executable).parent / "chaos")
PORT_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100"))


def _committed() -> list[Path]:
    return sorted(p for p in (ROOT / "journals").glob("*.json") if not p.name.startswith("experiment-log"))


def _copy(tmp_path: Path, source: Path, edit=None, name: str | None = None) -> Path:
    folder = tmp_path / "j"
    folder.mkdir(exist_ok=True)
    raw = json.loads(source.read_text())
    if edit is not None:
        edit(raw)
    target = folder / (name or source.name)
    target.write_text(json.dumps(raw))
    return target


def _verify(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHAOS, "--no-version-check", "report", "--verify", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- verify


def test_verify_flags_a_hand_edited_probe_value_and_the_render_warns(tmp_path: Path) -> None:
    source = FIXTURES / "06-stack-kill-catalog.json"
    clean = _copy(tmp_path, source)
    assert _verify(clean).returncode == 0

    def edit(raw: dict) -> None:  # 999 % availability, still "within tolerance" as recorded
        probe = raw["steady_states"]["after"]["probes"][0]
        assert probe["activity"]["provider"]["func"] == "checkout_availability"
        probe["output"] = 999
        assert probe["tolerance_met"] is True

    edited = _copy(tmp_path, source, edit, "edited.json")
    proc = _verify(edited)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tolerance_met: true" in proc.stderr and "edited.json" in proc.stderr
    result = write_report([edited], tmp_path / "log", ("md",))
    run = result.runs[0]
    assert run.verdict == "inconclusive" and "contradicts itself" in run.reason
    md = (tmp_path / "log.md").read_text()
    assert "This journal contradicts itself" in md and "journal says yes" in md


@pytest.mark.parametrize("edit, expected", [
    (lambda raw: raw.__setitem__("deviated", True), "deviated is true"),
    (lambda raw: raw["steady_states"]["before"].__setitem__("steady_state_met", False),
     "steady_state_met is false"),
    (lambda raw: raw.__setitem__("end", "2000-01-01T00:00:00"), "ends before it starts"),
    (lambda raw: raw.__setitem__("duration", 9999.0), "is not end - start"),
    (lambda raw: raw["run"][0].__setitem__("start", "2001-01-01T00:00:00"), "timed outside the run"),
])
def test_verify_flags_contradicting_flags_and_timestamps(tmp_path: Path, edit, expected: str) -> None:
    edited = _copy(tmp_path, FIXTURES / "06-stack-kill-catalog.json", edit)
    proc = _verify(edited)
    assert proc.returncode == 1 and expected in proc.stderr, proc.stderr


def test_committed_journals_verify_clean() -> None:
    committed = _committed()
    assert committed, "journals/ holds no journal"
    proc = _verify(*committed, *sorted(FIXTURES.glob("*.json")))
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- verdicts and figures


def test_no_hypothesis_or_no_after_check_is_inconclusive(tmp_path: Path) -> None:
    def no_hypothesis(raw: dict) -> None:
        raw["experiment"].pop("steady-state-hypothesis")
        raw["steady_states"] = {"before": None, "after": None, "during": []}

    def no_after(raw: dict) -> None:
        raw["steady_states"]["after"] = None

    a = _copy(tmp_path, FIXTURES / "06-stack-kill-catalog.json", no_hypothesis, "a.json")
    b = _copy(tmp_path, FIXTURES / "06-stack-kill-catalog.json", no_after, "b.json")
    runs = {r.run_id: r for r in load_runs([a, b]).runs}
    assert runs["a"].verdict == "inconclusive" and "no steady-state hypothesis" in runs["a"].reason
    assert runs["b"].verdict == "inconclusive" and "after the method was not evaluated" in runs["b"].reason


def test_probes_not_run_after_a_deviation_are_listed(tmp_path: Path) -> None:
    broke = [p for p in _committed() if json.loads(p.read_text()).get("deviated")]
    assert broke, "journals/ holds no run that deviated"
    result = write_report(broke, tmp_path / "log", ("md",))
    md = (tmp_path / "log.md").read_text()
    for run in result.runs:
        raw = json.loads(Path(run.path).read_text())
        declared = [p["name"] for p in raw["experiment"]["steady-state-hypothesis"]["probes"]]
        ran = [p["activity"]["name"] for p in raw["steady_states"]["after"]["probes"]]
        missing = [n for n in declared if n not in ran]
        assert run.after is not None and run.after.not_run == missing
        for name in missing:
            assert f"| after | {name} | not run |" in md


def test_before_and_after_figures_are_the_probes_own_values(tmp_path: Path) -> None:
    result = write_report(_committed(), tmp_path / "log", ("json",))
    data = json.loads((tmp_path / "log.json").read_text())
    rows = {r[1]: r for r in data["summary"]["rows"]}
    for run in result.runs:
        raw = json.loads(Path(run.path).read_text())
        before = (raw["steady_states"].get("before") or {}).get("probes") or []
        value = next((p["output"] for p in before
                      if p["activity"]["provider"]["func"] == "checkout_availability"), None)
        cell = rows[run.run_id][4]
        assert cell.startswith(f"{value * 100:.1f}" if value is not None else "not run"), (run.run_id, cell)


def test_previous_run_tail_is_drawn_as_such_and_never_counted(tmp_path: Path) -> None:
    def outage_before_start(raw: dict) -> None:  # the previous run's outage, still in the 10 s windows
        start = parse_time(raw["start"])
        for point in raw["chaoscheckout_timeline"]["series"]["availability_10s"]:
            if parse_time(point[0]) < start + 5:
                point[1] = "0.0"

    source = FIXTURES / "07-stack-kill-catalog-guarded.json"
    plain = load_runs([_copy(tmp_path, source)]).runs[0]
    edited = _copy(tmp_path, source, outage_before_start, "tail.json")
    result = write_report([edited], tmp_path / "log", ("md",))
    run = result.runs[0]
    assert run.time_to_detect_s == plain.time_to_detect_s
    assert run.sli_phases == plain.sli_phases
    svg = (tmp_path / "log-charts" / "tail.svg").read_text()
    assert 'class="previous-run-tail"' in svg and 'class="previous-run"' in svg


def test_worst_during_the_fault_includes_the_guard_samples() -> None:
    guarded = [p for p in _committed()
               if ((json.loads(p.read_text()).get("chaoscheckout_safety") or {}).get("abort") or {})
               .get("first_breach", {}).get("guard") == "availability_guard"]
    assert guarded, "journals/ holds no run aborted by the availability guard"
    for run in load_runs(guarded).runs:
        breach = run.abort["first_breach"]
        during = run.sli_phases["availability_10s"]["during"]
        assert during is not None and during <= breach["value"]


# --------------------------------------------------------------------------- provenance


def test_every_committed_journal_names_the_build_it_tested(tmp_path: Path) -> None:
    result = write_report(_committed(), tmp_path / "log", ("md",))
    md = (tmp_path / "log.md").read_text()
    profiles = set()
    for run in result.runs:
        prov = run.provenance
        assert prov is not None and not prov.error, run.run_id
        assert prov.system_build and prov.experiment_digest and prov.tool.get("commit")
        checkout = prov.services["checkout"]
        assert checkout["status"] == "known" and checkout["build"]["source_sha256"]
        profiles.add(checkout["profile"])
        assert prov.services["postgres"]["status"] == "unknown"  # no /version: said, never guessed
        assert f"[build {prov.system_build}]" in md
    assert {"first-version", "resilient"} <= profiles
    history = md[md.index('<a id="history"></a>'):]
    assert "checkout first-version" in history and "checkout resilient" in history


class _NoVersion(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_provenance_reads_each_service_and_says_unknown_when_it_cannot(tmp_path: Path) -> None:
    from chaoscheckout.controls.provenance import collect_provenance
    from chaoscheckout.runtime.registry import Registry, ServiceEntry, save_registry
    from tests.serviceprocs import service_process

    catalog_port, bare_port = PORT_BASE + 91, PORT_BASE + 92
    server = http.server.ThreadingHTTPServer(("127.0.0.1", bare_port), _NoVersion)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        save_registry(Registry(runtime="local", services={
            "catalog": ServiceEntry("catalog", "127.0.0.1", catalog_port, "catalog",
                                    health_url=f"http://127.0.0.1:{catalog_port}/healthz"),
            "theirs": ServiceEntry("theirs", "127.0.0.1", bare_port, "theirs",
                                   health_url=f"http://127.0.0.1:{bare_port}/healthz"),
            "db": ServiceEntry("db", "127.0.0.1", PORT_BASE + 93, "db"),
        }), tmp_path / "services.json")
        experiment = json.loads((ROOT / "experiments" / "kill-catalog.json").read_text())
        with service_process("catalog", {"CATALOG_PORT": str(catalog_port)}, catalog_port,
                             tmp_path / "logs"):
            record = collect_provenance(experiment, {"chaoscheckout_state_dir": str(tmp_path), "load_rate": 7,
                                                     "prometheus_url": f"http://127.0.0.1:{bare_port}"})
    finally:
        server.shutdown()
    services = record["services"]
    assert services["catalog"]["status"] == "known"
    assert services["catalog"]["settings"]["fd_leak"] is False
    assert services["catalog"]["build"]["source_sha256"]
    assert services["theirs"] == {"status": "unknown", "reason": services["theirs"]["reason"]}
    assert "404" in services["theirs"]["reason"]
    assert services["db"]["status"] == "unknown"
    assert record["load"]["rate"] == 7 and record["prometheus"]["status"] == "unknown"
    assert record["tool"]["chaoscheckout"] and record["experiment_digest"]
    assert "unknown: db, theirs" in record["system_label"]


# --------------------------------------------------------------------------- never destroys data


def test_refuses_to_overwrite_inputs_and_files_it_did_not_generate(tmp_path: Path) -> None:
    folder = tmp_path / "journals"
    folder.mkdir()
    journal = folder / "06-stack-kill-catalog.json"
    shutil.copy(FIXTURES / journal.name, journal)
    findings = folder / "FINDINGS.md"
    findings.write_text("# ours\n")
    before = journal.read_bytes()
    with pytest.raises(ReportError, match="one of the report's inputs"):
        write_report([folder], folder / journal.stem, ("json",))
    with pytest.raises(ReportError, match="one of the report's inputs"):
        write_report([folder], folder / "FINDINGS", ("md",))
    assert journal.read_bytes() == before and findings.read_text() == "# ours\n"
    theirs = tmp_path / "notes.md"
    theirs.write_text("hand-written\n")
    with pytest.raises(ReportError, match="not generated by chaos report"):
        write_report([folder], tmp_path / "notes", ("md",))
    assert theirs.read_text() == "hand-written\n"
    with pytest.raises(ReportError, match="is a directory"):
        write_report([folder], tmp_path, ("md",))
    result = write_report([folder], tmp_path / "log", ("md", "html", "json"))  # twice: its own files
    result = write_report([folder], tmp_path / "log", ("md", "html", "json"))
    for path in result.written + list((tmp_path / "log-charts").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert GENERATED_MARK in path.read_text()[:4096]
    assert load_runs([folder]).skipped == []  # the JSON log in a journals folder is not read as a journal


def test_removes_only_its_own_stale_charts(tmp_path: Path) -> None:
    folder = tmp_path / "journals"
    folder.mkdir()
    for name in ("06-stack-kill-catalog.json", "03-held.json"):
        shutil.copy(FIXTURES / name, folder / name)
    write_report([folder], tmp_path / "log", ("md",))
    charts = tmp_path / "log-charts"
    (charts / "mine.svg").write_text("<svg/>")  # not generated: kept
    (folder / "03-held.json").unlink()
    write_report([folder], tmp_path / "log", ("md",))
    assert sorted(p.name for p in charts.iterdir()) == ["06-stack-kill-catalog.svg", "mine.svg"]


def test_full_disk_or_read_only_output_is_one_clear_error_and_nothing_half_written(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        (disk / "log.md").write_text(f"<!-- {GENERATED_MARK} -->\nthe previous log\n")
        proc = subprocess.run([CHAOS, "--no-version-check", "report", str(FIXTURES), "--output",
                               str(disk / "log"), "--format", "md", "--format", "html"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert "no space left on device" in proc.stderr and "Traceback" not in proc.stderr
        assert (disk / "log.md").read_text().endswith("the previous log\n")  # not replaced by half a file
        assert not [p for p in disk.rglob(".*") if p.is_file()]  # no temporary file left behind
        (disk / "log.md").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=30)
        proc = subprocess.run([CHAOS, "--no-version-check", "report", str(FIXTURES), "--output",
                               str(disk / "log"), "--format", "md"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


def test_markdown_escapes_html_from_journals(tmp_path: Path) -> None:
    def hostile(raw: dict) -> None:
        raw["experiment"]["title"] = "<script>alert(1)</script>"
        raw["run"][0]["activity"]["name"] = "<img src=x onerror=alert(1)>"

    edited = _copy(tmp_path, FIXTURES / "06-stack-kill-catalog.json", hostile)
    write_report([edited], tmp_path / "log", ("md", "html"))
    for name in ("log.md", "log.html"):
        text = (tmp_path / name).read_text()
        assert "<script>alert" not in text and "<img src=x" not in text, name
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (tmp_path / "log.md").read_text()


# --------------------------------------------------------------------------- charts


def test_long_series_are_downsampled_keeping_breaches(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from report_big import make_journal

    folder = tmp_path / "big"
    folder.mkdir()
    make_journal(FIXTURES / "07-stack-kill-catalog-guarded.json", folder / "big.json", 200_000)
    write_report([folder], tmp_path / "log", ("md",))
    svg = (tmp_path / "log-charts" / "big.svg").read_text()
    assert len(svg.encode()) < 200 * 1024
    assert svg.count('class="outside-slo"') >= 10  # the short dips, one every 50 s of samples, survive
    assert 'class="abort-threshold"' in svg


def test_charts_show_money_safety_checks_and_full_fault_parameters(tmp_path: Path) -> None:
    guarded = [p for p in _committed() if (json.loads(p.read_text()).get("chaoscheckout_guards") or {})
               .get("samples")]
    assert guarded, "journals/ holds no journal with guard samples"
    result = write_report(guarded, tmp_path / "log", ("md",))
    charted = 0
    for run in result.runs:
        svg = (tmp_path / "log-charts" / f"{run.run_id}.svg").read_text()
        assert 'class="check-window"' in svg
        # the money series is what the guard measured: a guard that never could observe (every
        # sample unobserved, e.g. a wedged checkout's run) has no series rather than zeros
        observed = any(s.value is not None for s in run.guard_samples if s.guard == "money_guard")
        assert ('data-series="money_guard"' in svg) == observed, run.run_id
        charted += observed
        for fault in run.faults:
            assert 'class="fault-parameters"' in svg
            if "scope" in fault.parameters:
                assert f"&quot;scope&quot;: &quot;{fault.parameters['scope']}&quot;" in svg
    assert charted, "no committed journal's money guard observed anything"
