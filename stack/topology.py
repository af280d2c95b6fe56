"""The stack's topology, described once: its services, their ports, health checks, chaos
targets, proxy routes and metrics; and the one builder of the service registry.

Both runtimes read it: ``stack/layout.py`` renders it as supervisord programs (local),
``stack/docker-compose.yml`` is checked against it by a test (tests/test_stack_topology.py)
and ``stack/docker/prometheus.yml`` is rendered from it (``python -m stack.topology
prometheus``, checked by the same test). Host ports are ``base + offset`` (``PORT_OFFSETS``
of stack/settings.py, plus the docker stack's proxy control port); inside a container a
service listens on its ``CONTAINER_PORTS`` port.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from chaoscheckout.runtime.registry import ProxyRoute, Registry, ServiceEntry
from stack.settings import PORT_OFFSETS

__all__ = ["Service", "SERVICES", "RUNTIMES", "CONTAINER_PORTS", "HOST_OFFSETS", "services",
           "registry", "scrape_targets"]

RUNTIMES = ("local", "docker")
# the docker stack's fault proxy publishes its control API on TCP (locally: a unix socket)
HOST_OFFSETS: dict[str, int] = {**PORT_OFFSETS, "proxy_control": 50}
# the port each service (or proxy route) listens on inside its container
CONTAINER_PORTS: dict[str, int] = {
    "checkout": 8000, "catalog": 8001, "payments": 8002, "provider": 8003,
    "proxy_catalog": 9011, "proxy_payments": 9012, "proxy_provider": 9013, "proxy_control": 9050,
    "postgres": 5432, "prometheus": 9090,
}


@dataclass(frozen=True)
class Service:
    """One service of the stack; ``port_key`` None means it has no TCP port of its own in
    the local stack (the reaper; the fault proxy, whose control API is a unix socket there and
    whose listen ports are its routes')."""

    name: str
    port_key: str | None
    health: str  # "http:/healthz", "http:/-/ready", "postgres", "process", "proxy"
    chaos_target: bool
    module: str | None = None
    proxy: tuple[str, str] | None = None  # (route, listen port key)
    runtimes: tuple[str, ...] = RUNTIMES  # where it runs (docker: as a container)
    control_port_key: str | None = None  # docker only: a TCP control API (with /healthz)
    metrics: bool = False  # scraped by Prometheus
    program: str | None = None  # the local supervisord program behind it (default: name)

    @property
    def program_name(self) -> str:
        return self.program or self.name

    def port_key_in(self, runtime: str) -> str | None:
        """The port key the registry publishes for this service in ``runtime``."""
        return self.port_key or (self.control_port_key if runtime == "docker" else None)


SERVICES: tuple[Service, ...] = (
    Service("postgres", "postgres", "postgres", True),
    Service("prometheus", "prometheus", "http:/-/ready", False, metrics=True),
    Service("faultproxy", None, "proxy", False, "chaoscheckout.network.proxy",
            control_port_key="proxy_control", metrics=True),
    Service("reaper", None, "process", False, "chaoscheckout.faults.reaper",
            runtimes=("local",)),  # the docker stack's reaper is a host process
    Service("provider", "provider", "http:/healthz", True, "stack.services.provider",
            ("provider", "proxy_provider"), metrics=True),
    Service("catalog", "catalog", "http:/healthz", True, "stack.services.catalog",
            ("catalog", "proxy_catalog"), metrics=True),
    Service("payments", "payments", "http:/healthz", True, "stack.services.payments",
            ("payments", "proxy_payments"), metrics=True),
    Service("checkout", "checkout", "http:/healthz", True, "stack.services.checkout", metrics=True),
    Service("remediator", "remediator", "http:/healthz", False, "stack.services.remediator",
            runtimes=("local",), metrics=True),  # it restarts supervisord programs
)


def services(runtime: str) -> tuple[Service, ...]:
    """The services that run in ``runtime`` (``local`` or ``docker``)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    return tuple(s for s in SERVICES if runtime in s.runtimes)


def health_path(svc: Service, runtime: str) -> str | None:
    """The HTTP health path of ``svc`` in ``runtime`` (None: checked another way)."""
    if svc.health.startswith("http:"):
        return svc.health[5:]
    if runtime == "docker" and svc.control_port_key:
        return "/healthz"
    return None


def scrape_targets(runtime: str, port: Callable[[str], int] | None = None) -> dict[str, str]:
    """job -> target of every service Prometheus scrapes in ``runtime``: ``127.0.0.1:<host
    port>`` locally (``port(key)``), ``<service>:<container port>`` on the docker network
    (Prometheus itself: ``127.0.0.1``)."""
    out = {}
    for svc in services(runtime):
        key = svc.port_key_in(runtime)
        if not svc.metrics or key is None:
            continue
        if runtime == "local":
            assert port is not None, "local targets need the port function"
            out[svc.name] = f"127.0.0.1:{port(key)}"
        else:
            host = "127.0.0.1" if svc.name == "prometheus" else svc.name
            out[svc.name] = f"{host}:{CONTAINER_PORTS[key]}"
    return out


def registry(runtime: str, port: Callable[[str], int], *, process: Callable[[str], str],
             data_dir: str, supervisor_url: str | None, proxy_control_url: str,
             database_url: str, database_admin_url: str, state_dir: str,
             netns: Callable[[str], str] | None = None,
             extra: Mapping[str, str] | None = None) -> Registry:
    """The one registry builder: every service of ``runtime`` with a TCP port, on 127.0.0.1.

    ``port(key)`` maps a port key to its host port, ``process(name)`` names what the runtime
    controls (supervisord program, container), ``data_dir`` is Postgres' data location as the
    runtime sees it, ``netns(name)`` the named network namespace of a chaos target (docker).
    """
    entries: dict[str, ServiceEntry] = {}
    for svc in services(runtime):
        key = svc.port_key_in(runtime)
        if key is None:
            continue  # found through supervisord (reaper) or proxy_control_url (local proxy)
        host_port = port(key)
        path = health_path(svc, runtime)
        entries[svc.name] = ServiceEntry(
            name=svc.name, host="127.0.0.1", port=host_port, process=process(svc.name),
            chaos_target=svc.chaos_target,
            health_url=f"http://127.0.0.1:{host_port}{path}" if path else None,
            data_dir=data_dir if svc.name == "postgres" else None,
            netns=netns(svc.name) if netns and svc.chaos_target else None,
            proxy=ProxyRoute(svc.proxy[0], port(svc.proxy[1])) if svc.proxy else None,
        )
    local = "http://127.0.0.1:"
    return Registry(
        runtime=runtime,
        services=entries,
        supervisor_url=supervisor_url,
        prometheus_url=f"{local}{port('prometheus')}",
        proxy_control_url=proxy_control_url,
        extra={
            "database_url": database_url,
            "database_admin_url": database_admin_url,
            "provider_url": f"{local}{port('provider')}",
            "checkout_url": f"{local}{port('checkout')}",
            "catalog_url": f"{local}{port('catalog')}",
            "state_dir": state_dir,
            **(extra or {}),
        },
    )


if __name__ == "__main__":
    import sys

    from stack import prometheus_config

    if sys.argv[1:] != ["prometheus"]:
        sys.exit("usage: python -m stack.topology prometheus   (writes stack/docker/prometheus.yml)")
    print(prometheus_config.write_docker_config())
