"""Probes on a service's liveness: is it healthy, which process runs it."""

from __future__ import annotations

import logging
from typing import Any

from chaoslib.types import Configuration

from chaoscheckout.context import activity_context
from chaoscheckout.faults.leases import check_positive

__all__ = ["service_is_healthy", "service_pid", "describe_service"]

logger = logging.getLogger("chaostoolkit")


def service_is_healthy(service: str, timeout_s: float = 2, configuration: Configuration = None) -> bool:
    """
    One health check of a service: its registry `health_url` answers 2xx (or, without
    one, its TCP port accepts a connection) within `timeout_s` seconds.

    Returns `true`/`false` (use tolerance `true` in a steady-state hypothesis).
    Changes nothing.
    """
    timeout = check_positive("timeout_s", timeout_s)
    return activity_context(configuration).runtime.is_healthy(service, timeout_s=timeout)


def service_pid(service: str, configuration: Configuration = None) -> int | None:
    """
    The PID of the process running `service` (local runtime), or `null` when it is
    down. Changes nothing.
    """
    return activity_context(configuration).runtime.pid(service)


def describe_service(service: str, configuration: Configuration = None) -> dict[str, Any]:
    """
    What the runtime knows about `service`: `{service, runtime, process, state, pid,
    address, chaos_target}`. Changes nothing.
    """
    return activity_context(configuration).runtime.describe(service)
