"""Kill faults against the real stack: the caller sees connection refused, start brings it back."""

from __future__ import annotations

import time

import httpx
import pytest

from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.service.actions import kill_service, start_service
from chaoscheckout.service.probes import describe_service, service_is_healthy, service_pid

TARGET = "catalog"


def _leases(stack) -> list:
    return LeaseStore(stack.state_dir / "leases").live()


def _health_url(stack) -> str:
    return stack.registry.service(TARGET).health_url


def test_kill_then_start(stack):
    pid_before = service_pid(TARGET)
    assert pid_before and service_is_healthy(TARGET)

    result = kill_service(TARGET, duration_s=30)
    try:
        assert result["kind"] == "kill" and result["backend"] == "local" and result["target"] == TARGET
        assert result["parameters"]["pid"] == pid_before
        assert {lease.fault_id for lease in _leases(stack)} == {result["fault_id"]}
        # the caller's view: nothing listens any more
        with pytest.raises(httpx.ConnectError):
            httpx.get(_health_url(stack), timeout=2)
        assert service_is_healthy(TARGET) is False
        assert service_pid(TARGET) is None
        time.sleep(1.0)  # autorestart=false: it stays down
        assert service_is_healthy(TARGET) is False
    finally:
        started = start_service(TARGET, timeout_s=30)
    assert started["started"] is True and started["already_running"] is False
    assert started["reverted_leases"] == [result["fault_id"]]
    assert httpx.get(_health_url(stack), timeout=2).status_code == 200
    assert service_pid(TARGET) not in (None, pid_before)
    assert _leases(stack) == []


def test_start_when_running_is_a_noop_that_says_so(stack):
    pid = service_pid(TARGET)
    result = start_service(TARGET, timeout_s=10)
    assert result["already_running"] is True and result["started"] is False
    assert result["reverted_leases"] == []
    assert service_pid(TARGET) == pid


def test_describe(stack):
    info = describe_service(TARGET)
    assert info["state"] in ("STARTING", "RUNNING")
    assert info["chaos_target"] is True and info["runtime"] == "local"


def test_reaper_restarts_a_killed_service_at_lease_expiry(stack):
    result = kill_service(TARGET, duration_s=2)
    expires_at = LeaseStore(stack.state_dir / "leases").live()[0].expires_at
    try:
        assert service_is_healthy(TARGET) is False
        deadline = expires_at + 8
        while time.time() < deadline and not service_is_healthy(TARGET, timeout_s=0.5):
            time.sleep(0.1)
        back_after_expiry = time.time() - expires_at
        assert service_is_healthy(TARGET), "the reaper did not start the service after lease expiry"
        assert back_after_expiry > -0.5, "service came back before its lease expired"
        deadline = time.time() + 5
        while time.time() < deadline and _leases(stack):
            time.sleep(0.1)
        assert _leases(stack) == []
        print(f"reaper: {result['fault_id']} healthy {back_after_expiry:.2f} s after expiry")
    finally:
        start_service(TARGET, timeout_s=30)


@pytest.mark.parametrize("step", ["during-kill", "after-kill"])
def test_kill_that_fails_after_the_signal_is_undone_before_the_error(stack, monkeypatch, step):
    """Lease first, effect second: a kill whose call fails once SIGKILL was sent (e.g. a
    short io_timeout_s while waiting for the process to be down) starts the service again
    before the error reaches the caller, and leaves no lease."""
    from chaoscheckout.faults import inject
    from chaoscheckout.runtime.local import LocalRuntime

    real_kill = LocalRuntime.kill

    def kill_then_fail(self, service, timeout_s=10.0):
        real_kill(self, service, timeout_s)
        raise TimeoutError("lost the answer after SIGKILL (forced by the test)")

    def fail(*args, **kwargs):
        raise RuntimeError("failure after the effect (forced by the test)")

    if step == "during-kill":
        monkeypatch.setattr(LocalRuntime, "kill", kill_then_fail)
    else:
        monkeypatch.setattr(inject, "_announce", fail)
    pid_before = service_pid(TARGET)
    with pytest.raises(Exception, match="forced by the test") as raised:
        kill_service(TARGET, duration_s=30)
    assert "was reverted after this failure (verified: True" in "".join(raised.value.__notes__)
    assert service_is_healthy(TARGET) and service_pid(TARGET) != pid_before  # killed, then started
    assert _leases(stack) == []
