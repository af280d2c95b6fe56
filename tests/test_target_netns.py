"""`stack up` with CHAOSCHECKOUT_TARGET_NETNS=on, for real (issue 12 point 5).

Namespaces, veth pairs and relays need no sch_netem, so this machine runs the whole path:
catalog and payments in namespaces of their own, reached through their usual 127.0.0.1
ports (health, the proxy routes, a paid checkout through both), kill/start of payments
landing in the same namespace, latency ``auto`` choosing by the kernel (netem where it has
sch_netem, else the proxy), and `stack down` leaving no namespace or veth, twice.
Port base ``CHAOSCHECKOUT_TEST_PORT_BASE`` + 300; state dir
``<CHAOSCHECKOUT_TEST_STATE_DIR>-netns``. About 15-25 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100")) + 300
STATE_DIR = Path(os.environ.get("CHAOSCHECKOUT_TEST_STATE_DIR", f"/var/tmp/chaoscheckout-test-{PORT_BASE}")
                 + "-netns")
NAMESPACES = (f"cc{PORT_BASE}-local-catalog", f"cc{PORT_BASE}-local-payments")
VETHS = (f"cc{PORT_BASE}cath", f"cc{PORT_BASE}payh")


def _manage(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKOUT_", "CATALOG_", "PAYMENTS_"))}
    env.update(CHAOSCHECKOUT_STATE_DIR=str(STATE_DIR), CHAOSCHECKOUT_PORT_BASE=str(PORT_BASE),
               CHAOSCHECKOUT_TARGET_NETNS="on", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    return subprocess.run([sys.executable, "-m", "stack.manage", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def _left() -> list[str]:
    return ([n for n in NAMESPACES if Path("/run/netns", n).exists()]
            + [v for v in VETHS if Path("/sys/class/net", v).exists()])


def _netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def _program_pid(name: str) -> int:
    from chaoscheckout.runtime.supervisor import SupervisorClient

    rpc = SupervisorClient(f"unix://{STATE_DIR}/ctl/supervisord.sock", timeout_s=5)
    return int(next(p for p in rpc.all_process_info() if p["name"] == name)["pid"])


@pytest.fixture
def netns_stack(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, tmpfs mount)")
    STATE_DIR.parent.mkdir(parents=True, exist_ok=True)
    _manage("down")  # left over by an interrupted session
    up = _manage("up")
    if up.returncode != 0:
        _manage("down")
        pytest.fail(f"stack up with CHAOSCHECKOUT_TARGET_NETNS=on failed:\n{up.stdout[-3000:]}\n{up.stderr}")
    monkeypatch.setenv("CHAOSCHECKOUT_STATE_DIR", str(STATE_DIR))
    try:
        yield up.stdout
    finally:
        _manage("down")


def test_targets_in_their_own_namespaces_serve_checkouts_and_down_removes_them(netns_stack):
    from chaoscheckout.network.actions import add_latency, remove_latency
    from chaoscheckout.network.netem import kernel_has_netem
    from chaoscheckout.service.actions import kill_service, start_service

    assert "chaos targets in their own network namespaces" in netns_stack
    services = json.loads((STATE_DIR / "services.json").read_text())["services"]
    assert {n: e["netns"] for n, e in services.items() if e["netns"]} == {
        "catalog": NAMESPACES[0], "payments": NAMESPACES[1]}
    assert _left() == [*NAMESPACES, *VETHS]
    own = _netns_inode(os.getpid())
    for name, ns in zip(("catalog", "payments"), NAMESPACES, strict=True):
        inode = _netns_inode(_program_pid(name))
        assert inode == os.stat(Path("/run/netns", ns)).st_ino and inode != own, name
    assert _netns_inode(_program_pid("checkout")) == own
    with httpx.Client(timeout=10, trust_env=False) as http:
        for _ in range(3):  # checkout -> proxy -> relay -> catalog, payments -> relay -> provider
            paid = http.post(f"http://127.0.0.1:{PORT_BASE}/checkout",
                             json={"items": [{"sku": "sku-001", "qty": 1}]})
            assert paid.status_code == 200 and paid.json()["status"] == "paid", paid.text
    kill_service(service="payments", duration_s=60)
    start_service(service="payments")
    assert os.stat(Path("/run/netns", NAMESPACES[1])).st_ino == _netns_inode(_program_pid("payments"))
    fault = add_latency(service="payments", delay_ms=20, duration_s=30, backend="auto")
    remove_latency(service="payments")
    assert fault["backend"] == ("netem" if kernel_has_netem()[0] else "proxy"), fault
    down = _manage("down")
    assert down.returncode == 0 and f"removed netns {NAMESPACES[1]}" in down.stdout, down.stdout + down.stderr
    assert _left() == []
    again = _manage("down")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout
