"""The ``chaoscheckout`` console script: ``stack up|down|status``, ``experiments run
[--profile baseline|peak]``, ``capacity measure|show`` (the record the peak profile comes
from), ``status`` (live faults, owners, halt, dead-run record) and ``halt [--clear]``.

The stack (the reference checkout system) is not part of the library, so this module
never imports ``stack/``: it runs ``python -m stack.manage ...`` in the project directory
(``--project-dir``, else ``CHAOSCHECKOUT_PROJECT_DIR``, else the current directory),
which must contain ``stack/manage.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from chaoscheckout.registry_cli import registry

__all__ = ["main"]

# up waits for every service (bounded inside stack.manage); this is the outer bound.
COMMAND_TIMEOUT_S = {"up": 300, "down": 120, "status": 60, "secrets": 60, "attach": 300, "detach": 60,
                     "wheels": 300}


@click.group()
def main() -> None:
    """chaoscheckout: chaos experiments for a checkout, and the stack they run against."""


@main.group()
@click.option(
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory holding stack/manage.py (default: $CHAOSCHECKOUT_PROJECT_DIR, else the current dir).",
)
@click.pass_context
def stack(ctx: click.Context, project_dir: Path | None) -> None:
    """Manage the local checkout stack (Postgres, Prometheus, services under supervisord)."""
    ctx.obj = _project_dir(project_dir)


@stack.command()
@click.option("--runtime", type=click.Choice(["local", "docker"]), default="local", show_default=True,
              help="local: supervisord processes; docker: containers from stack/docker-compose.yml.")
@click.option("--remote-payments", type=click.Choice(["vm"]), default=None,
              help="vm: run payments on a QEMU VM reached over SSH (docs/vm-host.md); the rest stays here.")
@click.pass_obj
def up(project_dir: Path, runtime: str, remote_payments: str | None) -> None:
    """Bring the stack up (idempotent: already up -> exit 0). Needs root (tmpfs mount)."""
    remote = ["--remote-payments", remote_payments] if remote_payments else []
    sys.exit(_manage(project_dir, "up", *_runtime_args(runtime), *remote))


@stack.command()
@click.option("--runtime", type=click.Choice(["local", "docker"]), default="local", show_default=True,
              help="local: supervisord processes; docker: containers from stack/docker-compose.yml.")
@click.pass_obj
def down(project_dir: Path, runtime: str) -> None:
    """Stop every process, unmount the data disk, remove the registry and leases."""
    sys.exit(_manage(project_dir, "down", *_runtime_args(runtime)))


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--runtime", type=click.Choice(["local", "docker"]), default="local", show_default=True)
@click.pass_obj
def status(project_dir: Path, as_json: bool, runtime: str) -> None:
    """Exit 0 only when every service is healthy."""
    sys.exit(_manage(project_dir, "status", *(["--json"] if as_json else []), *_runtime_args(runtime)))


# a stack started by `docker compose up` (docs/docker.md): docker runtime only
DOCKER_COMMANDS = {
    "secrets": "Write fresh credentials into the state dir (before `docker compose up`).",
    "attach": "Adopt a `docker compose up` stack: registry, netns names, lease reaper.",
    "detach": "Undo attach (reaper, registry, netns names); the containers stay.",
    "wheels": "Put the pinned wheels into stack/docker/wheels (offline `docker compose build`).",
}


def _docker_command(name: str, help_text: str) -> None:
    @stack.command(name=name, help=help_text)
    @click.option("--runtime", type=click.Choice(["docker"]), default="docker", show_default=True)
    @click.pass_obj
    def command(project_dir: Path, runtime: str) -> None:
        sys.exit(_manage(project_dir, name, "--runtime", runtime))


for _name, _help in DOCKER_COMMANDS.items():
    _docker_command(_name, _help)


def _runtime_args(runtime: str) -> list[str]:
    return ["--runtime", runtime] if runtime != "local" else []


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _project_dir(option: Path | None) -> Path:
    candidate = option or Path(os.environ.get("CHAOSCHECKOUT_PROJECT_DIR") or Path.cwd())
    candidate = candidate.resolve()
    if not (candidate / "stack" / "manage.py").is_file():
        raise click.UsageError(
            f"{candidate} has no stack/manage.py: run from the chaoscheckout checkout, "
            "or pass --project-dir / set CHAOSCHECKOUT_PROJECT_DIR"
        )
    return candidate


def _manage(project_dir: Path, command: str, *extra: str) -> int:
    timeout = COMMAND_TIMEOUT_S[command]
    if "docker" in extra or "--remote-payments" in extra:  # the first one builds images (and boots a VM)
        timeout *= 3
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "stack.manage", command, *extra], cwd=project_dir, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        click.echo(f"chaoscheckout stack {command}: error: no answer within {timeout}s", err=True)
        return 1
    return proc.returncode


main.add_command(registry)


@main.group()
def experiments() -> None:
    """Run the chaos experiments (the injection runner)."""


@experiments.command("run")
@click.argument("names", nargs=-1)
@click.option("--experiments-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("experiments"), show_default=True)
@click.option("--journals-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("journals"), show_default=True)
@click.option("--no-report", is_flag=True, help="Do not run `chaos report` at the end.")
@click.option("--profile", default=None, metavar="baseline|peak",
              help="Load profile for every experiment: baseline (each experiment's own rate) or peak "
                   "(a share of the capacity record, with a ramp; `chaoscheckout capacity show`). "
                   "Default: $CHAOSCHECKOUT_LOAD_PROFILE, else baseline.")
def run_cmd(names: tuple[str, ...], experiments_dir: Path, journals_dir: Path, no_report: bool,
            profile: str | None) -> None:
    """Run NAMES (default: kill-catalog, payments-latency, fill-pg-disk, payments-response-lost)
    in order under load.

    Exit 0 when every experiment held, 3 when one broke, aborted or failed, 1 on an error
    (e.g. the stack is not healthy, or --profile peak without a capacity record: nothing
    was run).
    """
    from chaoscheckout.errors import ChaosCheckoutError
    from chaoscheckout.runner import DEFAULT_ORDER, run_experiments

    files = [experiments_dir / f"{name.removesuffix('.json')}.json" for name in (names or DEFAULT_ORDER)]
    try:
        outcomes = run_experiments(files, journals_dir, report=not no_report, echo=click.echo,
                                   profile=profile)
    except ChaosCheckoutError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("verdicts:")
    for outcome in outcomes:
        click.echo(f"  {outcome.line()}")
    sys.exit(0 if all(o.verdict == "held" for o in outcomes) else 3)


@main.group()
def capacity() -> None:
    """The capacity record the peak load profile is derived from."""


@capacity.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def capacity_show(as_json: bool) -> None:
    """Print the capacity record ($CHAOSCHECKOUT_CAPACITY_FILE, else <state dir>/capacity.json)
    and the peak rate derived from it. Exit 1 when there is no valid record."""
    import json

    from chaoscheckout.errors import ChaosCheckoutError
    from chaoscheckout.load.profile import capacity_path, read_capacity, resolve_profile

    try:
        path = capacity_path()
        record, digest = read_capacity(path)
        peak = resolve_profile("peak", 1)
    except ChaosCheckoutError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"file": str(path), "sha256": digest, "record": record.to_dict(),
                               "peak": peak.to_dict()}, indent=2))
        return
    build = record.build
    click.echo(f"capacity record {path}")
    click.echo(f"  capacity {record.capacity_per_s:g} checkouts/s, measured {record.measured_at} on "
               f"{record.host.get('name', '?')} ({record.host.get('cpus', '?')} CPUs, load average "
               f"{(record.host.get('loadavg') or ['?'])[0]})")
    click.echo(f"  build {build.get('system_build', '?')} ({build.get('system_label', '?')})")
    click.echo(f"  peak profile: {peak.rate}/s (share {peak.share:g}), ramp {peak.ramp_s:g} s from the "
               "experiment's baseline rate")


@capacity.command("measure")
@click.option("--project-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding bench/capacity.py (default: $CHAOSCHECKOUT_PROJECT_DIR, else the "
                   "current dir).")
@click.option("--use-running", is_flag=True,
              help="Measure the stack already up in $CHAOSCHECKOUT_STATE_DIR (and leave it up) instead of "
                   "bringing one up and down.")
def capacity_measure(project_dir: Path | None, use_running: bool) -> None:
    """Measure the capacity (bench/capacity.py: k6 steps up until p95 >= 300 ms, errors >= 1 % or
    >= 2 % dropped; about 5 minutes) and write the capacity record. Needs
    CHAOSCHECKOUT_PORT_BASE and CHAOSCHECKOUT_STATE_DIR (root: it brings a stack up)."""
    directory = _project_dir(project_dir)
    script = directory / "bench" / "capacity.py"
    if not script.is_file():
        raise click.UsageError(f"{directory} has no bench/capacity.py: run from the chaoscheckout checkout")
    try:
        proc = subprocess.run([sys.executable, str(script), *(["--use-running"] if use_running else [])],
                              cwd=directory, timeout=MEASURE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise click.ClickException(f"capacity measurement gave no answer within {MEASURE_TIMEOUT_S} s") \
            from None
    sys.exit(proc.returncode)


MEASURE_TIMEOUT_S = 3600


_STATE_DIR_OPTION = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="The stack's state dir (default: $CHAOSCHECKOUT_STATE_DIR, else /var/lib/chaoscheckout).")


@main.command("status")
@_STATE_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(state_dir: Path | None, as_json: bool) -> None:
    """Live faults (owner, age, time left), the halt, and what was reverted for dead runs."""
    import json

    from chaoscheckout.faults.control import fault_status

    directory = _state_dir(state_dir)
    if not directory.is_dir():
        raise click.ClickException(f"state dir {directory} does not exist: no stack, no fault")
    report = fault_status(directory)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    halt = report["halt"]
    click.echo(f"state dir {report['state_dir']}")
    click.echo(f"halt: {'ON, by ' + str(halt.get('by')) + ': ' + str(halt.get('reason')) if halt else 'off'}")
    if report["error"]:
        click.echo(f"error: {report['error']}")
    click.echo(f"live faults: {len(report['faults'])}")
    for f in report["faults"]:
        click.echo(f"  {f['fault_id']:<28} {f['kind']:<8} {f['service']:<10} run {f['run_id']} "
                   f"(pid {f['pid']} on {f['host']}, {f['owner']}: {f['owner_detail']}) "
                   f"age {f['age_s']:g} s, left {f['left_s']:g} s{', ABANDONED' if f['abandoned'] else ''}")
    for bad in report["invalid_leases"]:
        click.echo(f"  invalid lease {bad['file']}: {bad['reason']} (the reaper moves it aside)")
    for name in report["quarantined"]:
        click.echo(f"  quarantined: leases/quarantine/{name}")
    click.echo(f"dead-run record: {len(report['dead_runs'])} recent entries")
    for r in report["dead_runs"]:
        click.echo(f"  {r.get('fault_id')} ({r.get('kind')} on {r.get('service')}) of {r.get('run_id')}: "
                   f"{r.get('cause')}; verified {r.get('verified')}")


@main.command("halt")
@_STATE_DIR_OPTION
@click.option("--clear", is_flag=True, help="Allow fault injection again.")
@click.option("--reason", default="", help="Recorded in the halt and in running experiments' journals.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def halt_cmd(state_dir: Path | None, clear: bool, reason: str, as_json: bool) -> None:
    """Emergency halt: block new faults, revert every live fault (any run), abort running
    experiments. Exit 0 when every revert was verified, 1 otherwise. --clear lifts it."""
    import json

    from chaoscheckout.faults.control import halt
    from chaoscheckout.faults.halt import clear_halt

    directory = _state_dir(state_dir)
    if clear:
        old = clear_halt(directory)
        click.echo(f"halt cleared (was: {old.get('by')}: {old.get('reason')})" if old else "no halt was set")
        return
    if not directory.is_dir():
        raise click.ClickException(f"state dir {directory} does not exist: no stack, nothing to halt")
    from chaoscheckout.faults.revert import preload_reverters

    preload_reverters()  # every kind's revert imported now, not by the halt's threads under the import lock
    result = halt(directory, reason)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"halted: injections blocked until `chaoscheckout halt --clear` ({directory})")
        if result["error"]:
            click.echo(f"error: {result['error']}")
        for r in result["reverted"]:
            state = "verified" if r.get("verified") else f"NOT verified: {r.get('error') or r.get('checked')}"
            timing = ""
            if r.get("issued_after_s") is not None:
                gone = r.get("gone_after_s")
                timing = (f"; revert issued +{r['issued_after_s']:.2f} s, effect gone "
                          + (f"+{gone:.2f} s" if gone is not None else "not seen"))
            click.echo(f"  reverted {r['fault_id']} ({r.get('kind')} on {r.get('service')}): {state}{timing}")
        click.echo(f"{len(result['reverted'])} fault(s) in {result['elapsed_s']:.2f} s (times since the "
                   "halt began; a killed service's effect is gone only once its own start-up is done)")
    sys.exit(0 if result["all_verified"] else 1)


def _state_dir(option: Path | None) -> Path:
    from chaoscheckout.config import settings_from

    return option if option is not None else settings_from(None).state_dir
