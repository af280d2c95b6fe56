"""The SSH runtime: services on another host, reached with OpenSSH's client.

A service whose registry entry carries a ``remote`` object (see
:mod:`chaoscheckout.runtime.registry`) lives on another host. Each runtime call runs the
remote agent there, ``<python> -m chaoscheckout.remote <verb> --state-dir DIR --json ARGS``,
which acts with the remote host's own local runtime and registry and prints one JSON
object. The call is an argument list for ``ssh`` (never a local shell string; the remote
command is ``shlex.join``-quoted for the remote login shell) with ``BatchMode`` (never a
password prompt), ``StrictHostKeyChecking=yes`` against the entry's pinned
``known_hosts`` (an unknown or changed host key is refused, never accepted), the entry's
``ConnectTimeout`` and a subprocess timeout on every call (``call_timeout_s``).

Failures are one clear error each: :class:`SshHostKeyRefused` (host key unknown or
changed), :class:`SshLoginRefused` (the key is not accepted), :class:`SshHostDown`
(nothing answers), :class:`SshCallTimeout` (the remote command hangs: the ssh client is
killed). An error the remote agent reports comes back as the extension's own exception
type (``InvalidFaultArgument``, ``FaultsHalted``, ``FaultConflict``...).

Health probes stay local HTTP calls to ``health_url`` (as the controller sees the
service). Faults on remote services do not use :meth:`SshRuntime.kill` directly: they go
through a keeper session (:mod:`chaoscheckout.remote.session`).

:class:`RoutingRuntime` is what ``get_runtime`` returns when the registry has remote
services: calls for a remote service go over SSH, all others to the registry's runtime.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaoscheckout.config import Settings
from chaoscheckout.errors import BackendUnavailable, ChaosCheckoutError
from chaoscheckout.remote.wire import error_from_wire
from chaoscheckout.runtime.base import KillResult, Runtime, StartResult
from chaoscheckout.runtime.registry import Registry, RemoteSpec

__all__ = ["SshRuntime", "RoutingRuntime", "run_remote", "SshError", "SshHostKeyRefused", "SshLoginRefused",
           "SshHostDown", "SshCallTimeout", "ssh_argv", "agent_command", "call_agent"]

SSH = "ssh"


class SshError(ChaosCheckoutError):
    """The remote host could not be reached or the call did not complete; nothing was done there."""


class SshHostKeyRefused(SshError):
    """The host key is not the one pinned in known_hosts (unknown or changed)."""


class SshLoginRefused(SshError):
    """The SSH server refused the login (key not accepted for that user)."""


class SshHostDown(SshError):
    """Nothing answered on the SSH port within the connect timeout."""


class SshCallTimeout(SshError):
    """The remote command did not finish within call_timeout_s (the ssh client was killed)."""


def ssh_argv(spec: RemoteSpec, command: list[str]) -> list[str]:
    """The ``ssh`` argument list running ``command`` (quoted for the remote shell) on ``spec``'s host."""
    return [
        SSH, "-F", "/dev/null",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={spec.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", f"ConnectTimeout={max(1, round(spec.connect_timeout_s))}",
        "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
        "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "-o", "LogLevel=ERROR",
        "-i", spec.key_file, "-p", str(spec.ssh_port), "-l", spec.user,
        "--", spec.ssh_host, shlex.join(command),
    ]


def agent_command(spec: RemoteSpec, verb: str, args: dict[str, Any] | None = None,
                  extra: list[str] | None = None) -> list[str]:
    """The remote agent's command line (run on the remote host)."""
    return [spec.python, "-m", "chaoscheckout.remote", verb, "--state-dir", spec.state_dir,
            "--json", json.dumps(args or {}), *(extra or [])]


def classify_ssh_failure(spec: RemoteSpec, returncode: int, stderr: str) -> SshError | None:
    """The ssh client's own failure (exit 255) as one clear error; None when ssh itself worked."""
    if returncode != 255:
        return None
    where = f"{spec.user}@{spec.ssh_host}:{spec.ssh_port}"
    text = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    lower = stderr.lower()
    if "host key verification failed" in lower or "host key for" in lower or "no matching host key" in lower:
        return SshHostKeyRefused(
            f"ssh to {where}: host key not accepted: it is not the key pinned in {spec.known_hosts} "
            f"(unknown or changed host key; nothing was done there): {text}")
    if "permission denied" in lower or "too many authentication failures" in lower:
        return SshLoginRefused(f"ssh to {where}: login refused for the key {spec.key_file} "
                               f"(nothing was done there): {text}")
    if any(s in lower for s in ("connection refused", "timed out", "no route to host", "could not resolve",
                                "network is unreachable", "connection reset", "connection closed")):
        return SshHostDown(f"ssh to {where}: host down or unreachable (connect timeout "
                           f"{spec.connect_timeout_s:g} s; nothing was done there): {text}")
    return SshError(f"ssh to {where} failed: {text}")


def call_agent(spec: RemoteSpec, verb: str, args: dict[str, Any] | None = None,
               timeout_s: float | None = None, runner: Callable[..., Any] = subprocess.run) -> Any:
    """Run one agent verb on the remote host and return its JSON answer (errors raised)."""
    return run_remote(spec, agent_command(spec, verb, args), f"`chaoscheckout.remote {verb}`",
                      timeout_s, runner)


def run_remote(spec: RemoteSpec, command: list[str], what: str, timeout_s: float | None = None,
               runner: Callable[..., Any] = subprocess.run) -> Any:
    """Run ``command`` on the remote host over ssh; it answers one JSON line ``{"result": ...}``
    or ``{"error": {type, message}}`` (remote/wire.py). Returns the result, errors raised."""
    timeout = timeout_s or spec.call_timeout_s
    argv = ssh_argv(spec, command)
    where = f"{spec.user}@{spec.ssh_host}:{spec.ssh_port}"
    try:
        proc = runner(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SshCallTimeout(f"ssh to {where}: {what} did not finish within "
                             f"{timeout:g} s (call_timeout_s); the ssh client was killed") from None
    except FileNotFoundError:
        raise BackendUnavailable("the OpenSSH client `ssh` is not installed here "
                                 "(apt-get install openssh-client)") from None
    failure = classify_ssh_failure(spec, proc.returncode, proc.stderr)
    if failure is not None:
        raise failure
    answer = _last_json(proc.stdout)
    if answer is None:
        raise SshError(f"ssh to {where}: {what} gave no JSON answer (exit "
                       f"{proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}")
    if isinstance(answer, dict) and "error" in answer:
        raise error_from_wire(answer["error"], where)
    return answer.get("result") if isinstance(answer, dict) else answer


def _last_json(stdout: str) -> Any:
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


class SshRuntime(Runtime):
    """Services of the registry that carry a ``remote`` object (see the module doc)."""

    name = "ssh"

    def spec(self, service: str) -> RemoteSpec:
        entry = self.entry(service)
        if entry.remote is None:
            raise ChaosCheckoutError(f"service {service!r} has no remote entry (not an ssh service)")
        return entry.remote

    def call(self, service: str, verb: str, args: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> Any:
        spec = self.spec(service)
        return call_agent(spec, verb, {"service": spec.service, **(args or {})}, timeout_s)

    def pid(self, service: str) -> int | None:
        return self.call(service, "pid")["pid"]

    def kill(self, service: str, timeout_s: float = 10.0) -> KillResult:
        self.target(service)
        started = time.monotonic()
        spec = self.spec(service)
        done = self.call(service, "kill", {"timeout_s": timeout_s}, spec.call_timeout_s + timeout_s)
        return KillResult(service, int(done["pid"]), time.monotonic() - started)

    def start(self, service: str, timeout_s: float = 30.0) -> StartResult:
        spec = self.spec(service)
        done = self.call(service, "start", {"timeout_s": timeout_s}, spec.call_timeout_s + timeout_s)
        return StartResult(service, bool(done["started"]), float(done["healthy_after_s"]), done.get("pid"))

    def describe(self, service: str) -> dict[str, Any]:
        spec = self.spec(service)
        described = self.call(service, "describe")
        return {**described, "service": service, "runtime": self.name,
                "remote": {"ssh_host": spec.ssh_host, "ssh_port": spec.ssh_port, "service": spec.service,
                           "runtime": described.get("runtime")}}

    def data_dir(self, service: str) -> Path:
        raise BackendUnavailable(f"service {service!r} is remote: its data directory is on "
                                 f"{self.spec(service).ssh_host}, not here (disk faults on it go "
                                 "through the remote keeper)")


class RoutingRuntime(Runtime):
    """Remote services over SSH, every other service to the registry's runtime."""

    def __init__(self, registry: Registry, settings: Settings, make_base: Callable[[], Runtime]) -> None:
        super().__init__(registry, settings)
        self._make_base = make_base
        self._base: Runtime | None = None
        self.ssh = SshRuntime(registry, settings)
        self.name = registry.runtime or "local"

    @property
    def base(self) -> Runtime:
        if self._base is None:
            self._base = self._make_base()
        return self._base

    def _for(self, service: str) -> Runtime:
        return self.ssh if self.is_remote(service) else self.base

    def target(self, service: str) -> Any:
        return self._for(service).target(service)

    def data_dir(self, service: str) -> Path:
        return self._for(service).data_dir(service)

    def is_healthy(self, service: str, timeout_s: float = 2.0) -> bool:
        return self._for(service).is_healthy(service, timeout_s)

    def pid(self, service: str) -> int | None:
        return self._for(service).pid(service)

    def kill(self, service: str, timeout_s: float = 10.0) -> KillResult:
        return self._for(service).kill(service, timeout_s)

    def start(self, service: str, timeout_s: float = 30.0) -> StartResult:
        return self._for(service).start(service, timeout_s)

    def describe(self, service: str) -> dict[str, Any]:
        return self._for(service).describe(service)

    def backend_name(self, service: str) -> str:
        return self._for(service).name
