"""The netem test, run inside the VM by /opt/ccvm/init (as root, PID 1's child).

Layout inside the VM (its own isolated network, so any address is fine):

- netns ``payments`` holds one end of a veth pair (``veth-pay``, 10.77.0.2/24); the root
  namespace holds the other (``veth-host``, 10.77.0.1/24). The stack's real payments
  service (``python -m stack.services.payments``) runs inside the netns, exposed on
  10.77.0.2:18102 by a relay; the stack's real provider runs in the root netns, exposed to
  payments on 10.77.0.1:18113 by a relay. A stand-in catalog on 10.77.0.1:18101 (root
  netns) is the control: netem on payments must not slow it.
- ``/run/cc/state/services.json`` is the service registry (payments: ``netns: payments``,
  chaos target; catalog: not a target), so the real
  ``chaoscheckout.network.actions.add_latency(..., backend="netem")`` finds its target.

Steps: baseline round trips; add_latency (package) or plain ``tc`` (mode ``plain``);
timed round trips; remove_latency and count netem qdiscs; inject again with a short
duration from a child process, SIGKILL it, run the reaper, and time the qdisc's removal
against the lease expiry; then ``chaos run`` the experiments of /opt/ccvm/experiments.
The caller times fresh-connection HTTP requests (TCP connect +
request/response = 2 round trips, so netem on the payments side adds ≈ 2 × delay) and
``POST /payments`` (a real charge: payments' own call to provider leaves the namespace
too, so it gains more).

Parameters come from the kernel command line: ``ccvm.mode=package|plain``,
``ccvm.delay_ms``, ``ccvm.jitter_ms``, ``ccvm.samples``, ``ccvm.lease_s``,
``ccvm.chaos_run`` (1: also ``chaos run`` each experiment in /opt/ccvm/experiments). The result is
one JSON document written to /dev/vdb (raw results disk) and to the console between
``CCVM-RESULT-BEGIN`` / ``CCVM-RESULT-END`` markers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

PY = "/opt/cc/bin/python"
STATE_DIR = Path("/run/cc/state")
NETNS = "payments"
PAY_ADDR = ("10.77.0.2", 18102)
PROVIDER_PORT = 18103
PROVIDER_RELAY = ("10.77.0.1", 18113)
REPO = "/opt/ccvm/repo"
RELAY = f"{REPO}/stack/relay.py"
CATALOG_ADDR = ("10.77.0.1", 18101)
RESULTS_DEV = "/dev/vdb"
CMD_TIMEOUT_S = 30
EXPERIMENTS_DIR = Path("/opt/ccvm/experiments")

sys.path.insert(0, REPO)  # the stack's code, as copied into the image (tests/vm/build.py)
from stack import netns  # noqa: E402
from stack.netns import VethLink  # noqa: E402

T0 = time.monotonic()
result: dict[str, Any] = {"errors": [], "steps": {}}


def log(message: str) -> None:
    print(f"ccvm [{time.monotonic() - T0:6.1f}s] {message}", flush=True)


def run(argv: list[str], check: bool = True, timeout: float = CMD_TIMEOUT_S) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def params() -> dict[str, Any]:
    cmdline = Path("/proc/cmdline").read_text().split()
    raw: dict[str, str] = {}
    for item in cmdline:
        if item.startswith("ccvm.") and "=" in item:
            key, value = item[len("ccvm."):].split("=", 1)
            raw[key] = value
    return {
        "mode": raw.get("mode", "package"),
        "delay_ms": int(raw.get("delay_ms", 100)),
        "jitter_ms": int(raw.get("jitter_ms", 10)),
        "samples": max(3, min(int(raw.get("samples", 15)), 100)),
        "lease_s": float(raw.get("lease_s", 10)),
        "chaos_run": raw.get("chaos_run", "1") == "1",
    }


def qdiscs() -> dict[str, Any]:
    """Every qdisc in the payments netns and the root netns, and how many are netem."""
    inside = run(["ip", "netns", "exec", NETNS, "tc", "qdisc", "show"])
    outside = run(["tc", "qdisc", "show"])
    return {
        "netns": inside.strip().splitlines(),
        "root": outside.strip().splitlines(),
        "netem_in_netns": sum("netem" in line for line in inside.splitlines()),
        "netem_in_root": sum("netem" in line for line in outside.splitlines()),
    }


def lease_files() -> list[str]:
    leases = STATE_DIR / "leases"
    return sorted(p.name for p in leases.glob("*.json")) if leases.is_dir() else []


# --------------------------------------------------------------------------- setup

def setup_network() -> None:
    """The payments namespace and its veth pair, built by the stack's own stack/netns.py."""
    result["modprobe"] = {}
    for module in ("sch_netem", "veth"):
        run(["modprobe", module])
        result["modprobe"][module] = "ok"
    run(["ip", "link", "set", "lo", "up"])
    netns.create(VethLink(NETNS, "veth-host", "veth-pay", "10.77.0.1", "10.77.0.2", 24), modules=())


