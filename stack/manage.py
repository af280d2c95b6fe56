"""Bring the checkout stack up, down, or report its status.

    python -m stack.manage up|down|status [--json] [--runtime local|docker] [--remote-payments vm]
    python -m stack.manage secrets|attach|detach|wheels [--runtime docker]

Settings come from the environment: CHAOSCHECKOUT_STATE_DIR, CHAOSCHECKOUT_PORT_BASE,
CHAOSCHECKOUT_PG_DISK_SIZE (default 256m), CHAOSCHECKOUT_PG_BINDIR (optional),
CHAOSCHECKOUT_TARGET_NETNS (auto|on|off: chaos targets in their own network namespaces,
stack/targetns.py), and any
CHECKOUT_*/CATALOG_*/PAYMENTS_*/PROVIDER_*/REMEDIATOR_* settings, handed to that program.
``--remote-payments vm`` runs payments on a QEMU VM reached over SSH (stack/vm.py,
docs/vm-host.md); ``CHAOSCHECKOUT_VM_UP_TIMEOUT_S`` bounds the wait for it (default 600).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.runtime.registry import load_registry, save_registry
from chaoscheckout.runtime.supervisor import SupervisorError
from stack import (
    appuser,
    health,
    layout,
    netns,
    postgres,
    preflight,
    prometheus_config,
    statedir,
    supervisord,
    targetns,
    vm,
)
from stack.settings import StackConfigError, StackSettings, settings_from_env

__all__ = ["main", "up", "down", "status"]

UP_TIMEOUT_S = float(os.environ.get("CHAOSCHECKOUT_UP_TIMEOUT_S", "120"))
# docker runtime only: credentials, adopting a `docker compose up` stack, the pinned wheels
DOCKER_ONLY = ("secrets", "attach", "detach", "wheels")
VM_UP_TIMEOUT_S = float(os.environ.get("CHAOSCHECKOUT_VM_UP_TIMEOUT_S", "600"))


class UpFailed(Exception):
    """``up`` failed after something was started; the message is one line."""


def up(settings: StackSettings) -> int:
    if supervisord.supervisord_pid(settings) is not None:
        return _already_up(settings)
    extra: tuple[supervisord.Program, ...] = ()
    if settings.remote_payments == "vm":
        missing = vm.usable()
        if missing:
            raise preflight.PreflightError(f"--remote-payments vm: {missing}")
        busy = preflight.busy_ports(settings)
        if busy:  # before a build that may take minutes
            listed = ", ".join(map(str, busy))
            raise preflight.PreflightError(f"port(s) already in use on 127.0.0.1: {listed}; "
                                           "pick another CHAOSCHECKOUT_PORT_BASE")
        try:  # may take minutes when the image's inputs changed; nothing is started yet
            image = vm.build_image(settings, _say)
            extra = (vm.program(settings, image, vm.files(settings)),)
        except vm.VmError as exc:
            raise preflight.PreflightError(str(exc)) from None
    use_netns, why = targetns.resolve(settings)
    if use_netns:
        settings = dataclasses.replace(settings, netns_services=targetns.local_targets(settings))
        _say(f"chaos targets in their own network namespaces: "
             f"{', '.join(p.netns for p in targetns.placements(settings))} ({why})")
    elif settings.target_netns != "off":
        _say(f"chaos targets in this network namespace ({why})")

    def validate(bindir: Path) -> None:
        try:
            supervisord.check_programs(layout.programs(settings, bindir, os.environ, extra=extra))
        except supervisord.SupervisordError as exc:
            raise preflight.PreflightError(str(exc)) from None

    pg_bindir = preflight.run_all(settings, validate)  # raises PreflightError, nothing started yet
    staging = time.monotonic()
    app = appuser.resolve(settings.project_dir)
    _say(app_user_line(app, time.monotonic() - staging))
    programs = layout.programs(settings, pg_bindir, os.environ, app, extra=extra)
    started = time.monotonic()
    try:
        _start(settings, pg_bindir, programs, app.uid)
    except BaseException as exc:
        message = _one_line(exc)
        _say("up failed; tearing down what was started")
        _teardown(settings, quiet=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UpFailed(message) from None
    _say(f"stack up in {time.monotonic() - started:.1f}s: checkout http://127.0.0.1:{settings.port('checkout')}"
         f"  prometheus {settings.prometheus_url}  registry {settings.registry_file}")
    if settings.remote_payments == "vm":
        _say(f"payments on the VM: ssh -i {vm.files(settings).client_key} -o UserKnownHostsFile="
             f"{vm.files(settings).known_hosts} -p {settings.port('vm_ssh')} root@127.0.0.1")
    return 0


def app_user_line(app: appuser.AppUser, took_s: float = 0.0) -> str:
    """What ``up`` says about who runs the Python app programs (a warning when root)."""
    if not app.python_ok:
        return f"warning: the Python app programs run as root: {app.reason}"
    copied = f", copied {app.staged_bytes / 1e6:.1f} MB" if app.staged_bytes else ""
    return (f"app services run as {app.name} with {app.python} from the runtime copy {app.cwd} "
            f"({took_s:.1f}s{copied})")


def down(settings: StackSettings) -> int:
    pid = supervisord.supervisord_pid(settings)
    mounted = postgres.is_mounted(settings.pgdisk)
    links = any(netns.present(link) for link in targetns.all_links(settings).values())
    if pid is None and not mounted and not settings.registry_file.exists() and not links:
        _say(f"stack is not up in {settings.state_dir}: nothing to do")
        return 0
    _teardown(settings, quiet=False)
    busy = preflight.busy_ports(settings)
    if busy:
        _say(f"warning: ports still in use after down: {', '.join(map(str, busy))}")
        return 1
    _say("stack down: no process, mount or port left")
    return 0


def status(settings: StackSettings, as_json: bool) -> int:
    if supervisord.supervisord_pid(settings) is None:
        if as_json:
            print(json.dumps({"up": False, "state_dir": str(settings.state_dir), "services": []}))
        else:
            _say(f"stack is down (no supervisord for {settings.state_dir})")
        return 1
    results = health.check_all(settings)
    ok = all(r.healthy for r in results)
    if as_json:
        print(json.dumps({"up": ok, "state_dir": str(settings.state_dir),
                          "services": [r.to_dict() for r in results]}, indent=2))
    else:
        for r in results:
            mark = "ok  " if r.healthy else "FAIL"
            print(f"{mark} {r.name:<11} {r.address or '-':<16} {r.state:<9} pid={r.pid or '-':<7} {r.detail}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.manage", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", *DOCKER_ONLY],
                        help="secrets, attach, detach, wheels: docker runtime only (a stack started by "
                        "`docker compose up`, see docs/docker.md)")
    parser.add_argument("--json", action="store_true", help="status: machine-readable output")
    parser.add_argument("--remote-payments", choices=["vm"], default=None,
                        help="up: run payments on a QEMU VM reached over SSH (docs/vm-host.md); "
                        "status/down follow the stack in the state dir")
    parser.add_argument("--runtime", choices=["local", "docker"], default=None,
                        help="local: supervisord processes (default for up); docker: containers "
                        "(stack/docker/). status/down default to the runtime of the stack "
                        "running in the state dir (its registry says which)")
    args = parser.parse_args(argv)
    if args.command in DOCKER_ONLY and args.runtime == "local":
        parser.error(f"{args.command} is a docker runtime command")
    try:
        settings = _with_remote(settings_from_env(), args.remote_payments, args.command)
        if args.command in DOCKER_ONLY or _runtime(args.runtime, args.command, settings) == "docker":
            if settings.remote_payments:
                raise StackConfigError("--remote-payments runs with the local runtime only")
            from stack.docker import cli as docker_cli

            return docker_cli.main(args.command, settings.state_dir, args.json)
        if args.command == "up":
            return up(settings)
        if args.command == "down":
            return down(settings)
        return status(settings, args.json)
    except (StackConfigError, preflight.PreflightError, UpFailed, postgres.PostgresError,
            supervisord.SupervisordError) as exc:
        print(f"stack {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, (StackConfigError, preflight.PreflightError)) else 1


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _with_remote(settings: StackSettings, asked: str | None, command: str) -> StackSettings:
    """Where payments runs: as asked for ``up``, else as the state dir's registry says."""
    if asked is None and command != "up" and settings.registry_file.exists():
        try:
            asked = load_registry(settings.registry_file).extra.get("remote_payments")
        except ChaosCheckoutError:
            asked = None
    return dataclasses.replace(settings, remote_payments=asked) if asked else settings


