"""``chaoscheckout registry``: write and check the service registry of your own services.

The activities find services only through ``<state_dir>/services.json`` (format in
:mod:`chaoscheckout.runtime.registry`). ``registry add`` writes one entry at a time (the
file is created on first use and always re-read through the same parser the activities
use, so what it writes is what they accept); ``registry check`` validates a registry and,
with ``--probe``, asks supervisord and every health URL whether they answer.
"""

from __future__ import annotations

import json
import socket
import sys
from dataclasses import replace
from pathlib import Path

import click
import httpx

from chaoscheckout.config import settings_from
from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry, load_registry, save_registry
from chaoscheckout.runtime.supervisor import SupervisorClient, SupervisorError

__all__ = ["registry"]

PROBE_TIMEOUT_S = 3.0


@click.group()
def registry() -> None:
    """Describe your own services to the extension (the service registry)."""


@registry.command("add")
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535), required=True, help="TCP port the service listens on.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--process", default=None, help="Process name for the runtime (supervisord program). "
              "Default: NAME.")
@click.option("--health-url", default=None, help="GET answering 2xx when healthy (default: the TCP port "
              "accepting a connection).")
@click.option("--target/--no-target", default=False, show_default=True,
              help="Whether experiments may inject faults into this service.")
@click.option("--data-dir", default=None, help="Absolute data directory (for fill_disk).")
@click.option("--netns", default=None, help="Network namespace the service runs in (for netem).")
@click.option("--proxy-route", default=None, help="Fault proxy route name (with --proxy-listen-port).")
@click.option("--proxy-listen-port", type=click.IntRange(1, 65535), default=None)
@click.option("--runtime", type=click.Choice(["local", "docker"]), default=None,
              help="Registry runtime (only when creating the file; default local).")
@click.option("--supervisor-url", default=None,
              help="supervisord XML-RPC: unix:///path/to/supervisord.sock or http://127.0.0.1:PORT/RPC2.")
@click.option("--prometheus-url", default=None)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Default: $CHAOSCHECKOUT_STATE_DIR, else /var/lib/chaoscheckout.")
def add(name: str, port: int, host: str, process: str | None, health_url: str | None, target: bool,
        data_dir: str | None, netns: str | None, proxy_route: str | None, proxy_listen_port: int | None,
        runtime: str | None, supervisor_url: str | None, prometheus_url: str | None,
        state_dir: Path | None) -> None:
    """Add (or replace) service NAME in the registry; create the registry if it is missing."""
    path = _registry_file(state_dir)
    if (proxy_route is None) != (proxy_listen_port is None):
        raise click.UsageError("--proxy-route and --proxy-listen-port go together")
    current = _load_or_empty(path, runtime)
    entry = ServiceEntry(
        name=name, host=host, port=port, process=process or name, chaos_target=target,
        health_url=health_url, data_dir=data_dir, netns=netns,
        proxy=ProxyRoute(proxy_route, proxy_listen_port) if proxy_route and proxy_listen_port else None,
    )
    updated = replace(
        current,
        services={**current.services, name: entry},
        supervisor_url=supervisor_url or current.supervisor_url,
        prometheus_url=prometheus_url or current.prometheus_url,
    )
    _check_then_save(updated, path)
    click.echo(f"{path}: {'replaced' if name in current.services else 'added'} {name} "
               f"({'chaos target' if target else 'not a target'}, {host}:{port}, process {entry.process})")


