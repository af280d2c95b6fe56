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

A service entry may carry a ``remote`` object: the service lives on another host and
every runtime call for it goes over SSH (:mod:`chaoscheckout.runtime.ssh`, docs/ssh.md)::

    "remote": {"runtime": "ssh", "ssh_host": "10.0.0.5", "ssh_port": 22, "user": "root",
               "key_file": "secrets/ssh/id_ed25519", "known_hosts": "secrets/ssh/known_hosts",
               "python": "/opt/cc/bin/python", "state_dir": "/var/lib/chaoscheckout",
               "service": "payments", "connect_timeout_s": 5, "call_timeout_s": 20,
               "keeper_miss_s": 1}

Relative ``key_file`` / ``known_hosts`` are relative to the registry's state dir and must
exist; ``ssh_host`` is a host name or an IP address, ``user`` a POSIX user name,
``python`` and ``state_dir`` absolute paths on the remote host, ``service`` the service's
name in the remote host's own registry; ``keeper_miss_s`` (optional, default 1, at most 60)
how long a remote fault's keeper waits without a heartbeat before it reverts.

Names end up in file names (leases), supervisord calls and ``ip -n``: service, process,
route and netns names must be 1-64 of ``[A-Za-z0-9_.-]`` starting with a letter or digit
(so never ``.``, ``..`` or a path); ``port`` an integer port; ``data_dir`` an absolute path
without ``..``. A registry breaking these rules is refused as a whole, with the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError, TargetRefused, UnknownService

__all__ = ["ProxyRoute", "RemoteSpec", "ServiceEntry", "Registry", "load_registry", "save_registry",
           "parse_remote"]


@dataclass(frozen=True)
class ProxyRoute:
    route: str
    listen_port: int


@dataclass(frozen=True)
class RemoteSpec:
    """Where a remote service lives and how to reach its host over SSH (see the module doc)."""

    ssh_host: str
    ssh_port: int
    user: str
    key_file: str  # absolute once loaded (relative ones are resolved against the state dir)
    known_hosts: str
    python: str
    state_dir: str
    service: str
    connect_timeout_s: float = 5.0
    call_timeout_s: float = 20.0
    keeper_miss_s: float = 1.0  # the keeper reverts after this long without a heartbeat
    runtime: str = "ssh"


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
    remote: RemoteSpec | None = None

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
        if check_container and self.runtime == "docker" and entry.remote is None:
            from chaoscheckout.runtime.docker import check_container_target  # the docker extra

            check_container_target(entry)
        return entry

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for entry in data["services"].values():
            entry.pop("name", None)
            if entry.get("remote") is None:
                entry.pop("remote", None)  # a local service's entry reads as it always did
        return data


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _name(what: str, value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not _NAME.fullmatch(value)):
        raise ValueError(f"{what} {value!r} is not a safe name (1-64 of [A-Za-z0-9_.-], "
                         "starting with a letter or digit)")
    return value


_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_REMOTE_KEYS = {"runtime", "ssh_host", "ssh_port", "user", "key_file", "known_hosts", "python",
                "state_dir", "service", "connect_timeout_s", "call_timeout_s", "keeper_miss_s"}


def _abs_path(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or ".." in Path(value).parts or \
            any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError(f"{what} {value!r} must be an absolute path without '..' or control characters")
    return value


def _local_file(what: str, value: Any, base_dir: Path) -> str:
    if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} {value!r} must be a file name")
    path = Path(value) if value.startswith("/") else base_dir / value
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist (or is not a file)")
    return str(path)


def _seconds(what: str, value: Any, default: float, high: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 < value <= high:
        raise ValueError(f"{what} {value!r} must be a number of seconds in (0, {high:g}]")
    return float(value)


def parse_remote(name: str, raw: Any, base_dir: Path) -> RemoteSpec:
    """A service's ``remote`` object, strictly; ValueError says what is wrong."""
    where = f"service {name!r} remote"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object")
    unknown = set(raw) - _REMOTE_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    if raw.get("runtime", "ssh") != "ssh":
        raise ValueError(f"{where} runtime {raw.get('runtime')!r} is not supported (only 'ssh')")
    host = raw.get("ssh_host")
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise ValueError(f"{where} ssh_host {host!r} is not a host name or IP address")
    port = raw.get("ssh_port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{where} ssh_port {port!r} is not a TCP port")
    user = raw.get("user")
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise ValueError(f"{where} user {user!r} is not a safe user name ([a-z_][a-z0-9_-]{{0,31}})")
    return RemoteSpec(
        ssh_host=host, ssh_port=port, user=user,
        key_file=_local_file(f"{where} key_file", raw.get("key_file"), base_dir),
        known_hosts=_local_file(f"{where} known_hosts", raw.get("known_hosts"), base_dir),
        python=_abs_path(f"{where} python", raw.get("python")),
        state_dir=_abs_path(f"{where} state_dir", raw.get("state_dir")),
        service=_name(f"{where} service", raw.get("service", name)),
        connect_timeout_s=_seconds(f"{where} connect_timeout_s", raw.get("connect_timeout_s"), 5.0, 120),
        call_timeout_s=_seconds(f"{where} call_timeout_s", raw.get("call_timeout_s"), 20.0, 600),
        keeper_miss_s=_seconds(f"{where} keeper_miss_s", raw.get("keeper_miss_s"), 1.0, 60),
    )


def _entry(name: str, raw: dict[str, Any], base_dir: Path) -> ServiceEntry:
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
        remote=parse_remote(name, raw["remote"], base_dir) if raw.get("remote") is not None else None,
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
            services={name: _entry(name, s, Path(path).parent)
                      for name, s in raw.get("services", {}).items()},
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
