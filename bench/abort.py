"""Benchmark the abort path: first breaching sample -> fault reverted, under real load.

    CHAOSCHECKOUT_PORT_BASE=... CHAOSCHECKOUT_STATE_DIR=... python bench/abort.py [--smoke]

(= ``bench/run.py --only abort``). k6 runs the baseline checkout load (10 checkouts/s,
bounded) against the stack for the whole module. Per trial (3; 1 with ``--smoke``): once
the guards pass, ``add_latency("payments", 1000 ms)`` through the fault proxy (checkout's
payments budget is 300 ms, so checkouts fail); the guards of ``chaoscheckout.sli.guards``
(availability >= 0.9 and p95 <= 250 ms over 10 s, ``during_fault``) are then sampled every
0.5 s, as chaostoolkit-addons ``safeguards`` with ``frequency: 0.5`` would, until one
breaches. A breaching guard reverts every live fault itself (see guards.py); the figures:

- first breaching sample -> revert done (the guard's own ``reverted_at - at``);
- first breaching sample -> effect gone for a caller (a GET through the payments route
  answers in < 100 ms);
- fault injected -> first breaching sample (detection: Prometheus' 1 s scrape and rule
  evaluation plus the sampling interval).

Chaos Toolkit alone gives no figure to compare with: an interrupted run executes no
rollbacks with the default strategy (the fault stays until its lease expires), and with
``--rollback-strategy always`` only after the running activity ends (checked by running chaostoolkit 1.19).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from table import BenchContext, Row, median  # noqa: E402

from chaoscheckout.network.actions import add_latency  # noqa: E402
from chaoscheckout.sli import guards  # noqa: E402
from stack.loadrun import BASELINE_SCRIPT, k6_binary  # noqa: E402

SECTION = "abort"
NEEDS_STACK = True
LOAD_RATE = 10
SAMPLE_EVERY_S = 0.5
DELAY_MS = 1000
CTK_ALONE = "CTK alone: no rollback on interrupt"


def rows(ctx: BenchContext) -> list[Row]:
    trials = 1 if ctx.smoke else 3
    checkout_url = ctx.registry.extra["checkout_url"]
    payments = ctx.registry.service("payments")
    probe_url = f"http://127.0.0.1:{payments.proxy.listen_port}/healthz"
    duration_s = 40 * trials + 30
    load = subprocess.Popen(
        [str(k6_binary()), "run", "--quiet", "--no-usage-report", "-e", f"CHECKOUT_URL={checkout_url}",
         "-e", f"RATE={LOAD_RATE}", "-e", f"DURATION={duration_s}s", "-e", "MAX_VUS=100",
         str(BASELINE_SCRIPT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    to_revert, to_gone, to_breach = [], [], []
    try:
        for trial in range(1, trials + 1):
            _wait_until_guards_pass(timeout_s=60)
            guards.reset()
            injected = time.time()
            add_latency("payments", delay_ms=DELAY_MS, duration_s=60, backend="proxy")
            breach = _first_breach(timeout_s=30)
            gone_at = _effect_gone_at(probe_url, timeout_s=30)
            if breach["reverted_at"] is None:
                raise RuntimeError(f"the guard breached but reverted nothing: {breach}")
            to_revert.append((breach["reverted_at"] - breach["at"]) * 1000)
            to_gone.append((gone_at - breach["at"]) * 1000)
            to_breach.append((breach["at"] - injected) * 1000)
            ctx.log(f"abort trial {trial}: {breach['guard']} breached {to_breach[-1]:.0f} ms after "
                    "injection; "
                    f"revert done +{to_revert[-1]:.0f} ms, effect gone +{to_gone[-1]:.0f} ms")
    finally:
        load.terminate()
        try:
            load.wait(10)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait(5)
    spread = lambda ms: f"median of {len(ms)}, min {min(ms):.0f} ms, max {max(ms):.0f} ms"  # noqa: E731
    return [
        Row(SECTION, "first breaching sample → fault reverted (guard thread)", median(to_revert), "ms",
            None, CTK_ALONE, note=spread(to_revert)),
        Row(SECTION, "first breaching sample → effect gone for a caller", median(to_gone), "ms",
            None, CTK_ALONE, note=spread(to_gone)),
        Row(SECTION, f"payments +{DELAY_MS} ms injected → first breaching sample", median(to_breach), "ms",
            None, "detection: 1 s scrape/eval + 0.5 s sampling", note=spread(to_breach)),
    ]


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _guards_hold() -> bool:
    """One sample of both guards, as safeguards takes it (a guard that raises is a breach)."""
    try:
        return (guards.availability_guard(min_ratio=0.9, window="10s", during_fault=True)
                and guards.latency_guard(max_ms=250, window="10s", during_fault=True))
    except Exception:  # noqa: BLE001 - no traffic yet / Prometheus not ready: not holding
        return False


def _wait_until_guards_pass(timeout_s: float) -> None:
    """Traffic is seen and both SLIs are inside the thresholds (measured without a fault)."""
    from chaoscheckout.sli.probes import checkout_availability, checkout_latency_ms

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if checkout_availability(window="10s") >= 0.99 and checkout_latency_ms(window="10s") <= 250:
                return
        except Exception:  # noqa: BLE001 - no traffic in the window yet
            pass
        time.sleep(1)
    raise RuntimeError(f"checkout SLIs not back inside the thresholds after {timeout_s:.0f} s")


def _first_breach(timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        _guards_hold()
        found = guards.breaches()
        if found:
            return found[0]
        time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - started)))
    raise RuntimeError(f"no guard breached within {timeout_s:.0f} s of payments +{DELAY_MS} ms")


def _effect_gone_at(url: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            if httpx.get(url, timeout=2).status_code == 200 and time.monotonic() - start < 0.1:
                return time.time()
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"payments still slow through the proxy {timeout_s:.0f} s after the breach")


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "abort", *sys.argv[1:]]))
