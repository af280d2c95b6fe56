"""Capacity benchmark: step k6's constant arrival rate up until the checkout SLOs break.

    python bench/capacity.py [--steps 25,50,100,150,200,300] [--step-seconds 15]

Runs against the stack of CHAOSCHECKOUT_STATE_DIR (bring it up first: `make bench` does).
Each step is bounded (its duration + 60 s); the run stops at the first step that breaks
an SLO. Prints checkouts/s achieved and p95 per step, the capacity (highest offered rate
with p95 < 300 ms, errors < 1 % and < 2 % of iterations dropped by k6), and a baseline
rate for experiments of at most 25 % of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaoscheckout.config import settings_from  # noqa: E402
from chaoscheckout.errors import ChaosCheckoutError  # noqa: E402
from chaoscheckout.runtime.registry import load_registry  # noqa: E402
from stack.loadrun import K6Error, K6Result, run_k6  # noqa: E402

P95_SLO_MS = 300.0
ERROR_SLO = 0.01
MAX_DROPPED = 0.02
BASELINE_SHARE = 0.25


def holds(result: K6Result, duration_s: int) -> bool:
    offered = result.rate_target * duration_s
    dropped = result.dropped_iterations / offered if offered else 1.0
    return result.p95_ms < P95_SLO_MS and result.failed_rate < ERROR_SLO and dropped < MAX_DROPPED


def baseline_for(capacity: float) -> int:
    """At most 25 % of capacity, rounded down to a multiple of 5 (at least 1)."""
    rate = int(capacity * BASELINE_SHARE)
    return max(1, rate - rate % 5) if rate >= 5 else max(1, rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="25,50,100,150,200,300",
                        help="comma list of checkouts/s to offer (default %(default)s)")
    parser.add_argument("--step-seconds", type=int, default=15, help="seconds per step (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        print(f"capacity: error: --steps must be integers, got {args.steps!r}", file=sys.stderr)
        return 2
    bad_steps = not steps or len(steps) > 12 or any(not 1 <= s <= 2000 for s in steps)
    if bad_steps or not 5 <= args.step_seconds <= 60:
        print("capacity: error: 1..12 steps of 1..2000/s, --step-seconds 5..60", file=sys.stderr)
        return 2
    try:
        checkout_url = load_registry(settings_from().registry_file).extra["checkout_url"]
    except (ChaosCheckoutError, KeyError) as exc:
        print(f"capacity: error: {exc}", file=sys.stderr)
        return 1

    print(f"capacity benchmark against {checkout_url}, {args.step_seconds}s per step")
    print(f"{'offered/s':>9} {'achieved/s':>10} {'ok/s':>7} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'dropped':>7}  SLO")
    capacity = 0.0
    for rate in sorted(steps):
        try:
            result = run_k6(checkout_url, rate, args.step_seconds, max_vus=min(400, max(50, rate * 2)))
        except K6Error as exc:
            print(f"capacity: error at {rate}/s: {exc}", file=sys.stderr)
            return 1
        ok = holds(result, args.step_seconds)
        print(f"{rate:>9} {result.requests_per_s:>10.1f} {result.ok_per_s:>7.1f} {result.p95_ms:>8.1f} "
              f"{result.p99_ms:>8.1f} {100 * result.failed_rate:>6.2f}% {result.dropped_iterations:>7}  "
              f"{'held' if ok else 'BROKEN'}", flush=True)
        if not ok:
            break
        capacity = float(rate)
        time.sleep(3)  # let the stack drain between steps
    if capacity == 0:
        print("capacity: the SLOs broke at the lowest step; no capacity figure")
        return 1
    print(f"capacity: {capacity:.0f} checkouts/s with p95 < {P95_SLO_MS:.0f} ms and errors < 1 % "
          f"(highest step that held; the next step broke or was the last)")
    print(f"baseline for experiments: {baseline_for(capacity)} checkouts/s "
          f"(<= {BASELINE_SHARE:.0%} of capacity; stack/demo.py BASELINE_RATE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
