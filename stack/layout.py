"""What the stack runs: the supervisord programs, their env, and the service registry."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry
from stack import postgres, prometheus_config
from stack.appuser import AppUser
from stack.settings import StackSettings
from stack.supervisord import Program

__all__ = ["Service", "SERVICES", "APP_START_ORDER", "services", "app_start_order", "programs",
           "registry", "registry_dict"]

# Env prefixes handed through from the caller's environment to each program (settings such
# as CHECKOUT_RETRIES); the ports/URLs computed here always win.
PASSTHROUGH_PREFIXES = ("CHECKOUT_", "CATALOG_", "PAYMENTS_", "PROVIDER_", "REMEDIATOR_")
APP_START_ORDER = ("provider", "catalog", "payments", "checkout", "remediator")


@dataclass(frozen=True)
class Service:
    """One supervised program; ``port_key`` None means it has no TCP port of its own (the
    reaper; the fault proxy, whose control API is a unix socket and whose listen ports are
    its routes')."""

    name: str
    port_key: str | None
    health: str  # "http:/healthz", "http:/-/ready", "postgres", "process"
    chaos_target: bool
    module: str | None = None
    proxy: tuple[str, str] | None = None  # (route, listen port key)
    program: str | None = None  # the local supervisord program behind it (default: name)

    @property
    def program_name(self) -> str:
        return self.program or self.name


SERVICES: tuple[Service, ...] = (
    Service("postgres", "postgres", "postgres", True),
    Service("prometheus", "prometheus", "http:/-/ready", False),
    Service("faultproxy", None, "proxy", False, "chaoscheckout.network.proxy"),
    Service("reaper", None, "process", False, "chaoscheckout.faults.reaper"),
    Service("provider", "provider", "http:/healthz", True, "stack.services.provider",
            ("provider", "proxy_provider")),
    Service("catalog", "catalog", "http:/healthz", True, "stack.services.catalog",
            ("catalog", "proxy_catalog")),
    Service("payments", "payments", "http:/healthz", True, "stack.services.payments",
            ("payments", "proxy_payments")),
    Service("checkout", "checkout", "http:/healthz", True, "stack.services.checkout"),
    Service("remediator", "remediator", "http:/healthz", False, "stack.services.remediator"),
)


# `--remote-payments vm`: payments runs in the VM (local program `vm`, stack/vm.py); its
# port here is QEMU's hostfwd, so the proxy route and the health check stay as they are
REMOTE_PAYMENTS = Service("payments", "payments", "http:/healthz", True, None,
                          ("payments", "proxy_payments"), program="vm")
VM = Service("vm", "vm_ssh", "ssh", False, program="vm")


def services(settings: StackSettings) -> tuple[Service, ...]:
    """The stack's services for these settings (payments remote or local)."""
    if settings.remote_payments != "vm":
        return SERVICES
    return tuple(REMOTE_PAYMENTS if s.name == "payments" else s for s in SERVICES) + (VM,)


def app_start_order(settings: StackSettings) -> tuple[str, ...]:
    """The app programs ``stack up`` starts on this machine, in order."""
    if settings.remote_payments == "vm":
        return tuple(name for name in APP_START_ORDER if name != "payments")
    return APP_START_ORDER


def programs(settings: StackSettings, pg_bindir: Path, env: Mapping[str, str],
             app: AppUser | None = None, extra: tuple[Program, ...] = ()) -> list[Program]:
    """The supervisord programs of the stack, in start order; Prometheus and the app
    programs run as the unprivileged user of ``app`` (stack/appuser.py) when it can."""
    system_user = app.name if app else None
    python_user = app.python_user if app else None
    py = sys.executable
    p = settings.ports
    local = "http://127.0.0.1:"
    common = {"CHAOSCHECKOUT_STATE_DIR": str(settings.state_dir), "PYTHONUNBUFFERED": "1",
              "PYTHONPATH": str(settings.project_dir)}
    own = {
        "provider": {"PROVIDER_PORT": str(p["provider"]),
                     "PROVIDER_STORE": str(settings.state_dir / "provider" / "charges.sqlite")},
        "catalog": {"CATALOG_PORT": str(p["catalog"]), "CATALOG_FD_LEAK": "0"},
        "payments": {"PAYMENTS_PORT": str(p["payments"]),
                     "PAYMENTS_PROVIDER_URL": f"{local}{p['proxy_provider']}"},
        "checkout": {"CHECKOUT_PORT": str(p["checkout"]),
                     "CHECKOUT_CATALOG_URL": f"{local}{p['proxy_catalog']}",
                     "CHECKOUT_PAYMENTS_URL": f"{local}{p['proxy_payments']}",
                     "CHECKOUT_DATABASE_URL": settings.app_database_url},
        "remediator": {"REMEDIATOR_PORT": str(p["remediator"]),
                       "REMEDIATOR_SUPERVISOR_URL": settings.supervisor_url,
                       "REMEDIATOR_WATCH": ",".join(n for n in ("catalog", "payments", "provider", "checkout")
                                                    if n in app_start_order(settings))},
    }
    passthrough = {k: v for k, v in env.items() if k.startswith(PASSTHROUGH_PREFIXES)}
    proxy_cmd = [py, "-m", "chaoscheckout.network.proxy", "--control", settings.proxy_control_url,
                 "--leases-dir", str(settings.state_dir / "leases")]  # no toxic without its lease
    for svc in services(settings):
        if svc.proxy:
            route, listen = svc.proxy
            proxy_cmd += ["--route", f"{route}={p[listen]}:127.0.0.1:{p[svc.port_key]}"]
    out = [
        Program("postgres", postgres.server_command(settings, pg_bindir), autorestart=True,
                user="postgres", stopsignal="INT", startsecs=2, startretries=10,
                directory=str(settings.pgdisk)),
        Program("prometheus", prometheus_config.command(settings), autorestart=True,
                directory=str(settings.state_dir / "prometheus"), user=system_user),
        Program("faultproxy", proxy_cmd, autorestart=True, environment=common),
        Program("reaper", [py, "-m", "chaoscheckout.faults.reaper", "--state-dir", str(settings.state_dir)],
                autorestart=True, environment=common),
    ]
    out += extra  # the VM (its payments is a hostfwd port of this machine)
    for name in app_start_order(settings):
        prefix = name.upper() + "_"
        environment = dict(common)
        environment.update({k: v for k, v in passthrough.items() if k.startswith(prefix)})
        environment.update(own[name])
        # App services are started by manage.py once Postgres is ready, and never
        # restarted by supervisord: a killed service must stay down (the kill fault).
        out.append(Program(name, [py, "-m", f"stack.services.{name}"], autorestart=False,
                           autostart=False, environment=environment,
                           user=None if name == "remediator" else python_user))  # remediator: ctl socket
    return out


def registry(settings: StackSettings) -> Registry:
    """The service registry written to <state_dir>/services.json."""
    entries: dict[str, ServiceEntry] = {}
    for svc in services(settings):
        if svc.port_key is None or svc.name == "vm":
            continue  # reaper and fault proxy: found through supervisord and proxy_control_url
        port = settings.port(svc.port_key)
        health_url = f"http://127.0.0.1:{port}{svc.health[5:]}" if svc.health.startswith("http:") else None
        entries[svc.name] = ServiceEntry(
            name=svc.name, host="127.0.0.1", port=port, process=svc.name,
            chaos_target=svc.chaos_target, health_url=health_url,
            data_dir=str(settings.pgdisk) if svc.name == "postgres" else None,
            proxy=ProxyRoute(svc.proxy[0], settings.port(svc.proxy[1])) if svc.proxy else None,
        )
    return Registry(
        runtime="local",
        services=entries,
        supervisor_url=settings.supervisor_url,
        prometheus_url=settings.prometheus_url,
        proxy_control_url=settings.proxy_control_url,
        extra={
            "database_url": settings.database_url,
            "database_admin_url": settings.admin_database_url,
            "provider_url": f"http://127.0.0.1:{settings.port('provider')}",
            "checkout_url": f"http://127.0.0.1:{settings.port('checkout')}",
            "catalog_url": f"http://127.0.0.1:{settings.port('catalog')}",
            "state_dir": str(settings.state_dir),
        },
    )


def registry_dict(settings: StackSettings, remote: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registry as written: ``remote`` (the contract's object, docs/ssh.md) goes on
    payments when it runs on another host."""
    data = registry(settings).to_dict()
    if remote is not None:
        data["services"]["payments"]["remote"] = remote
        data["extra"]["remote_payments"] = settings.remote_payments
    return data
