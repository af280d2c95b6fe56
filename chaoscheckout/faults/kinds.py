"""The fault-kind table: the one place a fault kind is declared.

Each kind names its fault domain package (``<domain>.actions`` holds the public inject
and rollback actions plus the internal revert and verify functions, ``<domain>.probes``
its probes), or one ``module`` of that domain that holds all of them (a kind that is one
module plus its tests, e.g. ``response_loss``).
Lease kinds (:mod:`chaoscheckout.faults.leases`), the reverters
(:mod:`chaoscheckout.faults.revert`) and what ``chaos discover`` lists
(``chaoscheckout.ACTIVITY_MODULES``) all derive from :data:`KINDS`. Functions are named,
not imported, so this module stays import-light (the reaper and the CLI load it).

Adding a kind: docs/architecture.md, "Adding a fault kind".
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultKind", "KINDS", "KIND_NAMES", "ACTIVITY_MODULES", "kind", "activity_type"]


@dataclass(frozen=True)
class FaultKind:
    name: str
    domain: str  # package, e.g. "chaoscheckout.service"
    inject: str  # public action that injects (goes through faults.inject.inject_fault)
    rollback: str  # public action that undoes it by service (idempotent)
    revert: str  # (lease, configuration) -> dict: undo one lease's effect, idempotent
    verify: str  # (lease, configuration) -> {"verified": bool, "checked": str}
    module: str = ""  # one module of the domain holding actions and probes (else actions.py/probes.py)

    @property
    def actions_module(self) -> str:
        return f"{self.domain}.{self.module or 'actions'}"

    @property
    def probes_module(self) -> str:
        return f"{self.domain}.{self.module or 'probes'}"

    def function(self, role: str) -> Callable[..., Any]:
        """The function playing ``role`` ("inject", "rollback", "revert", "verify")."""
        module = importlib.import_module(self.actions_module)
        return getattr(module, getattr(self, role))


KINDS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("kill", "chaoscheckout.service", "kill_service", "start_service",
              "revert_kill_lease", "verify_kill_reverted"),
    FaultKind("latency", "chaoscheckout.network", "add_latency", "remove_latency",
              "revert_latency_lease", "verify_latency_reverted"),
    FaultKind("disk", "chaoscheckout.disk", "fill_disk", "release_disk",
              "revert_disk_lease", "verify_disk_reverted"),
    FaultKind("response_loss", "chaoscheckout.network", "lose_responses", "restore_responses",
              "revert_response_loss_lease", "verify_response_loss_reverted", module="response_loss"),
)}
KIND_NAMES = tuple(KINDS)

ACTIVITY_MODULES = tuple(dict.fromkeys(
    module for k in KINDS.values() for module in (k.actions_module, k.probes_module)
)) + ("chaoscheckout.sli.probes", "chaoscheckout.sli.guards")


def kind(name: str) -> FaultKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown fault kind {name!r}; known: {', '.join(KINDS)}") from None


def activity_type(module: str, func: str) -> str:
    """``action`` or ``probe``: what ``chaos discover`` lists ``module.func`` as. In a
    kind's one module, its inject and rollback are actions and every other public
    function a probe; elsewhere the module's name says (``*.actions`` or probes)."""
    for k in KINDS.values():
        if k.module and module == k.actions_module:
            return "action" if func in (k.inject, k.rollback) else "probe"
    return "action" if module.endswith(".actions") else "probe"
