"""What the safeguards cost in CPU, per poll, on a running local stack under load.

    CHAOSCHECKOUT_STATE_DIR=... CHAOSCHECKOUT_PORT_BASE=... \
        .venv/bin/python bench/guard_cost.py [--ticks 12] [--rate 84]

The experiments' guards run inside ``chaos run`` every second, on the machine that runs
the system under test, from the moment the fault goes in. This starts k6 at ``--rate``
checkouts/s against the stack's checkout (bounded: it stops by itself after the rounds' time
plus 20 s), then runs, once
a second, one poll of the three guards of payments-response-lost (money, double charge,
availability) and measures this process's CPU time for it. It alternates two ways of
making the HTTP calls, in the same run: a new client per call (``httpx.get``, what the
guards did before ``chaoscheckout.httpclient``) and the kept client they use now.
Prints median and worst CPU ms per poll for each, two rounds of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chaoscheckout.sli.money as money  # noqa: E402
import chaoscheckout.sli.prometheus as prometheus  # noqa: E402
from chaoscheckout.context import activity_context  # noqa: E402
from chaoscheckout.httpclient import http_get  # noqa: E402
from chaoscheckout.load.k6 import K6Options, K6Process  # noqa: E402
from chaoscheckout.sli import guards  # noqa: E402
from chaoscheckout.sli.money_watch import forget_watches  # noqa: E402

WAYS = ("new client per call (httpx.get)", "kept client (chaoscheckout.httpclient)")


def new_client_get(url: str, timeout_s: float, params: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(url, params=params, timeout=timeout_s)


def one_poll(since: float) -> float:
    """CPU milliseconds of one poll of the three guards."""
    started = time.process_time()
    guards.money_guard(grace_s=5, since=since)
    guards.double_charge_guard(since=since)
    guards.availability_guard(min_ratio=0.5, window="10s", during_fault=False)
    return (time.process_time() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=12, help="polls per round (1 a second)")
    parser.add_argument("--rate", type=int, default=84, help="k6 checkouts a second")
    args = parser.parse_args(argv)
    if not (1 <= args.ticks <= 600 and 1 <= args.rate <= 1000):
        parser.error("--ticks must be in 1..600 and --rate in 1..1000")
    rounds = [WAYS[0], WAYS[1], WAYS[0], WAYS[1]]
    duration_s = len(rounds) * args.ticks * 1.1 + 20
    checkout_url = activity_context(None).registry.extra["checkout_url"]  # the stack's, by its port base
    k6 = K6Process(K6Options(ROOT / "load" / "baseline.js", rate=args.rate, duration_s=int(duration_s),
                             checkout_url=checkout_url, run_dir=Path(tempfile.mkdtemp(prefix="guard-cost-")),
                             env={"MAX_VUS": "200", "PRE_ALLOCATED_VUS": "50"}))
    k6.start()
    results: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        print(f"k6 at {args.rate}/s against {checkout_url} for at most {duration_s:.0f} s; warming up 8 s",
              flush=True)
        time.sleep(8)
        since = time.time()
        for way in rounds:
            impl = new_client_get if way == WAYS[0] else http_get
            money.http_get = prometheus.http_get = impl  # the two modules the guards call through
            forget_watches()
            one_poll(since)  # the first poll of a watch reads the whole window: not counted
            for _ in range(args.ticks):
                results[way].append(one_poll(since))
                time.sleep(1)
            print(f"  round done: {way}", flush=True)
    finally:
        k6.stop()  # SIGINT (K6Process starts k6 with SIGINT at SIG_DFL), then SIGKILL after 15 s
    print(f"CPU per poll of three guards (money, double charge, availability), {args.rate}/s load:")
    for way, ms in results.items():
        print(f"  {way:42s} median {statistics.median(ms):6.1f} ms  worst {max(ms):6.1f} ms  "
              f"({len(ms)} polls) = {statistics.median(ms) / 10:.1f} % of a core at 1 poll/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
