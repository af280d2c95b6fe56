"""No fault outlives its run: safeguard interruption, SIGKILLed `chaos run`, stale leases."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serviceprocs import line_reader

from chaoscheckout.faults.deadruns import read_records
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.owner import Owner, boot_id
from chaoscheckout.runtime.supervisor import SupervisorClient
from chaoscheckout.service.actions import kill_service, start_service
from chaoscheckout.service.probes import service_is_healthy

TARGET = "catalog"
CHAOS = str(Path(sys.executable).parent / "chaos")


def _leases(stack) -> list:
    return LeaseStore(stack.state_dir / "leases").live()


def _healthy_probe(name: str) -> dict:
    return {
        "type": "probe", "name": name, "tolerance": True,
        "provider": {"type": "python", "module": "chaoscheckout.service.probes",
                     "func": "service_is_healthy", "arguments": {"service": TARGET, "timeout_s": 2}},
    }


def _kill_action(duration_s: float, pause_after_s: float) -> dict:
    return {
        "type": "action", "name": "kill-catalog",
        "provider": {"type": "python", "module": "chaoscheckout.service.actions",
                     "func": "kill_service", "arguments": {"service": TARGET, "duration_s": duration_s}},
        "pauses": {"after": pause_after_s},
    }


def _experiment(controls: list, duration_s: float = 60, pause_after_s: float = 20) -> dict:
    return {
        "version": "1.0.0",
        "title": "catalog can die",
        "description": "written by tests/test_safety.py",
        "controls": controls,
        "steady-state-hypothesis": {"title": "catalog is up", "probes": [_healthy_probe("catalog-up")]},
        "method": [_kill_action(duration_s, pause_after_s)],
        "rollbacks": [{
            "type": "action", "name": "start-catalog",
            "provider": {"type": "python", "module": "chaoscheckout.service.actions",
                         "func": "start_service", "arguments": {"service": TARGET}},
        }],
    }


SAFETY = {"name": "chaoscheckout-safety",
          "provider": {"type": "python", "module": "chaoscheckout.controls.safety"}}
SAFEGUARD = {
    "name": "safeguard",
    "provider": {"type": "python", "module": "chaosaddons.controls.safeguards",
                 "arguments": {"probes": [{**_healthy_probe("catalog-alive-guard"), "frequency": 0.5}]}},
}


def _chaos_run(
    stack, tmp_path: Path, experiment: dict, *extra: str
) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(experiment))
    journal = tmp_path / "journal.json"
    proc = subprocess.run(
        [CHAOS, "--no-version-check", "--log-file", str(tmp_path / "chaostoolkit.log"), "run",
         "--journal-path", str(journal), *extra, str(path)],
        cwd=tmp_path, env=stack.env, capture_output=True, text=True, timeout=90,
    )
    return proc, json.loads(journal.read_text())


def test_safeguard_interruption_leaves_no_fault(stack, tmp_path):
    """Default rollback strategy: chaoslib plays no rollback; the safety control reverts."""
    started = time.monotonic()
    proc, journal = _chaos_run(stack, tmp_path, _experiment([SAFETY, SAFEGUARD]))
    elapsed = time.monotonic() - started
    assert journal["status"] == "interrupted", proc.stdout + proc.stderr
    assert journal["rollbacks"] == []  # chaoslib skipped them: the control did the work
    safety = journal["chaoscheckout_safety"]
    assert safety["status_seen"] == "interrupted"
    assert [r["kind"] for r in safety["reverted"]] == ["kill"] and "error" not in safety["reverted"][0]
    assert _leases(stack) == []
    assert service_is_healthy(TARGET, timeout_s=2)
    assert elapsed < 20, f"the run waited out the 20 s pause ({elapsed:.1f} s): not interrupted"


def test_without_safety_control_the_fault_stays(stack, tmp_path):
    """The control is what makes the difference (this test fails if chaoslib changes)."""
    try:
        proc, journal = _chaos_run(stack, tmp_path, _experiment([SAFEGUARD]))
        assert journal["status"] == "interrupted", proc.stdout + proc.stderr
        assert journal["rollbacks"] == []
        assert len(_leases(stack)) == 1 and not service_is_healthy(TARGET)
    finally:
        start_service(TARGET, timeout_s=30)
    assert _leases(stack) == []


def test_completed_run_with_safety_and_rollback(stack, tmp_path):
    proc, journal = _chaos_run(stack, tmp_path, _experiment([SAFETY], pause_after_s=0.5))
    assert journal["status"] == "completed", proc.stdout + proc.stderr
    assert journal["rollbacks"][0]["output"]["started"] is True
    assert journal["chaoscheckout_safety"]["reverted"] == []  # the rollback already did it
    assert _leases(stack) == [] and service_is_healthy(TARGET)


def _start_run(stack, tmp_path: Path, experiment: dict) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(experiment))
    journal = tmp_path / "journal.json"
    proc = subprocess.Popen(
        [CHAOS, "--no-version-check", "--log-file", str(tmp_path / "chaostoolkit.log"), "run",
         "--journal-path", str(journal), str(path)],
        cwd=tmp_path, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline and not (_leases(stack) and not service_is_healthy(TARGET, 0.5)):
        time.sleep(0.05)
    assert _leases(stack) and not service_is_healthy(TARGET), "chaos run never injected the fault"
    return proc, journal


def _seconds_until_reverted(stack, limit_s: float = 15) -> float:
    sent = time.monotonic()
    while time.monotonic() - sent < limit_s and not (service_is_healthy(TARGET, 0.5) and not _leases(stack)):
        time.sleep(0.05)
    return time.monotonic() - sent


def test_sigkilled_run_is_reverted_by_the_dead_man_switch(stack, tmp_path):
    """SIGKILL runs nothing in chaos run: the reaper sees the owner gone, not the lease expire."""
    proc, _ = _start_run(stack, tmp_path, _experiment([], duration_s=60, pause_after_s=60))
    try:
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        gone_after_s = _seconds_until_reverted(stack)
        assert service_is_healthy(TARGET) and _leases(stack) == []
        assert gone_after_s < 5, gone_after_s  # the lease had 60 s left
        [record] = [r for r in read_records(stack.state_dir) if r.get("owner", {}).get("pid") == proc.pid]
        assert "is gone" in record["cause"] and record["verified"] is True
        print(f"SIGKILLed run: fault gone {gone_after_s:.2f} s after the kill")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        start_service(TARGET, timeout_s=30)


def test_frozen_run_is_reverted_then_notices_and_never_reinjects(stack, tmp_path):
    experiment = _experiment([SAFETY], duration_s=60, pause_after_s=20)
    experiment["method"].append(_kill_action(60, 0))  # a second injection it must never make
    proc, journal_path = _start_run(stack, tmp_path, experiment)
    try:
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGSTOP)
        gone_after_s = _seconds_until_reverted(stack)
        assert service_is_healthy(TARGET) and _leases(stack) == []
        assert gone_after_s < 5, gone_after_s
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait(timeout=30)
        journal = json.loads(journal_path.read_text())
        assert journal["status"] == "interrupted"
        assert "stopped" in journal["chaoscheckout_safety"]["declared_dead"]["cause"]
        assert [r["activity"]["name"] for r in journal["run"]] == ["kill-catalog"]  # never re-injected
        assert service_is_healthy(TARGET) and _leases(stack) == []
        print(f"SIGSTOPped run: fault gone {gone_after_s:.2f} s after the freeze")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
        start_service(TARGET, timeout_s=30)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_terminated_run_reverts_at_once(stack, tmp_path, signum):
    """SIGTERM / Ctrl-C: chaoslib skips or limits rollbacks, the safety control still reverts."""
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(_experiment([SAFETY], duration_s=60, pause_after_s=30)))
    journal_path = tmp_path / "journal.json"
    proc = subprocess.Popen(
        [CHAOS, "--no-version-check", "--log-file", str(tmp_path / "chaostoolkit.log"), "run",
         "--journal-path", str(journal_path), str(path)],
        cwd=tmp_path, env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # a background job inherits SIGINT ignored; give chaos the default (KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = tmp_path / "chaostoolkit.log"
    try:
        # signal during the observation pause: a signal that lands while an activity runs
        # is turned into that activity's failure by chaoslib and the run carries on
        deadline = time.time() + 30
        while time.time() < deadline and not (log.exists() and "Pausing after activity" in log.read_text()):
            time.sleep(0.05)
        assert _leases(stack) and not service_is_healthy(TARGET), "chaos run never injected the fault"
        sent = time.monotonic()
        os.kill(proc.pid, signum)
        proc.wait(timeout=30)
        ended_after_s = time.monotonic() - sent
        journal = json.loads(journal_path.read_text())
        assert journal["status"] == "interrupted"
        safety = journal["chaoscheckout_safety"]
        # reverted at the signal, from a thread, before the other controls' teardown
        assert safety["on_signal"]["signal"] == signal.Signals(signum).name
        assert [r["kind"] for r in safety["on_signal"]["reverted"]] == ["kill"]
        assert safety["on_signal"]["reverted"][0]["verified"] is True and safety["reverted"] == []
        assert _leases(stack) == [] and service_is_healthy(TARGET, timeout_s=2)
        assert ended_after_s < 10, f"the run took {ended_after_s:.1f} s to end (lease was 60 s)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        start_service(TARGET, timeout_s=30)


def _fault_of_a_dead_run(stack) -> None:
    """A kill left by an earlier run that died, with the reaper stopped (so only the safety
    control can find it)."""
    SupervisorClient(stack.registry.supervisor_url).stop("reaper")
    code = "from chaoscheckout.service.actions import kill_service; kill_service('catalog', 60)"
    subprocess.run([sys.executable, "-c", code], env=stack.env, check=True, timeout=60)
    assert _leases(stack) and not service_is_healthy(TARGET)


def test_dead_runs_fault_refused_then_reverted(stack, tmp_path):
    _fault_of_a_dead_run(stack)
    try:
        refuse = {**SAFETY, "provider": {**SAFETY["provider"], "arguments": {"on_stale": "refuse"}}}
        proc, journal = _chaos_run(stack, tmp_path, _experiment([refuse], pause_after_s=0.5))
        assert journal["status"] == "interrupted", proc.stdout + proc.stderr
        assert journal["run"] == []  # nothing was injected by this run
        assert "live faults of dead runs" in proc.stdout + proc.stderr
        assert len(_leases(stack)) == 1  # not this run's: left for the reaper
    finally:
        SupervisorClient(stack.registry.supervisor_url).start("reaper")
        deadline = time.time() + 15
        while time.time() < deadline and _leases(stack):
            time.sleep(0.1)
        start_service(TARGET, timeout_s=30)
    assert _leases(stack) == []


def test_dead_runs_fault_reverted_before_the_run_and_said_so(stack, tmp_path):
    _fault_of_a_dead_run(stack)
    try:
        proc, journal = _chaos_run(stack, tmp_path, _experiment([SAFETY], pause_after_s=0.5))
        # the stale kill was reverted before the steady-state check, so the run completes
        assert journal["status"] == "completed", proc.stdout + proc.stderr
        assert journal["steady_states"]["before"]["steady_state_met"] is True
        [stale] = journal["chaoscheckout_safety"]["stale_reverted"]
        assert "owner dead" in stale["reason"] and stale["verified"] is True
        assert journal["chaoscheckout_safety"]["run_id"].startswith("run-")
        assert _leases(stack) == []
    finally:
        SupervisorClient(stack.registry.supervisor_url).start("reaper")
        start_service(TARGET, timeout_s=30)


def test_another_live_runs_fault_is_left_alone_and_named(stack, tmp_path):
    kill_service(TARGET, duration_s=60)  # this test process is a live run holding catalog
    try:
        proc, journal = _chaos_run(stack, tmp_path, _experiment([SAFETY], pause_after_s=0.5))
        [mine] = _leases(stack)
        assert journal["chaoscheckout_safety"]["left_alone"] == [
            {"fault_id": mine.fault_id, "run_id": mine.owner.run_id}]
        assert not service_is_healthy(TARGET)  # neither its rollback nor its safety control undid it
        experiment = _experiment([SAFETY], pause_after_s=0.5)
        del experiment["steady-state-hypothesis"]
        proc, journal = _chaos_run(stack, tmp_path, experiment)
        [kill] = journal["run"]
        assert kill["status"] == "failed" and mine.owner.run_id in kill["exception"][-1]
    finally:
        start_service(TARGET, timeout_s=30)
    assert _leases(stack) == []


def test_halt_reverts_aborts_the_run_and_blocks_until_cleared(stack, tmp_path):
    cli = str(Path(sys.executable).parent / "chaoscheckout")
    proc, journal_path = _start_run(stack, tmp_path, _experiment([SAFETY], duration_s=60, pause_after_s=30))
    try:
        halted = subprocess.run([cli, "halt", "--reason", "test halt"], env=stack.env, capture_output=True,
                                text=True, timeout=60)
        assert halted.returncode == 0, halted.stdout + halted.stderr
        assert service_is_healthy(TARGET) and _leases(stack) == []
        print(halted.stdout.strip().splitlines()[-1])
        proc.wait(timeout=15)  # the run's heartbeat sees the halt and interrupts it
        journal = json.loads(journal_path.read_text())
        assert journal["status"] == "interrupted"
        assert journal["chaoscheckout_safety"]["halt"]["reason"] == "test halt"
        refused, _ = _chaos_run(stack, tmp_path, _experiment([SAFETY], pause_after_s=0.5))
        assert "halted" in refused.stdout + refused.stderr and service_is_healthy(TARGET)
        with pytest.raises(Exception, match="halted"):
            kill_service(TARGET, duration_s=10)
    finally:
        subprocess.run([cli, "halt", "--clear"], env=stack.env, capture_output=True, timeout=60)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        start_service(TARGET, timeout_s=30)
    kill_service(TARGET, duration_s=10)  # cleared: allowed again
    start_service(TARGET, timeout_s=30)


def test_reaper_survives_a_bad_lease_and_keeps_reverting(stack):
    """A lease that cannot be reverted is retried; the others are still reverted."""
    leases_dir = stack.state_dir / "leases"
    bad = LeaseStore(leases_dir).create("kill", "ghost", "local", {}, 1, Owner(
        "run-gone", socket.gethostname(), 999999, 1, boot_id()))
    try:
        kill_service(TARGET, duration_s=1)
        deadline = time.time() + 10
        while time.time() < deadline and not (service_is_healthy(TARGET, 0.5) and len(_leases(stack)) == 1):
            time.sleep(0.1)
        assert service_is_healthy(TARGET), "one bad lease stopped the reaper"
        assert [lease.fault_id for lease in _leases(stack)] == [bad.fault_id]  # retried, never dropped
    finally:
        LeaseStore(leases_dir).remove(bad.fault_id)
        start_service(TARGET, timeout_s=30)


def test_reaper_process_stops_cleanly_on_sigterm(tmp_path):
    """SIGTERM once the reaper says it is watching (its handler is in place and its
    reverters imported): it stops at once, with status 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaoscheckout.faults.reaper", "--state-dir", str(tmp_path),
         "--interval-s", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = line_reader(proc.stdout)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not any("reaper: watching" in line for line in seen):
            assert proc.poll() is None, f"the reaper exited on its own: {seen}"
            assert time.monotonic() < deadline, f"the reaper never said it was watching: {seen}"
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stopped_s = time.monotonic() - started
        while True:  # the rest of its output: the reader reaches the end of the pipe at once
            try:
                seen.append(lines.get(timeout=2))
            except queue.Empty:
                break
        out = "".join(seen)
        assert proc.returncode == 0, out
        assert stopped_s < 5, stopped_s  # one tick at most, never the next interval's work
        assert "reaper: stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_safeguard_breach_during_the_rollbacks_neither_hangs_nor_loses_the_journal(stack, tmp_path):
    """A safeguard that breaches once the method is over (here: while a rollback runs) used to
    raise SystemExit in the middle of the rollbacks: no journal, and the safeguards' polling
    threads kept `chaos run` alive until it was killed."""
    flag = tmp_path / "rollback-started"
    guard = {"type": "probe", "name": "breaches-once-the-rollback-runs", "tolerance": 0, "frequency": 0.2,
             "provider": {"type": "process", "path": "test", "arguments": ["!", "-e", str(flag)]}}
    experiment = {
        "version": "1.0.0", "title": "a guard breaches during the rollbacks",
        "description": "written by tests/test_safety.py",
        "controls": [SAFETY, {"name": "safeguard", "provider": {
            "type": "python", "module": "chaosaddons.controls.safeguards",
            "arguments": {"probes": [guard]}}}],
        "steady-state-hypothesis": {"title": "catalog is up", "probes": [_healthy_probe("catalog-up")]},
        "method": [{"type": "probe", "name": "catalog-still-up", "tolerance": True,
                    "provider": _healthy_probe("x")["provider"]}],
        "rollbacks": [{"type": "action", "name": "slow-rollback", "provider": {
            "type": "process", "path": "sh", "arguments": ["-c", f"touch {flag}; sleep 3"]}}],
    }
    proc, journal = _chaos_run(stack, tmp_path, experiment)  # times out (fails) if the run hangs
    assert journal["status"] == "completed", proc.stdout + proc.stderr
    assert journal["rollbacks"] and journal["rollbacks"][0]["status"] == "succeeded"
    late = journal["chaoscheckout_safety"]["late_interrupts"]
    assert late and late[0]["phase"] == "the rollbacks", proc.stderr
