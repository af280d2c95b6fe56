"""The activity context: settings, registry and runtime resolved once per activity (fast tier)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import chaoscheckout.context as context_module
from chaoscheckout.context import ActivityContext, activity_context
from chaoscheckout.errors import BackendUnavailable, InvalidFaultArgument, TargetRefused
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.owner import current_owner
from chaoscheckout.faults.revert import revert_lease
from chaoscheckout.network.actions import add_latency
from chaoscheckout.network.probes import latency_fault
from chaoscheckout.network.response_loss import lose_responses
from chaoscheckout.runtime.local import LocalRuntime

pytestmark = pytest.mark.fast  # no stack: files only


def _state_dir(tmp_path: Path) -> Path:
    """A registry of services run some other way (no supervisord): web is a target without a
    proxy route, db is not a target."""
    (tmp_path / "services.json").write_text(json.dumps({
        "runtime": "local", "supervisor_url": None, "services": {
            "web": {"port": 1, "chaos_target": True},
            "db": {"port": 2},
        }}))
    return tmp_path


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often settings and the registry are resolved (the context is their only reader)."""
    calls = {"settings": 0, "registry": 0}

    def count(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(context_module, "settings_from", count("settings", context_module.settings_from))
    monkeypatch.setattr(context_module, "load_registry", count("registry", context_module.load_registry))
    return calls


def test_settings_are_checked_at_once_the_registry_read_on_first_use(tmp_path):
    with pytest.raises(InvalidFaultArgument, match="io_timeout_s"):
        activity_context({"chaoscheckout_state_dir": str(tmp_path), "chaoscheckout_io_timeout_s": "nan"})
    ctx = activity_context({"chaoscheckout_state_dir": str(tmp_path / "absent")})  # no registry: fine
    assert isinstance(ctx, ActivityContext) and activity_context(ctx) is ctx


def test_local_runtime_answers_target_without_supervisord(tmp_path):
    ctx = activity_context({"chaoscheckout_state_dir": str(_state_dir(tmp_path))})
    assert isinstance(ctx.runtime, LocalRuntime) and ctx.runtime is ctx.runtime
    assert ctx.runtime.target("web").name == "web" and ctx.runtime.proxy_control_url is None
    with pytest.raises(TargetRefused):
        ctx.runtime.target("db")


def test_a_fault_action_resolves_once(tmp_path, counted):
    configuration = {"chaoscheckout_state_dir": str(_state_dir(tmp_path))}
    with pytest.raises(BackendUnavailable, match="no fault-proxy route"):
        lose_responses("web", fraction=0.5, duration_s=5, configuration=configuration)
    assert counted == {"settings": 1, "registry": 1}
    with pytest.raises(TargetRefused):  # the runtime refuses, the registry is not read again
        add_latency("db", delay_ms=10, backend="proxy", configuration=configuration)
    assert counted == {"settings": 2, "registry": 2}
    assert not list((tmp_path / "leases").glob("*.json"))  # nothing injected


def test_a_probe_and_a_revert_resolve_once(tmp_path, counted):
    configuration = {"chaoscheckout_state_dir": str(_state_dir(tmp_path))}
    assert latency_fault("web", configuration) is None
    assert counted == {"settings": 1, "registry": 1}
    store = LeaseStore(tmp_path / "leases")
    lease = store.create("response_loss", "web", "proxy", {"fraction": 0.5}, 30, current_owner())
    result = revert_lease(lease, configuration)  # the undo and its check share one context
    assert result["verified"] is True and not store.for_service("web")
    assert counted == {"settings": 2, "registry": 2}