def start_services() -> list[subprocess.Popen]:
    """The stack's real payments (in the netns) and provider (root netns); a stand-in catalog.

    The stack's services listen on 127.0.0.1, so a relay in each namespace exposes them on
    the veth: callers -> 10.77.0.2:18102 -> payments; payments -> 10.77.0.1:18113 -> provider.
    """
    logs = Path("/run/cc/logs")
    logs.mkdir(parents=True, exist_ok=True)
    Path("/run/cc/provider").mkdir(parents=True, exist_ok=True)
    ns = ["ip", "netns", "exec", NETNS]

    def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, **(env or {})),
                                stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT)

    procs = [
        spawn("provider", [PY, "-m", "stack.services.provider"],
              {"PROVIDER_PORT": str(PROVIDER_PORT), "PROVIDER_STORE": "/run/cc/provider/charges.db"}),
        spawn("relay-provider", [PY, RELAY, *map(str, PROVIDER_RELAY), "127.0.0.1",
                                 str(PROVIDER_PORT)]),
        spawn("payments", [*ns, PY, "-m", "stack.services.payments"],
              {"PAYMENTS_PORT": str(PAY_ADDR[1]), "PAYMENTS_PROVIDER_TIMEOUT_S": "10",
               "PAYMENTS_PROVIDER_URL": f"http://{PROVIDER_RELAY[0]}:{PROVIDER_RELAY[1]}"}),
        spawn("relay-payments", [*ns, PY, RELAY, *map(str, PAY_ADDR), "127.0.0.1",
                                 str(PAY_ADDR[1])]),
        spawn("catalog", [PY, "/opt/ccvm/standin.py", "--name", "catalog",
                          "--host", CATALOG_ADDR[0], "--port", str(CATALOG_ADDR[1])]),
    ]
    for addr in (PROVIDER_RELAY, PAY_ADDR, CATALOG_ADDR):
        deadline = time.monotonic() + 120
        while True:
            try:
                request_once(addr)
                break
            except OSError:
                dead = [p.args for p in procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    tails = {f.name: f.read_text()[-600:] for f in logs.glob("*.log")}
                    raise RuntimeError(f"{addr} not up (exited: {dead}); logs: {tails}") from None
                time.sleep(0.3)
    return procs


def write_registry() -> None:
    registry = {
        "runtime": "local",
        "supervisor_url": None,
        "prometheus_url": None,
        "proxy_control_url": None,
        "services": {
            "payments": {
                "host": PAY_ADDR[0], "port": PAY_ADDR[1], "process": "payments",
                "health_url": f"http://{PAY_ADDR[0]}:{PAY_ADDR[1]}/healthz",
                "chaos_target": True, "data_dir": None, "netns": NETNS, "proxy": None,
            },
            "catalog": {
                "host": CATALOG_ADDR[0], "port": CATALOG_ADDR[1], "process": "catalog",
                "health_url": f"http://{CATALOG_ADDR[0]}:{CATALOG_ADDR[1]}/healthz",
                "chaos_target": False, "data_dir": None, "netns": None, "proxy": None,
            },
        },
        "extra": {"vm": True},
    }
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    (STATE_DIR / "services.json").write_text(json.dumps(registry, indent=2))
    os.environ["CHAOSCHECKOUT_STATE_DIR"] = str(STATE_DIR)


# --------------------------------------------------------------------------- measuring

def request_once(addr: tuple[str, int], timeout: float = 10, post: bool = False) -> tuple[float, float]:
    """One fresh-connection HTTP/1.0 request: (connect seconds, total seconds).

    ``post``: ``POST /payments`` with a new idempotency key (a real charge through the
    provider), else ``GET /healthz``.
    """
    if post:
        body = json.dumps({"idempotency_key": uuid.uuid4().hex, "order_ref": str(uuid.uuid4()),
                           "amount_cents": 1234}).encode()
        head = f"POST /payments HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n" \
               f"Content-Length: {len(body)}\r\n\r\n"
        payload = head.encode() + body
    else:
        payload = b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n"
    started = time.perf_counter()
    with socket.create_connection(addr, timeout=timeout) as sock:
        connected = time.perf_counter()
        sock.sendall(payload)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    status = data.split(b" ", 2)[1:2]
    if not data.startswith(b"HTTP/1.") or status != [b"200"]:
        raise OSError(f"unexpected reply from {addr}: {data[:200]!r}")
    if post and b'"captured"' not in data:
        raise OSError(f"payment not captured: {data[-200:]!r}")
    return connected - started, time.perf_counter() - started


def measure(addr: tuple[str, int], samples: int, post: bool = False) -> dict[str, Any]:
    connects, totals = [], []
    for _ in range(samples):
        connect_s, total_s = request_once(addr, post=post)
        connects.append(connect_s * 1000)
        totals.append(total_s * 1000)
    return {
        "samples": samples,
        "request_ms_median": round(statistics.median(totals), 2),
        "request_ms_min": round(min(totals), 2),
        "request_ms_max": round(max(totals), 2),
        "connect_ms_median": round(statistics.median(connects), 2),
        "request_ms": [round(t, 2) for t in totals],
    }


# --------------------------------------------------------------------------- faults

def inject(p: dict[str, Any], duration_s: float) -> dict[str, Any]:
    if p["mode"] == "plain":
        run(["ip", "netns", "exec", NETNS, "tc", "qdisc", "add", "dev", "veth-pay", "root",
             "netem", "delay", f"{p['delay_ms']}ms", f"{p['jitter_ms']}ms"])
        return {"backend": "netem", "via": "plain tc"}
    from chaoscheckout.network.actions import add_latency

    return add_latency(service="payments", delay_ms=p["delay_ms"], jitter_ms=p["jitter_ms"],
                       duration_s=duration_s, backend="netem")


def revert(p: dict[str, Any]) -> Any:
    if p["mode"] == "plain":
        run(["ip", "netns", "exec", NETNS, "tc", "qdisc", "del", "dev", "veth-pay", "root"])
        return {"via": "plain tc"}
    from chaoscheckout.network.actions import remove_latency

    return remove_latency(service="payments")


CHILD = """
import json, sys, time
from chaoscheckout.network.actions import add_latency
out = add_latency(service="payments", delay_ms={delay}, jitter_ms={jitter},
                  duration_s={lease}, backend="netem")
print(json.dumps(out, default=str), flush=True)
time.sleep(600)
"""


def lease_expiry_test(p: dict[str, Any]) -> dict[str, Any]:
    """Inject from a child, SIGKILL it, and time the reaper's revert against the expiry.

    The reaper runs before the fault exists, as it does under the stack's supervisor.
    """
    out: dict[str, Any] = {"lease_s": p["lease_s"]}
    reaper_log = Path("/run/cc/logs/reaper.log")
    reaper = subprocess.Popen([PY, "-m", "chaoscheckout.faults.reaper", "--state-dir", str(STATE_DIR)],
                              stdout=open(reaper_log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "watching" not in reaper_log.read_text():
            if reaper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reaper did not start: {reaper_log.read_text()[-1500:]}")
            time.sleep(0.2)
        _inject_and_kill(p, out)
        removed_at = None
        deadline = time.monotonic() + p["lease_s"] + 60
        while time.monotonic() < deadline:
            if qdiscs()["netem_in_netns"] == 0:
                removed_at = time.time()
                break
            if reaper.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        out["reaper_exited_early"] = reaper.poll()
        if reaper.poll() is None:
            reaper.terminate()
            try:
                reaper.wait(timeout=10)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait(timeout=10)
    out["reaper_log_tail"] = reaper_log.read_text()[-1500:]
    out["removed_at"] = removed_at
    out["removed_after_expiry_s"] = None if removed_at is None else round(removed_at - out["expires_at"], 2)
    out["removed_after_kill_s"] = (None if removed_at is None
                                   else round(removed_at - out["child_killed_at"], 2))
    out["qdiscs_after_expiry"] = qdiscs()
    out["leases_after_expiry"] = lease_files()
    return out


def _inject_and_kill(p: dict[str, Any], out: dict[str, Any]) -> None:
    code = CHILD.format(delay=p["delay_ms"], jitter=p["jitter_ms"], lease=p["lease_s"])
    child = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([child.stdout], [], [], 60)
    if not ready:
        child.kill()
        child.wait(timeout=10)
        raise RuntimeError("the injecting child printed nothing in 60 s")
    line = child.stdout.readline().decode()
    if not line.strip():
        child.wait(timeout=10)
        raise RuntimeError(f"injecting child failed: {child.stderr.read().decode()[-1500:]}")
    out["injected"] = json.loads(line)
    out["qdiscs_before_kill"] = qdiscs()
    out["leases_before_kill"] = lease_files()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    out["child_killed_at"] = time.time()
    out["child_returncode"] = child.returncode
    out["qdiscs_after_kill"] = qdiscs()
    out["expires_at"] = _unix(out["injected"]["expires_at"])  # fault results carry ISO times
    if time.time() >= out["expires_at"]:
        raise RuntimeError("the lease expired before the SIGKILL: raise ccvm.lease_s")


def _unix(value: Any) -> float:
    if isinstance(value, str):
        from datetime import datetime

        return datetime.fromisoformat(value).timestamp()
    return float(value)


def chaos_run(path: Path) -> dict[str, Any]:
    """`chaos run` one experiment in the VM; return its journal and the qdiscs left after it.

    Every ``*.json`` of /opt/ccvm/experiments (a copy of tests/vm/guest/experiments/) runs
    unless ``ccvm.chaos_run=0``. This is also the hook for ``payments-latency.json`` once
    the stack can run in the guest (see docs/netem.md).
    """
    journal = Path(f"/run/cc/journal-{path.stem}.json")
    started = time.monotonic()
    proc = subprocess.run(
        ["/opt/cc/bin/chaos", "--log-file", f"/run/cc/logs/chaos-{path.stem}.log", "run",
         "--journal-path", str(journal), str(path)],
        capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONPATH="/opt/ccvm"),  # the experiment's own probes (ccvm_probes)
    )
    return {
        "experiment": path.name,
        "returncode": proc.returncode,
        "duration_s": round(time.monotonic() - started, 1),
        "journal": json.loads(journal.read_text()) if journal.is_file() else None,
        "stderr_tail": proc.stderr[-2000:],
        "qdiscs_after": qdiscs(),
        "leases_after": lease_files(),
    }


# --------------------------------------------------------------------------- main

def step(name: str, func, *args):
    started = time.monotonic()
    log(f"{name} ...")
    try:
        value = func(*args)
        result["steps"][name] = {"ok": True, "s": round(time.monotonic() - started, 2)}
        log(f"{name} ok ({time.monotonic() - started:.1f} s)")
        return value
    except Exception as exc:  # noqa: BLE001 - every failure goes into the result
        result["steps"][name] = {"ok": False, "s": round(time.monotonic() - started, 2)}
        result["errors"].append(f"{name}: {exc!r}\n{traceback.format_exc()[-1500:]}")
        log(f"{name} FAILED: {exc!r}")
        return None


def main() -> None:
    p = params()
    result["params"] = p
    result["uptime_at_start_s"] = float(Path("/proc/uptime").read_text().split()[0])
    result["kernel"] = os.uname().release
    log(f"params {p}; kernel {result['kernel']}; uptime {result['uptime_at_start_s']} s")
    procs: list[subprocess.Popen] = []
    try:
        step("setup_network", setup_network)
        if result["steps"]["setup_network"]["ok"]:
            write_registry()
            procs = step("start_services", start_services) or []
            result["baseline"] = step("baseline", measure, PAY_ADDR, p["samples"])
            result["baseline_post"] = step("baseline_post", measure, PAY_ADDR, p["samples"], True)
            result["control_baseline"] = step("control_baseline", measure, CATALOG_ADDR, p["samples"])
            result["inject"] = step("inject", inject, p, 300)
            result["qdiscs_injected"] = step("qdiscs_injected", qdiscs)
            result["with_netem"] = step("with_netem", measure, PAY_ADDR, p["samples"])
            result["with_netem_post"] = step("with_netem_post", measure, PAY_ADDR, p["samples"], True)
            result["control_with_netem"] = step("control_with_netem", measure, CATALOG_ADDR, p["samples"])
            result["revert"] = step("revert", revert, p)
            result["qdiscs_after_revert"] = step("qdiscs_after_revert", qdiscs)
            result["leases_after_revert"] = lease_files()
            result["after_revert"] = step("after_revert", measure, PAY_ADDR, p["samples"])
            result["after_revert_post"] = step("after_revert_post", measure, PAY_ADDR, p["samples"], True)
            if p["mode"] != "plain":
                result["lease"] = step("lease_expiry", lease_expiry_test, p)
            if p["chaos_run"] and p["mode"] != "plain":
                result["chaos_runs"] = {
                    path.stem: step(f"chaos run {path.name}", chaos_run, path)
                    for path in sorted(EXPERIMENTS_DIR.glob("*.json"))
                }
    finally:
        for proc in procs:
            proc.kill()
        result["elapsed_s"] = round(time.monotonic() - T0, 1)
        emit()


def emit() -> None:
    data = json.dumps(result, default=str)
    print("CCVM-RESULT-BEGIN", flush=True)
    print(data, flush=True)
    print("CCVM-RESULT-END", flush=True)
    try:
        fd = os.open(RESULTS_DEV, os.O_WRONLY)
        try:
            os.write(fd, data.encode() + b"\n\0")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        print(f"ccvm: could not write {RESULTS_DEV}: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
