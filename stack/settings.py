"""The stack's settings: state dir, port map and disk size, read from the environment."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StackSettings", "PORT_OFFSETS", "StackConfigError", "settings_from_env"]

DEFAULT_STATE_DIR = "/var/lib/chaoscheckout"
DEFAULT_PORT_BASE = 18100
DEFAULT_PG_DISK_SIZE = "256m"
TARGET_NETNS_MODES = ("auto", "on", "off")

# Every port is base + offset on 127.0.0.1 (docs/architecture.md).
PORT_OFFSETS: dict[str, int] = {
    "checkout": 0,
    "catalog": 1,
    "payments": 2,
    "provider": 3,
    "remediator": 4,
    "proxy_catalog": 11,
    "proxy_payments": 12,
    "proxy_provider": 13,
    "postgres": 20,
    "prometheus": 30,
    "vm_ssh": 60,  # `stack up --remote-payments vm`: QEMU's hostfwd to the guest's sshd
}
# The control planes are not on TCP: supervisord's XML-RPC and the fault proxy's control
# API listen on 0600 unix sockets in <state_dir>/ctl/ (root only).


class StackConfigError(Exception):
    """A setting is invalid; the message is one line the user can act on."""


@dataclass(frozen=True)
class StackSettings:
    state_dir: Path
    port_base: int
    pg_disk_size: str
    project_dir: Path
    # "vm": payments runs on the QEMU VM host (stack/vm.py), reached over SSH; None: local
    remote_payments: str | None = None
    # CHAOSCHECKOUT_TARGET_NETNS: auto|on|off (stack/targetns.py); ``netns_services`` is what
    # `stack up` resolved it to: the chaos targets that run in a namespace of their own
    target_netns: str = "auto"
    netns_services: tuple[str, ...] = ()

    def port(self, what: str) -> int:
        return self.port_base + PORT_OFFSETS[what]

    @property
    def ports(self) -> dict[str, int]:
        return {name: self.port(name) for name in PORT_OFFSETS}

    @property
    def pgdisk(self) -> Path:
        return self.state_dir / "pgdisk"

    @property
    def pgdata(self) -> Path:
        return self.pgdisk / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def ctl_dir(self) -> Path:
        """Control sockets (supervisord, fault proxy): root only, mode 0700."""
        return self.state_dir / "ctl"

    @property
    def secrets_dir(self) -> Path:
        """Postgres passwords and pgpass files: each a 0600 file owned by its user."""
        return self.state_dir / "secrets"

    @property
    def supervisord_socket(self) -> Path:
        return self.ctl_dir / "supervisord.sock"

    @property
    def proxy_control_socket(self) -> Path:
        return self.ctl_dir / "faultproxy.sock"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def registry_file(self) -> Path:
        return self.state_dir / "services.json"

    @property
    def supervisord_conf(self) -> Path:
        return self.state_dir / "supervisord.conf"

    @property
    def supervisord_pidfile(self) -> Path:
        return self.state_dir / "supervisord.pid"

    @property
    def supervisor_url(self) -> str:
        return f"unix://{self.supervisord_socket}"

    @property
    def proxy_control_url(self) -> str:
        return f"unix:{self.proxy_control_socket}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.port('prometheus')}"

    @property
    def database_url(self) -> str:
        """Read-only (``checkout_probe``): the money probe's, the registry's ``database_url``."""
        return self.dsn("checkout_probe", "checkout", "probe")

    @property
    def app_database_url(self) -> str:
        """checkout's own role (``checkout_app``: SELECT, INSERT, UPDATE on orders)."""
        return self.dsn("checkout_app", "checkout", "checkout")

    @property
    def admin_database_url(self) -> str:
        """The superuser, for `stack up` and tests (its pgpass file is root's, 0600)."""
        return self.dsn("postgres", "postgres", "postgres")

    def dsn(self, role: str, dbname: str, secret: str) -> str:
        """A DSN for ``role`` whose password is in <state_dir>/secrets/<secret>.pgpass."""
        passfile = self.secrets_dir / f"{secret}.pgpass"
        return f"postgresql://{role}@127.0.0.1:{self.port('postgres')}/{dbname}?passfile={passfile}"


def _parse_size(raw: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[kmgKMG]?", raw):
        raise StackConfigError(
            f"CHAOSCHECKOUT_PG_DISK_SIZE={raw!r} is not a size like 256m, 1g or 65536k"
        )
    return raw.lower()


def settings_from_env(env: Mapping[str, str] | None = None, project_dir: Path | None = None) -> StackSettings:
    """Read CHAOSCHECKOUT_STATE_DIR, CHAOSCHECKOUT_PORT_BASE, CHAOSCHECKOUT_PG_DISK_SIZE,
    CHAOSCHECKOUT_TARGET_NETNS."""
    env = os.environ if env is None else env
    state_dir = Path(env.get("CHAOSCHECKOUT_STATE_DIR") or DEFAULT_STATE_DIR)
    if not state_dir.is_absolute():
        raise StackConfigError(f"CHAOSCHECKOUT_STATE_DIR={state_dir} must be an absolute path")
    raw_base = env.get("CHAOSCHECKOUT_PORT_BASE") or str(DEFAULT_PORT_BASE)
    try:
        port_base = int(raw_base)
    except ValueError:
        raise StackConfigError(f"CHAOSCHECKOUT_PORT_BASE={raw_base!r} is not an integer") from None
    if not 1024 <= port_base <= 65535 - max(PORT_OFFSETS.values()):
        raise StackConfigError(
            f"CHAOSCHECKOUT_PORT_BASE={port_base} out of range "
            f"(1024..{65535 - max(PORT_OFFSETS.values())})"
        )
    size = _parse_size(env.get("CHAOSCHECKOUT_PG_DISK_SIZE") or DEFAULT_PG_DISK_SIZE)
    target_netns = (env.get("CHAOSCHECKOUT_TARGET_NETNS") or "auto").strip().lower()
    if target_netns not in TARGET_NETNS_MODES:
        raise StackConfigError(f"CHAOSCHECKOUT_TARGET_NETNS={target_netns!r}: use auto, on or off")
    root = project_dir or Path(__file__).resolve().parent.parent
    return StackSettings(state_dir=state_dir, port_base=port_base, pg_disk_size=size, project_dir=root,
                         target_netns=target_netns)
