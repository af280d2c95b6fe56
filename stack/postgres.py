"""PostgreSQL on a size-capped tmpfs: find the binaries, mount, initdb, create the database.

Authentication: scram-sha-256 over TCP for every role (no trust), peer on the unix socket
(so only the OS user postgres is the superuser there). Three roles, each password random
per `stack up` and kept in a 0600 file of ``<state_dir>/secrets/``:

- ``postgres`` (superuser): ``postgres.pgpass`` (root) — for `stack up` and admin work;
- ``checkout_app`` (SELECT, INSERT, UPDATE on ``orders``; no DDL, no DELETE):
  ``checkout.pgpass``, owned by the user the checkout program runs as;
- ``checkout_probe`` (SELECT on ``orders`` only): ``probe.pgpass`` (root) — the money
  probe's DSN, the registry's ``extra.database_url``.

DSNs name their pgpass file (``?passfile=...``), so no password is ever written to the
registry, the supervisord config or a command line.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

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
    "write_secrets",
    "SCHEMA_SQL",
    "SCHEMA_FILE",
    "TUNING_FILE",
    "server_conf",
    "APP_ROLE",
    "PROBE_ROLE",
]

APP_ROLE = "checkout_app"
PROBE_ROLE = "checkout_probe"

PG_BINARIES = ("initdb", "postgres")
# the one schema file (also read by checkout and copied into the docker image)
SCHEMA_FILE = Path(__file__).resolve().parent / "schema.sql"
SCHEMA_SQL = SCHEMA_FILE.read_text()
# the one tuning declaration (also appended by the docker image's entrypoint)
TUNING_FILE = Path(__file__).resolve().parent / "postgresql.conf"
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


def write_secrets(settings: StackSettings, app_uid: int) -> None:
    """Fresh random passwords for the three roles, as pgpass files (mode 0600) in
    <state_dir>/secrets; ``checkout.pgpass`` is owned by ``app_uid``."""
    port = settings.port("postgres")
    roles = (("postgres", "postgres", "*", 0), ("checkout", APP_ROLE, "checkout", app_uid),
             ("probe", PROBE_ROLE, "checkout", 0))
    for name, role, db, owner in roles:
        path = settings.secrets_dir / f"{name}.pgpass"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchown(fh.fileno(), owner, -1)
            fh.write(f"127.0.0.1:{port}:{db}:{role}:{secrets.token_urlsafe(32)}\n")


def initdb(settings: StackSettings, bindir: Path) -> None:
    """Create the cluster as user postgres (scram over TCP, peer on the socket) and write
    the server settings."""
    uid, gid = postgres_ids()
    os.chown(settings.run_dir, uid, gid)
    os.chmod(settings.run_dir, 0o755)
    pwfile = settings.pgdisk / ".pwfile"  # the tmpfs is postgres-owned 0700: initdb reads it
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_password(settings, "postgres") + "\n")
    os.chown(pwfile, uid, gid)
    try:
        _run(
            [str(bindir / "initdb"), "-D", str(settings.pgdata), "-U", "postgres",
             "--auth-host=scram-sha-256", "--auth-local=peer", f"--pwfile={pwfile}",
             "-E", "UTF8", "--locale=C.UTF-8"],
            user=uid, group=gid,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with open(settings.pgdata / "postgresql.conf", "a") as fh:
        fh.write("\n" + server_conf(settings))


def server_conf(settings: StackSettings) -> str:
    """What `initdb` appends to postgresql.conf: the shared tuning (stack/postgresql.conf),
    then where this stack listens (127.0.0.1 on its port, the socket in ``run/``)."""
    where = {"listen_addresses": "'127.0.0.1'", "port": str(settings.port("postgres")),
             "unix_socket_directories": f"'{settings.run_dir}'"}
    return (TUNING_FILE.read_text() + "# chaoscheckout local stack\n"
            + "".join(f"{key} = {value}\n" for key, value in where.items()))


def server_command(settings: StackSettings, bindir: Path) -> list[str]:
    return [str(bindir / "postgres"), "-D", str(settings.pgdata)]


def wait_ready(settings: StackSettings, timeout_s: float = 30) -> None:
    """Wait until the server accepts a connection on its TCP port."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(settings.admin_database_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.Error as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        time.sleep(0.3)
    raise PostgresError(f"postgres did not accept connections within {timeout_s:.0f}s: {last}")


def create_database(settings: StackSettings) -> None:
    """Create database ``checkout``, the ``orders`` table and the two login roles with only
    the rights they need, idempotently (passwords from the pgpass files)."""
    with psycopg.connect(settings.admin_database_url, connect_timeout=5, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '10s'")
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'checkout'").fetchone()
        if not exists:
            conn.execute("CREATE DATABASE checkout")
        conn.execute("REVOKE ALL ON DATABASE checkout FROM PUBLIC")
        for name, role in (("checkout", APP_ROLE), ("probe", PROBE_ROLE)):
            known = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if known else "CREATE"
            statement = verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
            password = sql.Literal(_password(settings, name))
            conn.execute(sql.SQL(statement).format(sql.Identifier(role), password))
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE checkout TO {}").format(sql.Identifier(role)))
    admin_checkout = settings.dsn("postgres", "checkout", "postgres")
    with psycopg.connect(admin_checkout, connect_timeout=5, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '10s'")
        conn.execute(SCHEMA_SQL)
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        conn.execute("REVOKE ALL ON orders FROM PUBLIC")
        for role, rights in ((APP_ROLE, "SELECT, INSERT, UPDATE"), (PROBE_ROLE, "SELECT")):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT " + rights + " ON orders TO {}").format(sql.Identifier(role)))


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _password(settings: StackSettings, name: str) -> str:
    line = (settings.secrets_dir / f"{name}.pgpass").read_text().strip()
    return line.rsplit(":", 1)[1]


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
