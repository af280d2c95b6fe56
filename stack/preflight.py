"""Checks run before `stack up` starts anything; each failure is one actionable line."""

from __future__ import annotations

import errno
import os
import pwd
import socket
from collections.abc import Callable
from pathlib import Path

from stack import postgres, prometheus_config, statedir
from stack.settings import StackSettings

__all__ = ["PreflightError", "run_all", "busy_ports"]


class PreflightError(Exception):
    """A pre-flight check failed; nothing was started."""


def run_all(settings: StackSettings, validate: Callable[[Path], None] | None = None) -> Path:
    """Run every check in order; return the Postgres bin dir.

    ``validate(bindir)`` (the rendered configuration's check) runs before the checks of
    the machine's state (ports, mounts); its exception propagates."""
    if os.geteuid() != 0:
        raise PreflightError(
            "must run as root: the Postgres data disk is a tmpfs mount (run with sudo, or as root)"
        )
    try:
        statedir.check(settings.state_dir)
    except statedir.StateDirError as exc:
        raise PreflightError(str(exc)) from None
    try:
        bindir = postgres.find_pg_bindir(os.environ)
    except postgres.PostgresError as exc:
        raise PreflightError(str(exc)) from None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PreflightError("system user 'postgres' missing: run `make setup`") from None
    if validate is not None:
        validate(bindir)
    if not os.access(prometheus_config.PROMETHEUS_BIN, os.X_OK):
        raise PreflightError(
            f"{prometheus_config.PROMETHEUS_BIN} not found: run `make setup` or `apt-get install prometheus`"
        )
    blocked = _blocked_ancestor(settings.state_dir)
    if blocked is not None:
        raise PreflightError(
            f"user postgres cannot reach {settings.state_dir}: {blocked} is not world-searchable "
            "(chmod o+x it, or pick another CHAOSCHECKOUT_STATE_DIR such as /var/lib/chaoscheckout)"
        )
    busy = busy_ports(settings)
    if busy:
        names = {v: k for k, v in settings.ports.items()}
        listed = ", ".join(f"{p} ({names[p]})" for p in busy)
        raise PreflightError(
            f"port(s) already in use on 127.0.0.1: {listed}; stop what holds them "
            "or pick another CHAOSCHECKOUT_PORT_BASE"
        )
    if postgres.is_mounted(settings.pgdisk):
        raise PreflightError(
            f"{settings.pgdisk} is still mounted from an earlier run: run `stack down` first"
        )
    return bindir


def busy_ports(settings: StackSettings) -> list[int]:
    """Ports of the stack that something is listening on (or otherwise bound)."""
    return [port for port in sorted(settings.ports.values()) if not _port_free(port)]


def _blocked_ancestor(state_dir: Path) -> Path | None:
    """The first existing ancestor of the state dir that others cannot traverse, if any."""
    for parent in reversed(state_dir.parents):
        try:
            mode = parent.stat().st_mode
        except FileNotFoundError:
            return None
        if not mode & 0o001:
            return parent
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True
