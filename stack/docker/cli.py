"""The docker runtime's side of the one stack CLI (``chaoscheckout stack <command> --runtime
docker``, i.e. ``python -m stack.manage <command> --runtime docker``):

- ``up``, ``down``, ``status [--json]``: the SDK stack (stack/docker/containers.py);
- ``secrets``: fresh credentials in the state dir, before a plain ``docker compose up``;
- ``attach`` / ``detach``: registry, netns names and lease reaper for a stack started by
  ``docker compose up`` (``detach`` before ``docker compose down -v``);
- ``wheels``: the pinned wheels into stack/docker/wheels, for a plain ``docker compose build``
  on a machine whose containers cannot reach PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker.errors

from stack.docker import credentials, host, images
from stack.docker.compose import COMPOSE_PORT_BASE, PROJECT_DIR, DockerStackError
from stack.docker.containers import DockerStack

__all__ = ["COMMANDS", "main"]

COMMANDS = ("up", "down", "status", "secrets", "attach", "detach", "wheels")


def _registered_port_base(state_dir: Path) -> int | None:
    """The port base of the docker stack whose registry is in ``state_dir`` (status/down of a
    stack brought up with another CHAOSCHECKOUT_PORT_BASE than the caller's environment)."""
    try:
        prefix = json.loads((state_dir / "services.json").read_text())["extra"]["docker_stack"]
        return int(str(prefix).removeprefix("cc"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(command: str, state_dir: Path, as_json: bool = False) -> int:
    """``stack.manage <command> --runtime docker``."""
    if command == "wheels":
        target = PROJECT_DIR / "stack" / "docker" / "wheels"
        for wheel in images.download_wheels():
            shutil.copy2(wheel, target / wheel.name)
        print(f"wheels in {target}")
        return 0
    port_base = int(os.environ.get("CHAOSCHECKOUT_PORT_BASE") or _registered_port_base(state_dir)
                    or COMPOSE_PORT_BASE)
    try:
        if command == "secrets":  # before `docker compose up`: the credentials it mounts
            host.check_state_dir(state_dir)
            for path in credentials.write_secrets(state_dir):
                print(path)
            return 0
        stack = DockerStack(state_dir, port_base)
        if command == "attach":
            return stack.attach()
        if command == "detach":
            return stack.detach()
        if command == "up":
            return stack.up()
        if command == "down":
            return stack.down()
        rows = stack.status()
        up = all(r["state"] == "running" for r in rows)
        if as_json:
            print(json.dumps({"up": up, "runtime": "docker", "state_dir": str(state_dir), "services": rows},
                             indent=2))
        else:
            for r in rows:
                print(f"{'ok  ' if r['state'] == 'running' else 'FAIL'} {r['service']:<11} "
                      f"127.0.0.1:{r['port']:<6} {r['state']:<9} {r['container']}")
        return 0 if up else 1
    except (DockerStackError, docker.errors.DockerException, subprocess.SubprocessError) as exc:
        print(f"stack {command} --runtime docker: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
