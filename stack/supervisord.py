"""supervisord for the stack: write its config, start it, and shut it down without leftovers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chaoscheckout.runtime.supervisor import SupervisorClient, SupervisorError
from stack import procs
from stack.settings import StackSettings

__all__ = [
    "Program",
    "SupervisordError",
    "check_programs",
    "minimal_environment",
    "render_conf",
    "start_supervisord",
    "supervisord_pid",
    "stop_supervisord",
    "client",
]

SUBPROCESS_TIMEOUT_S = 30


class SupervisordError(Exception):
    """supervisord could not be started or stopped; one actionable line."""


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    autorestart: bool
    autostart: bool = True
    user: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    stopsignal: str = "TERM"
    startsecs: int = 1
    startretries: int = 3
    directory: str | None = None


def client(settings: StackSettings, timeout_s: float = 5.0) -> SupervisorClient:
    return SupervisorClient(settings.supervisor_url, timeout_s=timeout_s)


def check_programs(programs: list[Program]) -> None:
    """Raise SupervisordError when a name or value cannot be rendered safely.

    supervisord's config is an INI file: a newline in a value would start a new section
    (a program of the caller's choosing, run as root), and its ``environment=`` parser
    (non-POSIX shlex) cannot carry a quote inside a quoted value. Such values are refused,
    never escaped into something else.
    """
    for prog in programs:
        if not _NAME.fullmatch(prog.name):
            raise SupervisordError(f"program name {prog.name!r}: use letters, digits, '_' or '-'")
        for arg in prog.command:
            _check_value(f"program {prog.name} command argument", arg)
        for key, value in prog.environment.items():
            if not _ENV_KEY.fullmatch(key):
                raise SupervisordError(f"environment variable name {key!r} ({prog.name}) is not valid")
            _check_value(key, value)
            if "'" in value or '"' in value:
                raise SupervisordError(f"{key} contains a quote: supervisord's environment= cannot carry it")
        for what, value in (("user", prog.user), ("directory", prog.directory)):
            if value is not None:
                _check_value(f"program {prog.name} {what}", value)


def render_conf(settings: StackSettings, programs: list[Program]) -> Path:
    """Write <state_dir>/supervisord.conf (mode 0600) for ``programs``; returns its path."""
    check_programs(programs)
    logs = settings.logs_dir
    lines = [
        "; written by stack/manage.py: do not edit, `stack up` rewrites it",
        "[unix_http_server]",
        f"file={settings.supervisord_socket}",
        "chmod=0600",
        "",
        "[supervisord]",
        f"pidfile={settings.supervisord_pidfile}",
        f"logfile={logs / 'supervisord.log'}",
        "logfile_maxbytes=5MB",
        "logfile_backups=1",
        f"childlogdir={logs}",
        f"directory={settings.project_dir}",
        "loglevel=info",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl={settings.supervisor_url}",
        "",
    ]
    for prog in programs:
        lines += [
            f"[program:{prog.name}]",
            f"command={_quote_command(prog.command)}",
            f"directory={prog.directory or settings.project_dir}",
            f"autostart={'true' if prog.autostart else 'false'}",
            f"autorestart={'true' if prog.autorestart else 'false'}",
            f"startsecs={prog.startsecs}",
            f"startretries={prog.startretries}",
            f"stopsignal={prog.stopsignal}",
            "stopwaitsecs=10",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={logs / (prog.name + '.log')}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=1",
        ]
        if prog.user:
            lines.append(f"user={prog.user}")
        if prog.environment:
            env = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(prog.environment.items()))
            lines.append(f"environment={env}")
        lines.append("")
    text = "\n".join(lines)
    conf = settings.supervisord_conf
    conf.unlink(missing_ok=True)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return conf


def start_supervisord(settings: StackSettings, timeout_s: float = 15) -> None:
    """Start the supervisord daemon and wait until its XML-RPC answers."""
    exe = Path(sys.executable).parent / "supervisord"
    if not exe.exists():
        raise SupervisordError(f"{exe} missing: run `make setup` (pip install -e '.[stack]')")
    proc = subprocess.run(
        [str(exe), "-c", str(settings.supervisord_conf)],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=settings.project_dir,
        env=minimal_environment(),
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SupervisordError(f"supervisord failed to start: {detail[-1] if detail else proc.returncode}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client(settings, timeout_s=2).all_process_info()
            return
        except SupervisorError:
            time.sleep(0.2)
    raise SupervisordError(f"supervisord XML-RPC at {settings.supervisor_url} did not answer in {timeout_s}s")


def supervisord_pid(settings: StackSettings) -> int | None:
    """The live supervisord pid from our pidfile, or None."""
    try:
        pid = int(settings.supervisord_pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) and _is_supervisord(pid) else None


def stop_supervisord(settings: StackSettings, timeout_s: float = 30) -> list[int]:
    """Shut supervisord and every child down; SIGKILL process groups after ``timeout_s``.

    Returns the pids that had to be killed.
    """
    pid = supervisord_pid(settings)
    children: list[int] = []
    if pid is not None:
        try:
            rpc = client(settings, timeout_s=5)
            children = [int(p["pid"]) for p in rpc.all_process_info() if p.get("pid")]
            rpc.shutdown()
        except SupervisorError:
            pass
    children += _children_of(pid) if pid else []
    watch = sorted({p for p in children + ([pid] if pid else []) if p})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in watch):
        time.sleep(0.2)
    killed = [p for p in watch if _alive(p)]
    for p in killed:
        for kill in (os.killpg, os.kill):  # the program's process group, then the pid itself
            try:
                kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    end = time.monotonic() + 5
    while time.monotonic() < end and any(_alive(p) for p in killed):
        time.sleep(0.1)
    settings.supervisord_pidfile.unlink(missing_ok=True)
    return killed


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    return procs.alive(pid)


def _is_supervisord(pid: int) -> bool:
    return procs.cmdline_has(pid, b"supervisord")


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def minimal_environment() -> dict[str, str]:
    """What supervisord (and so every program) inherits: no caller secrets, no proxies."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _check_value(what: str, value: str) -> None:
    match = _CONTROL.search(value)
    if match:
        raise SupervisordError(
            f"{what} contains the control character {match.group()!r} (a newline would inject "
            "a section into supervisord.conf): refused"
        )


def _escape(value: str) -> str:
    return value.replace("%", "%%")


def _quote_command(args: list[str]) -> str:
    out = []
    for arg in args:
        if not arg or any(c in arg for c in " \t\"'"):
            arg = '"' + arg.replace('"', '\\"') + '"'
        out.append(arg.replace("%", "%%"))
    return " ".join(out)
