"""The injection runner: every experiment in order, under load, each into a dated journal.

``chaoscheckout experiments run`` (or :func:`run_experiments`) checks that every
service of the registry is healthy, runs each experiment file with ``chaos run`` (a real
run in its own process: the experiment's own controls bring the k6 load and the safety
net), writes ``<journals>/<UTC stamp>-<experiment>.json`` (and chaos's log under
``<journals>/logs/``), prints one verdict line per
experiment, waits for the stack to be healthy again between experiments, and finally
renders the experiment log with ``chaos report <journals>``.

``profile`` (``chaoscheckout experiments run --profile peak``) runs every experiment at that
load profile (:mod:`chaoscheckout.load.profile`): it is resolved once, before the first
experiment (a missing capacity record or a bad value is an error, nothing started), and
handed to each ``chaos run`` as ``CHAOSCHECKOUT_LOAD_PROFILE`` with the capacity record's
path pinned in ``CHAOSCHECKOUT_CAPACITY_FILE``; each journal records the profile and rate
that ran (``chaoscheckout_load.profile``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError
from chaoscheckout.load.profile import LoadProfile, resolve_profile
from chaoscheckout.runtime import get_runtime

__all__ = ["DEFAULT_ORDER", "Outcome", "check_stack_healthy", "run_experiments", "journal_name",
           "resolve_run_profile"]

logger = logging.getLogger("chaostoolkit")

DEFAULT_ORDER = ("kill-catalog", "payments-latency", "fill-pg-disk", "payments-response-lost")
RUN_TIMEOUT_S = 900  # far above one experiment (about 2 min); a hung run is killed
REPORT_TIMEOUT_S = 300


@dataclass(frozen=True)
class Outcome:
    experiment: str
    journal: Path
    exit_code: int
    verdict: str
    reason: str
    load: str = ""  # the profile and rate that ran, as the journal recorded them

    def line(self) -> str:
        load = f" ({self.load})" if self.load else ""
        return f"{self.experiment:<18} {self.verdict.upper():<8}{load} {self.reason}  [{self.journal}]"


def journal_name(experiment: Path, now: datetime | None = None) -> str:
    """``<UTC stamp>-<experiment>.json``, e.g. ``2026-11-27T161500Z-kill-catalog.json``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H%M%SZ")
    return f"{stamp}-{experiment.stem}.json"


def check_stack_healthy(configuration: dict[str, Any] | None = None, timeout_s: float = 60) -> None:
    """Wait (bounded) until every registry service is healthy, else raise naming the sick ones."""
    runtime = get_runtime(configuration)
    deadline = time.monotonic() + timeout_s
    while True:
        sick = [name for name in runtime.registry.services if not runtime.is_healthy(name)]
        if not sick:
            return
        if time.monotonic() >= deadline:
            raise ChaosCheckoutError(
                f"stack not healthy after {timeout_s:g} s: {', '.join(sick)} "
                "(`chaoscheckout stack status` shows details)"
            )
        time.sleep(1)


