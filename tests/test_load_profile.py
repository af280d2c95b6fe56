"""Load profiles: baseline and peak (a share of the capacity record, reached by a ramp).

Fast tier: deriving and validating a profile, the capacity record's format, bad values
refused before k6 or any fault starts (load control, runner, CLI). Real tier (the session
``stack``): one short real ``chaos run`` of kill-catalog at the peak profile, whose journal
must record the profile, the rate, the ramp and the capacity record, and the experiment log
built from it and a committed baseline journal, with baseline and peak side by side (also
re-derived by ``chaos report --verify``, which must flag a tampered copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chaoslib.exceptions import InterruptExecution, InvalidActivity

from chaoscheckout.load import control
from chaoscheckout.load.profile import (
    CapacityRecord,
    ProfileError,
    capacity_path,
    new_record,
    peak_rate,
    read_capacity,
    resolve_profile,
    write_capacity,
)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMMITTED_BASELINE = ROOT / "journals" / "2026-11-29T183109Z-kill-catalog.json"
# a fixture record, not a measurement: the figure only has to give a peak above the baseline
FIXTURE_METHOD = {"tool": "tests/test_load_profile.py", "note": "test fixture, not a measurement"}


def _record(tmp_path: Path, capacity: float = 20.0) -> Path:
    return write_capacity(new_record(capacity, {"system_build": "test"}, FIXTURE_METHOD),
                          tmp_path / "capacity.json")


def _config(tmp_path: Path, **extra: object) -> dict:
    return {"chaoscheckout_state_dir": str(tmp_path), **extra}


@pytest.fixture(autouse=True)
def _no_profile_env(monkeypatch):
    for name in ("CHAOSCHECKOUT_CAPACITY_FILE", "CHAOSCHECKOUT_PEAK_SHARE", "CHAOSCHECKOUT_PEAK_RAMP_S",
                 "CHAOSCHECKOUT_LOAD_PROFILE"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------
# Fast tier
# ---------------------------------------------------------------------------


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_baseline_is_the_experiments_own_rate_without_a_ramp(tmp_path):
    profile = resolve_profile("baseline", 10, _config(tmp_path))
    assert (profile.name, profile.rate, profile.start_rate, profile.ramp_s) == ("baseline", 10, 10, 0)
    assert profile.capacity is None and profile.k6_env() == {}


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_peak_is_seventy_percent_of_the_record_with_a_ramp_from_the_baseline(tmp_path):
    path = _record(tmp_path, 31.0)
    profile = resolve_profile("peak", 10, _config(tmp_path))
    assert profile.rate == 21 == peak_rate(31.0, 0.7)  # floor(21.7)
    assert (profile.start_rate, profile.ramp_s, profile.share) == (10, 30, 0.7)
    assert profile.capacity_file == str(path) and profile.capacity["capacity_per_s"] == 31.0
    assert profile.capacity_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    env = profile.k6_env()
    assert env["RAMP_S"] == "30" and env["START_RATE"] == "10" and int(env["MAX_VUS"]) >= 2 * 21
    custom = resolve_profile("peak", 10, _config(tmp_path, chaoscheckout_peak_share="0.5",
                                                 chaoscheckout_peak_ramp_s="0"))
    assert (custom.rate, custom.ramp_s) == (15, 0)


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_the_record_path_is_explicit(tmp_path, monkeypatch):
    assert capacity_path(_config(tmp_path)) == tmp_path / "capacity.json"
    monkeypatch.setenv("CHAOSCHECKOUT_CAPACITY_FILE", str(tmp_path / "elsewhere.json"))
    assert capacity_path(_config(tmp_path)) == tmp_path / "elsewhere.json"
    with pytest.raises(ProfileError, match="absolute"):
        capacity_path(_config(tmp_path, chaoscheckout_capacity_file="relative.json"))


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_peak_without_a_measurement_says_how_to_measure(tmp_path):
    with pytest.raises(ProfileError) as caught:
        resolve_profile("peak", 10, _config(tmp_path))
    assert str(tmp_path / "capacity.json") in str(caught.value)
    assert "chaoscheckout capacity measure" in str(caught.value)


@pytest.mark.fast  # no stack: the fast tier (make check)
@pytest.mark.parametrize("name", ["Peak", "flash", "", None, 3, "nan"])
def test_unknown_profiles_are_refused(tmp_path, name):
    with pytest.raises(ProfileError, match="unknown load profile"):
        resolve_profile(name, 10, _config(tmp_path))


@pytest.mark.parametrize("key, value, why", [
    ("chaoscheckout_peak_share", "nan", "finite"),
    ("chaoscheckout_peak_share", "inf", "finite"),
    ("chaoscheckout_peak_share", "0", "finite"),
    ("chaoscheckout_peak_share", "1.2", "finite"),  # a rate above the capacity
    ("chaoscheckout_peak_share", "seventy", "finite"),
    ("chaoscheckout_peak_ramp_s", "nan", "finite"),
    ("chaoscheckout_peak_ramp_s", "-1", "finite"),
    ("chaoscheckout_peak_ramp_s", "301", "finite"),
])
@pytest.mark.fast  # no stack: the fast tier (make check)
def test_bad_peak_settings_are_refused(tmp_path, key, value, why):
    _record(tmp_path)
    with pytest.raises(ProfileError, match=why):
        resolve_profile("peak", 10, _config(tmp_path, **{key: value}))


@pytest.mark.parametrize("text, why", [
    ('{"schema": 1, "capacity_per_s": NaN, "measured_at": "2026-11-29T19:00:00Z"}', "not valid JSON"),
    ('{"schema": 1, "capacity_per_s": Infinity, "measured_at": "2026-11-29T19:00:00Z"}', "not valid JSON"),
    ('{"schema": 1, "capacity_per_s": -5, "measured_at": "2026-11-29T19:00:00Z"}', "capacity_per_s"),
    ('{"schema": 1, "capacity_per_s": "30", "measured_at": "2026-11-29T19:00:00Z"}', "capacity_per_s"),
    ('{"schema": 1, "capacity_per_s": 30, "measured_at": "yesterday"}', "measured_at"),
    ('{"schema": 2, "capacity_per_s": 30, "measured_at": "2026-11-29T19:00:00Z"}', "schema"),
    ('{"schema": 1, "capacity_per_s": 30, "measured_at": "2026-11-29T19:00:00Z", "host": []}', "host"),
    ('[30]', "not a JSON object"),
    ('{"schema": 1, "capacity_per_s": 1, "measured_at": "2026-11-29T19:00:00Z"}', "rounds to 0"),
    ('{"schema": 1, "capacity_per_s": 1000, "measured_at": "2026-11-29T19:00:00Z"}', "limit of 200"),
])
@pytest.mark.fast  # no stack: the fast tier (make check)
def test_bad_capacity_records_are_refused(tmp_path, text, why):
    (tmp_path / "capacity.json").write_text(text)
    with pytest.raises(ProfileError, match=why):
        resolve_profile("peak", 10, _config(tmp_path))


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_record_round_trip_and_no_invalid_record_is_written(tmp_path):
    path = _record(tmp_path, 42.5)
    record, _ = read_capacity(path)
    assert record.capacity_per_s == 42.5 and record.method == FIXTURE_METHOD
    assert record.host["cpus"] == os.cpu_count() and record.build == {"system_build": "test"}
    with pytest.raises(ProfileError):
        write_capacity(CapacityRecord(float("nan"), record.measured_at), tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_load_control_refuses_before_k6_starts(tmp_path):
    with pytest.raises(InvalidActivity, match="profile"):
        control.validate_control({"provider": {"arguments": {"profile": "flash"}}})
    control.validate_control({"provider": {"arguments": {"profile": "${load_profile}"}}})
    for profile, config in (("peak", _config(tmp_path)), ("flash", _config(tmp_path)),
                            ("peak", _config(tmp_path, chaoscheckout_peak_share="nan"))):
        with pytest.raises(InterruptExecution, match="did not start"):
            control.before_experiment_control({}, script="load/baseline.js", rate=10, profile=profile,
                                              checkout_url="http://127.0.0.1:9", configuration=config)
        assert "k6" not in control._STATE  # nothing was started
        state: dict = {}
        control.after_experiment_control({}, state=state, configuration=config)
        assert state["chaoscheckout_load"]["error"] and state["chaoscheckout_load"]["profile"] is None
        control.cleanup_control()


@pytest.mark.fast  # no stack: the fast tier (make check)
def test_runner_and_cli_refuse_peak_without_a_record_before_anything_runs(tmp_path):
    from chaoscheckout.runner import run_experiments

    journals = tmp_path / "journals"
    env = {"CHAOSCHECKOUT_STATE_DIR": str(tmp_path)}  # no stack there: a health check would fail otherwise
    with pytest.raises(ProfileError, match="no capacity record"):
        run_experiments([ROOT / "experiments" / "kill-catalog.json"], journals, report=False, env=env,
                        chaos="/nonexistent/chaos", profile="peak")
    assert not journals.exists()
    cli_env = {**os.environ, **env}
    run = subprocess.run([str(BIN / "chaoscheckout"), "experiments", "run", "--profile", "peak",
                          "--journals-dir", str(journals), "kill-catalog"],
                         cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no capacity record" in run.stderr, run.stdout + run.stderr
    assert "capacity measure" in run.stderr and not journals.exists()
    bad = subprocess.run([str(BIN / "chaoscheckout"), "experiments", "run", "--profile", "flash",
                          "--journals-dir", str(journals)],
                         cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown load profile 'flash'" in bad.stderr, bad.stderr
    show = subprocess.run([str(BIN / "chaoscheckout"), "capacity", "show"], cwd=ROOT, env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 1 and "no capacity record" in show.stderr
    _record(tmp_path, 30.0)
    show = subprocess.run([str(BIN / "chaoscheckout"), "capacity", "show", "--json"], cwd=ROOT, env=cli_env,
                          capture_output=True, text=True, timeout=60)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["peak"]["rate"] == 21


# ---------------------------------------------------------------------------
# Real tier: a short real run at peak, and the log from real journals
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peak_run(stack, tmp_path_factory) -> tuple[Path, Path]:
    """(peak journal, capacity record): kill-catalog at the peak profile, short durations."""
    from chaoscheckout.runner import run_experiments

    workdir = tmp_path_factory.mktemp("peak-run")
    record = _record(workdir, 20.0)  # peak = 14/s, ramping from the experiment's 10/s
    env = {k: v for k, v in stack.env.items() if k.startswith(("CHAOSCHECKOUT_", "PATH"))}
    env.update(CHAOSCHECKOUT_CAPACITY_FILE=str(record), CHAOSCHECKOUT_PEAK_RAMP_S="4",
               CHAOSCHECKOUT_LOAD_WARMUP_S="4", CHAOSCHECKOUT_OBSERVE_S="6",
               CHAOSCHECKOUT_FAULT_DURATION_S="30")
    (outcome,) = run_experiments([ROOT / "experiments" / "kill-catalog.json"], workdir / "journals",
                                 report=False, env=env, cwd=ROOT, profile="peak", echo=lambda *_: None)
    print(f"\n{outcome.line()}")
    assert outcome.journal.is_file(), outcome
    return outcome.journal, record


def test_a_real_peak_run_records_profile_rate_ramp_and_capacity(peak_run):
    journal_path, record = peak_run
    journal = json.loads(journal_path.read_text())
    load = journal["chaoscheckout_load"]
    profile = load["profile"]
    assert load["error"] is None and load["rate"] == 14, load
    assert (profile["name"], profile["rate"], profile["start_rate"], profile["ramp_s"]) == ("peak", 14, 10, 4)
    assert profile["share"] == 0.7 and profile["capacity_file"] == str(record)
    assert profile["capacity"] == json.loads(record.read_text())
    assert profile["capacity_sha256"] == hashlib.sha256(record.read_bytes()).hexdigest()
    assert load["summary"]["requests"] > 0
    assert journal["chaoscheckout_provenance"]["load"]["profile"] == "peak"
    assert journal["chaoscheckout_provenance"]["configuration"]["load_profile"] == "peak"
    # the hold before the steady state was first checked covered the ramp and the warm-up
    first_probe = journal["steady_states"]["before"]["probes"][0]
    started = datetime.fromisoformat(first_probe["start"]).replace(tzinfo=UTC).timestamp()
    assert started - load["traffic_seen_at"] >= 4 + 4 - 0.5, (first_probe["start"], load["traffic_seen_at"])


def test_the_log_shows_baseline_and_peak_side_by_side(peak_run, tmp_path):
    from chaoscheckout.report.build import write_report

    journal_path, _ = peak_run
    folder = tmp_path / "journals"
    folder.mkdir()
    shutil.copy(COMMITTED_BASELINE, folder)
    shutil.copy(journal_path, folder)
    result = write_report([folder], None, ("md", "json"))
    assert len(result.runs) == 2 and not result.skipped
    doc = json.loads((folder / "experiment-log.json").read_text())
    (row,) = doc["profiles"]
    assert row["title"] == "Checkout SLOs hold while catalog is dead"
    baseline, peak = row["profiles"]["baseline"], row["profiles"]["peak"]
    assert baseline["run_id"] == COMMITTED_BASELINE.stem and baseline["rate"] == 10
    assert not baseline["recorded"]  # a journal older than profiles: it ran the baseline
    assert peak["run_id"] == journal_path.stem and peak["rate"] == 14 and peak["capacity_per_s"] == 20
    peak_verdict = next(r["verdict"] for r in doc["runs"] if r["run_id"] == journal_path.stem)
    assert peak["verdict"] == peak_verdict
    text = (folder / "experiment-log.md").read_text()
    table = text.split("## Baseline and peak load, side by side", 1)[1].split("\n## ", 1)[0]
    assert f"| {peak_verdict.upper()} | 14/s = 0.7 x 20/s capacity" in table
    assert COMMITTED_BASELINE.name in table and journal_path.name in table
    for section in ("## Runs at a glance", "## Summary", "## History",
                    "peak profile, k6 rate 14/s after a 4 s ramp from 10/s"):
        assert section in text  # the existing sections keep working, and the run shows its load

    verify = subprocess.run([str(BIN / "chaos"), "report", "--verify", str(folder)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"baseline {baseline['verdict'].upper()} at 10/s (before profiles) [{COMMITTED_BASELINE.stem}]" \
        in verify.stdout
    assert f"peak {peak_verdict.upper()} at 14/s = 0.7 x 20/s capacity" in verify.stdout

    # a copy whose peak rate no longer follows from its capacity record is flagged
    tampered = json.loads(journal_path.read_text())
    tampered["chaoscheckout_load"]["profile"]["rate"] = 19
    tampered["chaoscheckout_load"]["rate"] = 19
    (folder / journal_path.name).write_text(json.dumps(tampered))
    verify = subprocess.run([str(BIN / "chaos"), "report", "--verify", str(folder)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1
    assert "peak rate 19/s is not floor(20/s x 0.7) = 14/s" in verify.stderr, verify.stderr
