"""What ``chaoscheckout halt`` takes, per fault kind, on a running local stack.

    CHAOSCHECKOUT_STATE_DIR=... CHAOSCHECKOUT_PORT_BASE=... .venv/bin/python bench/halt.py [--rounds 5]

Each round injects four faults from this process (a live owner, so the reaper leaves them
alone): catalog and provider killed, payments +500 ms through the proxy, the Postgres
disk filled; then runs ``chaoscheckout halt --json`` as a separate process and reads, for
every fault, when its revert was issued and when its effect was checked gone (seconds
since the halt began), plus the halt's total and the command's wall time from start to
exit. ``halt --clear`` after each round. Prints median and worst per fault kind. Every
wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaoscheckout.config import settings_from  # noqa: E402
from chaoscheckout.disk.actions import fill_disk  # noqa: E402
from chaoscheckout.network.actions import add_latency  # noqa: E402
from chaoscheckout.runtime import get_runtime  # noqa: E402
from chaoscheckout.service.actions import kill_service  # noqa: E402

CLI = str(Path(sys.executable).with_name("chaoscheckout"))


def one_round(state_dir: str) -> dict:
    configuration = {"chaoscheckout_state_dir": state_dir}
    runtime = get_runtime(configuration)
    for service in ("catalog", "provider"):
        runtime.wait_healthy(service, 60)
    kill_service("catalog", duration_s=120, configuration=configuration)
    kill_service("provider", duration_s=120, configuration=configuration)
    add_latency("payments", delay_ms=500, duration_s=120, backend="proxy", configuration=configuration)
    fill_disk("postgres", duration_s=120, configuration=configuration)
    started = time.monotonic()
    done = subprocess.run([CLI, "halt", "--state-dir", state_dir, "--json", "--reason", "bench/halt.py"],
                          capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - started
    subprocess.run([CLI, "halt", "--clear", "--state-dir", state_dir], capture_output=True, timeout=60)
    result = json.loads(done.stdout)
    return {"elapsed_s": result["elapsed_s"], "wall_s": round(wall, 3),
            "all_verified": result["all_verified"],
            "faults": {r["kind"] + " " + r["service"]: {"issued_s": r.get("issued_after_s"),
                                                         "gone_s": r.get("gone_after_s")}
                       for r in result["reverted"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 100:
        parser.error("--rounds must be in 1..100")
    state_dir = str(settings_from(None).state_dir)
    rounds = []
    for number in range(args.rounds):
        rounds.append(one_round(state_dir))
        print(f"round {number + 1}: {rounds[-1]}", flush=True)
        time.sleep(3)
    print(f"{'fault':<18} {'issued median':>13} {'worst':>6} {'gone median':>12} {'worst':>6}")
    for key in sorted(rounds[0]["faults"]):
        issued = [r["faults"][key]["issued_s"] for r in rounds]
        gone = [r["faults"][key]["gone_s"] for r in rounds if r["faults"][key]["gone_s"] is not None]
        gone_median = statistics.median(gone) if gone else float("nan")
        print(f"{key:<18} {statistics.median(issued):>13.3f} {max(issued):>6.3f} "
              f"{gone_median:>12.3f} {max(gone, default=float('nan')):>6.3f}")
    for what in ("elapsed_s", "wall_s"):
        values = [r[what] for r in rounds]
        print(f"halt {what}: median {statistics.median(values):.3f}, worst {max(values):.3f}")
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores; "
          f"all verified: {all(r['all_verified'] for r in rounds)}")
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    return 0 if all(r["all_verified"] for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(main())
