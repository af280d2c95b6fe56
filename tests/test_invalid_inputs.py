"""Invalid inputs are refused before anything changes; the stack is untouched afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaoscheckout.disk.actions import fill_disk, release_disk
from chaoscheckout.disk.ballast import BALLAST_NAME
from chaoscheckout.errors import InvalidFaultArgument, TargetRefused, UnknownService
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.runtime import get_runtime
from chaoscheckout.service.actions import kill_service, start_service
from chaoscheckout.service.probes import service_is_healthy

CHAOS = str(Path(sys.executable).parent / "chaos")
ROOT = Path(__file__).resolve().parent.parent
NAN, INF = float("nan"), float("inf")

CASES = [
    ("unknown service", kill_service, {"service": "nope"}, UnknownService, "unknown service 'nope'"),
    ("not a target", kill_service, {"service": "prometheus"}, TargetRefused, "not a chaos target"),
    ("negative duration", kill_service, {"service": "catalog", "duration_s": -1}, None, "must be > 0"),
    ("zero duration", kill_service, {"service": "catalog", "duration_s": 0}, None, "must be > 0"),
    ("NaN duration", kill_service, {"service": "catalog", "duration_s": NAN}, None, "must be > 0"),
    ("inf duration", kill_service, {"service": "catalog", "duration_s": INF}, None, "must be > 0"),
    ("text duration", kill_service, {"service": "catalog", "duration_s": "soon"}, None, "number of seconds"),
    ("duration above max", kill_service, {"service": "catalog", "duration_s": 601}, None,
     "exceeds the maximum"),
    ("bool duration", kill_service, {"service": "catalog", "duration_s": True}, None, "number of seconds"),
    ("probe bad timeout", service_is_healthy, {"service": "catalog", "timeout_s": "x"}, None,
     "must be a number"),
    ("probe unknown", service_is_healthy, {"service": "nope"}, UnknownService, "unknown service"),
    ("start unknown", start_service, {"service": "nope"}, UnknownService, "unknown service"),
    ("start negative timeout", start_service, {"service": "catalog", "timeout_s": -5}, None, "must be > 0"),
    ("start NaN timeout", start_service, {"service": "catalog", "timeout_s": NAN}, None, "must be > 0"),
    ("fill unknown", fill_disk, {"service": "nope"}, UnknownService, "unknown service"),
    ("fill not a target", fill_disk, {"service": "prometheus"}, TargetRefused, "not a chaos target"),
    ("fill no data_dir", fill_disk, {"service": "catalog"}, None, "no data_dir"),
    ("negative leave_bytes", fill_disk, {"service": "postgres", "leave_bytes": -1}, None, ">= 0"),
    ("NaN leave_bytes", fill_disk, {"service": "postgres", "leave_bytes": NAN}, None, "whole number"),
    ("fractional leave_bytes", fill_disk, {"service": "postgres", "leave_bytes": 1.5}, None, "whole number"),
    ("bool leave_bytes", fill_disk, {"service": "postgres", "leave_bytes": True}, None, "whole number"),
    ("leave_bytes above the disk", fill_disk, {"service": "postgres", "leave_bytes": 10**15}, None,
     "not smaller than the filesystem"),
    ("fill duration above max", fill_disk, {"service": "postgres", "duration_s": 10**6}, None,
     "exceeds the maximum"),
]


def _snapshot(stack) -> dict:
    runtime = get_runtime()
    registry = stack.registry
    return {
        "pids": {name: runtime.pid(name) for name, entry in registry.services.items() if entry.port},
        "leases": [lease.fault_id for lease in LeaseStore(stack.state_dir / "leases").live()],
        "ballast": (Path(registry.service("postgres").data_dir) / BALLAST_NAME).exists(),
    }


@pytest.mark.parametrize("label,func,kwargs,error,message", CASES, ids=[c[0] for c in CASES])
def test_invalid_input_is_refused_and_nothing_changes(stack, label, func, kwargs, error, message):
    before = _snapshot(stack)
    assert before["leases"] == [] and before["ballast"] is False
    with pytest.raises(error or InvalidFaultArgument, match=message):
        func(**kwargs)
    assert _snapshot(stack) == before


def test_leave_bytes_equal_to_free_space_is_refused(stack):
    st = os.statvfs(get_runtime().data_dir("postgres"))
    with pytest.raises(InvalidFaultArgument, match="nothing to fill|not smaller"):
        fill_disk("postgres", leave_bytes=st.f_bavail * st.f_frsize + 4096)
    assert release_disk("postgres")["removed"] is False


def _validate(tmp_path: Path, stack, arguments: dict) -> subprocess.CompletedProcess:
    experiment = {
        "version": "1.0.0", "title": "t", "description": "d",
        "method": [{"type": "action", "name": "kill", "provider": {
            "type": "python", "module": "chaoscheckout.service.actions", "func": "kill_service",
            "arguments": arguments}}],
    }
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(experiment))
    return subprocess.run([CHAOS, "--no-version-check", "validate", str(path)], cwd=tmp_path,
                          env=stack.env, capture_output=True, text=True, timeout=60)


def test_chaos_validate_catches_what_the_signature_can(stack, tmp_path):
    assert _validate(tmp_path, stack, {"service": "catalog", "duration_s": 5}).returncode == 0
    misspelt = _validate(tmp_path, stack, {"service": "catalog", "duraton_s": 5})
    assert misspelt.returncode != 0 and "duraton_s" in misspelt.stdout + misspelt.stderr
    missing = _validate(tmp_path, stack, {"duration_s": 5})
    assert missing.returncode != 0 and "service" in missing.stdout + missing.stderr
    # values are not checked by `chaos validate` (they may be ${substituted}): the action refuses them
    assert _snapshot(stack)["leases"] == []


def test_runtime_selection(stack):
    assert get_runtime().name == "local"
    assert get_runtime({"chaoscheckout_runtime": "local"}).name == "local"
    with pytest.raises(InvalidFaultArgument, match="unknown runtime 'podman'"):
        get_runtime({"chaoscheckout_runtime": "podman"})


def test_chaos_validate_checks_the_safety_control_arguments(stack, tmp_path):
    experiment = {
        "version": "1.0.0", "title": "t", "description": "d",
        "controls": [{"name": "safety", "provider": {
            "type": "python", "module": "chaoscheckout.controls.safety",
            "arguments": {"on_stale": "ignore"}}}],
        "method": [{"type": "probe", "name": "p", "provider": {
            "type": "python", "module": "chaoscheckout.service.probes", "func": "service_is_healthy",
            "arguments": {"service": "catalog"}}}],
    }
    path = tmp_path / "experiment.json"
    path.write_text(json.dumps(experiment))
    proc = subprocess.run([CHAOS, "--no-version-check", "validate", str(path)], cwd=tmp_path,
                          env=stack.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "on_stale must be one of" in proc.stdout + proc.stderr


def test_a_bad_argument_after_the_fault_refuses_the_whole_run_before_anything(stack, tmp_path):
    """fill-pg-disk's wait comes after the fill: its bad timeout used to be refused with the
    disk already full. The safety control judges every activity first: nothing starts."""
    before = _snapshot(stack)
    loads = set((stack.state_dir / "load").glob("k6-*"))
    journal = tmp_path / "journal.json"
    env = {**stack.env, "CHAOSCHECKOUT_BITE_TIMEOUT_S": "0"}
    proc = subprocess.run([CHAOS, "--no-version-check", "run", "--journal-path", str(journal),
                           str(ROOT / "experiments" / "fill-pg-disk.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    raw = json.loads(journal.read_text())
    refused = raw["chaoscheckout_safety"]["refused_arguments"]
    assert refused == ["method activity 'wait-until-postgres-refuses-an-order-write': "
                       "timeout_s must be a finite number in (0, 600], got 0"], refused
    assert "invalid arguments, nothing was injected" in output and proc.returncode != 0
    assert raw["status"] == "interrupted" and raw["run"] == [], raw["status"]
    assert raw.get("steady_states", {}).get("before") is None  # nothing probed either
    assert set((stack.state_dir / "load").glob("k6-*")) == loads  # no load started
    assert _snapshot(stack) == before
