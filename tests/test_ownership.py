"""Faults owned by a run: liveness, the reaper's dead-man switch, no mutual undo, halt,
failure at each injection step, verified reverts, and the lease edge cases.

No checkout stack: real processes, a real fault proxy and the reaper's tick called
directly (tests/netfixtures.py). Runs in about 20 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netfixtures import BASE, ProxyRig, proxied_upstream

from chaoscheckout.faults import inject as inject_mod
from chaoscheckout.faults.control import fault_status, halt
from chaoscheckout.faults.deadruns import read_records
from chaoscheckout.faults.halt import FaultsHalted, clear_halt
from chaoscheckout.faults.inject import FaultConflict
from chaoscheckout.faults.kinds import ACTIVITY_MODULES, KINDS
from chaoscheckout.faults.leases import KINDS as LEASE_KINDS
from chaoscheckout.faults.leases import Lease, LeaseStore, LeasesUnreadable
from chaoscheckout.faults.owner import Owner, boot_id, boottime, current_owner, declared_dead, judge_owner
from chaoscheckout.faults.reaper import Reaper
from chaoscheckout.faults.revert import revert_all, revert_dead
from chaoscheckout.network.actions import add_latency, remove_latency
from chaoscheckout.network.proxy_client import ProxyControl
from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry, save_registry

CLI = str(Path(sys.executable).parent / "chaoscheckout")


@pytest.fixture(scope="module")
def rig() -> Iterator[ProxyRig]:
    rig = ProxyRig(upstream_port=BASE + 73, listen_port=BASE + 74, control_port=BASE + 75)
    with proxied_upstream(rig, f"a={rig.listen_port}:127.0.0.1:{rig.upstream_port}",
                          f"b={BASE + 76}:127.0.0.1:{rig.upstream_port}"):
        yield rig


@pytest.fixture()
def conf(tmp_path: Path, rig: ProxyRig) -> Iterator[dict]:
    def entry(name: str) -> ServiceEntry:
        return ServiceEntry(name=name, host="127.0.0.1", port=rig.upstream_port, process=name,
                            health_url=f"{rig.direct_url}/healthz", chaos_target=True,
                            proxy=ProxyRoute(name, rig.listen_port if name == "a" else BASE + 76))

    save_registry(Registry(runtime="local", proxy_control_url=rig.control_url,
                           services={"a": entry("a"), "b": entry("b")}), tmp_path / "services.json")
    configuration = {"chaoscheckout_state_dir": str(tmp_path)}
    yield configuration
    clear_halt(tmp_path)
    revert_all(configuration)


def _toxic(rig: ProxyRig, route: str):
    return ProxyControl(rig.control_url).latency(route)


def _leases(conf: dict) -> list[Lease]:
    return LeaseStore(Path(conf["chaoscheckout_state_dir"]) / "leases").live()


def _other_run(conf: dict, service: str) -> subprocess.Popen:
    """Another live run: a process that injects latency on ``service`` and stays alive."""
    code = textwrap.dedent(f"""
        import sys, time
        from chaoscheckout.network.actions import add_latency
        add_latency({service!r}, delay_ms=50, duration_s=60, backend="proxy",
                    configuration={{"chaoscheckout_state_dir": {conf['chaoscheckout_state_dir']!r}}})
        print("injected", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "injected"
    return proc


def _dead_owner() -> Owner:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=30)
    return Owner("run-dead", socket.gethostname(), int(proc.stdout), 1, boot_id())


def test_one_table_drives_leases_reverters_and_discovery():
    assert LEASE_KINDS == tuple(KINDS)
    for kind in KINDS.values():
        for role in ("inject", "rollback", "revert", "verify"):
            assert callable(kind.function(role)), (kind.name, role)
        assert kind.actions_module in ACTIVITY_MODULES and kind.probes_module in ACTIVITY_MODULES


