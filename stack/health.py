"""Health of each stack service: supervisord's view plus the service's own check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import httpx
import psycopg

from chaoscheckout.network.proxy_client import ProxyControl, ProxyError
from chaoscheckout.runtime.supervisor import SupervisorError
from stack import supervisord, vm
from stack.layout import Service, services
from stack.settings import StackSettings

__all__ = ["ServiceHealth", "check_all", "check_one"]

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    address: str | None
    state: str
    pid: int | None
    healthy: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_all(settings: StackSettings) -> list[ServiceHealth]:
    """Check every service; supervisord unreachable makes every service unhealthy."""
    try:
        infos = {p["name"]: p for p in supervisord.client(settings, PROBE_TIMEOUT_S).all_process_info()}
    except SupervisorError as exc:
        infos = {}
        unreachable = str(exc)
    else:
        unreachable = ""
    with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as http:
        return [
            check_one(settings, svc, infos.get(svc.program_name), http, unreachable)
            for svc in services(settings)
        ]


def check_one(
    settings: StackSettings,
    svc: Service,
    info: dict[str, Any] | None,
    http: httpx.Client,
    unreachable: str = "",
) -> ServiceHealth:
    address = f"127.0.0.1:{settings.port(svc.port_key)}" if svc.port_key else None
    if info is None:
        detail = unreachable or "not known to supervisord"
        return ServiceHealth(svc.name, address, "UNKNOWN", None, False, detail)
    state = str(info.get("statename", "UNKNOWN"))
    pid = int(info["pid"]) if info.get("pid") else None
    if state != "RUNNING":
        return ServiceHealth(svc.name, address, state, pid, False, f"process {state.lower()}")
    ok, detail = _probe(settings, svc, http)
    return ServiceHealth(svc.name, address, state, pid, ok, detail)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _probe(settings: StackSettings, svc: Service, http: httpx.Client) -> tuple[bool, str]:
    if svc.health == "process":
        return True, "running"
    if svc.health == "ssh":  # the VM's sshd through QEMU's hostfwd
        banner = vm.wait_ssh_banner(settings.port(svc.port_key), PROBE_TIMEOUT_S)
        return (True, f"sshd: {banner}") if banner else (False, "no SSH banner yet")
    if svc.health == "proxy":
        try:
            ProxyControl(settings.proxy_control_url, PROBE_TIMEOUT_S).healthz()
            return True, f"control API on {settings.proxy_control_socket}"
        except ProxyError as exc:
            return False, str(exc)
    if svc.health == "postgres":
        try:
            with psycopg.connect(settings.database_url, connect_timeout=int(PROBE_TIMEOUT_S)) as conn:
                conn.execute("SELECT 1")
            return True, "accepts connections"
        except psycopg.Error as exc:
            return False, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    path = svc.health.split(":", 1)[1]
    url = f"http://127.0.0.1:{settings.port(svc.port_key)}{path}"
    try:
        resp = http.get(url)
    except httpx.HTTPError as exc:
        return False, f"GET {url}: {type(exc).__name__}"
    return resp.status_code == 200, f"GET {path} -> {resp.status_code}"
