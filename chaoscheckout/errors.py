"""The exception tree: everything this package raises derives from chaoslib's errors."""

from __future__ import annotations

from chaoslib.exceptions import ActivityFailed, InvalidActivity

__all__ = [
    "ChaosCheckoutError",
    "InvalidFaultArgument",
    "UnknownService",
    "TargetRefused",
    "BackendUnavailable",
]


class ChaosCheckoutError(ActivityFailed):
    """Base class: an activity of this package failed (the journal shows the message)."""


class InvalidFaultArgument(ChaosCheckoutError, InvalidActivity):
    """An argument was rejected before anything was changed."""


class UnknownService(InvalidFaultArgument):
    """The service name is not in the runtime's registry."""


class TargetRefused(InvalidFaultArgument):
    """The service exists but is not on the runtime's allowlist of chaos targets."""


class BackendUnavailable(ChaosCheckoutError):
    """The fault backend cannot work on this machine (e.g. the kernel lacks sch_netem)."""