def run_experiments(
    experiments: list[Path],
    journals_dir: Path,
    report: bool = True,
    chaos: str | None = None,
    env: dict[str, str] | None = None,
    echo: Any = print,
    cwd: Path | None = None,
    profile: str | None = None,
) -> list[Outcome]:
    """Run ``experiments`` in order; returns one :class:`Outcome` each (see module doc).

    ``env`` adds environment variables for ``chaos run`` (e.g. ``CHAOSCHECKOUT_STATE_DIR``,
    which also picks the stack whose health is checked); ``cwd`` is where ``chaos run``
    starts (relative paths in the experiments, such as the k6 script, resolve there);
    ``profile`` is the load profile every experiment runs at (default: the experiments'
    own, ``CHAOSCHECKOUT_LOAD_PROFILE`` or ``baseline``).
    """
    missing = [str(p) for p in experiments if not p.is_file()]
    if missing:
        raise ChaosCheckoutError(f"experiment file(s) not found: {', '.join(missing)}")
    env = dict(env or {})
    profile = profile or _env(env).get("CHAOSCHECKOUT_LOAD_PROFILE") or None
    if profile is not None:
        chosen = resolve_run_profile(profile, env)
        env["CHAOSCHECKOUT_LOAD_PROFILE"] = chosen.name
        if chosen.capacity_file:  # every experiment of this run reads the same record
            env["CHAOSCHECKOUT_CAPACITY_FILE"] = chosen.capacity_file
        echo(f"load profile {chosen.name}: " + (
            f"{chosen.rate}/s = {chosen.share:g} x capacity {chosen.capacity['capacity_per_s']:g}/s "
            f"(measured {chosen.capacity['measured_at']}, {chosen.capacity_file}), ramp {chosen.ramp_s:g} s"
            if chosen.capacity else "each experiment's own rate"))
    chaos = chaos or _chaos_binary()
    journals_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    state_dir = env.get("CHAOSCHECKOUT_STATE_DIR")
    configuration = {"chaoscheckout_state_dir": state_dir} if state_dir else None
    experiments = [p.resolve() for p in experiments]
    journals_dir = journals_dir.resolve()
    for index, experiment in enumerate(experiments, 1):
        check_stack_healthy(configuration)
        journal = journals_dir / journal_name(experiment)
        echo(f"[{index}/{len(experiments)}] chaos run {experiment.name} -> {journal}")
        started = time.monotonic()
        code = _chaos_run(chaos, experiment, journal, env, cwd)
        outcome = _outcome(experiment, journal, code)
        outcomes.append(outcome)
        echo(f"    {outcome.line()}  ({time.monotonic() - started:.0f} s)")
    if report:
        echo(f"chaos report {journals_dir}")
        subprocess.run([chaos, "report", str(journals_dir)], check=False, timeout=REPORT_TIMEOUT_S,
                       env=_env(env), cwd=cwd)
    return outcomes


def resolve_run_profile(profile: str, env: dict[str, str] | None = None) -> LoadProfile:
    """Check ``profile`` once for a whole run, with the environment ``chaos run`` will get
    (``env`` over this process' own); raises ProfileError (nothing started)."""
    merged = _env(env)
    configuration = {key.lower(): merged[key] for key in _PROFILE_ENV if merged.get(key)}
    return resolve_profile(profile, 1, configuration)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
_PROFILE_ENV = ("CHAOSCHECKOUT_STATE_DIR", "CHAOSCHECKOUT_CAPACITY_FILE", "CHAOSCHECKOUT_PEAK_SHARE",
                "CHAOSCHECKOUT_PEAK_RAMP_S")


def _chaos_binary() -> str:
    found = shutil.which("chaos") or str(Path(sys.executable).with_name("chaos"))
    if not Path(found).exists():
        raise ChaosCheckoutError("the `chaos` command is not installed (pip install chaostoolkit)")
    return found


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    return env


def _chaos_run(chaos: str, experiment: Path, journal: Path, env: dict[str, str] | None,
               cwd: Path | None) -> int:
    log_file = journal.parent / "logs" / journal.with_suffix(".log").name
    log_file.parent.mkdir(exist_ok=True)
    command = [chaos, "--log-file", str(log_file), "run", "--journal-path", str(journal), str(experiment)]
    try:
        proc = subprocess.run(command, env=_env(env), timeout=RUN_TIMEOUT_S, check=False, cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        logger.error("chaos run %s did not finish in %d s: killed (the reaper reverts its fault)",
                     experiment, RUN_TIMEOUT_S)
        return -9
    return proc.returncode


def _outcome(experiment: Path, journal: Path, code: int) -> Outcome:
    from chaoscheckout.report.analysis import analyse
    from chaoscheckout.report.model import Skipped, load_journal

    if not journal.is_file():
        return Outcome(experiment.stem, journal, code, "error", f"no journal written (chaos exit {code})")
    run = load_journal(journal)
    if isinstance(run, Skipped):
        return Outcome(experiment.stem, journal, code, "error", run.reason)
    run = analyse(run)
    profile = run.load_profile
    load = f"{profile.name} {profile.rate:g}/s" if profile and profile.rate is not None else ""
    return Outcome(experiment.stem, journal, code, run.verdict, run.reason, load)
