"""Provenance control: every journal says exactly what was tested, read from what ran.

Before the experiment it records, and after it stores in the journal under
``chaoscheckout_provenance``:

- ``experiment_digest``: sha256 of the experiment definition (as chaostoolkit loaded it)
  together with the resolved values of its static configuration (env/literal keys, not
  probe-computed ones such as a start time), so the same file run with other settings is
  a different experiment; ``configuration``: those resolved values.
- ``tool``: chaoscheckout's version and, when it runs from a git checkout, the commit and
  whether the tree was dirty; Python, chaostoolkit, chaostoolkit-lib, chaostoolkit-addons.
- ``host`` (name, platform, cpus, load averages when the run started; ``loadavg_at_end``
  too: a busy machine slows every timeout-bound call) and ``runtime`` (the registry's runtime, state dir).
- ``k6`` (``k6 version``) and ``prometheus`` (its ``/api/v1/status/buildinfo``) versions.
- ``load``: the load control's rate, duration and profile as the run resolved them (the
  rate a peak profile derived is in ``chaoscheckout_load.profile``).
- ``services``: for every service of the registry, what is running, asked from the service
  itself (``GET /version`` on its port: build version / source digest / git commit, and
  the settings that change its behaviour, e.g. checkout's resilience switches and
  budgets). A service that does not answer it is recorded as ``{"status": "unknown",
  "reason": ...}``, never guessed from the runner's environment.
- ``system_build``: a short digest over the services' builds and settings, with a
  ``system_label`` a reader can recognise (e.g. ``checkout first-version``); runs with the
  same digest tested the same system.
- ``services_at_end``: services whose answer changed during the run (a restart with other
  settings), ``{}`` when none.

Every call is bounded by a timeout (``CHAOSCHECKOUT_IO_TIMEOUT_S``, at most 5 s); a failure
is recorded, never raised: provenance never stops an experiment.

Add it to an experiment::

    {
      "controls": [
        {
          "name": "chaoscheckout-provenance",
          "provider": {"type": "python", "module": "chaoscheckout.controls.provenance"}
        }
      ]
    }
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

import chaoscheckout
from chaoscheckout.context import ActivityContext, activity_context

__all__ = ["configure_control", "before_experiment_control", "after_experiment_control",
           "cleanup_control", "collect_provenance", "system_build"]

logger = logging.getLogger("chaostoolkit")

JOURNAL_KEY = "chaoscheckout_provenance"
MAX_TIMEOUT_S = 5.0
DISTRIBUTIONS = ("chaostoolkit", "chaostoolkit-lib", "chaostoolkit-addons", "chaostoolkit-prometheus")
LOAD_MODULE = "chaoscheckout.load.control"
UNKNOWN = "unknown"


def configure_control(**kwargs: Any) -> None:
    """Start every run from a clean slate (also a second run in the same process)."""
    _STATE.clear()


def before_experiment_control(context: dict[str, Any], configuration: dict[str, Any] | None = None,
                              **kwargs: Any) -> None:
    """Record what is about to be tested: experiment digest, tool, host, k6, Prometheus, load,
    and each registry service's build and settings from its ``/version`` (never raises)."""
    _STATE.clear()
    try:
        _STATE["record"] = collect_provenance(context, configuration)
    except Exception as exc:  # provenance must never stop a run; say what failed instead
        logger.warning(f"provenance could not be collected: {exc}")
        _STATE["record"] = {"error": f"{type(exc).__name__}: {exc}"}


