"""Emergency halt: ``<state_dir>/HALT`` blocks every injection until it is cleared.

``chaoscheckout halt`` writes it (who, when, why), then reverts every live fault of the
state dir whatever its owner; running experiments see it (the guards breach, the
safety control's before-activity hook and each owner's heartbeat interrupt the run)
and the journal records it. ``chaoscheckout halt --clear`` removes it.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from chaoscheckout.errors import ChaosCheckoutError

__all__ = ["FaultsHalted", "HALT_FILE", "halt_record", "set_halt", "clear_halt", "check_not_halted"]

HALT_FILE = "HALT"


class FaultsHalted(ChaosCheckoutError):
    """Injections are blocked by ``chaoscheckout halt`` until ``halt --clear``."""


def halt_record(state_dir: Path) -> dict[str, Any] | None:
    """The halt record, or None when not halted (an unreadable record still halts)."""
    path = Path(state_dir) / HALT_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"by": "?", "at": None, "reason": f"unreadable halt file: {exc}"}
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"by": "?", "at": None, "reason": "corrupt halt file"}


def set_halt(state_dir: Path, reason: str = "") -> dict[str, Any]:
    record = {"by": f"{_user()}@{socket.gethostname()}", "pid": os.getpid(), "at": time.time(),
              "reason": reason or "emergency halt"}
    path = Path(state_dir) / HALT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{HALT_FILE}.{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(record, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return record


def clear_halt(state_dir: Path) -> dict[str, Any] | None:
    record = halt_record(state_dir)
    (Path(state_dir) / HALT_FILE).unlink(missing_ok=True)
    return record


def check_not_halted(state_dir: Path) -> None:
    record = halt_record(state_dir)
    if record is not None:
        raise FaultsHalted(
            f"fault injection is halted (by {record.get('by')} at {_when(record.get('at'))}: "
            f"{record.get('reason')}); nothing was changed. Run `chaoscheckout halt --clear` "
            "when it is safe again"
        )


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry
        return str(os.getuid())
