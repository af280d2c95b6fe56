"""Baseline load for the whole experiment: a control that runs k6 around the run.

k6 starts before the steady-state hypothesis is first checked and stops after the
experiment ends (whatever its status), so traffic flows through the before-check, the
method and the after-check. The journal gets ``chaoscheckout_load`` (k6 exit code and
meaning, how it was stopped, requests, rate, failed rate, p95/p99, thresholds) and
``chaoscheckout_guards`` (``{"samples": [{guard, at, value, threshold, ok}, ...]}``: every
measurement the chaoscheckout guards took during the run) and
``chaoscheckout_timeline`` (availability and p95 latency series over the run, 10 s
windows, from Prometheus). Paste into an experiment::

    "controls": [
      {
        "name": "baseline-load",
        "provider": {
          "type": "python",
          "module": "chaoscheckout.load.control",
          "arguments": {
            "script": "load/baseline.js",
            "rate": 10,
            "duration_s": 600,
            "warmup_s": 5,
            "profile": "baseline"
          }
        }
      }
    ]

Arguments:

- ``script``: the k6 script, relative to the directory ``chaos run`` is started from
  (default ``load/baseline.js``). It receives ``RATE``, ``DURATION`` (e.g. ``"600s"``),
  ``CHECKOUT_URL`` and the entries of ``env`` as environment variables.
- ``rate``: requests per second (1..200).
- ``duration_s``: k6's own time bound (1..3600). Make it longer than the experiment: k6
  is stopped at the experiment's end anyway; the bound only matters if stopping fails.
- ``checkout_url``: default the registry's ``extra.checkout_url``.
- ``warmup_s``: after the first request completed, keep loading this long before the
  steady-state check so Prometheus windows have data (0..300; at least the shortest
  SLI window the hypothesis reads, e.g. 10 for the ``10s`` probes).
- ``env``: extra environment variables for the script.
- ``timeline``: store the SLI timeline in the journal (default true).
- ``profile``: the load profile (:mod:`chaoscheckout.load.profile`): ``baseline`` (default:
  ``rate`` as given, constant) or ``peak`` (a share of the latest capacity record, default
  70 %, reached by a ramp from ``rate``; the hold before the steady-state check becomes
  ramp + ``warmup_s``). The experiments pass ``"${load_profile}"``
  (``CHAOSCHECKOUT_LOAD_PROFILE``). An unknown profile, a missing or invalid capacity record
  or a peak rate above the capacity interrupts the run before k6 starts (and so before any
  fault). ``chaoscheckout_load.profile`` records what ran: ``{name, rate, start_rate,
  ramp_s, share, capacity_file, capacity, capacity_sha256}``.

If k6 cannot start, exits early or completes no request within ``warmup_s + 15`` s, the
run is interrupted (``InterruptExecution``) before the hypothesis, with k6's log tail in
the message and in ``chaoscheckout_load.error``. k6 is stopped with SIGINT (then
SIGKILL) in ``after_experiment_control`` and again, as a safety net, in
``cleanup_control``; it also dies with ``chaos run`` if that process is killed.

A ``chaos run`` ended by SIGINT (Ctrl-C) or SIGTERM sends k6 its SIGINT at the signal
(``chaoscheckout_load.stop_requested``: when and why), not at the end of the run: the
run is over, and its load must not compete with the revert of its faults. (Before, the
load went on until this control's ``after_experiment_control``, which chaoslib calls
after the safety control's, which waits for the revert: on the docker runtime a killed
catalog started up again under the run's full load, which the reaper's path never has:
k6 dies with a SIGKILLed run.)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from chaoslib.exceptions import InterruptExecution, InvalidActivity

from chaoscheckout import validate
from chaoscheckout.context import ActivityContext, activity_context
from chaoscheckout.load.k6 import K6Error, K6Options, K6Process
from chaoscheckout.load.profile import PROFILES, ProfileError, resolve_profile
from chaoscheckout.sli import guards
from chaoscheckout.sli.timeline import collect_timeline

__all__ = [
    "configure_control",
    "validate_control",
    "before_experiment_control",
    "after_experiment_control",
    "cleanup_control",
]

logger = logging.getLogger("chaostoolkit")

MAX_RATE = 200
MAX_DURATION_S = 3600
MAX_WARMUP_S = 300
FIRST_REQUEST_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


def configure_control(**kwargs: Any) -> None:
    """Start every run from a clean slate (also a second run in the same process)."""
    _reset()


def validate_control(control: dict[str, Any]) -> None:
    """Reject bad arguments at ``chaos validate`` / before the run starts.

    A ``"${key}"`` placeholder is checked at run time, once the configuration substituted it.
    """
    arguments = control.get("provider", {}).get("arguments", {})
    _check_arguments(**{k: v for k, v in arguments.items() if not _is_placeholder(v)})


def before_experiment_control(context: dict[str, Any], script: str = "load/baseline.js", rate: int = 10,
                              duration_s: int = 600, checkout_url: str | None = None, warmup_s: float = 5,
                              env: dict[str, str] | None = None, timeline: bool = True,
                              profile: str = "baseline", configuration: dict[str, Any] | None = None,
                              **kwargs: Any) -> None:
    """Resolve the load profile, start k6, wait until it completed a request, keep loading
    (the ramp, then ``warmup_s`` seconds)."""
    _reset()
    try:
        _check_arguments(script=script, rate=rate, duration_s=duration_s, warmup_s=warmup_s, env=env,
                         profile=profile)
        chosen = resolve_profile(profile, int(rate), configuration)
        if chosen.ramp_s >= int(duration_s):
            raise ProfileError(f"the ramp ({chosen.ramp_s:g} s) must be shorter than duration_s "
                               f"({duration_s})")
        _STATE["profile"] = chosen.to_dict()
        ctx = activity_context(configuration)
        settings = ctx.settings
        url = checkout_url or _registry_checkout_url(ctx)
        script_path = Path(script).expanduser()
        script_path = (script_path if script_path.is_absolute() else Path.cwd() / script_path).resolve()
        if not script_path.is_file():
            raise K6Error(f"k6 script not found: {script_path} "
                          "(paths are relative to where chaos run starts)")
        run_dir = settings.state_dir / "load" / time.strftime("k6-%Y%m%dT%H%M%SZ", time.gmtime())
        run_dir = _unique(run_dir)
        k6_env = {**chosen.k6_env(), **{str(k): str(v) for k, v in (env or {}).items()}}
        k6 = K6Process(K6Options(script_path, chosen.rate, int(duration_s), str(url), run_dir, k6_env))
        _STATE["k6"] = k6
        k6.start()
        _stop_load_on_signals(k6)
        first = k6.wait_for_traffic(float(warmup_s) + FIRST_REQUEST_TIMEOUT_S)
        logger.info(f"k6 traffic flowing ({first - (k6.started_at or first):.1f}s after start); "
                    f"profile {chosen.name} at {chosen.rate}/s; ramp {chosen.ramp_s:g}s, then warming up "
                    f"{warmup_s}s")
        _STATE["traffic_seen_at"] = first
        k6.hold(chosen.ramp_s + float(warmup_s))
    except (K6Error, InvalidActivity) as exc:
        _STATE["error"] = str(exc)
        _stop_quietly()
        raise InterruptExecution(f"baseline load did not start: {exc}") from None


def after_experiment_control(context: dict[str, Any], state: dict[str, Any], timeline: bool = True,
                             configuration: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Stop k6 and record its result (and the SLI timeline) in the journal."""
    _restore_signals()
    k6: K6Process | None = _STATE.get("k6")
    record: dict[str, Any] = {"error": _STATE.get("error"), "profile": _STATE.get("profile")}
    if k6 is not None:
        try:
            k6.stop(STOP_TIMEOUT_S)
        except Exception as exc:  # record it; cleanup_control retries the kill
            record["error"] = f"stopping k6 failed: {exc}"
        record.update(k6.result())
        record["traffic_seen_at"] = _STATE.get("traffic_seen_at")
        logger.info(f"k6 stopped ({record['stopped_by']}), exit {record['exit_code']}: "
                    f"{record['exit_meaning']}")
        if k6.stop_requested is not None:
            logger.info(f"k6 was sent SIGINT at once: {k6.stop_requested['why']}")
    if isinstance(state, dict):
        state["chaoscheckout_load"] = record
        state["chaoscheckout_guards"] = {"samples": guards.samples()}
        if timeline and k6 is not None and k6.started_at is not None:
            state["chaoscheckout_timeline"] = collect_timeline(k6.started_at, time.time(), configuration)


