"""Probes of the latency domain: what latency fault is live, what latency callers see."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import httpx

from chaoscheckout.context import activity_context
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.network import netem
from chaoscheckout.network.actions import netem_effect, proxy_effect
from chaoscheckout.network.proxy_client import ProxyControl, ProxyUnreachable

__all__ = ["latency_fault", "latency_fault_effect", "measure_latency_ms", "netem_qdisc_stats"]

logger = logging.getLogger("chaostoolkit")

MAX_SAMPLES = 100


def latency_fault(service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Describe the latency fault live on `service`, or return null when there is none.

    Looks at all three places a latency fault can live: the service's latency leases,
    the fault proxy's toxic on its route (if the proxy runs) and netem qdiscs in its
    network namespace (if it has one).

    - `service`: a service of the registry.

    Returns null, or `{service, leases: [fault ids], proxy: <toxic>|null, netem: [qdiscs]}`.
    In a steady-state hypothesis, tolerance `null` means "no latency fault".
    """
    ctx = activity_context(configuration)
    settings, control_url = ctx.settings, ctx.runtime.proxy_control_url
    entry = ctx.runtime.entry(service)
    leases = [lease.fault_id for lease in LeaseStore(settings.leases_dir).for_service(service, "latency")]
    toxic = None
    if entry.proxy is not None and control_url:
        try:
            route = ProxyControl(control_url, settings.io_timeout_s).route(entry.proxy.route)
            toxic = route.get("latency")
        except ProxyUnreachable as exc:
            if not exc.refused:
                raise
    qdiscs = []
    if entry.netns:
        qdiscs = [q.to_dict() for q in netem.show_netem(entry.netns, settings.io_timeout_s)]
    if not (leases or toxic or qdiscs):
        return None
    return {"service": service, "leases": leases, "proxy": toxic, "netem": qdiscs}


def latency_fault_effect(service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """How much traffic the live latency fault on `service` has really slowed so far.

    Evidence that the fault bit: a fault on 30 % of connections can slow far fewer
    requests (a keep-alive pool routes around its slow connection), so read this during
    or at the end of the fault window, e.g. as a probe before the rollback.

    - `service`: a service of the registry.

    Returns null when no latency fault is live, else `{fault_id, backend, scope,
    fraction, chunks_seen, chunks_delayed, delayed_ratio, exchanges_seen,
    exchanges_delayed, exchanges_delayed_ratio, connections_decided, connections_picked,
    set_at, reason}`, counted by the fault proxy since the fault was set. A chunk is one
    read of request-direction bytes; `chunks_delayed` includes chunks held behind a
    delayed one. An exchange starts with the first chunk after the service answered, so
    for HTTP `exchanges_delayed_ratio` is the share of requests delayed; `delayed_ratio`
    is chunks_delayed / chunks_seen. Ratios are null before any traffic. For netem the
    counts are null, `reason` says why, and `netem_stats` holds the qdiscs' `tc -s`
    packet counts. `remove_latency` returns the same dict with the final counts.
    """
    ctx = activity_context(configuration)
    settings, control_url = ctx.settings, ctx.runtime.proxy_control_url
    entry = ctx.runtime.entry(service)
    if entry.proxy is not None and control_url:
        try:
            toxic = ProxyControl(control_url, settings.io_timeout_s).latency(entry.proxy.route)
        except ProxyUnreachable as exc:
            if not exc.refused:
                raise
            toxic = None
        if toxic is not None:
            return proxy_effect(toxic)
    if entry.netns and netem.show_netem(entry.netns, settings.io_timeout_s):
        leases = LeaseStore(settings.leases_dir).for_service(service, "latency")
        params = {**leases[0].params, "fault_id": leases[0].fault_id} if leases else {}
        return netem_effect(netem.netem_stats(entry.netns, settings.io_timeout_s), params)
    return None


def measure_latency_ms(
    service: str,
    samples: int = 5,
    path: str = "/healthz",
    via_proxy: bool = True,
    configuration: dict[str, Any] | None = None,
) -> float:
    """Median time in milliseconds of `samples` HTTP GETs of `path` on `service`, each on a
    new connection (so a fraction-limited fault is sampled across connections).

    - `service`: a service of the registry.
    - `samples`: number of requests, 1 to 100 (bounded).
    - `path`: the path to GET (default `/healthz`).
    - `via_proxy`: go through the service's fault-proxy route as its callers do (default),
      or straight to the service.

    Returns the median in ms. Any failed request fails the probe; each request's timeout
    is the configured I/O timeout plus the largest delay a fault may add (60 s).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise InvalidFaultArgument(f"samples must be an integer in [1, {MAX_SAMPLES}], got {samples!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidFaultArgument(f"path must start with '/', got {path!r}")
    ctx = activity_context(configuration)
    settings = ctx.settings
    entry = ctx.runtime.entry(service)
    port = entry.proxy.listen_port if via_proxy and entry.proxy else entry.port
    host = "127.0.0.1" if via_proxy and entry.proxy else entry.host
    url = f"http://{host}:{port}{path}"
    timeout = settings.io_timeout_s + 60.0
    times = []
    # one client; "Connection: close" still gives every sample a fresh connection
    with httpx.Client(timeout=timeout, headers={"Connection": "close"}) as client:
        for _ in range(samples):
            start = time.perf_counter()
            try:
                client.get(url).raise_for_status()
            except httpx.HTTPError as exc:
                raise ChaosCheckoutError(f"GET {url} failed: {exc!r}") from None
            times.append((time.perf_counter() - start) * 1000.0)
    median = statistics.median(times)
    logger.info("latency of %s via %s: median %.1f ms over %d", service, url, median, samples)
    return round(median, 3)


def netem_qdisc_stats(service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """The qdiscs of `service`'s network namespace with the kernel's own `tc -s` counters,
    read on the host where the service runs (over ssh for a service with a `remote` entry).

    Evidence that a netem latency fault bit: read it before the fault, at the end of the
    fault window and after the rollback; the netem qdisc's `packets`/`bytes` grow while it
    delays the service's traffic, and it is gone after the rollback.

    - `service`: a service of the registry.

    Returns `{service, host, netns, netem: bool, qdiscs: [{device, kind, handle, root,
    bytes, packets, drops, overlimits, requeues, backlog, qlen, options}], reason,
    measured_at}` (`options` for netem: its delay and jitter). Fails when the counters
    cannot be read (ssh or tc failure).
    """
    from chaoscheckout.network.qdisc_stats import entry_qdisc_stats

    entry = activity_context(configuration).runtime.entry(service)
    if entry.remote is None:
        return {**entry_qdisc_stats(entry), "host": "local"}
    return {**_remote_qdisc_stats(entry.remote), "service": service,
            "host": f"{entry.remote.ssh_host}:{entry.remote.ssh_port}"}


def _remote_qdisc_stats(spec: Any) -> dict[str, Any]:
    from chaoscheckout.runtime.ssh import SshError, run_remote

    command = [spec.python, "-m", "chaoscheckout.network.qdisc_stats", "--state-dir", spec.state_dir,
               "--service", spec.service]
    result = run_remote(spec, command, "qdisc_stats")
    if not isinstance(result, dict):
        raise SshError(f"ssh to {spec.user}@{spec.ssh_host}:{spec.ssh_port}: qdisc_stats answered "
                       f"{result!r}, not the qdiscs")
    return result
