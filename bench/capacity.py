"""Capacity benchmark: checkouts/s at p95 < 300 ms, with the fault proxy in the path and without.

    CHAOSCHECKOUT_PORT_BASE=... CHAOSCHECKOUT_STATE_DIR=... python bench/capacity.py [--smoke]

(= ``bench/run.py --only capacity``: brings the stack up and down). Steps k6's constant
arrival rate (load/baseline.js) up until a step breaks an SLO (p95 >= 300 ms, errors >= 1 %
or >= 2 % of iterations dropped by k6), twice:

- **proxy**: the stack's own checkout, whose catalog and payments calls (and payments'
  provider calls) go through the fault proxy, as in every experiment;
- **direct**: a second checkout and payments of the same code and settings (env from
  stack/layout.py), started here on base + 51 / + 52 and calling catalog, payments and the
  provider directly; same Postgres, catalog and provider.

The two paths step up interleaved (the same machine conditions for both); the capacity
is the highest step that held; the experiments' load rate is at most 25 % of it
(``baseline_for``). First, at a fixed rate (20/s) through the proxy, the CPU each
process spends per checkout (from /proc: user + system time; Postgres with its backends;
k6 from this process' waited children): what limits the capacity on this machine. The
app services (provider, catalog, payments, checkout) are restarted before the CPU figure,
before the sweeps and after any broken step, since an overloaded step can leave them slow
for longer than the load lasts. Every step is bounded (its duration + 60 s).

A full run (not ``--smoke``: two 5 s steps are no capacity) writes the **capacity record**
the peak load profile is derived from (:mod:`chaoscheckout.load.profile`): the proxy path's
capacity, when and where it was measured, the build measured (the same ``system_build`` a
journal's provenance shows) and the method, to ``$CHAOSCHECKOUT_CAPACITY_FILE``, else
``<state dir>/capacity.json``. ``chaoscheckout capacity measure`` runs this file;
``chaoscheckout capacity show`` prints the record.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from table import BenchContext, Row, wait_ports_free  # noqa: E402

from chaoscheckout.controls.provenance import system_build  # noqa: E402
from chaoscheckout.load.profile import capacity_path, new_record, write_capacity  # noqa: E402
from chaoscheckout.runtime.supervisor import SupervisorClient  # noqa: E402
from stack import layout  # noqa: E402
from stack.loadrun import K6Result, run_k6  # noqa: E402
from stack.settings import settings_from_env  # noqa: E402

SECTION = "capacity"
NEEDS_STACK = True
P95_SLO_MS = 300.0
ERROR_SLO = 0.01
MAX_DROPPED = 0.02
BASELINE_SHARE = 0.25
FULL_STEPS = (10, 20, 30, 40, 50, 60, 80, 100, 120, 150, 200)
SMOKE_STEPS = (5, 10)
APP_SERVICES = ("provider", "catalog", "payments", "checkout")  # start order
CPU_RATE = 20  # checkouts/s while CPU per checkout is measured (fixed: comparable across runs)
CPU_PROCESSES = ("checkout", "payments", "catalog", "provider", "faultproxy", "postgres")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def holds(result: K6Result, duration_s: int) -> bool:
    offered = result.rate_target * duration_s
    dropped = result.dropped_iterations / offered if offered else 1.0
    return result.p95_ms < P95_SLO_MS and result.failed_rate < ERROR_SLO and dropped < MAX_DROPPED


def baseline_for(capacity: float) -> int:
    """At most 25 % of capacity, rounded down to a multiple of 5 (at least 1)."""
    rate = int(capacity * BASELINE_SHARE)
    return max(1, rate - rate % 5) if rate >= 5 else max(1, rate)


def step(ctx: BenchContext, label: str, checkout_url: str, rate: int, step_s: int) -> bool:
    """One bounded k6 step at ``rate``; whether the SLOs held (logged)."""
    result = run_k6(checkout_url, rate, step_s, max_vus=min(400, max(50, rate * 2)))
    ok = holds(result, step_s)
    ctx.log(f"capacity {label:6} {rate:>4}/s offered: {result.requests_per_s:6.1f}/s achieved, p95 "
            f"{result.p95_ms:6.1f} ms, p99 {result.p99_ms:6.1f} ms, "
            f"errors {100 * result.failed_rate:.2f} %, "
            f"dropped {result.dropped_iterations}: {'held' if ok else 'BROKEN'}")
    return ok


def sweeps(ctx: BenchContext, steps: tuple[int, ...], step_s: int) -> dict[str, float]:
    """Both paths step by step, interleaved (same machine conditions); highest step held each.

    A step that breaks is run once more on freshly restarted services (one hiccup of a
    shared machine is not a capacity); the path stops when it breaks twice. An overloaded
    step can leave the services slow for longer than the load lasts (timeouts ->
    reconnects -> more CPU), so after a broken step every app service is restarted.
    """
    capacity = {"proxy": 0.0, "direct": 0.0}
    alive = {"proxy": True, "direct": True}
    next_step = {"proxy": 0, "direct": 0}
    failures = {"proxy": 0, "direct": 0}  # consecutive breaks of the path's current step
    _fresh_services(ctx)
    procs, direct_url = _start_direct(ctx)
    try:
        urls = {"proxy": ctx.registry.extra["checkout_url"], "direct": direct_url}
        for round_index in range(2 * len(steps) + 2):  # bounded: each path advances or stops
            if not any(alive.values()):
                break
            broke = False
            for label in ("proxy", "direct") if round_index % 2 == 0 else ("direct", "proxy"):
                if not alive[label]:
                    continue
                rate = steps[next_step[label]]
                if step(ctx, label, urls[label], rate, step_s):
                    capacity[label], failures[label] = float(rate), 0
                    next_step[label] += 1
                    alive[label] = next_step[label] < len(steps)
                else:
                    failures[label] += 1
                    alive[label] = failures[label] < 2
                    broke = True
                time.sleep(2)  # let the stack drain between steps
            if broke and any(alive.values()):
                _stop_direct(procs)
                _fresh_services(ctx)
                procs, urls["direct"] = _start_direct(ctx)
    finally:
        _stop_direct(procs)
    return capacity


def rows(ctx: BenchContext) -> list[Row]:
    steps, step_s = (SMOKE_STEPS, 5) if ctx.smoke else (FULL_STEPS, 10)
    rate, seconds = (5, 5) if ctx.smoke else (CPU_RATE, 15)
    _fresh_services(ctx)
    cpu = _cpu_per_checkout(ctx, rate, seconds)
    found = sweeps(ctx, steps, step_s)
    with_proxy, direct = found["proxy"], found["direct"]
    recorded = _record(ctx, with_proxy, direct, steps, step_s, cpu) if not ctx.smoke and with_proxy else None
    out = [
        Row(SECTION, "checkouts/s at p95 < 300 ms, fault proxy in the path", with_proxy, "/s", direct or None,
            "without the proxy, same run",
            note=f"steps {', '.join(map(str, steps))}/s, {step_s} s each; highest that held (p95 < 300 ms, "
                 "errors < 1 %, < 2 % dropped)" + (f"; capacity record {recorded}" if recorded else "")),
        Row(SECTION, "checkouts/s at p95 < 300 ms, no proxy", direct, "/s"),
        Row(SECTION, "experiments' load rate (<= 25 % of capacity with the proxy)",
            float(baseline_for(with_proxy)) if with_proxy else None, "/s"),
    ]
    where = f"at {rate} checkouts/s for {seconds} s through the proxy, before the sweeps"
    for name, ms in cpu.items():
        out.append(Row(SECTION, f"CPU per checkout, {name}", ms, "ms",
                       note=where if name == "checkout" else ""))
    return out


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _record(ctx: BenchContext, with_proxy: float, direct: float, steps: tuple[int, ...], step_s: int,
            cpu: dict[str, float]) -> Path:
    """Write the capacity record (the figure the peak profile derives its rate from)."""
    configuration = {"chaoscheckout_state_dir": str(ctx.state_dir)}
    try:
        build = system_build(configuration)
    except Exception as exc:  # the figure stands; say why the build is missing
        build = {"error": f"{type(exc).__name__}: {exc}"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            timeout=10, check=False).stdout.strip() or None
    method = {"tool": "bench/capacity.py", "path": "fault proxy in the path (as in every experiment)",
              "steps_per_s": list(steps), "step_s": step_s,
              "slo": {"p95_ms_below": P95_SLO_MS, "errors_below": ERROR_SLO, "dropped_below": MAX_DROPPED},
              "direct_per_s": direct, "cpu_ms_per_checkout": {k: round(v, 3) for k, v in cpu.items()}}
    path = write_capacity(new_record(with_proxy, {**build, "commit": commit}, method),
                          capacity_path(configuration))
    ctx.log(f"capacity record written: {path} ({with_proxy:g} checkouts/s)")
    return path


def _fresh_services(ctx: BenchContext) -> None:
    """Restart the app services (not Postgres) and warm them up: every sweep starts alike."""
    supervisor = SupervisorClient(ctx.registry.supervisor_url, timeout_s=30)
    for name in reversed(APP_SERVICES):
        supervisor.stop(name, wait=True)
    for name in APP_SERVICES:
        supervisor.start(name, wait=True)
    for name in APP_SERVICES:
        _wait_healthy(ctx.registry.service(name).health_url, [])
    run_k6(ctx.registry.extra["checkout_url"], 5, 3)  # pools and first imports: not counted


def _start_direct(ctx: BenchContext) -> tuple[list[subprocess.Popen], str]:
    """checkout + payments of the same code and settings, calling their upstreams directly."""
    registry = ctx.registry
    settings = settings_from_env()
    programs = {p.name: p for p in layout.programs(settings, Path("unused-pg-bindir"), os.environ)}
    checkout_port, payments_port = ctx.port("checkout_direct"), ctx.port("payments_direct")
    direct = {name: f"http://127.0.0.1:{registry.service(name).port}" for name in ("catalog", "provider")}
    overrides = {
        "payments": {"PAYMENTS_PORT": str(payments_port), "PAYMENTS_PROVIDER_URL": direct["provider"]},
        "checkout": {"CHECKOUT_PORT": str(checkout_port), "CHECKOUT_CATALOG_URL": direct["catalog"],
                     "CHECKOUT_PAYMENTS_URL": f"http://127.0.0.1:{payments_port}"},
    }
    wait_ports_free([payments_port, checkout_port], log=ctx.log)
    procs: list[subprocess.Popen] = []
    try:
        for name in ("payments", "checkout"):
            env = {**os.environ, **programs[name].environment, **overrides[name]}
            log = ctx.state_dir / "logs" / f"bench-direct-{name}.log"
            with log.open("ab") as out:
                procs.append(subprocess.Popen(programs[name].command, cwd=ROOT, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
        for port in (payments_port, checkout_port):
            _wait_healthy(f"http://127.0.0.1:{port}/healthz", procs)
        url = f"http://127.0.0.1:{checkout_port}"
        run_k6(url, 5, 3)  # pools and first imports: not counted
    except BaseException:
        _stop_direct(procs)
        raise
    return procs, url


def _stop_direct(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_healthy(url: str, procs: list[subprocess.Popen], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{dead[0].args} exited with {dead[0].returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f} s")


def _cpu_per_checkout(ctx: BenchContext, rate: int, seconds: int) -> dict[str, float]:
    supervisor = SupervisorClient(ctx.registry.supervisor_url)
    pids = {name: supervisor.pid(name) for name in CPU_PROCESSES}
    before = {name: _tree_ticks(pid) for name, pid in pids.items() if pid}
    k6_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run_k6(ctx.registry.extra["checkout_url"], rate, seconds)
    k6_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = {name: _tree_ticks(pids[name]) for name in before}
    checkouts = max(1, result.requests)
    out = {name: (after[name] - before[name]) / CLOCK_TICK * 1000 / checkouts for name in before}
    out["all of the above"] = sum(out.values())
    k6_s = (k6_after.ru_utime + k6_after.ru_stime) - (k6_before.ru_utime + k6_before.ru_stime)
    out["k6 (load generator)"] = k6_s * 1000 / checkouts
    return out


def _tree_ticks(pid: int) -> int:
    """user + system clock ticks of ``pid`` and its live direct children (Postgres backends)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(proc.name) == pid or int(fields[1]) == pid:  # fields[1] is the parent pid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "capacity", *sys.argv[1:]]))
