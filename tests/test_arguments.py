"""Fast tier: every activity's arguments judged before the run (chaoscheckout/arguments.py).

The run itself (a refused chaos run injects nothing) is in tests/test_invalid_inputs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chaoslib.configuration import load_configuration, load_dynamic_configuration

from chaoscheckout.arguments import argument_problems
from chaoscheckout.disk.actions import fill_disk
from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.network.actions import add_latency
from chaoscheckout.network.response_loss import lose_responses
from chaoscheckout.service.actions import kill_service
from chaoscheckout.sli import probes

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.json"))
ENV_KEYS = ("CHAOSCHECKOUT_BITE_TIMEOUT_S", "CHAOSCHECKOUT_OBSERVE_S", "CHAOSCHECKOUT_FAULT_DURATION_S",
            "CHAOSCHECKOUT_PG_LEAVE_BYTES", "CHAOSCHECKOUT_PAYMENTS_FRACTION",
            "CHAOSCHECKOUT_RESPONSE_LOSS_FRACTION")


def _problems(path: Path) -> list[str]:
    experiment = json.loads(path.read_text())
    configuration = load_configuration(experiment.get("configuration", {}))
    return argument_problems(experiment, load_dynamic_configuration(configuration, {}), {})


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_shipped_experiments_pass_as_shipped(clean_env, path):
    assert _problems(path) == []


def test_fill_pg_disk_bad_values_are_named_before_the_fill(clean_env):
    clean_env.setenv("CHAOSCHECKOUT_BITE_TIMEOUT_S", "0")
    clean_env.setenv("CHAOSCHECKOUT_OBSERVE_S", "-3")
    clean_env.setenv("CHAOSCHECKOUT_FAULT_DURATION_S", "9999")
    problems = _problems(ROOT / "experiments" / "fill-pg-disk.json")
    assert len(problems) == 3, problems
    fill, wait, observe = problems
    assert fill.startswith("method activity 'fill-postgres-disk'") and "exceeds the maximum" in fill
    assert wait.startswith("method activity 'wait-until-postgres-refuses-an-order-write'")
    assert "timeout_s must be" in wait and "got 0" in wait
    assert observe.startswith("method activity 'observe-while-disk-full'") and "got -3" in observe


@pytest.mark.parametrize("name", ["kill-catalog", "payments-latency", "payments-response-lost"])
def test_a_negative_pause_is_named(clean_env, name):
    clean_env.setenv("CHAOSCHECKOUT_OBSERVE_S", "-3")
    problems = _problems(ROOT / "experiments" / f"{name}.json")
    assert len(problems) == 1 and "pause after must be a number of seconds >= 0, got -3" in problems[0]


def _experiment(*activities: dict) -> dict:
    return {"title": "t", "description": "d", "method": list(activities)}


def _activity(module: str, func: str, arguments: dict, name: str = "a", pauses: dict | None = None) -> dict:
    activity = {"type": "action", "name": name,
                "provider": {"type": "python", "module": module, "func": func, "arguments": arguments}}
    return {**activity, "pauses": pauses} if pauses is not None else activity


@pytest.mark.parametrize("module, func, arguments, message", [
    ("chaoscheckout.service.actions", "kill_service", {"service": "catalog", "duration_s": -1},
     "must be > 0"),
    ("chaoscheckout.network.actions", "add_latency", {"service": "payments", "delay_ms": 300,
                                                      "scope": "packet"}, "scope must be one of"),
    ("chaoscheckout.network.actions", "add_latency", {"service": "payments", "delay_ms": 300,
                                                      "jitter_ms": 400}, "jitter_ms"),
    ("chaoscheckout.network.response_loss", "lose_responses", {"service": "provider", "fraction": 2},
     "fraction"),
    ("chaoscheckout.disk.actions", "fill_disk", {"service": "postgres", "leave_bytes": -5}, "leave_bytes"),
    ("chaoscheckout.disk.actions", "fill_disk", {"service": "postgres", "leave_bytes": "1.5"},
     "whole number"),
    ("chaoscheckout.sli.probes", "charges_without_order_details", {"grace_s": 5, "since_s": 2}, "since_s"),
    ("chaoscheckout.sli.probes", "double_charges", {"since": float("nan")}, "since"),
    ("chaoscheckout.sli.probes", "wait_for_increase", {"query": " "}, "query"),
    ("chaoscheckout.sli.probes", "wait_for_increase", {"query": "up", "duration": 3}, "do not fit"),
])
def test_each_checked_activity_names_its_bad_argument(module, func, arguments, message):
    problems = argument_problems(_experiment(_activity(module, func, arguments, name="x")), {}, {})
    assert len(problems) == 1 and problems[0].startswith("method activity 'x':"), problems
    assert message in problems[0]


@pytest.mark.parametrize("func, arguments", [
    (kill_service, {"service": "catalog", "duration_s": -1}),
    (add_latency, {"service": "payments", "delay_ms": 300, "scope": "packet"}),
    (lose_responses, {"service": "provider", "fraction": 2}),
    (fill_disk, {"service": "postgres", "leave_bytes": -5}),
    (probes.wait_for_increase, {"query": "up", "timeout_s": 0}),
    (probes.observe, {"seconds": -1}),
])
def test_the_activity_refuses_what_the_pre_check_refuses_with_the_same_words(func, arguments, tmp_path):
    module = func.__module__
    problems = argument_problems(_experiment(_activity(module, func.__name__, arguments)), {}, {})
    configuration = {"chaoscheckout_state_dir": str(tmp_path)}  # no stack: refused before any lookup
    with pytest.raises(InvalidFaultArgument) as refused:
        func(**arguments, configuration=configuration)
    assert problems == [f"method activity 'a': {refused.value}"]


def test_substituted_values_pauses_and_other_providers():
    configuration = {"seconds": 5, "late": "10"}
    experiment = _experiment(
        _activity("chaoscheckout.sli.probes", "observe", {"seconds": "${seconds}"}, pauses={"after": 3}),
        _activity("chaoscheckout.sli.probes", "observe", {"seconds": 1}, name="b",
                  pauses={"before": "${late}"}),
        _activity("chaosaddons.whatever", "anything", {"seconds": -1}, name="c"),  # not this package's
        _activity("chaoscheckout.sli.probes", "prometheus_value", {"query": ""}, name="d"),  # no pre-check
        {"ref": "a"},
    )
    problems = argument_problems(experiment, configuration, {})
    assert problems == ["method activity 'b': pause before must be a number of seconds >= 0, got '10'"]
