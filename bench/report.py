"""Benchmark: time to render the experiment log from 100 journals.

    CHAOSCHECKOUT_PORT_BASE=... CHAOSCHECKOUT_STATE_DIR=... python bench/report.py [--smoke]

(= ``bench/run.py --only report``; needs no stack). The 100 journals (10 with ``--smoke``)
replay the real `chaos run` journals in tests/fixtures/journals, copied round-robin; each
copy gets its own run id. Rendered 3 times in process (md + html + svg), then once end to
end with `chaos report`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from table import BenchContext, Row, median  # noqa: E402

from chaoscheckout.report.build import write_report  # noqa: E402

SECTION = "report"
NEEDS_STACK = False
SOURCE = ROOT / "tests" / "fixtures" / "journals"


def measure(source: Path, count: int, repeat: int) -> dict:
    """Render ``count`` journals ``repeat`` times in process, then once with ``chaos report``."""
    sources = sorted(p for p in source.glob("*.json") if not p.name.startswith("experiment-log"))
    if not sources:
        raise RuntimeError(f"no journals in {source}")
    with tempfile.TemporaryDirectory(prefix="cc-report-bench-") as tmp:
        folder = Path(tmp)
        for index in range(count):
            journal = sources[index % len(sources)]
            shutil.copy(journal, folder / f"{index:04d}-{journal.name}")
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            result = write_report([folder], None, ("md", "html"))
            timings.append(time.perf_counter() - started)
        chaos = Path(sys.executable).parent / "chaos"
        started = time.perf_counter()
        proc = subprocess.run([str(chaos), "--no-version-check", "report", str(folder)], capture_output=True,
                              text=True, timeout=300)
        cli_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"chaos report exited {proc.returncode}: {proc.stderr[-300:]}")
    return {"runs": len(result.runs), "skipped": len(result.skipped), "timings": timings, "cli_s": cli_s}


def rows(ctx: BenchContext) -> list[Row]:
    count = 10 if ctx.smoke else 100
    found = measure(SOURCE, count, 1 if ctx.smoke else 3)
    timings = found["timings"]
    return [
        Row(SECTION, f"{count} journals → experiment log (md + html + svg, in process)",
            median(timings) * 1000, "ms",
            note=f"{found['runs']} runs, {found['skipped']} skipped; median of {len(timings)}, "
                 f"min {min(timings) * 1000:.0f} ms"),
        Row(SECTION, f"`chaos report` on {count} journals, process start included",
            found["cli_s"] * 1000, "ms"),
    ]


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "report", *sys.argv[1:]]))
