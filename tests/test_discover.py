"""`chaos discover chaostoolkit-checkout --no-install` lists every activity, typed and documented."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import chaoscheckout
from chaoscheckout.faults.kinds import activity_type

CHAOS = str(Path(sys.executable).parent / "chaos")
EXPECTED_TYPE = {"actions": "action", "probes": "probe", "guards": "probe"}


def _present_modules() -> list[str]:
    modules = [*chaoscheckout.ACTIVITY_MODULES, *chaoscheckout.CONTROL_MODULES]
    return [m for m in modules if importlib.util.find_spec(m) is not None]


def _discover(tmp_path: Path) -> dict:
    out = tmp_path / "discovery.json"
    proc = subprocess.run(
        [CHAOS, "--no-version-check", "discover", "chaostoolkit-checkout", "--no-install",
         "--discovery-path", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_every_public_activity_is_listed_with_its_type_and_docs(tmp_path):
    discovery = _discover(tmp_path)
    assert discovery["extension"]["name"] == "chaostoolkit-checkout"
    assert discovery["extension"]["version"] == chaoscheckout.__version__
    listed = {(a["mod"], a["name"]): a for a in discovery["activities"]}
    modules = _present_modules()
    for required in ("chaoscheckout.service.actions", "chaoscheckout.service.probes",
                     "chaoscheckout.disk.actions", "chaoscheckout.disk.probes",
                     "chaoscheckout.controls.safety"):
        assert required in modules
    for module_name in modules:
        module = importlib.import_module(module_name)
        expected = EXPECTED_TYPE.get(module_name.rsplit(".", 1)[1], "control")
        if module_name in chaoscheckout.ACTIVITY_MODULES and expected == "control":  # a kind's one module
            expected = None
        for func in module.__all__:
            assert (module_name, func) in listed, f"{module_name}.{func} not discovered"
            activity = listed[(module_name, func)]
            want = expected or activity_type(module_name, func)
            assert activity["type"] == want, f"{module_name}.{func} listed as {activity['type']}"
            assert len((activity.get("doc") or "").strip()) > 40, f"{module_name}.{func} has no docs"
    assert {mod for mod, _ in listed} == set(modules)


def test_probes_are_not_listed_as_actions(tmp_path):
    activities = _discover(tmp_path)["activities"]
    assert {a["type"] for a in activities if a["mod"].endswith(".probes")} == {"probe"}
    assert {a["type"] for a in activities if a["mod"].endswith(".actions")} == {"action"}
    kill = next(a for a in activities if a["name"] == "kill_service")
    assert [arg["name"] for arg in kill["arguments"]] == ["service", "duration_s", "configuration"]
