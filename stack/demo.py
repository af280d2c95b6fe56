"""Demo: drive the baseline load against the running stack, then print the SLIs from Prometheus.

    python -m stack.demo [--rate N] [--duration S]

Until the experiments exist this is what `make demo` shows after `stack up`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import httpx

from chaoscheckout.config import settings_from
from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.runtime.registry import load_registry
from stack.loadrun import SLI_RULES, K6Error, prom_query, run_k6

__all__ = ["main", "BASELINE_RATE"]

# Chosen from `make bench` on this machine (capacity measured 20-60 checkouts/s with
# p95 < 300 ms on 2 shared cores, depending on the other load; bench/RESULTS.md): well under
# 25 % of the lowest figure.
BASELINE_RATE = 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=BASELINE_RATE, help="checkouts/s (default %(default)s)")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load (default %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.rate <= 500 or not 5 <= args.duration <= 300:
        print("demo: error: --rate must be 1..500 and --duration 5..300", file=sys.stderr)
        return 2
    try:
        registry = load_registry(settings_from().registry_file)
        checkout_url = registry.extra["checkout_url"]
        prometheus_url = registry.prometheus_url
        print(f"k6: {args.rate} checkouts/s for {args.duration}s against {checkout_url} ...", flush=True)
        result = run_k6(checkout_url, args.rate, args.duration)
        time.sleep(2)  # let Prometheus scrape and evaluate the last second
        print(f"k6: {result.requests} requests ({result.requests_per_s:.1f}/s), "
              f"failed {100 * result.failed_rate:.2f}%, "
              f"p95 {result.p95_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
              f"thresholds {'held' if result.exit_code == 0 else 'FAILED'}")
        print(f"SLIs from Prometheus ({prometheus_url}):")
        for rule in SLI_RULES:
            print(f"  {rule:<36} {_fmt(rule, prom_query(prometheus_url, rule))}")
    except (ChaosCheckoutError, K6Error, httpx.HTTPError, KeyError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _fmt(rule: str, value: float | None) -> str:
    if value is None or math.isnan(value):
        return "no data"
    if "latency" in rule:
        return f"{value * 1000:.1f} ms"
    if "availability" in rule:
        return f"{100 * value:.2f} %"
    return f"{value:.2f} /s"


if __name__ == "__main__":
    sys.exit(main())
