"""Benchmark: render one journal whose SLI timeline holds 800 000 samples per series.

The journal is a real journal (tests/fixtures/journals/07-stack-kill-catalog-guarded.json,
or the one given) whose two timeline series are stretched to ``--samples`` points each
(the real values repeated, one sample every 5 ms, a dip below the SLO every 10 000 samples),
so the file is ~50 MB like the journal of a long run. Prints the render time, the peak
memory of the rendering process and the size of the SVG written. Runs in a child process
so the peak memory is the rendering's own. The CPU time is printed too: on a shared machine
it varies less than the wall-clock time.

    .venv/bin/python bench/report_big.py [JOURNAL] [--samples 800000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "tests" / "fixtures" / "journals" / "07-stack-kill-catalog-guarded.json"
STEP_S = 0.005


def make_journal(source: Path, target: Path, samples: int) -> None:
    journal = json.loads(source.read_text())
    timeline = journal["chaoscheckout_timeline"]
    start = float(timeline["start"])
    for name, points in timeline["series"].items():
        values = [v for _, v in points if v is not None] or [1.0]
        stretched = []
        for i in range(samples):
            value = values[i % len(values)]
            if i % 10_000 == 5_000:  # a short breach: must survive downsampling
                value = 0.2 if "availability" in name else 2500.0
            stretched.append([start + i * STEP_S, value])
        timeline["series"][name] = stretched
    timeline["end"] = start + samples * STEP_S
    target.write_text(json.dumps(journal))


def render(folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from chaoscheckout.report.build import write_report

    started, cpu = time.perf_counter(), time.process_time()
    write_report([folder], folder / "log", ("md",))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    svg = next((folder / "log-charts").glob("*.svg"))
    print(json.dumps({"render_s": round(elapsed, 3), "cpu_s": round(cpu, 3), "peak_mb": round(peak_mb, 1),
                      "svg_kb": round(svg.stat().st_size / 1024, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("journal", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--samples", type=int, default=800_000)
    parser.add_argument("--render", type=Path, help=argparse.SUPPRESS)  # child process: render this folder
    args = parser.parse_args()
    if args.render:
        render(args.render)
        return 0
    if not 1 <= args.samples <= 5_000_000:
        print("samples must be 1..5000000", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cc-report-big-") as tmp:
        folder = Path(tmp)
        target = folder / "big.json"
        make_journal(args.journal, target, args.samples)
        size_mb = target.stat().st_size / 1e6
        proc = subprocess.run([sys.executable, __file__, "--render", str(folder)], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"journal {size_mb:.1f} MB with {args.samples} samples per series: rendered in "
          f"{figures['render_s']:.2f} s ({figures['cpu_s']:.2f} s CPU), "
          f"peak memory {figures['peak_mb']:.0f} MB, SVG {figures['svg_kb']:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
