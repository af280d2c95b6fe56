"""The activity context: everything one activity needs, resolved once at its entry point.

A fault action, probe, rollback or revert builds one :class:`ActivityContext` from the
chaoslib ``configuration`` (:func:`activity_context`) and hands it down: the settings
(validated at once, so a bad limit is refused before anything changes), the state dir's
service registry and the runtime bound to it (both read on first use, then kept for the
rest of the activity). The runtime is the only door to a service: process control
(``pid``, ``kill``, ``start``), health (``is_healthy``, ``wait_healthy``), the network
target (``target``: the entry with its proxy route and netns, checked as the platform can;
``proxy_control_url``) and the data location (``data_dir``, a path on this host).

Inner helpers take the context (or accept a configuration or a context where they are
also entry points, e.g. ``revert_lease``); none reads the settings, the registry or the
runtime again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from chaoscheckout.config import Settings, settings_from
from chaoscheckout.runtime import Runtime, runtime_for
from chaoscheckout.runtime.registry import Registry, load_registry

__all__ = ["ActivityContext", "activity_context", "Configuration", "ConfigOrContext"]

Configuration = dict[str, Any] | None


@dataclass(frozen=True, eq=False)
class ActivityContext:
    """One activity's settings, registry and runtime (the latter two read on first use)."""

    settings: Settings
    configuration: Configuration = None

    @cached_property
    def registry(self) -> Registry:
        return load_registry(self.settings.registry_file)

    @cached_property
    def runtime(self) -> Runtime:
        return runtime_for(self.registry, self.settings)


# what an entry point that inner code also calls takes: chaoslib's dict, or the caller's context
ConfigOrContext = dict[str, Any] | ActivityContext | None


def activity_context(configuration: ConfigOrContext = None) -> ActivityContext:
    """The context of a chaoslib ``configuration`` (a context is returned as it is)."""
    if isinstance(configuration, ActivityContext):
        return configuration
    return ActivityContext(settings_from(configuration), configuration)
