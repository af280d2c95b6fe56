"""Network faults: latency on the path to a service (fault proxy or tc netem).

- ``actions``: ``add_latency`` / ``remove_latency`` (and the lease reverter).
- ``probes``: ``latency_fault`` (what is live), ``latency_fault_effect`` (what it slowed) and
  ``measure_latency_ms`` (what callers see).
- ``proxy``: the Toxiproxy-style TCP fault proxy (``python -m chaoscheckout.network.proxy``).
- ``proxy_client``: a small client for the proxy's HTTP control API.
- ``netem``: the tc netem backend (network namespaces, kernel check).
"""