@registry.command("check")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Default: $CHAOSCHECKOUT_STATE_DIR, else /var/lib/chaoscheckout.")
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A registry file elsewhere (instead of <state-dir>/services.json).")
@click.option("--probe", is_flag=True, help="Also ask supervisord and each health URL (3 s timeouts).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(state_dir: Path | None, file_: Path | None, probe: bool, as_json: bool) -> None:
    """Validate a registry (exit 0 valid, 1 invalid or, with --probe, something unreachable)."""
    path = file_ or _registry_file(state_dir)
    try:
        loaded = load_registry(path)
    except ChaosCheckoutError as exc:
        raise click.ClickException(str(exc)) from None
    problems = _problems(loaded)
    checks = _probe(loaded) if probe else {}
    problems += [f"{what}: {answer}" for what, answer in checks.items() if answer != "ok"]
    if as_json:
        click.echo(json.dumps({"file": str(path), "runtime": loaded.runtime, "valid": not problems,
                               "problems": problems, "probes": checks,
                               "services": loaded.to_dict()["services"]}, indent=2))
    else:
        click.echo(f"{path}: runtime {loaded.runtime}, {len(loaded.services)} service(s)")
        for entry in loaded.services.values():
            mark = "target" if entry.chaos_target else "      "
            click.echo(f"  {mark} {entry.name:<14} {entry.address:<21} process={entry.process}"
                       f" health={entry.health_url or 'tcp'}"
                       + (f" data_dir={entry.data_dir}" if entry.data_dir else "")
                       + (f" netns={entry.netns}" if entry.netns else "")
                       + (f" proxy={entry.proxy.route}:{entry.proxy.listen_port}" if entry.proxy else ""))
        for what, answer in checks.items():
            click.echo(f"  probe {what}: {answer}")
        for problem in problems:
            click.echo(f"  problem: {problem}", err=True)
        click.echo("valid" if not problems else f"{len(problems)} problem(s)")
    sys.exit(0 if not problems else 1)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
def _registry_file(state_dir: Path | None) -> Path:
    if state_dir is not None:
        return Path(state_dir) / "services.json"
    return settings_from(None).registry_file


def _load_or_empty(path: Path, runtime: str | None) -> Registry:
    if not path.exists():
        return Registry(runtime=runtime or "local", services={})
    try:
        loaded = load_registry(path)
    except ChaosCheckoutError as exc:
        raise click.ClickException(f"{exc} (fix or remove it first)") from None
    if runtime and runtime != loaded.runtime:
        raise click.UsageError(f"{path} is a {loaded.runtime} registry; --runtime {runtime} would change "
                               "every service's runtime: write a new registry instead")
    return loaded


def _check_then_save(updated: Registry, path: Path) -> None:
    """Round-trip through the activities' own parser before anything is written."""
    probe = path.with_name(f".{path.name}.check")
    probe.parent.mkdir(parents=True, exist_ok=True)
    try:
        probe.write_text(json.dumps(updated.to_dict()))
        load_registry(probe)
    except ChaosCheckoutError as exc:
        raise click.ClickException(f"refused, nothing written: {exc}") from None
    finally:
        probe.unlink(missing_ok=True)
    problems = _problems(updated)
    if problems:
        raise click.ClickException("refused, nothing written: " + "; ".join(problems))
    save_registry(updated, path)


def _problems(loaded: Registry) -> list[str]:
    problems = []
    if loaded.runtime not in ("local", "docker"):
        problems.append(f"runtime {loaded.runtime!r} is not one of local, docker")
    if loaded.runtime == "local" and not loaded.supervisor_url and \
            any(s.chaos_target and s.remote is None for s in loaded.services.values()):
        problems.append("a local registry with chaos targets needs supervisor_url (kill/start go through "
                        "supervisord): pass --supervisor-url")
    for entry in loaded.services.values():
        if entry.proxy and not loaded.proxy_control_url:
            problems.append(f"{entry.name} has a proxy route but the registry has no proxy_control_url")
    return problems


def _probe(loaded: Registry) -> dict[str, str]:
    answers: dict[str, str] = {}
    if loaded.supervisor_url:
        client = SupervisorClient(loaded.supervisor_url, timeout_s=PROBE_TIMEOUT_S)
        try:
            known = {p["name"] for p in client.all_process_info()}
            answers["supervisord"] = "ok"
            for entry in loaded.services.values():
                if entry.chaos_target and loaded.runtime == "local" and entry.remote is None \
                        and entry.process not in known:
                    answers[f"{entry.name} process"] = (f"supervisord has no program {entry.process!r} "
                                                        f"(it has: {', '.join(sorted(known)) or 'none'})")
        except (SupervisorError, ChaosCheckoutError, OSError) as exc:
            answers["supervisord"] = f"no answer at {loaded.supervisor_url}: {exc}"
    for entry in loaded.services.values():
        answers[f"{entry.name} health"] = _health(entry)
    return answers


def _health(entry: ServiceEntry) -> str:
    if entry.health_url:
        try:
            answer = httpx.get(entry.health_url, timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return f"{entry.health_url}: {type(exc).__name__}"
        return "ok" if answer.is_success else f"{entry.health_url}: HTTP {answer.status_code}"
    try:
        with socket.create_connection((entry.host, entry.port), timeout=PROBE_TIMEOUT_S):
            return "ok"
    except OSError as exc:
        return f"{entry.address}: {exc.strerror or exc}"


