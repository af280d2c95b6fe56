"""The checkout stack itself, against real parts: Postgres, Prometheus, k6, supervisord.

Covers issue 2: SLI rules consistent with k6, the money path, a real ENOSPC on the
Postgres disk, the remediator, up twice / down leaving nothing, bad configuration.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from serviceprocs import answers_ok, wait_until

from chaoscheckout.runtime.supervisor import SupervisorClient
from stack import prometheus_config
from stack.loadrun import SLI_RULES, prom_query, run_k6
from stack.settings import PORT_OFFSETS, settings_from_env

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = httpx.Timeout(5.0)
ENOSPC_TEXT = "No space left on device"


def _checkout(url: str, skus: list[str]) -> httpx.Response:
    items = [{"sku": s, "qty": 1} for s in skus]
    return httpx.post(f"{url}/checkout", json={"items": items}, timeout=TIMEOUT, trust_env=False)


def _other_env(base: int, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "CATALOG_"))}
    env.update(CHAOSCHECKOUT_PORT_BASE=str(base), CHAOSCHECKOUT_STATE_DIR=str(state_dir), **extra)
    return env


def _manage(env: dict[str, str], *args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack.manage", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == str(path) for line in fh)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def other_base(stack) -> int:
    """A second port base for throw-away stacks (the session stack keeps its own)."""
    return stack.port_base + 200


@pytest.fixture
def other_state(stack, request) -> Iterator[Path]:
    """A fresh state dir next to the session's (postgres must be able to traverse it)."""
    path = Path(f"{stack.state_dir}-{request.node.name[5:30]}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    if not _mounted(path / "pgdisk"):
        shutil.rmtree(path, ignore_errors=True)


# --- Prometheus configuration --------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool(tmp_path):
    settings = settings_from_env(
        {"CHAOSCHECKOUT_STATE_DIR": str(tmp_path), "CHAOSCHECKOUT_PORT_BASE": "18100"}
    )
    config = prometheus_config.render(settings)
    proc = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "7 rules found" in proc.stdout + proc.stderr
    rules = (config.parent / "rules.yml").read_text()
    for name in SLI_RULES:
        assert f"record: {name}\n" in rules


# --- status and registry -------------------------------------------------------------


def test_status_json_lists_every_service_healthy(stack):
    proc = stack.manage("status", "--json", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    by_name = {s["name"]: s for s in data["services"]}
    assert set(by_name) == {"postgres", "prometheus", "faultproxy", "reaper", "provider", "catalog",
                            "payments", "checkout", "remediator"}
    assert all(s["healthy"] for s in by_name.values()), by_name
    assert by_name["checkout"]["address"] == f"127.0.0.1:{stack.port_base}"
    assert by_name["postgres"]["address"] == f"127.0.0.1:{stack.port_base + 20}"


def test_registry_targets_and_routes(stack):
    reg = stack.registry
    targets = {n for n, s in reg.services.items() if s.chaos_target}
    assert targets == {"catalog", "payments", "provider", "postgres", "checkout"}
    assert reg.service("postgres").data_dir == str(stack.state_dir / "pgdisk")
    assert reg.service("catalog").proxy.listen_port == stack.port_base + 11
    probe_dsn = f"postgresql://checkout_probe@127.0.0.1:{stack.port_base + 20}/checkout?passfile="
    assert reg.extra["database_url"].startswith(probe_dsn)
    assert reg.proxy_control_url == f"unix:{stack.state_dir}/ctl/faultproxy.sock"
    assert reg.supervisor_url == f"unix://{stack.state_dir}/ctl/supervisord.sock"


def test_cli_runs_manage_and_rejects_a_dir_without_the_stack(stack, tmp_path):
    cli = Path(sys.executable).parent / "chaoscheckout"
    ok = subprocess.run([str(cli), "stack", "--project-dir", str(ROOT), "status", "--json"],
                        env=stack.env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["up"] is True
    bad = subprocess.run([str(cli), "stack", "status"], cwd=tmp_path, env=stack.env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "has no stack/manage.py" in bad.stderr


# --- load and SLIs -------------------------------------------------------------------


def test_k6_counts_match_prometheus_slis(stack):
    prom = stack.registry.prometheus_url
    url = stack.registry.extra["checkout_url"]
    before = prom_query(prom, "sum(checkout_requests_total)") or 0.0
    result = run_k6(url, rate=10, duration_s=35)
    end = time.time()
    assert result.requests >= 330, result
    assert result.exit_code == 0, f"k6 thresholds failed at 10/s: {result}"
    # Every request k6 sent is counted once by checkout and seen by Prometheus: wait (at most
    # 20 s) for the scrape after the last request, then compare.
    margin = max(2, 0.02 * result.requests)
    wait_until(lambda: (prom_query(prom, "sum(checkout_requests_total)") or 0.0) - before
               >= result.requests - margin, 20, "Prometheus seeing the load's requests", interval_s=0.5)
    time.sleep(2)  # two more scrapes: a count above k6's would show now
    after = prom_query(prom, "sum(checkout_requests_total)")
    assert abs((after - before) - result.requests) <= margin, (after, before, result)
    # Rules evaluated inside the load window agree with what k6 measured.
    at = end - 2
    rate = prom_query(prom, "checkout:requests:rate_30s", at=at)
    assert rate == pytest.approx(result.requests_per_s, rel=0.05), (rate, result)
    availability = prom_query(prom, "checkout:availability:ratio_30s", at=at)
    assert availability == pytest.approx(1.0 - result.failed_rate, abs=0.01)
    p95 = prom_query(prom, "checkout:latency_seconds:p95_30s", at=at)
    p99 = prom_query(prom, "checkout:latency_seconds:p99_30s", at=at)
    # Server-side quantiles from the histogram buckets bracket k6's client-side ones.
    assert 0 < p95 <= p99
    assert p95 <= result.p95_ms / 1000 * 1.5 + 0.025, (p95, result.p95_ms)
    assert p95 >= result.p95_ms / 1000 * 0.3, (p95, result.p95_ms)
    for rule in SLI_RULES:
        assert prom_query(prom, rule, at=at) is not None, rule


# --- money path ----------------------------------------------------------------------


def test_n_checkouts_make_n_orders_and_n_captured_charges(stack):
    reg = stack.registry
    since = time.time() - 1
    refs = []
    for i in range(20):
        resp = _checkout(reg.extra["checkout_url"], [f"sku-{(i % 20) + 1:03d}"])
        assert resp.status_code == 200, resp.text
        refs.append(resp.json()["order_ref"])
    assert len(set(refs)) == 20
    with psycopg.connect(reg.extra["database_url"], connect_timeout=5) as conn:
        rows = conn.execute("SELECT order_ref::text FROM orders WHERE order_ref = ANY(%s::uuid[])",
                            (refs,)).fetchall()
    assert sorted(r[0] for r in rows) == sorted(refs)
    charges = httpx.get(f"{reg.extra['provider_url']}/charges", params={"since": since},
                        timeout=TIMEOUT, trust_env=False).json()["charges"]
    ours = [c for c in charges if c["order_ref"] in set(refs)]
    assert sorted(c["order_ref"] for c in ours) == sorted(refs)
    assert all(c["status"] == "captured" for c in ours)


# --- disk full -----------------------------------------------------------------------


def test_full_pg_disk_gives_real_enospc_and_recovers(stack):
    reg = stack.registry
    pgdisk = Path(reg.service("postgres").data_dir)
    url = reg.extra["checkout_url"]
    before_entries = sorted(os.listdir(pgdisk))
    state_dev = os.stat(stack.state_dir).st_dev
    ballast = pgdisk / f"test-ballast-{uuid.uuid4().hex}"
    log = stack.state_dir / "logs" / "checkout.log"
    log_offset = log.stat().st_size
    failure = None
    try:
        _fill(ballast, limit_bytes=os.statvfs(pgdisk).f_blocks * os.statvfs(pgdisk).f_frsize + (1 << 20))
        assert os.stat(ballast).st_dev != state_dev  # the ballast is on the capped fs only
        assert os.statvfs(pgdisk).f_bavail == 0
        for i in range(400):  # rows fill the current page first; bounded
            resp = _checkout(url, [f"sku-{(i % 20) + 1:03d}", "sku-001" if i % 20 else "sku-002"])
            if resp.status_code >= 500:
                failure = resp
                break
        assert failure is not None, "400 checkouts succeeded on a full disk"
        time.sleep(0.5)
        logged = log.read_text(errors="replace")[log_offset:]
        assert ENOSPC_TEXT in failure.text or ENOSPC_TEXT in logged, (failure.text, logged[-2000:])
    finally:
        ballast.unlink(missing_ok=True)
    deadline = time.monotonic() + 60
    while True:
        resp = _checkout(url, ["sku-003"])
        if resp.status_code == 200:
            break
        assert time.monotonic() < deadline, f"checkout did not recover after the ballast went: {resp.text}"
        time.sleep(1)
    assert sorted(os.listdir(pgdisk)) == before_entries


def _fill(path: Path, limit_bytes: int) -> None:
    """Write zeros to ``path`` until ENOSPC (1 MiB, then 4 KiB chunks); bounded by ``limit_bytes``."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            while written < limit_bytes:
                try:
                    written += fh.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    assert written < limit_bytes, "the data disk never filled: is it size-capped?"


# --- remediator ----------------------------------------------------------------------


def test_remediator_restarts_leaking_catalog_and_leaves_others_alone(stack):
    reg = stack.registry
    rpc = SupervisorClient(reg.supervisor_url, timeout_s=5)
    watched = ("catalog", "payments", "provider", "checkout")
    before = {name: rpc.pid(name) for name in watched}
    assert all(before.values()), before
    time.sleep(4)  # several remediator samples with no leak: nothing is restarted
    assert {name: rpc.pid(name) for name in watched} == before
    catalog = f"http://127.0.0.1:{reg.service('catalog').port}"
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as http:
        assert http.post(f"{catalog}/admin/fd-leak", json={"enabled": True}).status_code == 200
        deadline = time.monotonic() + 60
        sent = 0
        while rpc.pid("catalog") == before["catalog"] and time.monotonic() < deadline and sent < 3000:
            for _ in range(25):
                try:
                    http.get(f"{catalog}/products")
                except httpx.HTTPError:
                    break  # being restarted
                sent += 1
            time.sleep(0.2)
    assert rpc.pid("catalog") != before["catalog"], f"catalog not restarted after {sent} leaked fds"
    deadline = time.monotonic() + 30
    while rpc.pid("catalog") is None:  # stopped, then started again by the remediator
        assert time.monotonic() < deadline, "catalog was stopped but not started again"
        time.sleep(0.5)
    for name in ("payments", "provider", "checkout"):
        assert rpc.pid(name) == before[name], name
    wait_until(lambda: answers_ok(f"{catalog}/healthz", TIMEOUT), 30, "catalog healthy after its restart",
               interval_s=0.5)


# --- lifecycle: up twice, down leaves nothing, bad configuration ---------------------


def test_up_twice_is_safe_and_down_leaves_nothing(other_base, other_state):
    state = other_state
    env = _other_env(other_base, state)
    first = _manage(env, "up")
    try:
        assert first.returncode == 0, first.stdout + first.stderr
        again = _manage(env, "up")
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
        rpc = SupervisorClient(f"unix://{state}/ctl/supervisord.sock", timeout_s=5)
        pids = [int(p["pid"]) for p in rpc.all_process_info() if p["pid"]]
        pids.append(int((state / "supervisord.pid").read_text()))
        assert len(pids) == 10 and all(_alive(p) for p in pids)
        assert _mounted(state / "pgdisk")
    finally:
        down = _manage(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [p for p in pids if _alive(p)]
    assert not _mounted(state / "pgdisk")
    assert not [other_base + off for off in PORT_OFFSETS.values() if _listening(other_base + off)]
    assert not (state / "services.json").exists() and not (state / "leases").exists()
    again = _manage(env, "down")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_failed_up_tears_down_what_it_started(other_base, other_state):
    state = other_state
    env = _other_env(other_base, state, CHECKOUT_DB_POOL_SIZE="0", CHAOSCHECKOUT_UP_TIMEOUT_S="40")
    proc = _manage(env, "up")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "checkout" in proc.stderr, proc.stderr
    _assert_nothing_started(state, other_base)


def test_state_dir_postgres_cannot_reach_is_one_clear_error(other_base, tmp_path):
    state = tmp_path / "state"  # pytest's tmp dirs are 0700: postgres cannot traverse them
    proc = _manage(_other_env(other_base, state), "up", timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "user postgres cannot reach" in proc.stderr, proc.stderr
    _assert_nothing_started(state, other_base)


def test_taken_port_is_one_clear_error_and_nothing_starts(other_base, other_state):
    state = other_state
    taken = other_base + 30
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", taken))
        sock.listen()
        proc = _manage(_other_env(other_base, state), "up", timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and f"{taken} (prometheus)" in proc.stderr, proc.stderr
    _assert_nothing_started(state, other_base)


def test_missing_postgres_binaries_is_one_clear_error(other_base, other_state, tmp_path):
    state = other_state
    empty = tmp_path
    proc = _manage(_other_env(other_base, state, CHAOSCHECKOUT_PG_BINDIR=str(empty)), "up", timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "PostgreSQL server binaries" in proc.stderr, proc.stderr
    _assert_nothing_started(state, other_base)


def test_not_root_is_one_clear_error(other_base, other_state):
    """A real non-root process (uid nobody). It keeps CAP_DAC_READ_SEARCH only so that it
    can reach the venv's interpreter under /root; it still cannot mount."""
    state = other_state
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    proc = subprocess.run([*setpriv, sys.executable, "-m", "stack.manage", "up"], cwd=ROOT,
                          env=_other_env(other_base, state), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "must run as root" in proc.stderr, proc.stderr
    _assert_nothing_started(state, other_base)


def _assert_nothing_started(state: Path, base: int) -> None:
    assert not _mounted(state / "pgdisk")
    assert not (state / "services.json").exists()
    assert not (state / "supervisord.pid").exists()
    assert not (state / "ctl" / "supervisord.sock").exists(), "supervisord left running"
    assert not [base + off for off in PORT_OFFSETS.values() if off != 30 and _listening(base + off)]
