"""chaoscheckout: a Chaos Toolkit extension for proving a checkout survives its faults.

Activities live in one sub-package per fault domain (``service``, ``network``,
``disk``) plus the SLI probes (``sli``) and the controls (``load``, ``controls``).
Every fault is an inject/revert pair bounded by a lease that is enforced outside the
``chaos run`` process, so no fault outlives its run.
"""

from __future__ import annotations

from typing import Any

from chaoscheckout.faults import kinds as _kinds

__version__ = "0.1.0"
__all__ = ["__version__", "discover"]

ACTIVITY_MODULES = _kinds.ACTIVITY_MODULES  # derived from the fault-kind table
CONTROL_MODULES = (
    "chaoscheckout.load.control",
    "chaoscheckout.controls.safety",
    "chaoscheckout.controls.provenance",
)


def discover(discover_system: bool = True) -> dict[str, Any]:
    """Return what ``chaos discover chaostoolkit-checkout`` publishes."""
    import importlib

    from chaoslib.discovery.discover import (
        discover_actions,
        discover_activities,
        discover_probes,
        initialize_discovery_result,
    )

    result = initialize_discovery_result("chaostoolkit-checkout", __version__, "checkout")
    activities = result["activities"]
    for name in ACTIVITY_MODULES:
        if not _present(name):
            continue
        importlib.import_module(name)  # a broken module fails loudly, never silently vanishes
        listed = discover_actions(name) if name.endswith(".actions") else discover_probes(name)
        for activity in listed:  # a kind's one module holds both (faults.kinds.activity_type)
            activity["type"] = _kinds.activity_type(name, activity["name"])
        activities.extend(listed)
    for name in CONTROL_MODULES:
        if not _present(name):
            continue
        importlib.import_module(name)
        activities.extend(discover_activities(name, "control"))
    return result


def _present(module: str) -> bool:
    """True when ``module`` exists (a fault domain not built yet is simply not listed)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
