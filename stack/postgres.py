"""PostgreSQL on a size-capped tmpfs: find the binaries, mount, initdb, create the database."""

from __future__ import annotations

import glob
import os
import pwd
import subprocess
import time
from pathlib import Path

import psycopg

from stack.settings import StackSettings

__all__ = [
    "PostgresError",
    "find_pg_bindir",
    "mount_pgdisk",
    "unmount_pgdisk",
    "is_mounted",
    "initdb",
    "wait_ready",
    "create_database",
    "SCHEMA_SQL",
]

PG_BINARIES = ("initdb", "postgres")
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS orders (
    order_ref uuid PRIMARY KEY,
    items jsonb NOT NULL,
    amount_cents int NOT NULL,
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
# Small server: the machine has 2 shared cores and the data disk is a few hundred MB.
SERVER_CONF = {
    "listen_addresses": "'127.0.0.1'",
    "shared_buffers": "'32MB'",
    "max_connections": "60",
    "fsync": "on",
    "max_wal_size": "'64MB'",
    "min_wal_size": "'32MB'",
    "log_min_messages": "warning",
    "log_destination": "'stderr'",
    "logging_collector": "off",
}
SUBPROCESS_TIMEOUT_S = 60


class PostgresError(Exception):
    """Postgres could not be prepared; the message is one actionable line."""


def find_pg_bindir(env: dict[str, str] | os._Environ) -> Path:
    """Return the newest /usr/lib/postgresql/*/bin holding initdb and postgres.

    ``CHAOSCHECKOUT_PG_BINDIR`` overrides the search.
    """
    override = env.get("CHAOSCHECKOUT_PG_BINDIR")
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True
    )
    for candidate in candidates:
        if all(os.access(Path(candidate) / b, os.X_OK) for b in PG_BINARIES):
            return Path(candidate)
    where = override or "/usr/lib/postgresql/*/bin"
    raise PostgresError(
        f"PostgreSQL server binaries (initdb, postgres) not found in {where}: "
        "run `make setup` or `apt-get install postgresql`"
    )


def postgres_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("system user 'postgres' missing: run `apt-get install postgresql`") from None
    return entry.pw_uid, entry.pw_gid


def is_mounted(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == target for line in fh if len(line.split()) > 1)


def mount_pgdisk(settings: StackSettings) -> None:
    """Mount a tmpfs of ``pg_disk_size`` at <state_dir>/pgdisk (owner postgres, mode 0700)."""
    uid, gid = postgres_ids()
    settings.pgdisk.mkdir(parents=True, exist_ok=True)
    if is_mounted(settings.pgdisk):
        raise PostgresError(f"{settings.pgdisk} is already a mount point: run `stack down` first")
    options = f"size={settings.pg_disk_size},uid={uid},gid={gid},mode=0700"
    _run(["mount", "-t", "tmpfs", "-o", options, "chaoscheckout-pgdisk", str(settings.pgdisk)])


def unmount_pgdisk(settings: StackSettings, timeout_s: float = 10) -> bool:
    """Unmount the data disk if mounted; returns True when something was unmounted."""
    if not is_mounted(settings.pgdisk):
        return False
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.run(
            ["umount", str(settings.pgdisk)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
        )
        if proc.returncode == 0:
            return True
        if time.monotonic() > deadline:
            raise PostgresError(f"umount {settings.pgdisk} failed: {proc.stderr.strip()}")
        time.sleep(0.5)


def initdb(settings: StackSettings, bindir: Path) -> None:
    """Create the cluster as user postgres (trust auth) and write the server settings."""
    uid, gid = postgres_ids()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(settings.run_dir, uid, gid)
    _run(
        [str(bindir / "initdb"), "-D", str(settings.pgdata), "-U", "postgres", "--auth=trust",
         "-E", "UTF8", "--locale=C.UTF-8"],
        user=uid, group=gid,
    )
    conf = dict(SERVER_CONF)
    conf["port"] = str(settings.port("postgres"))
    conf["unix_socket_directories"] = f"'{settings.run_dir}'"
    with open(settings.pgdata / "postgresql.conf", "a") as fh:
        fh.write("\n# chaoscheckout stack settings\n")
        fh.writelines(f"{key} = {value}\n" for key, value in conf.items())


def server_command(settings: StackSettings, bindir: Path) -> list[str]:
    return [str(bindir / "postgres"), "-D", str(settings.pgdata)]


def wait_ready(settings: StackSettings, timeout_s: float = 30) -> None:
    """Wait until the server accepts a connection on its TCP port."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(_dsn(settings, "postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.Error as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        time.sleep(0.3)
    raise PostgresError(f"postgres did not accept connections within {timeout_s:.0f}s: {last}")


def create_database(settings: StackSettings) -> None:
    """Create database ``checkout`` and the ``orders`` table, idempotently."""
    with psycopg.connect(_dsn(settings, "postgres"), connect_timeout=5, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '10s'")
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'checkout'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE checkout")
    with psycopg.connect(settings.database_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '10s'")
        conn.execute(SCHEMA_SQL)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _dsn(settings: StackSettings, dbname: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{settings.port('postgres')}/{dbname}"


def _version_key(path: str) -> tuple[int, ...]:
    part = Path(path).parent.name
    return tuple(int(p) for p in part.split(".") if p.isdigit()) or (0,)


def _run(args: list[str], user: int | None = None, group: int | None = None) -> None:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
            user=user, group=group, extra_groups=[] if user is not None else None, cwd="/",
        )
    except subprocess.TimeoutExpired:
        raise PostgresError(f"{Path(args[0]).name} timed out after {SUBPROCESS_TIMEOUT_S}s") from None
    except OSError as exc:
        raise PostgresError(f"{Path(args[0]).name} could not run: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise PostgresError(f"{' '.join(args[:1])} failed: {detail[-1] if detail else proc.returncode}")
