"""Benchmark: time to render the experiment log from 100 journals.

The 100 journals replay the real `chaos run` journals in tests/fixtures/journals (or the
directory given), copied round-robin; each copy gets its own run id. Prints the figure.

    .venv/bin/python bench/report.py [JOURNALS_DIR] [--count 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaoscheckout.report.build import write_report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=ROOT / "tests" / "fixtures" / "journals")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sources = sorted(p for p in args.source.glob("*.json") if not p.name.startswith("experiment-log"))
    if not sources:
        print(f"no journals in {args.source}", file=sys.stderr)
        return 1
    if not 1 <= args.count <= 10_000 or not 1 <= args.repeat <= 20:
        print("count must be 1..10000 and repeat 1..20", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cc-report-bench-") as tmp:
        folder = Path(tmp)
        for index in range(args.count):
            source = sources[index % len(sources)]
            shutil.copy(source, folder / f"{index:04d}-{source.name}")
        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = write_report([folder], None, ("md", "html"))
            timings.append(time.perf_counter() - started)
        sizes = {p.name: p.stat().st_size for p in result.written}
        chaos = Path(sys.executable).parent / "chaos"
        started = time.perf_counter()
        proc = subprocess.run([str(chaos), "--no-version-check", "report", str(folder)], capture_output=True,
                              text=True, timeout=300)
        cli_s = time.perf_counter() - started
    files = ", ".join(f"{n} {s // 1024} KiB" for n, s in sizes.items())
    print(f"rendered {len(result.runs)} journals ({len(result.skipped)} skipped) to md + html + "
          f"{len(result.runs)} svg: median {statistics.median(timings):.3f} s, min {min(timings):.3f} s "
          f"over {args.repeat} runs ({files})")
    print(f"`chaos report` on the same {args.count} journals, end to end (process start included): "
          f"{cli_s:.2f} s, exit code {proc.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
