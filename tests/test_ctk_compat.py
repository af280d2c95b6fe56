"""The newest Chaos Toolkit (Python 3.12 virtualenv): versions, and the fast tier under it.

`make setup-ctk-latest` builds ``.venv-ctk-latest`` with the newest chaostoolkit,
chaostoolkit-lib and chaostoolkit-addons the registry serves; the real runs under it are in
tests/test_experiment_runs.py (tight-threshold aborts compared with this virtualenv's).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FAST_MODULES

ROOT = Path(__file__).resolve().parent.parent
CTK_LATEST_PYTHON = ROOT / ".venv-ctk-latest" / "bin" / "python"

NO_VENV = "no newest-Chaos-Toolkit virtualenv: `make setup-ctk-latest` needs Python 3.12"
pytestmark = [pytest.mark.ctk_latest, pytest.mark.skipif(not CTK_LATEST_PYTHON.exists(), reason=NO_VENV)]


def _versions() -> dict[str, str]:
    out = subprocess.run([str(CTK_LATEST_PYTHON), "-m", "pip", "list", "--format", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out)}


def _tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def test_the_virtualenv_holds_the_newest_chaos_toolkit():
    versions = _versions()
    print(f"\n{ {k: v for k, v in versions.items() if k.startswith('chaostoolkit')} }")
    assert _tuple(versions["chaostoolkit"]) >= (1, 21)
    assert _tuple(versions["chaostoolkit-lib"]) >= (1, 45)
    assert _tuple(versions["chaostoolkit-addons"]) >= (0, 12)
    python = subprocess.run([str(CTK_LATEST_PYTHON), "--version"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert python.startswith("Python 3.12")


def test_the_fast_tier_passes_under_the_newest_chaos_toolkit():
    modules = sorted(str(ROOT / "tests" / f"{name}.py") for name in FAST_MODULES
                     if (ROOT / "tests" / f"{name}.py").exists())
    proc = subprocess.run([str(CTK_LATEST_PYTHON), "-m", "pytest", "-q", "-m", "fast",
                           "-p", "no:cacheprovider", *modules],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    print(proc.stdout[-1500:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
