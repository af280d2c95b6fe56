"""The dead-run record: what was reverted for an owner that died or froze.

A SIGKILLed ``chaos run`` writes no journal. The reaper appends one JSON line per fault
it reverted for a dead owner to ``<state_dir>/dead-runs.jsonl``::

    {"fault_id", "kind", "service", "run_id", "owner": {...}, "cause": "process 123 is gone",
     "owner_last_seen_at": <unix s or null>, "detected_at", "reverted_at", "verified",
     "checked", "error"}

``chaoscheckout status`` shows it; :func:`read_records` is what a report reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RECORD_FILE", "append_record", "read_records"]

RECORD_FILE = "dead-runs.jsonl"


def append_record(state_dir: Path, record: dict[str, Any]) -> None:
    """Append one line (O_APPEND: lines of concurrent writers do not interleave)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(Path(state_dir) / RECORD_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_records(path: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """Records of a dead-run file (or of ``<state_dir>/dead-runs.jsonl`` given the dir);
    a corrupt line is returned as ``{"error": ...}``, never dropped."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_FILE
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = {"error": f"line {number} of {path} is not JSON"}
        if run_id is None or record.get("run_id") == run_id:
            records.append(record)
    return records