def test_owner_liveness_pid_reuse_freeze_other_host_other_boot(tmp_path):
    me = current_owner()
    assert judge_owner(me, tmp_path).alive is True
    assert judge_owner(_dead_owner(), tmp_path).alive is False
    reused = Owner(me.run_id, me.host, me.pid, me.start_ticks + 1, me.boot_id)  # same pid, other process
    verdict = judge_owner(reused, tmp_path)
    assert verdict.alive is False and "pid reused" in verdict.why
    assert judge_owner(Owner("r", "elsewhere.example", 1, 1, "x"), tmp_path).alive is None
    assert "rebooted" in judge_owner(Owner("r", me.host, me.pid, me.start_ticks, "old-boot"), tmp_path).why
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = int(Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        owner = Owner("run-x", me.host, sleeper.pid, start, me.boot_id)
        assert judge_owner(owner, tmp_path).alive is True
        (tmp_path / f"{owner.key}.json").write_text(json.dumps({"boottime": boottime() - 10}))
        verdict = judge_owner(owner, tmp_path)
        assert verdict.alive is False and "no heartbeat" in verdict.why  # hung: heartbeat stale
        (tmp_path / f"{owner.key}.json").unlink()
        os.kill(sleeper.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while judge_owner(owner, tmp_path).alive is not False and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "stopped" in judge_owner(owner, tmp_path).why
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_clock_jump_changes_no_expiry(tmp_path):
    store = LeaseStore(tmp_path / "leases")
    lease = store.create("kill", "a", "local", {}, 30, current_owner())
    assert not lease.is_expired()
    # the wall clock jumps 1 h forward / backward: a lease of this boot is judged on CLOCK_BOOTTIME
    assert not Lease.parse({**lease.to_dict(), "expires_at": time.time() - 3600}).is_expired()
    assert Lease.parse({**lease.to_dict(), "expires_at": time.time() + 3600,
                        "expires_boottime": boottime() - 1}).is_expired()
    # from another boot only the wall clock is left
    other_boot = {**lease.to_dict(), "owner": {**lease.owner.to_dict(), "boot_id": "old"}}
    assert Lease.parse({**other_boot, "expires_at": time.time() - 1}).is_expired()


def test_other_live_run_is_refused_left_alone_then_reverted_when_it_dies(conf, rig):
    other = _other_run(conf, "a")
    try:
        [theirs] = _leases(conf)
        with pytest.raises(FaultConflict, match=f"another live run: run {theirs.owner.run_id}"):
            add_latency("a", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
        mine = add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
        assert _toxic(rig, "a")["fault_id"] == theirs.fault_id and _toxic(rig, "b") is not None
        undo = remove_latency("a", conf)  # my rollback must not undo their fault
        assert undo["left_alone"] == [{"fault_id": theirs.fault_id, "run_id": theirs.owner.run_id}]
        assert _toxic(rig, "a") is not None
        assert revert_dead(conf) == []  # their owner lives
        other.kill()
        other.wait(timeout=10)
        [result] = revert_dead(conf)
        assert result["fault_id"] == theirs.fault_id and "owner dead" in result["reason"]
        assert result["verified"] is True and _toxic(rig, "a") is None
        assert [lease.fault_id for lease in _leases(conf)] == [mine["fault_id"]]
    finally:
        other.kill()
        other.wait(timeout=10)


def test_reaper_dead_man_switch_records_the_dead_run(conf, rig, tmp_path):
    other = _other_run(conf, "a")
    [lease] = _leases(conf)
    other.send_signal(signal.SIGKILL)
    other.wait(timeout=10)
    reaper = Reaper(tmp_path)
    try:
        [result] = reaper.tick()
    finally:
        reaper.release_lock()
    assert result["verified"] is True and "proxy route a: no toxic" in result["checked"]
    assert _toxic(rig, "a") is None and _leases(conf) == []
    [record] = read_records(tmp_path)
    assert record["fault_id"] == lease.fault_id and record["run_id"] == lease.owner.run_id
    assert "is gone" in record["cause"] and record["owner_last_seen_at"] <= record["detected_at"]
    assert (tmp_path / "owners" / f"{lease.owner.key}.dead").exists()
    assert fault_status(tmp_path)["dead_runs"] == [record]
    # `chaos report` pointed at the state dir accounts for the run that left no journal
    journals = tmp_path / "journals"
    journals.mkdir()
    report = subprocess.run([str(Path(sys.executable).with_name("chaos")), "report", str(tmp_path),
                             "--output", str(journals / "experiment-log"), "--format", "md",
                             "--format", "json"], capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert f"dead run     {lease.owner.run_id}: {lease.fault_id} reverted for it" in report.stdout
    log = (journals / "experiment-log.md").read_text()
    assert "## Runs that died without a journal" in log and lease.fault_id in log and "is gone" in log
    assert json.loads((journals / "experiment-log.json").read_text())["dead_runs"] == [record]


def test_forged_latency_lease_cannot_steer_the_reaper(conf, rig, tmp_path):
    """A latency lease only names its service: the route, netns and control URL a revert
    acts on are resolved by that name, whatever the lease's params say."""
    other = _other_run(conf, "a")  # a live run's toxic on route a: the forgery aims at it
    try:
        mine = add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
        leases = tmp_path / "leases"
        forged = json.loads((leases / f"{mine['fault_id']}.json").read_text())
        forged["owner"] = _dead_owner().to_dict()
        forged["params"].update(route="a", netns="a", listen=rig.listen_port, upstream="127.0.0.1:1",
                                proxy_control_url="http://127.0.0.1:9/")
        (leases / f"{mine['fault_id']}.json").write_text(json.dumps(forged))
        stray = {**forged, "fault_id": "latency-zzz-0badf00d", "service": "zzz"}  # not in the registry
        (leases / "latency-zzz-0badf00d.json").write_text(json.dumps(stray))
        reaper = Reaper(tmp_path)
        try:
            results = {r["fault_id"]: r for r in reaper.tick()}
        finally:
            reaper.release_lock()
        assert results[mine["fault_id"]]["verified"] is True
        assert "proxy route b: no toxic" in results[mine["fault_id"]]["checked"]
        assert results["latency-zzz-0badf00d"]["verified"] is True
        assert "not in the service registry: nothing touched" in results["latency-zzz-0badf00d"]["untouched"]
        assert _toxic(rig, "b") is None  # the lease's own service: reverted
        assert _toxic(rig, "a") is not None  # what the forged params pointed at: untouched
        assert [lease.service for lease in _leases(conf)] == ["a"]  # the live run's lease stays
    finally:
        other.kill()
        other.wait(timeout=10)


@pytest.mark.parametrize("step", ["lease", "effect", "after-effect", "revert-too"])
def test_failure_at_each_step_leaves_no_fault(conf, rig, monkeypatch, step):
    if step == "lease":
        def broken_write(self, lease):
            raise LeasesUnreadable("disk full (forced by the test)")
        monkeypatch.setattr(LeaseStore, "write", broken_write)
    elif step == "effect":  # the toxic is set, then the call fails (e.g. a timeout on the answer)
        real = ProxyControl.set_latency

        def set_then_fail(self, *args, **kwargs):
            real(self, *args, **kwargs)
            raise TimeoutError("answer lost (forced by the test)")
        monkeypatch.setattr(ProxyControl, "set_latency", set_then_fail)
    else:
        def fail(*args, **kwargs):
            raise RuntimeError("failure after the effect (forced by the test)")
        monkeypatch.setattr(inject_mod, "_announce", fail)
        if step == "revert-too":
            monkeypatch.setattr(ProxyControl, "clear_latency", fail)
    with pytest.raises(Exception, match="forced by the test") as raised:
        add_latency("a", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
    monkeypatch.undo()
    if step == "revert-too":  # could not revert: handed to the reaper at once
        [lease] = _leases(conf)
        assert lease.abandoned and "abandoned" in "".join(raised.value.__notes__)
        reaper = Reaper(Path(conf["chaoscheckout_state_dir"]))
        try:
            [result] = reaper.tick()
        finally:
            reaper.release_lock()
        assert result["verified"] is True
        # the owner only gave that fault up: it is not declared dead (it would be interrupted
        # in its rollbacks and write no journal)
        assert declared_dead(Path(conf["chaoscheckout_state_dir"]) / "owners") is None
    elif step != "lease":
        assert "was reverted after this failure" in "".join(raised.value.__notes__)
    assert _toxic(rig, "a") is None and _leases(conf) == []


def test_halt_reverts_every_run_blocks_injection_until_cleared(conf, rig, tmp_path):
    other = _other_run(conf, "a")
    try:
        add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
        result = halt(tmp_path, "test")
        assert result["all_verified"] and len(result["reverted"]) == 2
        assert result["elapsed_s"] < 1.0, result
        for done in result["reverted"]:  # when the undo was issued, when the effect was seen gone
            assert 0 <= done["issued_after_s"] <= done["gone_after_s"] <= result["elapsed_s"], done
        assert _toxic(rig, "a") is None and _toxic(rig, "b") is None and _leases(conf) == []
        with pytest.raises(FaultsHalted, match="halted .*halt --clear"):
            add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
        assert _toxic(rig, "b") is None and _leases(conf) == []
        status = subprocess.run([CLI, "status", "--state-dir", str(tmp_path)], capture_output=True,
                                text=True, timeout=30)
        assert "halt: ON" in status.stdout and "live faults: 0" in status.stdout
        cleared = subprocess.run([CLI, "halt", "--clear", "--state-dir", str(tmp_path)], capture_output=True,
                                 text=True, timeout=30)
        assert cleared.returncode == 0 and "halt cleared" in cleared.stdout
        add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
    finally:
        other.kill()
        other.wait(timeout=10)


def test_halt_issues_every_revert_without_waiting_for_a_slow_one(conf, rig, tmp_path, monkeypatch):
    """One slow revert (a killed service's start-up) delays only its own fault: the other
    fault is gone before the slow one's undo is even issued, and the CLI prints both times."""
    add_latency("a", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
    add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
    real = ProxyControl.clear_latency

    def slow_on_a(self, route):
        if route == "a":
            time.sleep(3)  # what a service's start-up would cost
        return real(self, route)
    monkeypatch.setattr(ProxyControl, "clear_latency", slow_on_a)
    result = halt(tmp_path, "test")  # leases are listed in name order: a sequential halt would do a first
    monkeypatch.undo()
    by_service = {r["service"]: r for r in result["reverted"]}
    assert result["all_verified"], result
    assert by_service["b"]["gone_after_s"] < by_service["a"]["issued_after_s"], by_service
    assert _toxic(rig, "a") is None and _toxic(rig, "b") is None
    clear_halt(tmp_path)
    add_latency("b", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
    out = subprocess.run([CLI, "halt", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"latency on b\): verified; revert issued \+\d+\.\d\d s, effect gone \+\d+\.\d\d s",
                     out.stdout), out.stdout


def test_halt_with_no_stack_says_so_and_keeps_the_lease(tmp_path):
    missing = subprocess.run([CLI, "halt", "--state-dir", str(tmp_path / "nope")], capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    LeaseStore(tmp_path / "leases").create("kill", "catalog", "local", {}, 30, _dead_owner())
    out = subprocess.run([CLI, "halt", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1 and "services.json" in out.stdout, out.stdout + out.stderr
    assert len(LeaseStore(tmp_path / "leases").live()) == 1  # kept for the reaper, never dropped
    assert (tmp_path / "HALT").exists()


def test_corrupt_and_half_written_leases_are_quarantined_and_reported(conf, rig, tmp_path):
    leases = tmp_path / "leases"
    leases.mkdir()
    ProxyControl(rig.control_url).set_latency("a", delay_ms=100, fault_id="latency-a-0123abcd",
                                             expires_at=time.time() + 60)
    corrupt = leases / "latency-a-0123abcd.json"
    corrupt.write_text('{"fault_id": "latency-a-0123abcd", "kind": "lat')  # half-written
    foreign = leases / "../../etc-passwd.json"
    strange = leases / "x.json"
    strange.write_text(json.dumps({"fault_id": "../victim", "kind": "kill"}))
    reaper = Reaper(tmp_path)
    try:
        assert reaper.tick() == []  # too fresh: may still be being written
        invalid = {bad["file"] for bad in fault_status(tmp_path)["invalid_leases"]}
        assert invalid == {corrupt.name, strange.name}
        old = time.time() - 10
        for path in (corrupt, strange):
            os.utime(path, (old, old))
        results = reaper.tick()
    finally:
        reaper.release_lock()
    assert not corrupt.exists() and not strange.exists() and not foreign.exists()
    assert len(LeaseStore(leases).quarantined()) == 2
    by_id = {r["fault_id"]: r for r in results}
    assert by_id["latency-a-0123abcd"]["rollback"]["proxy_toxic_removed"] is True  # reverted by its name
    assert _toxic(rig, "a") is None
    assert "bad fault_id" in by_id["x"]["cause"]
    assert {r["fault_id"] for r in read_records(tmp_path)} == {"latency-a-0123abcd", "x"}


def test_unreadable_leases_dir_is_an_error_never_a_silent_empty_list(tmp_path, conf):
    (tmp_path / "leases").write_text("not a directory")
    with pytest.raises(LeasesUnreadable, match="leases dir"):
        LeaseStore(tmp_path / "leases").live()
    reaper = Reaper(tmp_path)
    try:
        [result] = reaper.tick()
    finally:
        reaper.release_lock()
    assert "leases dir" in result["error"]
    with pytest.raises(LeasesUnreadable):
        add_latency("a", delay_ms=100, duration_s=30, backend="proxy", configuration=conf)
    assert "leases dir" in fault_status(tmp_path)["error"]
    (tmp_path / "leases").unlink()


def test_two_reapers_on_one_state_dir_one_acts_the_other_stands_by(tmp_path):
    first, second = Reaper(tmp_path), Reaper(tmp_path)
    try:
        assert first.hold_lock() and not second.hold_lock()
        assert second.tick() == []
        first.release_lock()
        assert second.hold_lock()  # takes over when the first stops
    finally:
        first.release_lock()
        second.release_lock()


def test_owner_on_another_host_is_left_to_expiry(conf, rig, tmp_path):
    foreign = Owner("run-far", "another-host.example", 4242, 99, "other-boot")
    store = LeaseStore(tmp_path / "leases")
    lease = store.create("latency", "a", "proxy", {"scope": "connection"}, 30, foreign)
    reaper = Reaper(tmp_path)
    try:
        assert reaper.tick() == []  # cannot judge another host's process: never reverted early
        [row] = fault_status(tmp_path)["faults"]
        assert row["owner"] == "unknown" and "another host" in row["owner_detail"]
        assert row["left_s"] > 25
        store.write(Lease.parse({**lease.to_dict(), "expires_at": time.time() - 1}))
        [result] = reaper.tick()  # wall-clock expiry is the rule for a foreign boot
        assert result["reason"] == "expired" and result["verified"] is True
    finally:
        reaper.release_lock()
