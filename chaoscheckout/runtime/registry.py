"""The service registry: which services a runtime knows, where they live, which are targets.

Whoever brings a stack up writes ``<state_dir>/services.json``; the activities only read
it. This keeps the extension generic: another team describes its own services in the
same format and the same experiments work against them.

Format (JSON)::

    {
      "runtime": "local",
      "supervisor_url": "http://127.0.0.1:18140/RPC2",
      "prometheus_url": "http://127.0.0.1:18130",
      "proxy_control_url": "http://127.0.0.1:18150",
      "services": {
        "catalog": {
          "host": "127.0.0.1", "port": 18101,
          "health_url": "http://127.0.0.1:18101/healthz",
          "process": "catalog",
          "chaos_target": true,
          "data_dir": null,
          "netns": null,
          "proxy": {"route": "catalog", "listen_port": 18111}
        }
      },
      "extra": {"database_url": "...", "provider_url": "..."}
    }

``health_url`` may be null: then health is "the TCP port accepts a connection".

Names end up in file names (leases), supervisord calls and ``ip -n``: service, process,
route and netns names must be 1-64 of ``[A-Za-z0-9_.-]`` starting with a letter or digit
(so never ``.``, ``..`` or a path); ``port`` an integer port; ``data_dir`` an absolute path
without ``..``. A registry breaking these rules is refused as a whole, with the reason.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError, TargetRefused, UnknownService

__all__ = ["ProxyRoute", "ServiceEntry", "Registry", "load_registry", "save_registry"]


@dataclass(frozen=True)
class ProxyRoute:
    route: str
    listen_port: int


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    host: str
    port: int
    process: str
    chaos_target: bool = False
    health_url: str | None = None
    data_dir: str | None = None
    netns: str | None = None
    proxy: ProxyRoute | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Registry:
    runtime: str
    services: dict[str, ServiceEntry]
    supervisor_url: str | None = None
    prometheus_url: str | None = None
    proxy_control_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def service(self, name: str) -> ServiceEntry:
        """Return the entry for ``name`` or raise :class:`UnknownService`."""
        if not isinstance(name, str) or name not in self.services:
            known = ", ".join(sorted(self.services)) or "none"
            raise UnknownService(f"unknown service {name!r}; this stack has: {known}")
        return self.services[name]

    def target(self, name: str, check_container: bool = True) -> ServiceEntry:
        """Return the entry for ``name`` if it is an allowed chaos target, else refuse.

        For a docker registry the live container must also carry the target label (and a
        named netns be its own), whatever runtime the configuration names."""
        entry = self.service(name)
        if not entry.chaos_target:
            allowed = ", ".join(sorted(n for n, s in self.services.items() if s.chaos_target))
            raise TargetRefused(
                f"service {name!r} is not a chaos target of this stack "
                f"(allowed targets: {allowed or 'none'})"
            )
        if check_container and self.runtime == "docker":
            from chaoscheckout.runtime.docker import check_container_target  # the docker extra

            check_container_target(entry)
        return entry

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry in data["services"].values():
            entry.pop("name", None)
        return data


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _name(what: str, value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
        raise ValueError(f"{what} {value!r} is not a safe name (1-64 of [A-Za-z0-9_.-], "
                         "starting with a letter or digit)")
    return value


def _entry(name: str, raw: dict[str, Any]) -> ServiceEntry:
    _name("service name", name)
    if not isinstance(raw, dict):
        raise ValueError(f"service {name!r} is not an object")
    proxy = raw.get("proxy")
    for key in ("process", "netns"):
        _name(f"service {name!r} {key}", raw.get(key))
    if proxy:
        _name(f"service {name!r} proxy route", proxy.get("route"))
    data_dir = raw.get("data_dir")
    if data_dir is not None and (not isinstance(data_dir, str) or not data_dir.startswith("/")
                                 or ".." in Path(data_dir).parts):
        raise ValueError(f"service {name!r} data_dir {data_dir!r} must be an absolute path without '..'")
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"service {name!r} port {port!r} is not a TCP port")
    return ServiceEntry(
        name=name,
        host=raw.get("host", "127.0.0.1"),
        port=int(raw["port"]),
        process=raw.get("process", name),
        chaos_target=bool(raw.get("chaos_target", False)),
        health_url=raw.get("health_url"),
        data_dir=raw.get("data_dir"),
        netns=raw.get("netns"),
        proxy=ProxyRoute(proxy["route"], int(proxy["listen_port"])) if proxy else None,
    )


def load_registry(path: Path) -> Registry:
    """Read a registry file, with an actionable error when the stack is not up."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ChaosCheckoutError(
            f"no service registry at {path}: is the stack up? "
            "(run `chaoscheckout stack up`, or set CHAOSCHECKOUT_STATE_DIR)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ChaosCheckoutError(f"unreadable service registry {path}: {exc}") from None
    try:
        return Registry(
            runtime=raw.get("runtime", "local"),
            services={name: _entry(name, s) for name, s in raw.get("services", {}).items()},
            supervisor_url=raw.get("supervisor_url"),
            prometheus_url=raw.get("prometheus_url"),
            proxy_control_url=raw.get("proxy_control_url"),
            extra=raw.get("extra", {}),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ChaosCheckoutError(f"invalid service registry {path}: {exc}") from None


def save_registry(registry: Registry, path: Path) -> None:
    """Write the registry atomically (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".services.")
    with os.fdopen(fd, "w") as fh:
        json.dump(registry.to_dict(), fh, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
