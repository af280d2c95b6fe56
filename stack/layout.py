"""What the local stack runs: the topology (stack/topology.py) as supervisord programs, their
env, and the service registry."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from chaoscheckout.runtime.registry import Registry
from stack import postgres, prometheus_config, targetns, topology
from stack.appuser import AppUser
from stack.settings import StackSettings
from stack.supervisord import Program
from stack.topology import SERVICES, Service

__all__ = ["Service", "SERVICES", "APP_START_ORDER", "services", "app_start_order", "programs",
           "registry", "registry_dict"]

# Env prefixes handed through from the caller's environment to each program (settings such
# as CHECKOUT_RETRIES); the ports/URLs computed here always win.
PASSTHROUGH_PREFIXES = ("CHECKOUT_", "CATALOG_", "PAYMENTS_", "PROVIDER_", "REMEDIATOR_")
APP_START_ORDER = ("provider", "catalog", "payments", "checkout", "remediator")


# `--remote-payments vm`: payments runs in the VM (local program `vm`, stack/vm.py); its
# port here is QEMU's hostfwd, so the proxy route and the health check stay as they are
REMOTE_PAYMENTS = replace(next(s for s in SERVICES if s.name == "payments"), module=None, program="vm")
VM = Service("vm", "vm_ssh", "ssh", False, runtimes=("local",), program="vm")


def services(settings: StackSettings) -> tuple[Service, ...]:
    """The local stack's services for these settings (payments remote or local)."""
    local = topology.services("local")
    if settings.remote_payments != "vm":
        return local
    return tuple(REMOTE_PAYMENTS if s.name == "payments" else s for s in local) + (VM,)


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
    placed = {p.service: p.link for p in targetns.placements(settings)}
    relay = [py, "-m", "stack.relay"]
    for name, link in placed.items():  # its usual 127.0.0.1 port, relayed into its namespace
        out.append(Program(f"relay-{name}", [*relay, "127.0.0.1", str(p[name]), link.ns_addr, str(p[name])],
                           autorestart=True, environment=common))
        own[name]["CHAOSCHECKOUT_BIND_HOST"] = link.ns_addr
    if "payments" in placed:  # payments -> the provider's proxy route, from its namespace
        host_side = placed["payments"].host_addr
        out.append(Program("relay-payments-provider", [*relay, host_side, str(p["proxy_provider"]),
                                                       "127.0.0.1", str(p["proxy_provider"])],
                           autorestart=True, environment=common))
        own["payments"]["PAYMENTS_PROVIDER_URL"] = f"http://{host_side}:{p['proxy_provider']}"
    for name in app_start_order(settings):
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
        user = None if name == "remediator" else python_user
        if name in placed:  # entered as root (setns), then the app user's ids (setpriv)
            drop = (["setpriv", f"--reuid={app.uid}", f"--regid={app.gid}", "--init-groups", "--"]
                    if user else [])
            command, user = ["ip", "netns", "exec", placed[name].netns, *drop, *command], None
        out.append(Program(name, command, autorestart=False, autostart=False, environment=environment,
                           user=user, directory=directory))
    return out


def registry(settings: StackSettings) -> Registry:
    """The service registry written to <state_dir>/services.json (stack/topology.py builds it)."""
    return topology.registry(
        "local", settings.port, process=lambda name: name, data_dir=str(settings.pgdisk),
        supervisor_url=settings.supervisor_url, proxy_control_url=settings.proxy_control_url,
        database_url=settings.database_url, database_admin_url=settings.admin_database_url,
        state_dir=str(settings.state_dir),
        netns={p.service: p.netns for p in targetns.placements(settings)}.get,
    )


def registry_dict(settings: StackSettings, remote: dict[str, Any] | None = None) -> dict[str, Any]:
    """The registry as written: ``remote`` (the contract's object, docs/ssh.md) goes on
    payments when it runs on another host."""
    data = registry(settings).to_dict()
    if remote is not None:
        data["services"]["payments"]["remote"] = remote
        data["extra"]["remote_payments"] = settings.remote_payments
    return data
