"""The four experiments: shape, shared steady state, and that they validate.

The runs themselves (detection power against the weakened checkout, holds against the
fixed one, abort on a tight threshold) are in tests/test_experiment_runs.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("kill-catalog", "payments-latency", "fill-pg-disk", "payments-response-lost")
# experiments whose hypothesis adds probes after the shared block (docs/steady-state.md)
EXTRA_PROBES = {"payments-response-lost": ["double_charges"]}
FAULT_FUNCS = ("kill_service", "add_latency", "fill_disk", "lose_responses")
CHAOS = str(Path(sys.executable).with_name("chaos"))


def _load(name: str) -> dict:
    return json.loads((ROOT / "experiments" / f"{name}.json").read_text())


def _doc_hypothesis() -> dict:
    text = (ROOT / "docs" / "steady-state.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/steady-state.md must hold exactly one JSON block"
    return json.loads(blocks[0])


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_steady_state_matches_the_doc(name: str) -> None:
    hypothesis, doc = _load(name)["steady-state-hypothesis"], _doc_hypothesis()
    shared = len(doc["probes"])
    assert {**hypothesis, "probes": hypothesis["probes"][:shared]} == doc
    extra = hypothesis["probes"][shared:]
    assert [p["provider"]["func"] for p in extra] == EXTRA_PROBES.get(name, [])
    assert all(p["tolerance"] == 0 for p in extra)


def test_doc_hypothesis_names_the_three_slis() -> None:
    funcs = [p["provider"]["func"] for p in _doc_hypothesis()["probes"]]
    assert funcs == ["checkout_availability", "checkout_latency_ms", "charges_without_order"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_declarations_come_before_the_method(name: str) -> None:
    experiment = _load(name)
    (ext,) = [e for e in experiment["extensions"] if e["name"] == "chaoscheckout"]
    for key in ("hypothesis", "blast_radius", "abort_condition", "method_outline"):
        assert isinstance(ext.get(key), str) and len(ext[key]) > 40, key
        assert "${" not in ext[key], f"{key} holds an unsubstituted placeholder"
    keys = list(experiment)
    assert keys.index("extensions") < keys.index("method")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_controls_safety_provenance_load_and_safeguards(name: str) -> None:
    controls = _load(name)["controls"]
    modules = [c["provider"]["module"] for c in controls]
    assert modules == ["chaoscheckout.controls.safety", "chaoscheckout.controls.provenance",
                       "chaoscheckout.load.control", "chaosaddons.controls.safeguards"]
    guards = controls[3]["provider"]["arguments"]["probes"]
    money = [g for g in guards if g["provider"]["func"] == "money_guard"]
    assert money and money[0]["frequency"] == 1, "money without order must abort at once"
    if "double_charges" in EXTRA_PROBES.get(name, []):  # its invariant has its guard too
        double = [g for g in guards if g["provider"]["func"] == "double_charge_guard"]
        assert double and double[0]["frequency"] == 1, "a double charge must abort at once"
    for guard in guards:
        assert guard["tolerance"] is True and guard.get("frequency"), guard["name"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_fault_has_a_rollback_and_a_bounded_lease(name: str) -> None:
    experiment = _load(name)
    faults = [a for a in experiment["method"] if a["provider"]["func"] in FAULT_FUNCS]
    assert len(faults) == 1
    assert faults[0]["provider"]["arguments"]["duration_s"] == "${fault_duration_s}"
    assert experiment["rollbacks"], "a fault without a rollback"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_chaos_validate(name: str) -> None:
    result = subprocess.run([CHAOS, "validate", f"experiments/{name}.json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "look valid" in result.stdout + result.stderr