def cleanup_control(**kwargs: Any) -> None:
    """Safety net: make sure k6 is not running, whatever happened before."""
    _stop_quietly()
    _reset()


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _reset() -> None:
    _restore_signals()
    _stop_quietly()
    _STATE.clear()


def _stop_load_on_signals(k6: K6Process) -> None:
    """SIGINT / SIGTERM of ``chaos run``: SIGINT k6 at once (no wait), then let the previous
    handler act (the safety control's revert, chaoslib's interruption)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if previous in (signal.SIG_IGN, None):
            continue  # ignored (e.g. SIGINT of a background job): keep it ignored

        def handler(num: int, frame: Any, previous: Any = previous) -> Any:
            k6.request_stop(f"chaos run received {signal.Signals(num).name}")
            if callable(previous):
                return previous(num, frame)
            signal.signal(num, signal.SIG_DFL)  # default disposition: act as it would have
            os.kill(os.getpid(), num)
            return None

        handler.chaoscheckout_load = True  # type: ignore[attr-defined]
        _STATE.setdefault("previous_handlers", {})[signum] = previous
        signal.signal(signum, handler)


def _restore_signals() -> None:
    """Put back the handlers found at start, unless a later control replaced ours since
    (then it restores its own previous handler, ours included, and ours just goes unused)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in _STATE.pop("previous_handlers", {}).items():
        if getattr(signal.getsignal(signum), "chaoscheckout_load", False):
            signal.signal(signum, previous)


