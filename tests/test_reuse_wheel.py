"""Another team's first experiment, from the built wheel, exactly as docs/reuse.md says.

A fresh virtualenv gets the wheel (nothing from this checkout is importable there), the
team's own service (a plain ``python -m http.server``, not part of stack/) runs under the
team's own supervisord beside the reaper, ``chaoscheckout registry add``/``check`` describe
it, and a real ``chaos run`` kills and restarts it. A SIGKILLed injector's fault is undone by
the reaper. Ports: ``CHAOSCHECKOUT_TEST_REUSE_PORT`` (default 27150).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serviceprocs import wait_until

ROOT = Path(__file__).resolve().parent.parent
PORT = int(os.environ.get("CHAOSCHECKOUT_TEST_REUSE_PORT", "27150"))
PIP_TIMEOUT_S = 600


@dataclass
class Team:
    work: Path
    venv: Path
    state_dir: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)


def _healthy(timeout_s: float = 1) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{PORT}/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False



@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Iterator[Team]:
    work = tmp_path_factory.mktemp("team")
    dist, venv, state_dir, www = work / "dist", work / "venv", work / "state", work / "www"
    # a new team's shell: nothing of this checkout on the path (another test module may have put
    # the repo on PYTHONPATH, and pip would then take the wheel as already installed)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    for step in (
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        [sys.executable, "-m", "venv", str(venv)],
    ):
        subprocess.run(step, cwd=work, check=True, timeout=PIP_TIMEOUT_S, capture_output=True, env=clean)
    (wheel,) = dist.glob("chaostoolkit_checkout-*.whl")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel), "supervisor"], cwd=work,
                   check=True, timeout=PIP_TIMEOUT_S, capture_output=True, env=clean)
    www.mkdir()
    (www / "healthz").write_text("ok\n")
    state_dir.mkdir(mode=0o700)
    sock = state_dir / "supervisord.sock"
    (work / "supervisord.conf").write_text(f"""[unix_http_server]
file={sock}
chmod=0700

[supervisord]
pidfile={state_dir / "supervisord.pid"}
logfile={work / "supervisord.log"}
nodaemon=false

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:inventory]
command={venv / "bin" / "python"} -m http.server {PORT} --bind 127.0.0.1 --directory {www}
autorestart=false
startsecs=1

[program:reaper]
command={venv / "bin" / "python"} -m chaoscheckout.faults.reaper --state-dir {state_dir}
autorestart=true
""")
    env = {"PATH": f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(work),
           "CHAOSCHECKOUT_STATE_DIR": str(state_dir)}
    handle = Team(work, venv, state_dir, env)
    started = handle.run(handle.bin("supervisord"), "-c", str(work / "supervisord.conf"))
    assert started.returncode == 0, started.stderr
    try:
        wait_until(_healthy, 30, "the team's inventory service answering /healthz", interval_s=0.2)
        yield handle
    finally:
        pid = int((state_dir / "supervisord.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the team's supervisord stopping",
                   interval_s=0.2)


def test_the_wheel_is_what_runs(team):
    """Nothing of this checkout leaks in: the extension comes from the wheel's site-packages."""
    where = team.run(team.bin("python"), "-c", "import chaoscheckout; print(chaoscheckout.__file__)")
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout, where.stdout + where.stderr
    stack = team.run(team.bin("python"), "-c", "import stack")
    assert stack.returncode != 0, "the reference stack must not be part of the wheel"


