"""Shared plumbing of the stack's services: env parsing, /metrics, /healthz, HTTP clients.

Every service is configured only through environment variables. The parsers here take
the environment as an argument (``environ``) so tests need no global patching, and raise
:class:`ConfigError` with the variable name and the offending value; :func:`serve` turns
that into one line on stderr and exit status 2, before anything is started.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = [
    "ConfigError",
    "env_str",
    "env_int",
    "env_float",
    "env_bool",
    "env_list",
    "env_url",
    "default_port",
    "json_error",
    "read_json",
    "metrics_route",
    "healthz_route",
    "version_route",
    "build_info",
    "count_open_fds",
    "count_open_files",
    "serve",
]

logger = logging.getLogger("stack.services")

# Contract default port base (docs/architecture.md); the ports are base + offset.
DEFAULT_PORT_BASE = 18100


class ConfigError(ValueError):
    """An environment variable is missing or malformed."""


def env_str(environ: Mapping[str, str], name: str, default: str | None = None) -> str:
    """The value of ``name``; required when ``default`` is None."""
    value = environ.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"{name} is required but not set")
    return default


def env_int(
    environ: Mapping[str, str], name: str, default: int, minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_float(
    environ: Mapping[str, str], name: str, default: float, minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value != value:  # NaN
        raise ConfigError(f"{name}: expected a number, got {raw!r}")
    _check_range(name, value, minimum, maximum)
    return value


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 0/1 (or true/false), got {raw!r}")


def env_list(environ: Mapping[str, str], name: str, default: list[str]) -> list[str]:
    """A comma-separated list; empty items are dropped."""
    raw = environ.get(name, "").strip()
    if not raw:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(environ: Mapping[str, str], name: str) -> str:
    """A required http(s) URL, returned without a trailing slash."""
    value = env_str(environ, name)
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}: expected an http:// URL, got {value!r}")
    return value.rstrip("/")


def default_port(offset: int) -> int:
    return DEFAULT_PORT_BASE + offset


def json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    """The error body every service returns: ``{"error": message, ...extra}``."""
    return JSONResponse({"error": message, **extra}, status_code=status)


async def read_json(request: Request) -> Any:
    """The request's JSON body, or None when it is not valid JSON."""
    try:
        return await request.json()
    except ValueError:
        return None


def metrics_route() -> Route:
    """``GET /metrics``: this process's default prometheus_client registry."""

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics, methods=["GET"])


HealthCheck = Callable[[Request], Awaitable[str | None]]


def healthz_route(check: HealthCheck | None = None) -> Route:
    """``GET /healthz``: 200 ``{"status":"ok"}``, or 503 with the reason ``check`` returned.

    ``check`` returns None when the service can do its job, else a short reason. It must
    bound its own I/O with a timeout; an exception it raises also counts as unhealthy.
    """

    async def healthz(request: Request) -> Response:
        reason: str | None = None
        if check is not None:
            try:
                reason = await check(request)
            except Exception as exc:  # any failure of the check means "not healthy"
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if reason:
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    return Route("/healthz", healthz, methods=["GET"])


STACK_VERSION = "0.1.0"
GIT_TIMEOUT_S = 2.0
SERVICES_DIR = Path(__file__).resolve().parent


@functools.cache
def build_info() -> dict[str, Any]:
    """What build of the stack's services this process runs, read once at first use.

    ``{"version", "source_sha256", "commit", "dirty"}``: ``source_sha256`` digests the
    service sources (``stack/services/*.py``) actually loaded, so two processes with the
    same digest run the same code even where there is no git checkout (containers);
    ``commit``/``dirty`` come from git when the sources are in a checkout, from the
    ``build.json`` that ``stack up`` writes into a runtime copy of them (stack/appstage.py),
    else None.
    """
    digest = hashlib.sha256()
    for path in sorted(SERVICES_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    commit = _git("rev-parse", "HEAD")
    status = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no", "--", str(SERVICES_DIR))
    elif (SERVICES_DIR / "build.json").is_file():  # a runtime copy (stack/appstage.py): git's answer then
        try:
            staged = json.loads((SERVICES_DIR / "build.json").read_text())
        except (OSError, ValueError):
            staged = {}
        commit = staged.get("commit") if isinstance(staged.get("commit"), str) else None
        dirty = staged.get("dirty") if isinstance(staged.get("dirty"), bool) else None
        return {"version": STACK_VERSION, "source_sha256": digest.hexdigest(), "commit": commit,
                "dirty": dirty if commit else None}
    return {"version": STACK_VERSION, "source_sha256": digest.hexdigest(), "commit": commit,
            "dirty": None if status is None else bool(status)}


def version_route(service: str, settings: Any, profile: str | None = None) -> Route:
    """``GET /version``: ``{"service", "build": build_info(), "settings", "profile"}``.

    ``settings`` is the service's settings dataclass (what changes its behaviour, as parsed
    from its environment at start-up); ``profile`` names a known combination of them
    (checkout: "first-version" / "resilient" / "custom"). The chaoscheckout provenance
    control records this answer in every journal.
    """
    values = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    values = {k: _plain(v) for k, v in values.items()}
    body = {"service": service, "build": build_info(), "settings": values, "profile": profile}

    async def version(_: Request) -> Response:
        return JSONResponse(body)

    return Route("/version", version, methods=["GET"])


def count_open_fds(pid: int | str = "self") -> int:
    """Number of open file descriptors of ``pid`` (``/proc/<pid>/fd``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


NOT_FILES = ("socket:", "pipe:", "anon_inode:")


def count_open_files(pid: int | str = "self") -> int:
    """Open file descriptors of ``pid`` that are files: sockets, pipes and anonymous inodes
    (epoll, eventfd) left out. A service's sockets follow its load (at a flash sale's rate,
    checkout holds hundreds of client connections); a leak of files does not."""
    folder = f"/proc/{pid}/fd"
    count = 0
    for name in os.listdir(folder):
        try:
            target = os.readlink(f"{folder}/{name}")
        except FileNotFoundError:  # closed since the listing
            continue
        if not target.startswith(NOT_FILES):
            count += 1
    return count


def serve(build: Callable[[Mapping[str, str]], tuple[Any, int]]) -> None:
    """Entry point of ``python -m stack.services.<name>``: parse env, build, run uvicorn.

    ``build(environ)`` returns ``(app, port)``. A :class:`ConfigError` ends the process
    with one line on stderr and status 2.
    """
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per outgoing request
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        app, port = build(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(
        app, host=os.environ.get("CHAOSCHECKOUT_BIND_HOST", "127.0.0.1"), port=port,
        log_level="warning", access_log=False,
        timeout_graceful_shutdown=5,
    )


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A settings value as JSON: paths as text, tuples as lists."""
    if isinstance(value, bool | int | float | str | None):
        return value
    return list(value) if isinstance(value, tuple | list) else str(value)


def _git(*args: str) -> str | None:
    """``git -C <services dir> ARGS`` output, or None (no git, not a checkout, timeout)."""
    try:
        done = subprocess.run(["git", "-C", str(SERVICES_DIR), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: must be <= {maximum}, got {value}")