def _stop_quietly() -> None:
    k6: K6Process | None = _STATE.get("k6")
    if k6 is not None and k6.running():
        try:
            k6.stop(STOP_TIMEOUT_S)
        except Exception:
            logger.exception("could not stop k6")


def _check_arguments(script: Any = "load/baseline.js", rate: Any = 10, duration_s: Any = 600,
                     warmup_s: Any = 5, env: Any = None, profile: Any = "baseline", **kwargs: Any) -> None:
    problems = []
    if profile not in PROFILES:
        problems.append(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if not isinstance(script, str) or not script.endswith((".js", ".ts")):
        problems.append(f"script must be a .js/.ts path, got {script!r}")
    for check in (lambda: validate.integer("rate", rate, 1, MAX_RATE, unit="requests/s"),
                  lambda: validate.integer("duration_s", duration_s, 1, MAX_DURATION_S),
                  lambda: validate.in_range("warmup_s", warmup_s, 0, MAX_WARMUP_S, low_inclusive=True)):
        try:
            check()
        except validate.InvalidNumber as exc:
            problems.append(str(exc))
    if env is not None and not isinstance(env, dict):
        problems.append(f"env must be an object of strings, got {env!r}")
    if problems:
        raise InvalidActivity("load control: " + "; ".join(problems))


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _registry_checkout_url(ctx: ActivityContext) -> str:
    try:
        url = ctx.registry.extra.get("checkout_url")
    except Exception as exc:
        raise K6Error(f"no checkout_url argument and no registry to read it from: {exc}") from None
    if not url:
        raise K6Error("no checkout_url argument and the registry has no extra.checkout_url")
    return str(url)


def _unique(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
