"""The fault proxy: a Toxiproxy-style asyncio TCP proxy with a latency toxic.

Run it as ``python -m chaoscheckout.network.proxy --control 127.0.0.1:18150
--route payments=18112:127.0.0.1:18102 [--route ...]``. Each route listens on
127.0.0.1; the control API (see :mod:`.control`) sets and clears the latency toxic and
serves Prometheus metrics.
"""

from chaoscheckout.network.proxy.relay import Route, parse_route
from chaoscheckout.network.proxy.toxic import MAX_DELAY_MS, LatencyToxic, ToxicError, parse_latency

__all__ = ["Route", "parse_route", "LatencyToxic", "ToxicError", "parse_latency", "MAX_DELAY_MS"]
