"""What the docker stack runs or changes on the host: the lease reaper (a host process, so it
survives a SIGKILLed ``chaos run``), the named network namespaces of the containers, and the
state dir check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaoscheckout.runtime import netns as netns_names
from stack import procs
from stack.docker.compose import PROJECT_DIR, DockerStackError

__all__ = ["reaper_pid_file", "reaper_pid", "start_reaper", "stop_reaper", "attach_netns", "detach_netns",
           "check_state_dir"]


def reaper_pid_file(state_dir: Path) -> Path:
    return Path(state_dir) / "reaper.pid"


def start_reaper(state_dir: Path, say: Callable[[str], None] = print) -> int:
    """Start the lease reaper of ``state_dir`` as a host process (its own session); its pid."""
    log = open(state_dir / "logs" / "reaper.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chaoscheckout.faults.reaper", "--state-dir", str(state_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=PROJECT_DIR,
            start_new_session=True,
            env={**os.environ, "CHAOSCHECKOUT_STATE_DIR": str(state_dir),
                 "CHAOSCHECKOUT_RUNTIME": "docker"},
        )
    finally:
        log.close()
    reaper_pid_file(state_dir).write_text(str(proc.pid))
    say(f"  reaper      running  pid {proc.pid} (host process, log {state_dir}/logs/reaper.log)")
    return proc.pid


def stop_reaper(state_dir: Path) -> None:
    """SIGTERM the state dir's reaper (SIGKILL after 5 s) and remove its pid file."""
    pid = reaper_pid(reaper_pid_file(state_dir))
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and procs.alive(pid):
            time.sleep(0.05)
        if procs.alive(pid):
            os.kill(pid, signal.SIGKILL)
    reaper_pid_file(state_dir).unlink(missing_ok=True)


def reaper_pid(pid_file: Path) -> int | None:
    """The reaper's pid if the file names a live reaper process, else None."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if procs.cmdline_has(pid, b"chaoscheckout.faults.reaper") else None


def attach_netns(client: Any, container_name: str, netns: str) -> None:
    """Name the container's network namespace ``netns`` (``ip netns attach``), replacing a stale one
    (the docker runtime's own attach: :mod:`chaoscheckout.runtime.netns`)."""
    pid = client.containers.get(container_name).attrs["State"]["Pid"]
    if not pid:
        return
    try:
        netns_names.attach(netns, pid)
    except netns_names.NetnsError as exc:
        raise DockerStackError(str(exc)) from None


def detach_netns(netns: str) -> None:
    netns_names.detach(netns)


def check_state_dir(state_dir: Path) -> None:
    from stack import statedir

    try:
        statedir.check(state_dir)
    except statedir.StateDirError as exc:
        raise DockerStackError(str(exc)) from None
