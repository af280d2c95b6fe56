"""Parse ``stack/docker-compose.yml`` (the compose file ``docker compose up`` also reads) into
start-ordered container specs, published ports shifted to a port base (127.0.0.1 only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["COMPOSE_FILE", "COMPOSE_PORT_BASE", "STACK_LABEL", "SERVICE_LABEL", "STATE_LABEL",
           "DockerStackError", "Spec", "Compose", "load_compose", "healthcheck"]

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = PROJECT_DIR / "stack" / "docker-compose.yml"
COMPOSE_PORT_BASE = 31100
STACK_LABEL = "org.chaoscheckout.stack"
SERVICE_LABEL = "org.chaoscheckout.service"
STATE_LABEL = "org.chaoscheckout.state-dir"


class DockerStackError(Exception):
    """The docker stack could not be built, started or stopped; one actionable line."""


@dataclass(frozen=True)
class Spec:
    """One compose service, with its published ports already shifted to the port base."""

    service: str
    image: str
    dockerfile: str | None
    command: list[str] | None
    environment: dict[str, str]
    labels: dict[str, str]
    ports: dict[int, int]  # container port -> published 127.0.0.1 port
    volumes: dict[str, str]  # volume key -> container path
    healthcheck: dict[str, Any] | None = None
    depends_on: tuple[str, ...] = field(default_factory=tuple)
    secrets: tuple[str, ...] = ()  # files of <state_dir>/secrets mounted at /run/secrets/<name>

    @property
    def main_port(self) -> int:
        return next(iter(self.ports.values()))


@dataclass(frozen=True)
class Compose:
    specs: list[Spec]
    volumes: dict[str, dict[str, Any]]
    network: str


def load_compose(path: Path = COMPOSE_FILE, port_base: int = COMPOSE_PORT_BASE) -> Compose:
    """Parse the compose file into start-ordered specs; ports shifted to ``port_base``."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DockerStackError(f"cannot read {path}: {exc}") from None
    shift = port_base - COMPOSE_PORT_BASE
    specs = []
    for name, svc in raw["services"].items():
        ports: dict[int, int] = {}
        for item in svc.get("ports", []):
            host_ip, host_port, container_port = str(item).split(":")
            if host_ip != "127.0.0.1":
                raise DockerStackError(f"{path}: {name} publishes {item}: only 127.0.0.1 is allowed")
            ports[int(container_port)] = int(host_port) + shift
        volumes = {}
        for item in svc.get("volumes", []):
            key, _, target = str(item).partition(":")
            volumes[key] = target
        build = svc.get("build") or {}
        env = {k: _substitute(str(v)) for k, v in (svc.get("environment") or {}).items()}
        specs.append(Spec(
            service=name, image=svc["image"], dockerfile=build.get("dockerfile"),
            command=svc.get("command"), environment=env,
            labels={k: str(v) for k, v in (svc.get("labels") or {}).items()},
            ports=ports, volumes=volumes, healthcheck=svc.get("healthcheck"),
            depends_on=tuple(svc.get("depends_on") or ()),
            secrets=tuple(str(x) for x in svc.get("secrets") or ()),
        ))
    networks = list((raw.get("networks") or {"default": {}}).keys())
    return Compose(_start_order(specs), raw.get("volumes") or {}, networks[0])


def _start_order(specs: list[Spec]) -> list[Spec]:
    by_name = {s.service: s for s in specs}
    done: list[Spec] = []

    def visit(spec: Spec, depth: int = 0) -> None:
        if spec in done or depth > len(specs):
            return
        for dep in spec.depends_on:
            visit(by_name[dep], depth + 1)
        if spec not in done:
            done.append(spec)

    for spec in specs:
        visit(spec)
    return done


def healthcheck(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if not raw:
        return None
    return {"test": raw["test"], "interval": _ns(raw.get("interval", "5s")),
            "timeout": _ns(raw.get("timeout", "3s")), "retries": int(raw.get("retries", 3))}


def _ns(value: str) -> int:
    value = str(value)
    if value.endswith("ms"):
        return int(float(value[:-2]) * 1e6)
    return int(float(value.rstrip("s")) * 1e9)


def _substitute(value: str) -> str:
    return value  # the compose file uses no variables in environment values
