"""Smoke run of `make bench` (bench/run.py --smoke): every module, tiny sizes, one table.

It brings its own stack up and down (as `make bench` does) on ``CHAOSCHECKOUT_TEST_PORT_BASE``
+ 100 (default 28200; the modules' own processes use + 151 … + 159), state in
/var/tmp/chaoscheckout-bench-test-<base>, so the faults and the abort it injects under load
never touch the session stack the other tests read SLIs from. About 1.5–2 minutes. It
checks that every module ran and produced a number, not the numbers themselves (timings
on a shared machine are not assertions).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100")) + 100
STATE_DIR = Path(f"/var/tmp/chaoscheckout-bench-test-{PORT_BASE}")


def test_bench_smoke_run_gives_every_figure(tmp_path: Path) -> None:
    env = {**os.environ, "CHAOSCHECKOUT_PORT_BASE": str(PORT_BASE), "CHAOSCHECKOUT_STATE_DIR": str(STATE_DIR),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    results = tmp_path / "RESULTS.md"
    try:
        run = subprocess.run([sys.executable, "bench/run.py", "--smoke", "--results", str(results)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        subprocess.run([sys.executable, "-m", "stack.manage", "down"], cwd=ROOT, env=env, capture_output=True,
                       timeout=180, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    table = results.read_text()
    assert re.search(r"\d+ cores, load average", table), table[:500]
    rows = [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| section", "| ---"))]
    sections = {line.split(" | ")[0][2:] for line in rows}
    assert {"proxy", "report", "faults", "abort", "capacity"} <= sections, sections
    assert "error:" not in table, table
    # every figure is a number; n/a only for the optional interrupt module while it is absent,
    # and for the load rate if even the lowest capacity step broke (a loaded machine)
    measured = [line for line in rows if not line.startswith("| interrupt ") and "load rate" not in line]
    for line in measured:
        value = line.split(" | ")[2]
        assert re.match(r"-?\d", value), line
    assert "p50 added by passthrough, 10 VUs" in table and "checkouts/s at p95 < 300 ms, no proxy" in table