def test_registry_add_then_check(team):
    add = team.run(team.bin("chaoscheckout"), "registry", "add", "inventory", "--port", str(PORT),
                   "--health-url", f"http://127.0.0.1:{PORT}/healthz", "--target",
                   "--supervisor-url", f"unix://{team.state_dir / 'supervisord.sock'}")
    assert add.returncode == 0, add.stdout + add.stderr
    check = team.run(team.bin("chaoscheckout"), "registry", "check", "--probe", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["valid"] and report["probes"]["supervisord"] == "ok"
    assert report["services"]["inventory"]["chaos_target"] is True
    # a bad entry is refused and the registry is unchanged
    before = (team.state_dir / "services.json").read_text()
    bad = team.run(team.bin("chaoscheckout"), "registry", "add", "../etc", "--port", "1")
    assert bad.returncode != 0 and "nothing written" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    assert (team.state_dir / "services.json").read_text() == before


EXPERIMENT = {
    "version": "1.0.0",
    "title": "inventory comes back after a kill",
    "description": "The first experiment docs/reuse.md walks a team through.",
    "controls": [{"name": "chaoscheckout-safety",
                  "provider": {"type": "python", "module": "chaoscheckout.controls.safety"}}],
    "steady-state-hypothesis": {
        "title": "inventory answers",
        "probes": [{"type": "probe", "name": "inventory-healthy", "tolerance": True,
                    "provider": {"type": "python", "module": "chaoscheckout.service.probes",
                                 "func": "service_is_healthy", "arguments": {"service": "inventory"}}}],
    },
    "method": [
        {"type": "action", "name": "kill-inventory",
         "provider": {"type": "python", "module": "chaoscheckout.service.actions",
                      "func": "kill_service", "arguments": {"service": "inventory", "duration_s": 30}}},
        {"type": "probe", "name": "inventory-down",
         "provider": {"type": "python", "module": "chaoscheckout.service.probes",
                      "func": "service_is_healthy", "arguments": {"service": "inventory"}}},
        {"type": "action", "name": "start-inventory",
         "provider": {"type": "python", "module": "chaoscheckout.service.actions",
                      "func": "start_service", "arguments": {"service": "inventory"}}},
    ],
    "rollbacks": [
        {"type": "action", "name": "start-inventory-rollback",
         "provider": {"type": "python", "module": "chaoscheckout.service.actions",
                      "func": "start_service", "arguments": {"service": "inventory"}}},
    ],
}


def test_first_experiment_from_the_wheel(team):
    if not (team.state_dir / "services.json").exists():
        test_registry_add_then_check(team)
    (team.work / "experiment.json").write_text(json.dumps(EXPERIMENT, indent=2))
    validate = team.run(team.bin("chaos"), "validate", "experiment.json")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    run = team.run(team.bin("chaos"), "run", "--journal-path", "journal.json", "experiment.json",
                   timeout=180)
    journal = json.loads((team.work / "journal.json").read_text())
    assert journal["status"] == "completed", run.stdout[-3000:] + run.stderr[-3000:]
    assert journal["steady_states"]["after"]["steady_state_met"] is True
    kill, down, start = journal["run"]
    assert kill["status"] == "succeeded" and kill["output"]["kind"] == "kill"
    assert down["output"] is False, "the probe during the fault must see inventory dead"
    assert start["status"] == "succeeded"
    assert _healthy() and list((team.state_dir / "leases").glob("*.json")) == []


INJECTOR = """
import os, signal, sys
from chaoscheckout.service.actions import kill_service
print(kill_service("inventory", duration_s=float(sys.argv[1])), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_reaper_they_run_reverts_a_killed_injectors_fault(team):
    """The injector dies with SIGKILL right after its fault: the team's reaper brings inventory back."""
    if not (team.state_dir / "services.json").exists():
        test_registry_add_then_check(team)
    wait_until(_healthy, 30, "inventory healthy before the fault", interval_s=0.2)
    injector = team.run(team.bin("python"), "-c", INJECTOR, "3")
    assert injector.returncode == -signal.SIGKILL, injector.stdout + injector.stderr
    assert "kill" in injector.stdout
    back_in = wait_until(_healthy, 45, "inventory back after its injector was SIGKILLed", interval_s=0.2)
    print(f"\ninventory back {back_in:.1f} s after the injector's SIGKILL (lease 3 s)")
    wait_until(lambda: list((team.state_dir / "leases").glob("*.json")) == [], 15, "its lease removed",
               interval_s=0.2)
