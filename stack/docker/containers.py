"""The checkout stack as Docker containers, created through the Docker SDK.

    python -m stack.manage up|down|status|attach|detach --runtime docker

Creates the containers of ``stack/docker-compose.yml`` (parsed by stack/docker/compose.py;
users with compose can also ``docker compose up`` it) with the Docker SDK, so no compose
binary is needed: images (stack/docker/images.py), one bridge network owned by the stack, a
size-capped tmpfs volume for Postgres, the containers (restart policy "no"), then the service
registry (runtime ``docker``, built by stack/topology.py) and the lease reaper as a host
process (stack/docker/host.py). Published ports are the compose file's, shifted by
``CHAOSCHECKOUT_PORT_BASE - 31100``, on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import psycopg

from chaoscheckout.runtime.base import probe_health
from chaoscheckout.runtime.registry import Registry, save_registry
from stack import topology
from stack.docker import credentials, host, images
from stack.docker.compose import (
    COMPOSE_FILE,
    COMPOSE_PORT_BASE,
    SERVICE_LABEL,
    STACK_LABEL,
    STATE_LABEL,
    DockerStackError,
    Spec,
    healthcheck,
    load_compose,
)

__all__ = ["DockerStack"]

PASSTHROUGH_SERVICES = ("checkout", "catalog", "payments", "provider")
API_TIMEOUT_S = float(os.environ.get("CHAOSCHECKOUT_DOCKER_TIMEOUT_S", "30"))
UP_TIMEOUT_S = float(os.environ.get("CHAOSCHECKOUT_UP_TIMEOUT_S", "120"))


class DockerStack:
    """One docker stack: named ``cc<port_base>``, state in ``state_dir``."""

    def __init__(self, state_dir: Path, port_base: int = COMPOSE_PORT_BASE,
                 compose_file: Path = COMPOSE_FILE, say: Callable[[str], None] = print) -> None:
        self.state_dir = Path(state_dir)
        self.port_base = int(port_base)
        self.prefix = f"cc{self.port_base}"
        self.compose = load_compose(compose_file, self.port_base)
        self.say = say
        self.base_image = os.environ.get("CHAOSCHECKOUT_BASE_IMAGE", "chaoscheckout/base:bookworm")
        self.network_name = f"{self.prefix}-{self.compose.network}"
        try:
            self.client = docker.from_env(timeout=API_TIMEOUT_S)
            self.client.ping()
        except docker.errors.DockerException as exc:
            raise DockerStackError(f"no Docker engine reachable: {exc}") from None

    # -- names ---------------------------------------------------------------------
    def container_name(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    def volume_name(self, key: str) -> str:
        return f"{self.prefix}-{key}"

    def netns_name(self, service: str) -> str:
        return f"{self.prefix}-{service}"

    @property
    def registry_file(self) -> Path:
        return self.state_dir / "services.json"

    @property
    def reaper_pid_file(self) -> Path:
        return host.reaper_pid_file(self.state_dir)

    @property
    def proxy_token_file(self) -> Path:
        """The fault proxy's control token (0600, root): mounted into its container."""
        return credentials.proxy_token_file(self.state_dir)

    def write_secrets(self) -> list[Path]:
        """Fresh credentials in <state_dir>/secrets (stack/docker/credentials.py)."""
        return credentials.write_secrets(self.state_dir)

    def dsn(self, role_secret: str, port: int, dbname: str = "checkout") -> str:
        return credentials.dsn(self.state_dir, role_secret, port, dbname)

    def build_images(self) -> dict[str, str]:
        """Build every image whose inputs changed (stack/docker/images.py)."""
        return images.build_images(self.client, self.compose.specs, self.base_image, self.say)

    # -- up ------------------------------------------------------------------------
    def up(self) -> int:
        started = time.monotonic()
        if self._containers():
            raise DockerStackError(f"docker stack {self.prefix} already has containers: run `down` first")
        host.check_state_dir(self.state_dir)
        for sub in ("logs", "leases"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.state_dir / sub, 0o700)
        os.chmod(self.state_dir, 0o755)
        try:
            self.write_secrets()
            self.build_images()
            self._create_network()
            self._create_volumes()
            for spec in self.compose.specs:
                self._run(spec)
            self._wait_healthy()
            self._wait_database()
            registry = self.registry()
            for name, entry in registry.services.items():
                if entry.netns:
                    host.attach_netns(self.client, entry.process, entry.netns)
                del name
            save_registry(registry, self.registry_file)
            host.start_reaper(self.state_dir, self.say)
        except BaseException as exc:
            self.say(f"up failed ({exc}); tearing down what was started")
            self.down(quiet=True)
            if isinstance(exc, DockerStackError | KeyboardInterrupt):
                raise
            raise DockerStackError(f"{type(exc).__name__}: {exc}") from None
        self.say(f"docker stack {self.prefix} up in {time.monotonic() - started:.1f}s: checkout "
                 f"{registry.extra['checkout_url']}  prometheus {registry.prometheus_url}  "
                 f"registry {self.registry_file}")
        return 0

    def attach(self) -> int:
        """Adopt a stack started by ``docker compose up``: registry, netns names, reaper."""
        live = self._live_names()
        missing = [s.service for s in self.compose.specs if s.service not in live]
        if missing:
            raise DockerStackError(f"no running container labelled {STACK_LABEL}={self.prefix} for: "
                                   f"{', '.join(missing)} (is the compose stack up?)")
        if host.reaper_pid(self.reaper_pid_file) is not None:
            raise DockerStackError(f"a reaper already runs for {self.state_dir}: detach first")
        host.check_state_dir(self.state_dir)
        missing = [n for n in (credentials.PROXY_TOKEN, *credentials.PG_SECRETS)
                   if not (self.state_dir / "secrets" / n).is_file()]
        if missing:
            raise DockerStackError(
                f"{', '.join(missing)} missing in {self.state_dir / 'secrets'}: the compose stack reads its "
                "credentials there (`chaoscheckout stack secrets` before `docker compose up`)")
        for sub in ("logs", "leases"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.state_dir / sub, 0o700)
        self._wait_healthy()
        self._wait_database()
        registry = self.registry()
        for entry in registry.services.values():
            if entry.netns:
                host.attach_netns(self.client, entry.process, entry.netns)
        save_registry(registry, self.registry_file)
        host.start_reaper(self.state_dir, self.say)
        self.say(f"attached to {', '.join(sorted(live.values()))}: registry {self.registry_file}")
        return 0

    def detach(self) -> int:
        """Undo ``attach`` (reaper, registry, netns names); the containers stay."""
        host.stop_reaper(self.state_dir)
        for spec in self.compose.specs:
            host.detach_netns(self.netns_name(spec.service))
        self.registry_file.unlink(missing_ok=True)
        self.say(f"detached from {self.prefix}; containers left to `docker compose down -v`")
        return 0

    def registry(self) -> Registry:
        """The service registry of the running stack (runtime ``docker``; stack/topology.py
        builds it, with the compose file's published ports)."""
        published = {cport: hport for spec in self.compose.specs for cport, hport in spec.ports.items()}
        live = self._live_names()
        postgres = next(s for s in self.compose.specs if s.service == "postgres")
        return topology.registry(
            "docker", lambda key: published[topology.CONTAINER_PORTS[key]],
            process=lambda name: live.get(name, self.container_name(name)),
            data_dir=postgres.labels["org.chaoscheckout.data-dir"], supervisor_url=None,
            proxy_control_url=f"http://127.0.0.1:{published[topology.CONTAINER_PORTS['proxy_control']]}"
                              f"#token_file={self.proxy_token_file}",
            database_url=self.dsn("pg-probe.pgpass", published[topology.CONTAINER_PORTS["postgres"]]),
            database_admin_url=self.dsn("pg-postgres.pgpass", published[topology.CONTAINER_PORTS["postgres"]],
                                        "postgres"),
            state_dir=str(self.state_dir), netns=self.netns_name,
            extra={"docker_stack": self.prefix, "docker_network": self.network_name},
        )

    # -- down / status ---------------------------------------------------------------
    def down(self, quiet: bool = False, force: bool = False) -> int:
        """Remove the stack's containers, netns names, volume, network, registry and reaper.

        Containers of the same name prefix that another state dir (or ``docker compose``)
        created are refused, unless ``force``: two stacks on one port base never remove
        each other's containers by accident.
        """
        containers = self._containers()
        foreign = sorted(c.name for c in containers
                         if (c.labels or {}).get(STATE_LABEL) != str(self.state_dir))
        if foreign and not force:
            raise DockerStackError(
                f"containers {', '.join(foreign)} belong to another stack state dir (or to docker compose), "
                f"not {self.state_dir}: not removing them (force=True removes them)"
            )
        host.stop_reaper(self.state_dir)
        removed = []
        for container in containers:
            container.remove(force=True, v=False)
            removed.append(container.name)
        for spec in self.compose.specs:
            host.detach_netns(self.netns_name(spec.service))
        for key in self.compose.volumes:
            try:
                self.client.volumes.get(self.volume_name(key)).remove(force=True)
            except docker.errors.NotFound:
                pass
        for network in self.client.networks.list(names=[self.network_name]):
            network.remove()
        self.registry_file.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir / "leases", ignore_errors=True)
        for name in (credentials.PROXY_TOKEN, *credentials.PG_SECRETS):
            (self.state_dir / "secrets" / name).unlink(missing_ok=True)
        if not quiet:
            self.say(f"docker stack {self.prefix} down: removed {len(removed)} container(s), "
                     "its network and volume")
        return 0

    def recreate(self, service: str, env: dict[str, str] | None = None) -> None:
        """Replace one container (same spec) with ``env`` added to its environment, wait healthy.

        E.g. ``recreate("checkout", {"CHECKOUT_RESILIENCE": "0"})`` runs the first-version
        checkout; the compose file's own ports and URLs still win.
        """
        spec = next((s for s in self.compose.specs if s.service == service), None)
        if spec is None:
            raise DockerStackError(f"no service {service!r} in {COMPOSE_FILE}")
        try:
            self.client.containers.get(self.container_name(service)).remove(force=True)
        except docker.errors.NotFound:
            pass
        self._run(spec, env or {})
        entry = self.registry().services[service]
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not probe_health(entry, 1.0):
            if time.monotonic() > deadline:
                raise DockerStackError(f"{service} not healthy {UP_TIMEOUT_S:.0f}s after recreate")
            time.sleep(0.3)
        if entry.netns:
            host.attach_netns(self.client, entry.process, entry.netns)

    def status(self) -> list[dict[str, Any]]:
        by_name = {c.name: c for c in self._containers()}
        out = []
        for spec in self.compose.specs:
            container = by_name.get(self.container_name(spec.service))
            out.append({"service": spec.service, "container": self.container_name(spec.service),
                        "state": container.status if container else "absent",
                        "port": spec.main_port})
        return out

    # -- internals -------------------------------------------------------------------
    def _containers(self) -> list[Any]:
        return self.client.containers.list(all=True, filters={"label": f"{STACK_LABEL}={self.prefix}"})

    def _live_names(self) -> dict[str, str]:
        """service -> name of its container (ours: cc<base>-<service>; compose: <project>_<service>_1)."""
        return {c.labels[SERVICE_LABEL]: c.name for c in self._containers() if SERVICE_LABEL in c.labels}

    def _create_network(self) -> None:
        if not self.client.networks.list(names=[self.network_name]):
            self.client.networks.create(self.network_name, driver="bridge",
                                        labels={STACK_LABEL: self.prefix})

    def _create_volumes(self) -> None:
        for key, conf in self.compose.volumes.items():
            conf = conf or {}
            self.client.volumes.create(self.volume_name(key), driver=conf.get("driver", "local"),
                                       driver_opts=conf.get("driver_opts") or {},
                                       labels={STACK_LABEL: self.prefix})

    def _run(self, spec: Spec, extra_env: dict[str, str] | None = None) -> None:
        api = self.client.api
        # like the local stack: CHECKOUT_*/CATALOG_*/... settings of the caller reach that
        # service; the compose file's ports and URLs always win
        prefix = f"{spec.service.upper()}_"
        passthrough = {k: v for k, v in os.environ.items() if k.startswith(prefix)} \
            if spec.service in PASSTHROUGH_SERVICES else {}
        environment = {**passthrough, **(extra_env or {}), **spec.environment}
        labels = {**spec.labels, STACK_LABEL: self.prefix, SERVICE_LABEL: spec.service,
                  STATE_LABEL: str(self.state_dir)}
        host_config = api.create_host_config(
            port_bindings={cport: ("127.0.0.1", hport) for cport, hport in spec.ports.items()},
            mounts=[docker.types.Mount(target, self.volume_name(key), type="volume")
                    for key, target in spec.volumes.items()]
            + [docker.types.Mount(f"/run/secrets/{name}", str(self.state_dir / "secrets" / name),
                                  type="bind", read_only=True) for name in spec.secrets],
            restart_policy={"Name": "no"},
        )
        networking = api.create_networking_config(
            {self.network_name: api.create_endpoint_config(aliases=[spec.service])}
        )
        created = api.create_container(
            spec.image, command=spec.command, name=self.container_name(spec.service),
            hostname=spec.service, environment=environment, labels=labels,
            ports=list(spec.ports), host_config=host_config, networking_config=networking,
            healthcheck=healthcheck(spec.healthcheck), detach=True,
        )
        api.start(created["Id"])

    def _wait_healthy(self) -> None:
        registry = self.registry()
        deadline = time.monotonic() + UP_TIMEOUT_S
        pending = dict(registry.services)
        while pending:
            for name, entry in list(pending.items()):
                if probe_health(entry, 1.0):
                    self.say(f"  {name:<11} healthy  {entry.address}")
                    del pending[name]
                    continue
                container = self.client.containers.get(entry.process)
                if container.status in ("exited", "dead"):
                    logs = container.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
                    raise DockerStackError(f"container {entry.process} exited during start: {logs}")
            if pending and time.monotonic() > deadline:
                raise DockerStackError(f"not healthy after {UP_TIMEOUT_S:.0f}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.5)

    def _wait_database(self) -> None:
        dsn = self.registry().extra["database_url"]
        deadline = time.monotonic() + UP_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=3) as conn:
                    conn.execute("SET statement_timeout = '5s'")
                    conn.execute("SELECT count(*) FROM orders").fetchone()
                return
            except psycopg.Error as exc:
                if time.monotonic() > deadline:
                    raise DockerStackError(f"database checkout not ready: {exc}") from None
                time.sleep(0.5)