def after_experiment_control(context: dict[str, Any], state: dict[str, Any],
                             configuration: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Store the record in the journal, with services whose answer changed during the run."""
    record = dict(_STATE.get("record") or {"error": "provenance was not collected before the run"})
    before = record.get("services")
    if isinstance(before, dict):
        try:
            ctx = activity_context(configuration)
            now = _services(ctx, _timeout(ctx))
            record["services_at_end"] = {name: now.get(name) for name in sorted(set(before) | set(now))
                                         if _identity(now.get(name)) != _identity(before.get(name))}
        except Exception as exc:
            record["services_at_end"] = {"error": f"{type(exc).__name__}: {exc}"}
    record["loadavg_at_end"] = _loadavg()
    if isinstance(state, dict):
        state[JOURNAL_KEY] = record


def cleanup_control(**kwargs: Any) -> None:
    """Forget this run's record, so a second run in the same process starts clean."""
    _STATE.clear()


def collect_provenance(experiment: dict[str, Any], configuration: dict[str, Any] | None) -> dict[str, Any]:
    """The provenance record for an experiment about to run (see the module docstring)."""
    ctx = activity_context(configuration)
    timeout = _timeout(ctx)
    static = _static_configuration(experiment, configuration)
    services = _services(ctx, timeout)
    record: dict[str, Any] = {
        "collected_at": time.time(),
        "experiment_digest": _digest({"experiment": _definition(experiment), "configuration": static}),
        "definition_digest": _digest(_definition(experiment)),
        "configuration": static,
        "tool": _tool(timeout),
        "host": {"name": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
                 "loadavg": _loadavg()},
        "runtime": _runtime(ctx),
        "k6": _k6_version(timeout),
        "prometheus": _prometheus_version(ctx, timeout),
        "load": _load(experiment, configuration),
        "services": services,
    }
    record["system_build"] = _digest({name: _identity(entry) for name, entry in services.items()})[:12]
    record["system_label"] = _label(services)
    return record


def system_build(configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{system_build, system_label}`` of the running stack, as a journal's provenance records
    them (the capacity record carries it: which build a capacity was measured on)."""
    ctx = activity_context(configuration)
    services = _services(ctx, _timeout(ctx))
    return {"system_build": _digest({name: _identity(entry) for name, entry in services.items()})[:12],
            "system_label": _label(services)}


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _loadavg() -> list[float] | None:
    """The host's 1/5/15-minute load averages (a busy machine slows every timeout-bound call)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _timeout(ctx: ActivityContext) -> float:
    return min(MAX_TIMEOUT_S, ctx.settings.io_timeout_s)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _definition(experiment: dict[str, Any]) -> dict[str, Any]:
    """The experiment as defined (chaostoolkit adds no run data to the context it passes)."""
    return {k: v for k, v in experiment.items() if not str(k).startswith("chaoscheckout_")}


def _static_configuration(experiment: dict[str, Any], configuration: dict[str, Any] | None) -> dict[str, Any]:
    """Resolved values of the configuration keys that are not computed at run time (probes)."""
    declared = experiment.get("configuration") or {}
    resolved = configuration or {}
    out = {}
    for key, spec in declared.items():
        if isinstance(spec, dict) and spec.get("type") not in ("env", None):
            continue  # a probe (e.g. the run's start time) differs on every run by design
        if key in resolved:
            out[key] = resolved[key]
    return out


def _git(folder: Path, timeout: float, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _tool(timeout: float) -> dict[str, Any]:
    folder = Path(chaoscheckout.__file__).resolve().parent
    commit = _git(folder, timeout, "rev-parse", "HEAD")
    dirty = None
    if commit:
        status = _git(folder.parent, timeout, "status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status)
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"chaoscheckout": chaoscheckout.__version__, "commit": commit, "dirty": dirty,
            "python": sys.version.split()[0], **versions}


def _runtime(ctx: ActivityContext) -> dict[str, Any]:
    settings = ctx.settings
    try:
        registry = ctx.registry
    except Exception as exc:
        return {"state_dir": str(settings.state_dir), "error": str(exc)}
    return {"name": settings.runtime or registry.runtime, "state_dir": str(settings.state_dir)}


def _k6_version(timeout: float) -> str:
    from chaoscheckout.load.k6 import K6Error, find_k6

    try:
        done = subprocess.run([find_k6(), "version"], capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (K6Error, OSError, subprocess.SubprocessError) as exc:
        return f"{UNKNOWN} ({exc})"
    line = (done.stdout or done.stderr).strip().splitlines()
    return line[0] if done.returncode == 0 and line else f"{UNKNOWN} (k6 version exited {done.returncode})"


def _prometheus_version(ctx: ActivityContext, timeout: float) -> dict[str, Any]:
    url = (ctx.configuration or {}).get("prometheus_url")
    try:
        url = url or ctx.registry.prometheus_url
        if not url:
            return {"status": UNKNOWN, "reason": "no prometheus_url in the configuration or registry"}
        resp = httpx.get(f"{str(url).rstrip('/')}/api/v1/status/buildinfo", timeout=timeout, trust_env=False)
        data = resp.json().get("data") if resp.status_code == 200 else None
    except Exception as exc:
        return {"status": UNKNOWN, "reason": f"{type(exc).__name__}: {exc}"}
    if not isinstance(data, dict):
        return {"status": UNKNOWN, "reason": f"buildinfo answered HTTP {resp.status_code}"}
    return {k: data.get(k) for k in ("version", "revision")}


def _load(experiment: dict[str, Any], configuration: dict[str, Any] | None) -> dict[str, Any]:
    """The load control's arguments with ``${key}`` placeholders resolved."""
    for control in experiment.get("controls") or []:
        provider = control.get("provider") if isinstance(control, dict) else None
        if isinstance(provider, dict) and provider.get("module") == LOAD_MODULE:
            args = provider.get("arguments") or {}
            names = ("rate", "duration_s", "warmup_s", "script", "profile")
            return {k: _resolve(args.get(k), configuration) for k in names if k in args}
    return {"status": "no load control declared"}


def _resolve(value: Any, configuration: dict[str, Any] | None) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"\$\{([^}]+)\}", value)
        if match:
            return (configuration or {}).get(match.group(1), value)
    return value


def _services(ctx: ActivityContext, timeout: float) -> dict[str, Any]:
    registry = ctx.registry
    out: dict[str, Any] = {}
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        for name, entry in sorted(registry.services.items()):
            out[name] = _service_version(client, entry.health_url, entry.host, entry.port)
    return out


def _service_version(client: httpx.Client, health_url: str | None, host: str, port: int) -> dict[str, Any]:
    if not health_url or not health_url.startswith(("http://", "https://")):
        return {"status": UNKNOWN, "reason": "no HTTP endpoint in the registry"}
    url = f"http://{host}:{port}/version"
    try:
        resp = client.get(url)
    except httpx.HTTPError as exc:
        return {"status": UNKNOWN, "reason": f"{url}: {type(exc).__name__}: {exc}"}
    if resp.status_code != 200:
        return {"status": UNKNOWN, "reason": f"{url} answered HTTP {resp.status_code} (no /version)"}
    try:
        body = resp.json()
    except ValueError:
        return {"status": UNKNOWN, "reason": f"{url} did not answer JSON"}
    if not isinstance(body, dict) or not isinstance(body.get("build"), dict):
        return {"status": UNKNOWN, "reason": f"{url} answered without a build"}
    return {"status": "known", "build": body["build"], "settings": body.get("settings") or {},
            "profile": body.get("profile")}


def _identity(entry: Any) -> Any:
    """What makes a service's behaviour: its build's code and its settings (ports and URLs aside)."""
    if not isinstance(entry, dict) or entry.get("status") != "known":
        return UNKNOWN
    build = entry.get("build") or {}
    settings = {k: v for k, v in (entry.get("settings") or {}).items()
                if k not in ("port", "store") and not str(k).endswith("_url")}
    return {"source": build.get("source_sha256") or build.get("commit"), "settings": settings,
            "profile": entry.get("profile")}


def _label(services: dict[str, Any]) -> str:
    parts = []
    for name, entry in sorted(services.items()):
        if isinstance(entry, dict) and entry.get("profile"):
            parts.append(f"{name} {entry['profile']}")
    known = [e for e in services.values() if isinstance(e, dict) and e.get("status") == "known"]
    commits = sorted({str((e.get("build") or {}).get("commit") or "")[:7] for e in known} - {""})
    source = sorted({str((e.get("build") or {}).get("source_sha256") or "")[:8] for e in known} - {""})
    if commits:
        parts.append("commit " + ",".join(commits))
    if source:
        parts.append("source " + ",".join(source))
    unknown = sorted(n for n, e in services.items()
                     if not (isinstance(e, dict) and e.get("status") == "known"))
    if unknown:
        parts.append(f"unknown: {', '.join(unknown)}")
    return "; ".join(parts) or UNKNOWN
