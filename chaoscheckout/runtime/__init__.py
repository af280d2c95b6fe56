"""Runtimes: where services live and how to act on them (``local`` now, ``docker`` later).

``runtime_for(registry, settings)`` returns the runtime named by ``chaoscheckout_runtime`` /
``CHAOSCHECKOUT_RUNTIME``, else by the registry's ``runtime`` field; activities get it once
from their :class:`~chaoscheckout.context.ActivityContext`. ``get_runtime(configuration)``
reads the state dir's registry first (for callers outside an activity: the CLI, tools).
When the registry has services with a ``remote`` entry, either returns a
:class:`~chaoscheckout.runtime.ssh.RoutingRuntime`: calls for those go over SSH, all others
to that runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

from chaoscheckout.config import Settings, settings_from
from chaoscheckout.errors import BackendUnavailable, InvalidFaultArgument
from chaoscheckout.runtime.base import KillResult, Runtime, StartResult
from chaoscheckout.runtime.registry import Registry, load_registry

__all__ = ["get_runtime", "runtime_for", "Runtime", "KillResult", "StartResult", "RUNTIMES"]

# runtime name -> "module:class"
RUNTIMES = {
    "local": "chaoscheckout.runtime.local:LocalRuntime",
    "docker": "chaoscheckout.runtime.docker:DockerRuntime",
}


def get_runtime(configuration: dict[str, Any] | None = None) -> Runtime:
    """The runtime for this configuration, bound to the state dir's service registry."""
    settings = settings_from(configuration)
    return runtime_for(load_registry(settings.registry_file), settings)


def runtime_for(registry: Registry, settings: Settings) -> Runtime:
    """The runtime ``settings`` (else ``registry``) names, bound to ``registry``."""
    name = settings.runtime or registry.runtime or "local"
    if name not in RUNTIMES:
        raise InvalidFaultArgument(f"unknown runtime {name!r}; known: {', '.join(sorted(RUNTIMES))}")
    if registry.runtime == "docker" and name != "docker":
        raise InvalidFaultArgument(
            f"the service registry is a docker stack's: runtime {name!r} would skip the container "
            "label check (drop chaoscheckout_runtime or set it to docker)"
        )
    module_name, class_name = RUNTIMES[name].split(":")

    def make() -> Runtime:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendUnavailable(f"runtime {name!r} is not available here: {exc}") from None
        return getattr(module, class_name)(registry, settings)

    if any(entry.remote is not None for entry in registry.services.values()):
        from chaoscheckout.runtime.ssh import RoutingRuntime

        return RoutingRuntime(registry, settings, make)
    return make()