def _runtime(asked: str | None, command: str, settings: StackSettings) -> str:
    """The runtime asked for, else (status, down) the one the state dir's registry names."""
    if asked is not None:
        return asked
    if command != "up" and settings.registry_file.exists():
        try:
            return load_registry(settings.registry_file).runtime
        except ChaosCheckoutError:
            pass  # unreadable registry: the local path reports what it finds
    return "local"


def _start(settings: StackSettings, pg_bindir: Path, programs: list[supervisord.Program],
           app_uid: int) -> None:
    _prepare_dirs(settings, app_uid)
    postgres.write_secrets(settings, app_uid=app_uid)
    if settings.remote_payments == "vm":
        vm.prepare(settings, os.environ)  # fresh keys and seed disk for this stack
        vm.files(settings).console_log.unlink(missing_ok=True)
        _say(f"VM: payments on a QEMU guest (TCG), ssh 127.0.0.1:{settings.port('vm_ssh')}, "
             f"payments 127.0.0.1:{settings.port('payments')} (hostfwd)")
    for placed in targetns.placements(settings):
        netns.create(placed.link)
        _say(f"netns {placed.netns}: {placed.service} on {placed.link.ns_addr}, veth "
             f"{placed.link.host_if} {placed.link.host_addr}/{placed.link.prefix}")
    _say(f"mounting {settings.pg_disk_size} tmpfs at {settings.pgdisk}")
    postgres.mount_pgdisk(settings)
    _say("initdb")
    postgres.initdb(settings, pg_bindir)
    prometheus_config.render(settings)
    supervisord.render_conf(settings, programs)
    _say(f"starting supervisord (XML-RPC {settings.supervisor_url})")
    supervisord.start_supervisord(settings)
    postgres.wait_ready(settings)
    postgres.create_database(settings)
    _say("postgres ready, database checkout created")
    rpc = supervisord.client(settings)
    for name in layout.app_start_order(settings):
        rpc.start(name, wait=False)
    _wait_healthy(settings)
    if settings.remote_payments == "vm":
        _write_registry(settings, layout.registry_dict(settings, vm.remote_entry(settings)))
    else:
        save_registry(layout.registry(settings), settings.registry_file)


