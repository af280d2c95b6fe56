"""The checkout stack as Docker containers, created through the Docker SDK.

    python -m stack.manage up|down|status --runtime docker

Reads ``stack/docker-compose.yml`` (the one definition, which users with compose can also
``docker compose up``) and creates the same containers with the Docker SDK, so no
compose binary is needed: images (cached by a hash of their inputs), one bridge network
owned by the stack, a size-capped tmpfs volume for Postgres, the containers (restart
policy "no"), then the service registry (runtime ``docker``) and the lease reaper as a
host process (it survives a SIGKILLed ``chaos run``). Published ports are the compose
file's, shifted by ``CHAOSCHECKOUT_PORT_BASE - 31100``, on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import psycopg
import yaml

from chaoscheckout.runtime.base import probe_health
from chaoscheckout.runtime.registry import Registry, save_registry
from stack import topology

__all__ = ["COMPOSE_FILE", "COMPOSE_PORT_BASE", "DockerStack", "Spec", "load_compose", "main"]

PROJECT_DIR = Path(__file__).resolve().parent.parent
COMPOSE_FILE = PROJECT_DIR / "stack" / "docker-compose.yml"
COMPOSE_PORT_BASE = 31100
STACK_LABEL = "org.chaoscheckout.stack"
SERVICE_LABEL = "org.chaoscheckout.service"
HASH_LABEL = "org.chaoscheckout.inputs-hash"
STATE_LABEL = "org.chaoscheckout.state-dir"
PASSTHROUGH_SERVICES = ("checkout", "catalog", "payments", "provider")
PROXY_TOKEN = "proxy-control.token"  # compose secret: the fault proxy's control API token
# compose secrets for Postgres: one pgpass line "*:*:*:<role>:<password>" each
PG_SECRETS = {"pg-postgres.pgpass": "postgres", "pg-checkout.pgpass": "checkout_app",
              "pg-probe.pgpass": "checkout_probe"}
API_TIMEOUT_S = float(os.environ.get("CHAOSCHECKOUT_DOCKER_TIMEOUT_S", "30"))
BUILD_TIMEOUT_S = 900
UP_TIMEOUT_S = float(os.environ.get("CHAOSCHECKOUT_UP_TIMEOUT_S", "120"))
CACHE_DIR = Path(os.environ.get("CHAOSCHECKOUT_DOCKER_CACHE", "/var/tmp/chaoscheckout-docker-cache"))
# what each image is built from (besides the base image), for the rebuild-skip hash
IMAGE_INPUTS = {
    "stack/docker/Dockerfile.app": ("chaoscheckout", "stack", "stack/docker/requirements.txt"),
    "stack/docker/Dockerfile.postgres": ("stack/docker/postgres-entrypoint.sh", "stack/schema.sql",
                                           "stack/postgresql.conf", "stack/docker/roles.sql"),
    "stack/docker/Dockerfile.prometheus": ("stack/docker/prometheus.yml", "stack/prometheus/rules.yml"),
}


class DockerStackError(Exception):
    """The docker stack could not be built, started or stopped; one actionable line."""


@dataclass(frozen=True)
class Spec:
    """One compose service, with its published ports already shifted to the port base."""

    service: str
    image: str
    dockerfile: str | None
    command: list[str] | None
    environment: dict[str, str]
    labels: dict[str, str]
    ports: dict[int, int]  # container port -> published 127.0.0.1 port
    volumes: dict[str, str]  # volume key -> container path
    healthcheck: dict[str, Any] | None = None
    depends_on: tuple[str, ...] = field(default_factory=tuple)
    secrets: tuple[str, ...] = ()  # files of <state_dir>/secrets mounted at /run/secrets/<name>

    @property
    def main_port(self) -> int:
        return next(iter(self.ports.values()))


@dataclass(frozen=True)
class Compose:
    specs: list[Spec]
    volumes: dict[str, dict[str, Any]]
    network: str


def load_compose(path: Path = COMPOSE_FILE, port_base: int = COMPOSE_PORT_BASE) -> Compose:
    """Parse the compose file into start-ordered specs; ports shifted to ``port_base``."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DockerStackError(f"cannot read {path}: {exc}") from None
    shift = port_base - COMPOSE_PORT_BASE
    specs = []
    for name, svc in raw["services"].items():
        ports: dict[int, int] = {}
        for item in svc.get("ports", []):
            host_ip, host_port, container_port = str(item).split(":")
            if host_ip != "127.0.0.1":
                raise DockerStackError(f"{path}: {name} publishes {item}: only 127.0.0.1 is allowed")
            ports[int(container_port)] = int(host_port) + shift
        volumes = {}
        for item in svc.get("volumes", []):
            key, _, target = str(item).partition(":")
            volumes[key] = target
        build = svc.get("build") or {}
        env = {k: _substitute(str(v)) for k, v in (svc.get("environment") or {}).items()}
        specs.append(Spec(
            service=name, image=svc["image"], dockerfile=build.get("dockerfile"),
            command=svc.get("command"), environment=env,
            labels={k: str(v) for k, v in (svc.get("labels") or {}).items()},
            ports=ports, volumes=volumes, healthcheck=svc.get("healthcheck"),
            depends_on=tuple(svc.get("depends_on") or ()),
            secrets=tuple(str(x) for x in svc.get("secrets") or ()),
        ))
    networks = list((raw.get("networks") or {"default": {}}).keys())
    return Compose(_start_order(specs), raw.get("volumes") or {}, networks[0])


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
        return self.state_dir / "reaper.pid"

    @property
    def proxy_token_file(self) -> Path:
        """The fault proxy's control token (0600, root): mounted into its container."""
        return self.state_dir / "secrets" / PROXY_TOKEN

    def write_secrets(self) -> list[Path]:
        """Fresh credentials in <state_dir>/secrets (each 0600, root): the fault proxy's
        control token and the three Postgres roles' pgpass files (compose secrets)."""
        secrets_dir = self.state_dir / "secrets"
        secrets_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(secrets_dir, 0o711)
        contents = {PROXY_TOKEN: secrets.token_urlsafe(32)}
        for name, role in PG_SECRETS.items():
            contents[name] = f"*:*:*:{role}:{secrets.token_urlsafe(32)}"
        written = []
        for name, text in contents.items():
            path = secrets_dir / name
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text + "\n")
            written.append(path)
        return written

    def dsn(self, role_secret: str, port: int, dbname: str = "checkout") -> str:
        """A host-side DSN for the role of ``role_secret`` (its pgpass file names the password)."""
        passfile = self.state_dir / "secrets" / role_secret
        return f"postgresql://{PG_SECRETS[role_secret]}@127.0.0.1:{port}/{dbname}?passfile={passfile}"

    # -- up ------------------------------------------------------------------------
    def up(self) -> int:
        started = time.monotonic()
        if self._containers():
            raise DockerStackError(f"docker stack {self.prefix} already has containers: run `down` first")
        _check_state_dir(self.state_dir)
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
                    attach_netns(self.client, entry.process, entry.netns)
                del name
            save_registry(registry, self.registry_file)
            self._start_reaper()
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
        if reaper_pid(self.reaper_pid_file) is not None:
            raise DockerStackError(f"a reaper already runs for {self.state_dir}: detach first")
        _check_state_dir(self.state_dir)
        missing = [n for n in (PROXY_TOKEN, *PG_SECRETS) if not (self.state_dir / "secrets" / n).is_file()]
        if missing:
            raise DockerStackError(
                f"{', '.join(missing)} missing in {self.state_dir / 'secrets'}: the compose stack reads its "
                "credentials there (`python -m stack.docker_stack secrets` before `docker compose up`)")
        for sub in ("logs", "leases"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.state_dir / sub, 0o700)
        self._wait_healthy()
        self._wait_database()
        registry = self.registry()
        for entry in registry.services.values():
            if entry.netns:
                attach_netns(self.client, entry.process, entry.netns)
        save_registry(registry, self.registry_file)
        self._start_reaper()
        self.say(f"attached to {', '.join(sorted(live.values()))}: registry {self.registry_file}")
        return 0

    def detach(self) -> int:
        """Undo ``attach`` (reaper, registry, netns names); the containers stay."""
        self._stop_reaper()
        for spec in self.compose.specs:
            detach_netns(self.netns_name(spec.service))
        self.registry_file.unlink(missing_ok=True)
        self.say(f"detached from {self.prefix}; containers left to `docker compose down -v`")
        return 0

    def build_images(self) -> dict[str, str]:
        """Build every image whose inputs changed; returns image -> 'built'|'cached'."""
        from stack.docker.base_image import ensure_base_image

        base_id = ensure_base_image(self.base_image, say=self.say)
        done: dict[str, str] = {}
        for spec in self.compose.specs:
            if not spec.dockerfile or spec.image in done:
                continue
            digest = self._inputs_hash(spec.dockerfile, base_id)
            old = None
            try:
                old = self.client.images.get(spec.image)
                if old.labels.get(HASH_LABEL) == digest:
                    done[spec.image] = "cached"
                    self.say(f"image {spec.image}: inputs unchanged ({digest[:12]}), not rebuilt")
                    continue
            except docker.errors.ImageNotFound:
                pass
            t0 = time.monotonic()
            self._build(spec, digest)
            if old is not None and old.id != self.client.images.get(spec.image).id:
                try:  # the replaced image, now untagged (kept if a container still uses it)
                    self.client.images.remove(old.id)
                except docker.errors.APIError:
                    pass
            done[spec.image] = "built"
            self.say(f"image {spec.image}: built in {time.monotonic() - t0:.1f}s")
        for spec in self.compose.specs:  # images without a build section must exist
            if spec.image not in done:
                self.client.images.get(spec.image)
        return done

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
        self._stop_reaper()
        removed = []
        for container in containers:
            container.remove(force=True, v=False)
            removed.append(container.name)
        for spec in self.compose.specs:
            detach_netns(self.netns_name(spec.service))
        for key in self.compose.volumes:
            try:
                self.client.volumes.get(self.volume_name(key)).remove(force=True)
            except docker.errors.NotFound:
                pass
        for network in self.client.networks.list(names=[self.network_name]):
            network.remove()
        self.registry_file.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir / "leases", ignore_errors=True)
        for name in (PROXY_TOKEN, *PG_SECRETS):
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
            attach_netns(self.client, entry.process, entry.netns)

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

    def _inputs_hash(self, dockerfile: str, base_id: str) -> str:
        digest = hashlib.sha256(base_id.encode())
        for rel in (dockerfile, *IMAGE_INPUTS.get(dockerfile, ())):
            for path in _files(PROJECT_DIR / rel):
                digest.update(str(path.relative_to(PROJECT_DIR)).encode() + b"\0")
                digest.update(path.read_bytes())
        return digest.hexdigest()

    def _build(self, spec: Spec, digest: str) -> None:
        context = CACHE_DIR / "context"
        shutil.rmtree(context, ignore_errors=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "wheels")
        for top in ("chaoscheckout", "stack"):
            shutil.copytree(PROJECT_DIR / top, context / top, ignore=ignore)
        wheels = context / "stack" / "docker" / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        no_index = "0"
        if spec.dockerfile.endswith("Dockerfile.app"):
            for wheel in self._wheels():
                shutil.copy2(wheel, wheels / wheel.name)
            no_index = "1"
        self.say(f"building {spec.image} from {spec.dockerfile} (base {self.base_image})")
        client = docker.from_env(timeout=BUILD_TIMEOUT_S)
        try:
            client.images.build(
                path=str(context), dockerfile=spec.dockerfile, tag=spec.image, rm=True, forcerm=True,
                buildargs={"BASE_IMAGE": self.base_image, "PIP_NO_INDEX": no_index},
                labels={HASH_LABEL: digest}, network_mode="none", timeout=BUILD_TIMEOUT_S,
            )
        except docker.errors.BuildError as exc:
            tail = " | ".join(str(line.get("stream", line.get("error", ""))).strip()
                              for line in list(exc.build_log)[-5:])
            raise DockerStackError(f"build of {spec.image} failed: {exc.msg}: {tail}") from None
        finally:
            client.close()

    def _wheels(self) -> list[Path]:
        return download_wheels(self.say)

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
            healthcheck=_healthcheck(spec.healthcheck), detach=True,
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

    def _start_reaper(self) -> None:
        log = open(self.state_dir / "logs" / "reaper.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chaoscheckout.faults.reaper", "--state-dir", str(self.state_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=PROJECT_DIR,
                start_new_session=True,
                env={**os.environ, "CHAOSCHECKOUT_STATE_DIR": str(self.state_dir),
                     "CHAOSCHECKOUT_RUNTIME": "docker"},
            )
        finally:
            log.close()
        self.reaper_pid_file.write_text(str(proc.pid))
        self.say(f"  reaper      running  pid {proc.pid} (host process, "
                 f"log {self.state_dir}/logs/reaper.log)")

    def _stop_reaper(self) -> None:
        pid = reaper_pid(self.reaper_pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.reaper_pid_file.unlink(missing_ok=True)


def download_wheels(say: Callable[[str], None] = print) -> list[Path]:
    """Pinned wheels for the app image, downloaded once on the host (the build has no network)."""
    requirements = PROJECT_DIR / "stack" / "docker" / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    cache = CACHE_DIR / f"wheels-{key}"
    if not (cache / ".complete").exists():
        cache.mkdir(parents=True, exist_ok=True)
        say(f"downloading wheels into {cache}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
             "--only-binary=:all:",
             "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
             "-d", str(cache), "-r", str(requirements)],
            check=True, timeout=300, capture_output=True,
        )
        (cache / ".complete").touch()
    return sorted(cache.glob("*.whl"))


def reaper_pid(pid_file: Path) -> int | None:
    """The reaper's pid if the file names a live reaper process, else None."""
    try:
        pid = int(Path(pid_file).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"chaoscheckout.faults.reaper" in cmdline else None


def attach_netns(client: Any, container_name: str, netns: str) -> None:
    """Name the container's network namespace ``netns`` (``ip netns attach``), replacing a stale one."""
    pid = client.containers.get(container_name).attrs["State"]["Pid"]
    if not pid:
        return
    detach_netns(netns)
    subprocess.run(["ip", "netns", "attach", netns, str(pid)], check=True, timeout=10, capture_output=True)


def detach_netns(netns: str) -> None:
    if Path("/run/netns", netns).exists():
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=10, capture_output=True)


def _registered_port_base(state_dir: Path) -> int | None:
    """The port base of the docker stack whose registry is in ``state_dir`` (status/down of a
    stack brought up with another CHAOSCHECKOUT_PORT_BASE than the caller's environment)."""
    try:
        prefix = json.loads((state_dir / "services.json").read_text())["extra"]["docker_stack"]
        return int(str(prefix).removeprefix("cc"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(command: str, state_dir: Path, as_json: bool = False) -> int:
    """``stack.manage <command> --runtime docker``."""
    port_base = int(os.environ.get("CHAOSCHECKOUT_PORT_BASE") or _registered_port_base(state_dir)
                    or COMPOSE_PORT_BASE)
    try:
        stack = DockerStack(state_dir, port_base)
        if command == "up":
            return stack.up()
        if command == "down":
            return stack.down()
        rows = stack.status()
        up = all(r["state"] == "running" for r in rows)
        if as_json:
            print(json.dumps({"up": up, "runtime": "docker", "state_dir": str(state_dir), "services": rows},
                             indent=2))
        else:
            for r in rows:
                print(f"{'ok  ' if r['state'] == 'running' else 'FAIL'} {r['service']:<11} "
                      f"127.0.0.1:{r['port']:<6} {r['state']:<9} {r['container']}")
        return 0 if up else 1
    except (DockerStackError, docker.errors.DockerException, subprocess.SubprocessError) as exc:
        print(f"stack {command} --runtime docker: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def _start_order(specs: list[Spec]) -> list[Spec]:
    by_name = {s.service: s for s in specs}
    done: list[Spec] = []

    def visit(spec: Spec, depth: int = 0) -> None:
        if spec in done or depth > len(specs):
            return
        for dep in spec.depends_on:
            visit(by_name[dep], depth + 1)
        if spec not in done:
            done.append(spec)

    for spec in specs:
        visit(spec)
    return done


def _healthcheck(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    if not raw:
        return None
    return {"test": raw["test"], "interval": _ns(raw.get("interval", "5s")),
            "timeout": _ns(raw.get("timeout", "3s")), "retries": int(raw.get("retries", 3))}


def _ns(value: str) -> int:
    value = str(value)
    if value.endswith("ms"):
        return int(float(value[:-2]) * 1e6)
    return int(float(value.rstrip("s")) * 1e9)


def _check_state_dir(state_dir: Path) -> None:
    from stack import statedir

    try:
        statedir.check(state_dir)
    except statedir.StateDirError as exc:
        raise DockerStackError(str(exc)) from None


def _substitute(value: str) -> str:
    return value  # the compose file uses no variables in environment values


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if child.is_file() and "__pycache__" not in child.parts and "wheels" not in child.parts:
            yield child


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    # `python -m stack.docker_stack wheels`: put the pinned wheels into stack/docker/wheels,
    # for a plain `docker compose build` on a machine whose containers cannot reach PyPI
    # `attach` / `detach`: registry + reaper for a stack started by `docker compose up`
    command = sys.argv[1] if len(sys.argv) == 2 else ""
    if command == "wheels":
        target = PROJECT_DIR / "stack" / "docker" / "wheels"
        for wheel in download_wheels():
            shutil.copy2(wheel, target / wheel.name)
        print(f"wheels in {target}")
    elif command == "secrets":  # before `docker compose up`: the credentials it mounts
        state = Path(os.environ.get("CHAOSCHECKOUT_STATE_DIR", "/var/lib/chaoscheckout"))
        _check_state_dir(state)
        for path in DockerStack(state, int(os.environ.get("CHAOSCHECKOUT_PORT_BASE", COMPOSE_PORT_BASE))) \
                .write_secrets():
            print(path)
    elif command in ("attach", "detach"):
        state = Path(os.environ.get("CHAOSCHECKOUT_STATE_DIR", "/var/lib/chaoscheckout"))
        try:
            stack = DockerStack(state, int(os.environ.get("CHAOSCHECKOUT_PORT_BASE", COMPOSE_PORT_BASE)))
            sys.exit(stack.attach() if command == "attach" else stack.detach())
        except (DockerStackError, docker.errors.DockerException) as exc:
            sys.exit(f"docker stack {command}: error: {str(exc).splitlines()[0]}")
    else:
        sys.exit("usage: python -m stack.docker_stack wheels|secrets|attach|detach   "
                 "(up/down/status: python -m stack.manage ... --runtime docker)")
