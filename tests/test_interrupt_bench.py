"""The short interruption benchmark: every way a run can end leaves no fault behind.

Runs ``bench/interrupt.py`` on its own local stack (port base
``CHAOSCHECKOUT_TEST_RUNS_PORT_BASE`` + 100) with 2 trials per ending (SIGINT to the
process group, SIGTERM, SIGKILL, SIGKILL to the group, SIGSTOP), experiments assigned in
turn, and fails on any fault left, any k6 left, or a signal-to-effect-gone time over the
bound (median 2 s, worst 5 s). Slow: about 5 minutes (10 real ``chaos run`` under load);
it is the end-to-end proof of the dead-man switch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_RUNS_PORT_BASE", "29100")) + 100


def test_short_interrupt_bench_leaves_no_fault(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "interrupt.py"), "--port-base", str(PORT_BASE),
         "--state-dir", f"/var/tmp/chaoscheckout-interrupt-{PORT_BASE}", "--trials-per-ending", "2",
         "--round-robin", "--json", str(tmp_path / "interrupt.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
        # SIGINT with its default disposition whatever launched pytest (a background job inherits
        # it ignored); the bench also resets it for every run it starts
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # every experiment's fault was really seen from outside and timed (an observer that never
    # sees its fault would leave that experiment's trials uncounted, and the bench green)
    trials = json.loads((tmp_path / "interrupt.json").read_text())["trials"]
    measured = {t["experiment"] for t in trials if t["injected"] and t["gone_after_s"] is not None}
    assert measured == {"kill-catalog", "payments-latency", "fill-pg-disk"}, trials
