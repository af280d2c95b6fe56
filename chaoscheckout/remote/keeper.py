"""The remote fault keeper: injects one fault on this host and holds it only while the
controller that asked for it lives.

``python -m chaoscheckout.remote keep --state-dir DIR --kind KIND --args JSON --run-id ID
--expires-at T [--miss-s S]`` runs on the remote host inside an ssh session started by the
controller (:mod:`chaoscheckout.remote.session`):

1. it injects through this host's own inject path (the kind's public action with
   ``--args``, configuration = this state dir), so the remote lease is written before
   the effect and is owned by this keeper process (run id = the controller's run);
2. it prints one JSON line: ``{"result": {"fault", "lease", "keeper_pid"}}`` (or
   ``{"error": ...}`` with nothing injected);
3. it reads heartbeat lines (``hb``) that a thread of the controller's owning process
   writes to the ssh session's stdin. It reverts the fault (verified, like every revert)
   and exits on: EOF (the controller died: its ssh client's stdin closed), no heartbeat
   for ``--miss-s`` (the controller is frozen or the network is gone), a ``revert`` line,
   SIGHUP/SIGTERM, or the expiry. When the lease disappears (reverted by ``remote revert``,
   a halt or the reaper) it exits without acting.

If the keeper itself dies or freezes, this host's reaper reverts the fault (the keeper is
the lease's owner: the dead-man switch), and the lease's expiry bounds everything.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from typing import Any, BinaryIO, TextIO

from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults.kinds import KINDS
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.faults.owner import set_run_id
from chaoscheckout.faults.revert import revert_lease
from chaoscheckout.remote.wire import answer_line

__all__ = ["keep", "KEEPABLE_KINDS", "DEFAULT_MISS_S"]

KEEPABLE_KINDS = ("kill", "latency", "disk")  # response_loss needs the controller's fault proxy
DEFAULT_MISS_S = 1.0
POLL_S = 0.1


class _Stop(Exception):
    """A signal asked the keeper to revert and leave."""


def keep(state_dir: str, kind: str, args: dict[str, Any], run_id: str, expires_at: float,
         miss_s: float = DEFAULT_MISS_S, stdin: BinaryIO | None = None, stdout: TextIO | None = None) -> int:
    """Run one keeper session (see the module doc); returns the process exit code."""
    stdout = stdout or sys.stdout
    configuration = {"chaoscheckout_state_dir": state_dir}
    try:
        inject = _plan(kind, args, expires_at, miss_s)
        set_run_id(run_id)
        fault = inject(configuration)
    except Exception as exc:  # noqa: BLE001 - reported on the wire; inject_fault left nothing behind
        _say(stdout, answer_line(error=exc))
        return 1
    store = LeaseStore(configuration_leases(state_dir))
    lease = next((le for le in store.live() if le.fault_id == fault["fault_id"]), None)
    _say(stdout, answer_line({"fault": fault, "lease": lease.to_dict() if lease else None,
                              "keeper_pid": os.getpid()}))
    cause = _wait(stdin or sys.stdin.buffer, store, fault["fault_id"], expires_at, miss_s)
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the revert itself is never cut short
    current = next((le for le in store.live() if le.fault_id == fault["fault_id"]), None)
    if current is None:
        _say(stdout, answer_line({"reverted": None, "cause": cause, "message": "lease already gone"}))
        return 0
    try:
        result = revert_lease(current, configuration, f"keeper: {cause}")
    except Exception as exc:  # noqa: BLE001 - the lease stays: this host's reaper retries
        _say(stdout, answer_line(error=exc))
        return 1
    _say(stdout, answer_line({"reverted": result, "cause": cause}))
    return 0


def configuration_leases(state_dir: str) -> str:
    return os.path.join(state_dir, "leases")


###############################################################################
# Internals
###############################################################################
def _plan(kind: str, args: dict[str, Any], expires_at: float, miss_s: float) -> Any:
    """Validate the session's arguments; return the injection to run (nothing done yet)."""
    if kind not in KINDS:
        raise InvalidFaultArgument(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    if kind not in KEEPABLE_KINDS:
        raise InvalidFaultArgument(
            f"{kind} faults cannot be kept on a remote host (they act in the controller's fault proxy); "
            f"remote services take {', '.join(KEEPABLE_KINDS)}")
    if not isinstance(args, dict) or not isinstance(args.get("service"), str):
        raise InvalidFaultArgument("--args must be a JSON object naming the service")
    if "configuration" in args:
        raise InvalidFaultArgument("--args must not carry a configuration")
    if not (isinstance(miss_s, int | float) and 0 < miss_s <= 60):
        raise InvalidFaultArgument(f"--miss-s must be in (0, 60], got {miss_s!r}")
    remaining = expires_at - time.time()
    if not remaining > 0:
        raise InvalidFaultArgument(f"--expires-at {expires_at!r} is not in the future")
    action = KINDS[kind].function("inject")
    arguments = {**args, "duration_s": min(float(args.get("duration_s", remaining)), remaining)}
    return lambda configuration: action(**arguments, configuration=configuration)


def _wait(stdin: BinaryIO, store: LeaseStore, fault_id: str, expires_at: float, miss_s: float) -> str:
    """Block until the fault must go; return why."""
    def stop(signum: int, _frame: Any) -> None:
        raise _Stop(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    fd = stdin.fileno()
    last_beat = time.monotonic()
    buffer = b""
    lease_path = store.dir / f"{fault_id}.json"
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], POLL_S)
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    return "controller gone (EOF on the session)"
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    word = line.strip()
                    if word == b"revert":
                        return "revert asked by the controller"
                    if word == b"hb":
                        last_beat = time.monotonic()
            silent = time.monotonic() - last_beat
            if silent > miss_s:
                return f"no heartbeat from the controller for {silent:.1f} s (frozen or unreachable)"
            if not lease_path.exists():
                return "lease gone (reverted elsewhere)"
            if time.time() >= expires_at:
                return "expired"
    except _Stop as stopped:
        return str(stopped)


def _say(stdout: TextIO, line: str) -> None:
    try:
        stdout.write(line + "\n")
        stdout.flush()
    except (BrokenPipeError, OSError):
        pass  # the controller is gone: the revert still happens


def parse_args_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidFaultArgument(f"--args is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidFaultArgument("--args must be a JSON object")
    return value
