"""SLI timelines over a run, for the journal and the experiment log.

:func:`collect_timeline` returns ``{"start", "end", "step_s", "series": {"availability_10s":
[[t, v], ...], "p95_ms_10s": [[t, v], ...]}}`` (v is ``null`` where Prometheus had no
value). The load control stores it as ``journal["chaoscheckout_timeline"]``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from chaoscheckout.sli.prometheus import prometheus_client_from

__all__ = ["TIMELINE_QUERIES", "collect_timeline"]

logger = logging.getLogger("chaostoolkit")

TIMELINE_QUERIES = {
    "availability_10s": "checkout:availability:ratio_10s",
    "p95_ms_10s": "checkout:latency_seconds:p95_10s * 1000",
}
MAX_POINTS = 600


def collect_timeline(start: float, end: float, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Availability and p95 latency (10 s windows) between two unix timestamps.

    The step is 1 s, coarser for long runs so a series has at most 600 points. Never
    raises: a failure is returned as ``{"error": "..."}`` so the journal still gets written.
    """
    step = max(1.0, float(math.ceil((end - start) / MAX_POINTS)))
    timeline: dict[str, Any] = {"start": start, "end": end, "step_s": step, "series": {}}
    try:
        client = prometheus_client_from(configuration)
        for name, expr in TIMELINE_QUERIES.items():
            timeline["series"][name] = client.query_range(expr, start, end, step)
    except Exception as exc:  # the timeline is evidence, not a gate: record why it is missing
        logger.warning(f"SLI timeline incomplete: {exc}")
        timeline["error"] = str(exc)
    return timeline
