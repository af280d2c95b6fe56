"""The docker stack's credentials: files of ``<state_dir>/secrets`` (each 0600, root) that the
containers get as compose secrets: the fault proxy's control token and one pgpass line per
Postgres role."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["PROXY_TOKEN", "PG_SECRETS", "write_secrets", "dsn", "proxy_token_file"]

PROXY_TOKEN = "proxy-control.token"  # compose secret: the fault proxy's control API token
# compose secrets for Postgres: one pgpass line "*:*:*:<role>:<password>" each
PG_SECRETS = {"pg-postgres.pgpass": "postgres", "pg-checkout.pgpass": "checkout_app",
              "pg-probe.pgpass": "checkout_probe"}


def proxy_token_file(state_dir: Path) -> Path:
    """The fault proxy's control token (0600, root): mounted into its container."""
    return Path(state_dir) / "secrets" / PROXY_TOKEN


def write_secrets(state_dir: Path) -> list[Path]:
    """Fresh credentials in <state_dir>/secrets (each 0600, root): the fault proxy's
    control token and the three Postgres roles' pgpass files (compose secrets)."""
    secrets_dir = Path(state_dir) / "secrets"
    secrets_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o711)
    contents = {PROXY_TOKEN: secrets.token_urlsafe(32)}
    for name, role in PG_SECRETS.items():
        contents[name] = f"*:*:*:{role}:{secrets.token_urlsafe(32)}"
    written = []
    for name, text in contents.items():
        path = secrets_dir / name
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        written.append(path)
    return written


def dsn(state_dir: Path, role_secret: str, port: int, dbname: str = "checkout") -> str:
    """A host-side DSN for the role of ``role_secret`` (its pgpass file names the password)."""
    passfile = Path(state_dir) / "secrets" / role_secret
    return f"postgresql://{PG_SECRETS[role_secret]}@127.0.0.1:{port}/{dbname}?passfile={passfile}"
