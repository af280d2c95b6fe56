"""The remote agent's wire format: one JSON object per line, errors mapped to exception types.

An answer is ``{"result": ...}`` or ``{"error": {"type", "message"}}``; ``type`` is the
name of the extension's exception class raised on the remote host, and the controller
raises the same class (``error_from_wire``), so a refusal there (a halt, a fault
conflict, an invalid argument) reads the same as a local one. A type the controller does
not know becomes :class:`RemoteCallFailed`.
"""

from __future__ import annotations

import json
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError

__all__ = ["RemoteCallFailed", "error_to_wire", "error_from_wire", "answer_line"]


class RemoteCallFailed(ChaosCheckoutError):
    """The remote agent failed with an error this side has no type for."""


def _known_types() -> dict[str, type[Exception]]:
    from chaoscheckout import errors
    from chaoscheckout.faults.halt import FaultsHalted
    from chaoscheckout.faults.inject import FaultConflict, RunDeclaredDead
    from chaoscheckout.faults.leases import LeasesUnreadable

    types: list[type[Exception]] = [FaultsHalted, FaultConflict, RunDeclaredDead, LeasesUnreadable]
    types += [getattr(errors, name) for name in errors.__all__]
    return {t.__name__: t for t in types}


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object for ``exc`` (its class name and message)."""
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def error_from_wire(raw: Any, where: str) -> Exception:
    """The exception to raise for an agent's ``error`` object (``where``: the remote host)."""
    if not isinstance(raw, dict):
        return RemoteCallFailed(f"on {where}: malformed error answer {raw!r}")
    name, message = str(raw.get("type")), str(raw.get("message"))
    exc_type = _known_types().get(name)
    if exc_type is None:
        return RemoteCallFailed(f"on {where}: {name}: {message}")
    return exc_type(f"on {where}: {message}")


def answer_line(result: Any = None, error: BaseException | None = None) -> str:
    """One JSON line: ``{"result": ...}`` or ``{"error": {...}}``."""
    body = {"error": error_to_wire(error)} if error is not None else {"result": result}
    return json.dumps(body, default=str)
