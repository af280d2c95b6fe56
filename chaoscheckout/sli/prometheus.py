"""A small Prometheus HTTP API client with an explicit timeout on every call.

chaostoolkit-prometheus (``chaosprometheus.probes.query``) would fit, but it calls
``requests.get`` without a timeout: a hung Prometheus would hang the whole experiment
(chaoslib gives Python activities no timeout). So this module calls the HTTP API
(``/api/v1/query`` and ``/api/v1/query_range``) itself, with httpx and a timeout.

The Prometheus URL comes from the experiment configuration key ``prometheus_url``,
else from the service registry's ``prometheus_url`` (``<state_dir>/services.json``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed

from chaoscheckout.context import ConfigOrContext, activity_context
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.httpclient import http_get

__all__ = ["Sample", "PrometheusClient", "prometheus_client_from", "NoData"]

logger = logging.getLogger("chaostoolkit")


class NoData(ChaosCheckoutError):
    """The query returned no sample or only NaN (typically: no traffic in the window)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class PrometheusClient:
    url: str
    timeout_s: float = 5.0

    def query(self, expr: str) -> list[Sample]:
        """Instant query; every series becomes a :class:`Sample` (NaN kept as NaN)."""
        data = self._get("/api/v1/query", {"query": expr})
        if data.get("resultType") == "scalar":
            return [Sample({}, _as_float(data["result"][1]))]
        if data.get("resultType") != "vector":
            raise ActivityFailed(f"Prometheus query {expr!r} returned {data.get('resultType')!r}, "
                                 "expected an instant vector")
        return [Sample(r.get("metric", {}), _as_float(r["value"][1])) for r in data["result"]]

    def value(self, expr: str) -> float:
        """The single finite-or-infinite value of ``expr``; :class:`NoData` when empty or NaN."""
        samples = self.query(expr)
        if not samples:
            raise NoData(f"Prometheus at {self.url} has no data for {expr!r} "
                         "(no traffic in the window, a missing recording rule, or a stopped scrape)")
        if len(samples) > 1:
            raise ActivityFailed(f"Prometheus query {expr!r} returned {len(samples)} series; "
                                 "aggregate it (e.g. sum(...)) to one value")
        if math.isnan(samples[0].value):
            raise NoData(f"Prometheus query {expr!r} is NaN at {self.url} "
                         "(0/0: no requests in the window)")
        return samples[0].value

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[list[float | None]]:
        """Range query of a one-series expression: ``[[unix_ts, value_or_None], ...]``.

        NaN and ±Inf become ``None`` so the result is plain JSON; an empty result is ``[]``.
        """
        if not (step > 0 and end >= start):
            raise InvalidFaultArgument(f"bad range start={start} end={end} step={step}")
        data = self._get("/api/v1/query_range",
                         {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        result = data.get("result", [])
        if not result:
            return []
        if len(result) > 1:
            raise ActivityFailed(f"Prometheus range query {expr!r} returned {len(result)} series")
        points: list[list[float | None]] = []
        for ts, raw in result[0]["values"]:
            v = _as_float(raw)
            points.append([float(ts), v if math.isfinite(v) else None])
        return points

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            resp = http_get(self.url.rstrip("/") + path, self.timeout_s, params=params)
        except httpx.HTTPError as exc:
            raise ActivityFailed(f"Prometheus at {self.url} unreachable: {exc!r}") from None
        try:
            body = resp.json()
        except ValueError:
            raise ActivityFailed(f"Prometheus at {self.url} answered HTTP {resp.status_code} "
                                 "with a non-JSON body") from None
        if resp.status_code != 200 or body.get("status") != "success":
            error = f"{body.get('errorType', '')} {body.get('error', '')}".strip()
            raise ActivityFailed(f"Prometheus rejected {params.get('query')!r}: "
                                 f"HTTP {resp.status_code} {error}")
        return body["data"]


def prometheus_client_from(configuration: ConfigOrContext) -> PrometheusClient:
    """Client for ``configuration['prometheus_url']``, else the registry's ``prometheus_url``."""
    ctx = activity_context(configuration)
    settings = ctx.settings
    url = (ctx.configuration or {}).get("prometheus_url")
    if not url:
        url = ctx.registry.prometheus_url
    if not url:
        raise ChaosCheckoutError("no Prometheus URL: set configuration 'prometheus_url' or bring "
                                 "a stack up whose registry has 'prometheus_url'")
    return PrometheusClient(str(url), settings.io_timeout_s)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
def _as_float(raw: Any) -> float:
    try:
        return float(raw)  # Prometheus encodes values as strings, incl. "NaN", "+Inf"
    except (TypeError, ValueError):
        raise ActivityFailed(f"Prometheus returned a non-numeric value {raw!r}") from None
