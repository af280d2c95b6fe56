"""What the local stack runs: the topology (stack/topology.py) as supervisord programs, their
env, and the service registry."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from chaoscheckout.runtime.registry import Registry
from stack import postgres, prometheus_config, topology
from stack.appuser import AppUser
from stack.settings import StackSettings
from stack.supervisord import Program
from stack.topology import SERVICES, Service

__all__ = ["Service", "SERVICES", "APP_START_ORDER", "programs", "registry"]

# Env prefixes handed through from the caller's environment to each program (settings such
# as CHECKOUT_RETRIES); the ports/URLs computed here always win.
PASSTHROUGH_PREFIXES = ("CHECKOUT_", "CATALOG_", "PAYMENTS_", "PROVIDER_", "REMEDIATOR_")
APP_START_ORDER = ("provider", "catalog", "payments", "checkout", "remediator")


def programs(settings: StackSettings, pg_bindir: Path, env: Mapping[str, str],
             app: AppUser | None = None) -> list[Program]:
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
                       "REMEDIATOR_WATCH": "catalog,payments,provider,checkout"},
    }
    passthrough = {k: v for k, v in env.items() if k.startswith(PASSTHROUGH_PREFIXES)}
    proxy_cmd = [py, "-m", "chaoscheckout.network.proxy", "--control", settings.proxy_control_url,
                 "--leases-dir", str(settings.state_dir / "leases")]  # no toxic without its lease
    for svc in SERVICES:
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
    for name in APP_START_ORDER:
        prefix = name.upper() + "_"
        environment = dict(common)
        environment.update({k: v for k, v in passthrough.items() if k.startswith(prefix)})
        environment.update(own[name])
        # App services are started by manage.py once Postgres is ready, and never
        # restarted by supervisord: a killed service must stay down (the kill fault).
        command, directory = [py, "-m", f"stack.services.{name}"], None
        if python_user and name != "remediator":  # remediator: root, it uses the ctl socket
            # the runtime copy the user can read (stack/appstage.py), with an interpreter it can run
            command, directory = [app.python, "-s", "-m", f"stack.services.{name}"], app.cwd
            environment["PYTHONPATH"] = app.pythonpath
        out.append(Program(name, command, autorestart=False, autostart=False, environment=environment,
                           user=None if name == "remediator" else python_user, directory=directory))
    return out


def registry(settings: StackSettings) -> Registry:
    """The service registry written to <state_dir>/services.json (stack/topology.py builds it)."""
    return topology.registry(
        "local", settings.port, process=lambda name: name, data_dir=str(settings.pgdisk),
        supervisor_url=settings.supervisor_url, proxy_control_url=settings.proxy_control_url,
        database_url=settings.database_url, database_admin_url=settings.admin_database_url,
        state_dir=str(settings.state_dir),
    )
