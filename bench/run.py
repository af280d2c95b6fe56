"""Run every benchmark in one go and print one table: our figure, its reference, the ratio.

    CHAOSCHECKOUT_PORT_BASE=... CHAOSCHECKOUT_STATE_DIR=... python bench/run.py
        [--smoke] [--only proxy,faults,...] [--use-running] [--results bench/RESULTS.md]

``make bench`` runs it. Modules run in this order; each contributes rows (see
:mod:`table` for the interface):

- ``proxy``     fault proxy passthrough vs direct (its own upstream and proxy, no stack)
- ``report``    100 journals -> the experiment log (no stack)
- ``faults``    revert time per fault, and the reaper at lease expiry
- ``abort``     first breaching sample -> fault reverted (the guards, under load)
- ``interrupt`` owner killed -> fault reverted: OPTIONAL, ``bench/interrupt.py`` is
  included when it exists and defines ``rows(ctx) -> list[Row]`` (and optionally
  ``NEEDS_STACK``); while it is absent the table says "not measured"
- ``capacity``  checkouts/s at p95 < 300 ms with the fault proxy in the path and without

The stack is brought up once (``python -m stack.manage up`` with the caller's
CHAOSCHECKOUT_PORT_BASE / CHAOSCHECKOUT_STATE_DIR, both required) for the modules that
need it, after the stack-less ones (so they run on a quieter machine), and always taken
down at the end (``--use-running``: use the stack already up there and leave it up). A
module that fails gives an error row; the others still run; the exit code is 1 then.
The table is written as Markdown to ``--results`` (a full run of every module: default
``bench/RESULTS.md``), dated, with the machine's core count and load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from table import BenchContext, Row, machine_line, render_console, render_markdown, wait_ports_free  # noqa: E402

from chaoscheckout.runtime.registry import load_registry  # noqa: E402
from stack.settings import settings_from_env  # noqa: E402

MODULES = ("proxy", "report", "faults", "abort", "interrupt", "capacity")
OPTIONAL = {"interrupt": "owner killed -> fault reverted"}
UP_TIMEOUT_S = 300
UP_ATTEMPTS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds per module)")
    parser.add_argument("--only", default="", help=f"comma list out of {', '.join(MODULES)}")
    parser.add_argument("--use-running", action="store_true",
                        help="use the stack already up in CHAOSCHECKOUT_STATE_DIR; leave it up")
    parser.add_argument("--results", type=Path, default=None,
                        help="Markdown output (default bench/RESULTS.md for a full run of every module; "
                        "none for --smoke or --only unless given)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    base, state = os.environ.get("CHAOSCHECKOUT_PORT_BASE"), os.environ.get("CHAOSCHECKOUT_STATE_DIR")
    if not base or not state or not base.isdigit():
        parser.error("set CHAOSCHECKOUT_PORT_BASE and CHAOSCHECKOUT_STATE_DIR (the stack the bench "
                     "brings up and every port it uses derive from them)")
    ctx = BenchContext(port_base=int(base), state_dir=Path(state), smoke=args.smoke, log=_log)
    started = datetime.now(UTC)
    machine_before = machine_line()
    modules = {name: _load(name) for name in names}
    rows: list[Row] = []
    stackless = [n for n in names if modules[n] is not None and not getattr(modules[n], "NEEDS_STACK", True)]
    with_stack = [n for n in names if n not in stackless]
    for name in stackless:
        rows += _run_module(name, modules[name], ctx)
    if any(modules[n] is not None for n in with_stack):
        rows += _with_stack(with_stack, modules, ctx, args.use_running)
    else:
        rows += [_absent(n) for n in with_stack]
    wall_s = (datetime.now(UTC) - started).total_seconds()
    print()
    print(render_console(rows))
    header = [f"Run {started:%Y-%m-%d %H:%M} UTC ({'smoke sizes' if args.smoke else 'full sizes'}, "
              f"{wall_s:.0f} s) on {machine_before}; at the end: {machine_line()}.",
              "",
              "`make bench` (bench/run.py) measured every figure below in this one run; a reference "
              "is the anchor's published figure or the direct path measured in the same run. "
              "Timing on a shared 2-core machine is noisy: compare ratios."]
    results = args.results
    if results is None and not args.smoke and not args.only:
        results = ROOT / "bench" / "RESULTS.md"
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(render_markdown(rows, "Benchmark results", header))
        print(f"\nwritten to {results}")
    return 1 if any(r.error for r in rows) else 0


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _load(name: str) -> ModuleType | None:
    path = ROOT / "bench" / f"{name}.py"
    if not path.exists():
        if name in OPTIONAL:
            return None
        raise SystemExit(f"bench/{name}.py is missing")
    spec = importlib.util.spec_from_file_location(f"chaoscheckout_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (and pickling) look the module up by name
    spec.loader.exec_module(module)
    if not callable(getattr(module, "rows", None)):
        raise SystemExit(f"bench/{name}.py defines no rows(ctx) -> list[Row]")
    return module


def _absent(name: str) -> Row:
    return Row(name, OPTIONAL.get(name, name), None,
               note=f"not measured: bench/{name}.py is not in this tree (see bench/run.py)")


def _run_module(name: str, module: ModuleType | None, ctx: BenchContext) -> list[Row]:
    if module is None:
        return [_absent(name)]
    _log(f"== {name}")
    started = time.monotonic()
    try:
        rows = list(module.rows(ctx))
    except Exception as exc:  # noqa: BLE001 - one failed module must not hide the others
        traceback.print_exc()
        return [Row(name, "module failed", None, error=f"{type(exc).__name__}: {exc}"[:200])]
    _log(f"== {name}: {len(rows)} row(s) in {time.monotonic() - started:.0f} s")
    return rows


def _with_stack(names: list[str], modules: dict[str, ModuleType | None], ctx: BenchContext,
                use_running: bool) -> list[Row]:
    manage = [sys.executable, "-m", "stack.manage"]
    if not use_running:
        error = _stack_up(manage, ctx)
        if error:
            return [Row(n, "stack up failed", None, error=error[:200]) for n in names]
    rows: list[Row] = []
    try:
        ctx.registry = load_registry(ctx.state_dir / "services.json")
        for name in names:
            rows += _run_module(name, modules[name], ctx)
    finally:
        if not use_running:
            _log("== stack down")
            subprocess.run([*manage, "down"], cwd=ROOT, timeout=UP_TIMEOUT_S, check=False,
                           capture_output=True)
    return rows


def _stack_up(manage: list[str], ctx: BenchContext) -> str | None:
    """Bring the stack up; None, or the last error after UP_ATTEMPTS tries.

    Each try first waits for the stack's ports: they lie in Linux's ephemeral range, so a
    client connection of anything on the machine may hold one for a while (TIME_WAIT).
    """
    error = "not tried"
    for attempt in range(1, UP_ATTEMPTS + 1):
        try:
            wait_ports_free(sorted(settings_from_env().ports.values()), log=_log)
        except RuntimeError as exc:
            error = str(exc)
            continue
        _log(f"== stack up (port base {ctx.port_base}, state dir {ctx.state_dir}), try {attempt}")
        up = subprocess.run([*manage, "up"], cwd=ROOT, timeout=UP_TIMEOUT_S, check=False,
                            capture_output=True, text=True)
        if up.returncode == 0:
            return None
        subprocess.run([*manage, "down"], cwd=ROOT, timeout=UP_TIMEOUT_S, check=False, capture_output=True)
        error = ((up.stderr or up.stdout).strip().splitlines() or ["no output"])[-1]
        _log(f"stack up failed: {error}")
        time.sleep(5)
    return error


def _log(line: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