def _write_registry(settings: StackSettings, data: dict) -> None:
    """Atomic write of a registry dict (the ``remote`` object is not a ServiceEntry field)."""
    fd, tmp = tempfile.mkstemp(dir=settings.state_dir, prefix=".services.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(tmp, 0o644)
    os.replace(tmp, settings.registry_file)


def _wait_healthy(settings: StackSettings) -> None:
    timeout_s = VM_UP_TIMEOUT_S if settings.remote_payments == "vm" else UP_TIMEOUT_S
    started = time.monotonic()
    deadline = started + timeout_s
    reported: set[str] = set()
    console_seen, last_note = 0, started
    while True:
        if settings.remote_payments == "vm":  # the guest's own progress, from its console
            lines, console_seen = vm.console_lines(settings, console_seen)
            for line in lines:
                _say(f"  [vm +{time.monotonic() - started:5.1f}s] {line[:200]}")
            if time.monotonic() - last_note > 15:
                last_note = time.monotonic()
                waiting = sorted(set(s.name for s in layout.services(settings)) - reported)
                _say(f"  waiting ({time.monotonic() - started:.0f}s of {timeout_s:.0f}s): "
                     f"{', '.join(waiting)}")
        results = health.check_all(settings)
        for r in results:
            if r.healthy and r.name not in reported:
                reported.add(r.name)
                _say(f"  {r.name:<11} healthy  {r.address or ''}")
        bad = [r for r in results if not r.healthy]
        if not bad:
            return
        fatal = [r for r in bad if r.state in ("FATAL", "EXITED", "BACKOFF", "STOPPED")]
        if fatal and fatal[0].state != "BACKOFF":
            r = fatal[0]
            log = settings.logs_dir / f"{r.name}.log"
            if r.name in ("vm", "payments") and settings.remote_payments == "vm":
                tail = vm.console_lines(settings, 0)[0][-3:]
                raise UpFailed(f"the VM exited during start (see {vm.files(settings).console_log}): "
                               f"{' | '.join(tail) or 'no guest output'}")
            raise UpFailed(f"{r.name} {r.state.lower()} during start: see {log}")
        if time.monotonic() > deadline:
            r = bad[0]
            log = settings.logs_dir / (r.name + ".log")
            if r.name in ("vm", "payments") and settings.remote_payments == "vm":
                log = vm.files(settings).console_log
            raise UpFailed(f"{r.name} not healthy after {timeout_s:.0f}s ({r.detail}): see {log}")
        time.sleep(0.5)


def _prepare_dirs(settings: StackSettings, app_uid: int) -> None:
    statedir.check(settings.state_dir)  # no symlink to follow in what is removed below
    for fresh in ("provider", "prometheus", "secrets"):  # a new stack: no charges, no TSDB
        shutil.rmtree(settings.state_dir / fresh, ignore_errors=True)
    statedir.prepare(settings, app_uid=app_uid, postgres_uid=postgres.postgres_ids()[0])


def _teardown(settings: StackSettings, quiet: bool) -> None:
    killed = supervisord.stop_supervisord(settings)
    if killed and not quiet:
        _say(f"had to SIGKILL {len(killed)} process(es): {killed}")
    if postgres.unmount_pgdisk(settings) and not quiet:
        _say(f"unmounted {settings.pgdisk}")
    for link in targetns.all_links(settings).values():  # whatever `up` created, whatever mode
        try:
            if netns.delete(link) and not quiet:
                _say(f"removed netns {link.netns} and veth {link.host_if}")
        except netns.NetnsError as exc:
            _say(f"warning: {exc}")
    settings.registry_file.unlink(missing_ok=True)
    shutil.rmtree(settings.state_dir / "leases", ignore_errors=True)
    shutil.rmtree(settings.state_dir / "secrets", ignore_errors=True)  # passwords of a gone cluster


def _already_up(settings: StackSettings) -> int:
    results = health.check_all(settings)
    bad = [r.name for r in results if not r.healthy]
    if bad:
        _say(f"stack already running in {settings.state_dir} but unhealthy ({', '.join(bad)}): "
             "run `stack down` then `stack up`")
        return 1
    _say(f"stack already up in {settings.state_dir} (checkout http://127.0.0.1:{settings.port('checkout')})")
    return 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _say(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SupervisorError as exc:
        print(f"stack: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(1)
