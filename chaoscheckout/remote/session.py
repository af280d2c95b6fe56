"""The controller side of a remote fault: a local lease plus a keeper session over ssh.

:func:`inject_remote` is what the fault actions call for a service with a ``remote``
entry. It goes through the one inject path (:func:`chaoscheckout.faults.inject.inject_fault`):
the local lease (``backend: "ssh"``, ``params.remote: true``, owned by this run) is
written first, so ``chaoscheckout status``, ``halt``, the safety control and the
dead-run record see the fault; its ``apply`` starts the keeper
(:mod:`chaoscheckout.remote.keeper`) over ssh and waits for its result line, then a
daemon thread of this process (the fault's owner) writes a heartbeat line to the
session every :data:`HEARTBEAT_INTERVAL_S`. When this process dies, its ssh client's
stdin closes and the keeper reverts; when it freezes, the heartbeats stop and the keeper
reverts after ``miss_s``.

Reverting the local lease (:func:`revert_remote_lease`, called by
:func:`chaoscheckout.faults.revert.revert_lease`) asks this process's keeper session
(a ``revert`` line), or, from another process (``halt``, the reaper) or when the keeper
is gone, runs ``remote revert`` over ssh; :func:`verify_remote_lease` asks the remote
host (``remote verify``). Where to act comes from the registry, never from the lease.

From another process, the revert first ends the owner's keeper session here: the lease
records its ssh client (``keeper_ssh``: pid, start ticks, host, boot id), and a SIGTERM to
that very process (checked against /proc: same start, ``comm`` ssh) closes the
connection, so the keeper reads EOF and reverts at once. A frozen owner (SIGSTOP) is thus
reverted as fast as a killed one instead of after ``keeper_miss_s`` (5 s on the VM) or
a fresh ``remote revert`` (a Python start-up on the remote host: seconds under
emulation), which still runs after it and confirms.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from chaoscheckout.context import ActivityContext, ConfigOrContext, activity_context
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.faults.inject import Injection, check_can_inject, inject_fault
from chaoscheckout.faults.leases import Lease, LeaseStore
from chaoscheckout.faults.owner import process_record, recorded_process_state
from chaoscheckout.remote.keeper import DEFAULT_MISS_S, KEEPABLE_KINDS
from chaoscheckout.remote.wire import error_from_wire
from chaoscheckout.runtime.registry import RemoteSpec
from chaoscheckout.runtime.ssh import (
    SshCallTimeout,
    SshError,
    agent_command,
    call_agent,
    classify_ssh_failure,
    ssh_argv,
)

__all__ = ["inject_remote", "revert_remote_lease", "verify_remote_lease", "KeeperSession",
           "HEARTBEAT_INTERVAL_S", "REVERT_TIMEOUT_S"]

logger = logging.getLogger("chaostoolkit")

HEARTBEAT_INTERVAL_S = 0.2
REVERT_TIMEOUT_S = 30.0  # on top of call_timeout_s: a kill's revert starts the service


def inject_remote(kind: str, service: str, arguments: dict[str, Any], duration_s: float,
                  configuration: ConfigOrContext = None,
                  parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Inject a ``kind`` fault on remote ``service`` through a keeper; the fault-action result.

    ``arguments`` are the kind's public inject action's arguments (validated here
    already); the keeper calls that action on the remote host."""
    if kind not in KEEPABLE_KINDS:
        raise InvalidFaultArgument(f"service {service!r} is remote: {kind} faults are not supported on "
                                   f"remote services (only {', '.join(KEEPABLE_KINDS)})")
    ctx = activity_context(configuration)
    settings = ctx.settings
    spec = _spec(service, ctx)
    check_can_inject(kind, service, ctx)  # a halt or a conflict refuses before any ssh call
    # preflight: the host answers, its key is the pinned one, the login works, the agent runs and
    # knows the service; each failure is one clear error before any lease is written
    call_agent(spec, "describe", {"service": spec.service})
    params = {**(parameters or {}), **arguments, "duration_s": duration_s}
    where = {"remote": True, "ssh_host": spec.ssh_host, "ssh_port": spec.ssh_port,
             "remote_service": spec.service}

    def apply(lease: Lease) -> dict[str, Any]:
        session = KeeperSession.start(spec, kind, {**arguments, "service": spec.service,
                                                   "duration_s": duration_s}, lease, spec.keeper_miss_s)
        answer = session.result
        fault = answer["fault"]
        _SESSIONS[lease.fault_id] = session
        store = LeaseStore(settings.leases_dir)
        if (store.dir / f"{lease.fault_id}.json").exists():
            store.write(replace(lease, params={**lease.params, "remote_fault_id": fault["fault_id"],
                                               "keeper_pid": answer.get("keeper_pid"),
                                               "keeper_ssh": process_record(session.proc.pid),
                                               "remote_lease": answer.get("lease")}))
        return {"remote_fault_id": fault["fault_id"], "remote_backend": fault["backend"],
                "remote_parameters": fault["parameters"], "keeper_pid": answer.get("keeper_pid")}

    injection = Injection(kind, service, "ssh", duration_s, {**params, **where}, apply)
    return inject_fault(injection, ctx)


def revert_remote_lease(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Undo a remote fault: ask this process's keeper, else ``remote revert`` over ssh."""
    session = _SESSIONS.pop(lease.fault_id, None)
    if session is not None:
        try:
            answer = session.revert()
            return {"action": "reverted by the keeper", "remote": answer}
        except ChaosCheckoutError as exc:
            logger.warning("keeper of %s did not answer the revert (%s): reverting over ssh",
                           lease.fault_id, exc)
    spec = _spec(lease.service, activity_context(configuration))
    ended = _end_keeper_session(lease.params.get("keeper_ssh"))
    answer = call_agent(spec, "revert", {"service": spec.service, "run_id": lease.owner.run_id,
                                         "kind": lease.kind,
                                         "reason": f"controller revert of {lease.fault_id}"},
                        spec.call_timeout_s + REVERT_TIMEOUT_S)
    return {"action": "reverted over ssh (remote revert)", "remote": answer,
            **({"keeper_session_ended": ended} if ended else {})}


def verify_remote_lease(lease: Lease, configuration: ConfigOrContext = None) -> dict[str, Any]:
    """Gone when the remote host has no lease of this run on the service and the kind's
    check passes there."""
    spec = _spec(lease.service, activity_context(configuration))
    answer = call_agent(spec, "verify", {"service": spec.service, "run_id": lease.owner.run_id,
                                         "kind": lease.kind, "lease": lease.params.get("remote_lease")})
    return {"verified": bool(answer.get("verified")),
            "checked": f"on {spec.ssh_host}: {answer.get('checked')}"}


class KeeperSession:
    """One running ``remote keep`` over ssh, fed heartbeats by a daemon thread of this process."""

    def __init__(self, spec: RemoteSpec, proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.spec = spec
        self.proc = proc
        self.stderr = stderr
        self.result: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.buffer = b""

    @classmethod
    def start(cls, spec: RemoteSpec, kind: str, args: dict[str, Any], lease: Lease,
              miss_s: float = DEFAULT_MISS_S) -> KeeperSession:
        """Start the keeper, wait for its result line (call_timeout_s), start the heartbeats."""
        command = agent_command(spec, "keep", None, [
            "--kind", kind, "--args", json.dumps(args), "--run-id", lease.owner.run_id,
            "--expires-at", f"{lease.expires_at:.3f}", "--miss-s", f"{miss_s:g}"])
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(ssh_argv(spec, command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, start_new_session=True, close_fds=True)
        session = cls(spec, proc, stderr)
        threading.Thread(target=session._beat, name=f"chaoscheckout-keeper-{lease.fault_id}",
                         daemon=True).start()
        try:
            line = session._read_line(time.monotonic() + spec.call_timeout_s)
        except SshCallTimeout:
            session.close()
            raise
        if line is None:
            failure = session._failure("the keeper session ended before it answered")
            session.close()
            raise failure
        if "error" in line:
            session.close()
            raise error_from_wire(line["error"], session.where)
        session.result = line.get("result") or {}
        return session

    @property
    def where(self) -> str:
        return f"{self.spec.user}@{self.spec.ssh_host}:{self.spec.ssh_port}"

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.closed.is_set()

    def revert(self) -> dict[str, Any]:
        """Send ``revert`` and wait for the keeper's revert line."""
        if not self.alive():
            raise SshError(f"the keeper session to {self.where} is over")
        try:
            with self.lock:
                self.proc.stdin.write(b"revert\n")  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
        except OSError as exc:
            raise SshError(f"the keeper session to {self.where} is gone: {exc}") from None
        try:
            line = self._read_line(time.monotonic() + self.spec.call_timeout_s + REVERT_TIMEOUT_S)
        finally:
            self.close()
        if line is None:
            raise SshError(f"the keeper on {self.where} ended without reporting its revert")
        if "error" in line:
            raise error_from_wire(line["error"], self.where)
        return line.get("result") or {}

    def close(self) -> None:
        """End the session: stdin closed (the keeper reverts if it has not), ssh reaped."""
        self.closed.set()
        with self.lock:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            self.proc.wait(timeout=self.spec.call_timeout_s + REVERT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.stderr.close()

    # -- internals -----------------------------------------------------------------
    def _beat(self) -> None:
        while not self.closed.wait(HEARTBEAT_INTERVAL_S):
            try:
                with self.lock:
                    if self.closed.is_set():
                        return
                    self.proc.stdin.write(b"hb\n")  # type: ignore[union-attr]
                    self.proc.stdin.flush()  # type: ignore[union-attr]
            except (OSError, ValueError):
                return  # the keeper is gone (it reverted): nothing left to keep alive

    def _read_line(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line from the keeper; None on EOF; SshCallTimeout at the deadline."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                try:
                    value = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.proc.kill()
                raise SshCallTimeout(f"ssh to {self.where}: the keeper did not answer within "
                                     f"{self.spec.call_timeout_s:g} s (call_timeout_s); the ssh client "
                                     "was killed")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    return None
                self.buffer += data

    def _failure(self, what: str) -> Exception:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        failure = classify_ssh_failure(self.spec, self.proc.returncode or 0, text)
        return failure or SshError(f"ssh to {self.where}: {what}: {text.strip()[-500:] or 'no message'}")


###############################################################################
# Internals
###############################################################################
_SESSIONS: dict[str, KeeperSession] = {}  # local fault id -> this process's keeper session


def _end_keeper_session(recorded: Any) -> str | None:
    """SIGTERM the keeper session's ssh client recorded in a lease, if it still runs here (the
    same process: host, boot, start ticks, ``comm`` ssh): the keeper reads EOF and reverts."""
    if not isinstance(recorded, dict) or not isinstance(recorded.get("pid"), int):
        return None
    pid = recorded["pid"]
    state, _ = recorded_process_state(recorded.get("host"), recorded.get("boot_id"), pid,
                                      recorded.get("start_ticks"))
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if state not in ("running", "stopped") or comm != "ssh":
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:  # gone meanwhile, or not ours to signal: the remote revert below still runs
        return None
    logger.info("ended the keeper session's ssh client (pid %d): the keeper reads EOF and reverts", pid)
    return f"ssh client pid {pid} sent SIGTERM"


def _spec(service: str, ctx: ActivityContext) -> RemoteSpec:
    entry = ctx.runtime.entry(service)
    if entry.remote is None:
        raise ChaosCheckoutError(f"service {service!r} is not remote (no remote entry in the registry)")
    return entry.remote
