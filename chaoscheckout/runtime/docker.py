"""The docker runtime: services are containers, driven through the Docker SDK.

Select it with ``CHAOSCHECKOUT_RUNTIME=docker`` (or the registry's ``runtime: docker``,
which ``stack up --runtime docker`` writes). The registry entry's ``process`` is the
container name, ``data_dir`` a path inside the container that must be a volume mount,
``netns`` a name under /run/netns bound to the container's network namespace.

Only containers labelled ``org.chaoscheckout.target=true`` are ever killed, slowed,
filled, started or released: the label is checked on the live container, on top of the
registry's ``chaos_target``, for every action and every revert that goes through the
runtime or the registry (:func:`check_container_target`, called by
``Registry.target`` for a docker registry whatever ``chaoscheckout_runtime`` says), so a
registry that lists some other container is refused. When the entry names a ``netns``,
``/run/netns/<netns>`` must be that container's own network namespace (same nsfs inode
as ``/proc/<pid>/ns/net``), so netem never lands in another container's namespace.
Every Docker API call has a timeout (``chaoscheckout_io_timeout_s``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from chaoscheckout.config import Settings
from chaoscheckout.errors import BackendUnavailable, ChaosCheckoutError, InvalidFaultArgument, TargetRefused
from chaoscheckout.runtime import netns as netns_names
from chaoscheckout.runtime.base import KillResult, Runtime, StartResult
from chaoscheckout.runtime.registry import Registry, ServiceEntry

try:
    import docker
    import docker.errors
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(f"the docker runtime needs the `docker` package (pip install docker): {exc}") from None

__all__ = ["DockerRuntime", "TARGET_LABEL", "check_container_target"]

logger = logging.getLogger("chaostoolkit")

TARGET_LABEL = "org.chaoscheckout.target"
DOWN_STATES = ("exited", "dead", "created")


def check_container_target(entry: ServiceEntry, timeout_s: float = 5.0, client: Any = None,
                           check_netns: bool = True) -> None:
    """Raise TargetRefused unless ``entry``'s container carries the target label and, when
    the entry names a netns that is attached (and ``check_netns``), that netns is the
    container's own."""
    try:
        client = client or docker.from_env(timeout=max(10, int(timeout_s)))
        container = client.containers.get(entry.process)
    except docker.errors.NotFound:
        raise ChaosCheckoutError(
            f"container {entry.process!r} of service {entry.name!r} does not exist (is the docker stack up?)"
        ) from None
    except docker.errors.DockerException as exc:
        raise BackendUnavailable(f"docker runtime: {exc}") from None
    if (container.labels or {}).get(TARGET_LABEL) != "true":
        raise TargetRefused(
            f"container {container.name!r} of service {entry.name!r} is not labelled "
            f"{TARGET_LABEL}=true: the docker runtime refuses to touch it"
        )
    pid = (container.attrs.get("State") or {}).get("Pid")
    # a name not attached (yet) is fine: nothing can be done in it
    if check_netns and entry.netns and pid and netns_names.is_own(entry.netns, pid) is False:
        raise TargetRefused(
            f"/run/netns/{entry.netns} is not the network namespace of container {container.name!r}: "
            "refusing to act on another namespace"
        )


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, registry: Registry, settings: Settings) -> None:
        super().__init__(registry, settings)
        try:
            self.client = docker.from_env(timeout=max(10, int(settings.io_timeout_s)))
        except docker.errors.DockerException as exc:
            raise BackendUnavailable(f"docker runtime: no Docker engine reachable: {exc}") from None

    # -- resolution ------------------------------------------------------------------
    def container(self, service: str) -> Any:
        """The live container of a registry service (ChaosCheckoutError when it is gone)."""
        entry = self.entry(service)
        try:
            return self.client.containers.get(entry.process)
        except docker.errors.NotFound:
            raise ChaosCheckoutError(
                f"container {entry.process!r} of service {service!r} does not exist (is the docker stack up?)"
            ) from None
        except docker.errors.DockerException as exc:
            raise BackendUnavailable(f"docker runtime: {exc}") from None

    def target(self, service: str) -> ServiceEntry:
        """An allowed chaos target: in the registry AND its container carries the target
        label (and a named netns is the container's own)."""
        entry = self.registry.target(service, check_container=False)
        check_container_target(entry, self.settings.io_timeout_s, self.client)
        return entry

    def data_dir(self, service: str) -> Path:
        """The host path of the volume mounted at the entry's ``data_dir`` in the container.

        Refused unless that path is exactly a volume mount point (a bind mount or a
        directory of the container's own filesystem is never filled).
        """
        entry = self.target(service)  # filled and released only on a labelled container
        if not entry.data_dir:
            raise InvalidFaultArgument(f"service {service!r} has no data_dir in the service registry")
        container = self.container(service)
        inside = str(Path("/", entry.data_dir))
        for mount in container.attrs.get("Mounts", []):
            if mount.get("Destination") == inside:
                if mount.get("Type") != "volume" or not mount.get("Source"):
                    raise InvalidFaultArgument(
                        f"{inside} in {container.name!r} is a {mount.get('Type')} mount: only a volume "
                        "of the stack is filled"
                    )
                path = Path(mount["Source"])
                if not path.is_dir():
                    raise ChaosCheckoutError(
                        f"volume of {container.name!r} at {path} is not visible here: the docker runtime "
                        "fills data volumes from the Docker host"
                    )
                return path
        raise InvalidFaultArgument(f"container {container.name!r} has no volume mounted at {inside}")

    # -- the interface -----------------------------------------------------------------
    def pid(self, service: str) -> int | None:
        state = self._state(self.container(service))
        return int(state["Pid"]) if state.get("Running") and state.get("Pid") else None

    def kill(self, service: str, timeout_s: float = 10.0) -> KillResult:
        self.target(service)
        container = self.container(service)
        policy = (container.attrs.get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no"
        if policy != "no":
            raise InvalidFaultArgument(
                f"container {container.name!r} has restart policy {policy!r}: a killed container would "
                "come back by itself; give it restart policy \"no\""
            )
        state = self._state(container)
        if not state.get("Running"):
            raise ChaosCheckoutError(f"service {service!r} is not running: nothing to kill")
        pid = int(state["Pid"])
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            container.kill(signal="SIGKILL")
        except docker.errors.APIError as exc:
            raise ChaosCheckoutError(f"docker kill {container.name}: {exc.explanation or exc}") from None
        while time.monotonic() < deadline:
            if not self._state(container).get("Running") and not self.is_healthy(service, timeout_s=0.2):
                return KillResult(service, pid, time.monotonic() - started)
            time.sleep(0.05)
        raise ChaosCheckoutError(f"container {container.name!r} still up {timeout_s:g} s after SIGKILL")

    def start(self, service: str, timeout_s: float = 30.0) -> StartResult:
        # the revert of a kill: only a labelled container. Its netns name is checked after
        # the start instead: a container started again by someone else (or by a reverter
        # that died before re-attaching) leaves the name on the dead namespace, and a
        # refusal here would fail this revert forever; re-pointing it is this method's job.
        logger.debug("docker start %s: begins (monotonic %.3f)", service, time.monotonic())
        entry = self.registry.target(service, check_container=False)
        check_container_target(entry, self.settings.io_timeout_s, self.client, check_netns=False)
        container = self.container(service)
        started = False
        if not self._state(container).get("Running"):
            logger.debug("docker start %s: start request (monotonic %.3f)", service, time.monotonic())
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise ChaosCheckoutError(f"docker start {container.name}: {exc.explanation or exc}") from None
            started = True
            logger.debug("docker start %s: start returned (monotonic %.3f)", service, time.monotonic())
        waited = self.wait_healthy(service, timeout_s)
        logger.debug("docker start %s: healthy after %.3f s (monotonic %.3f)", service, waited,
                     time.monotonic())
        if entry.netns and (started or not self._netns_is_own(container, entry.netns)):
            self._attach_netns(container, entry.netns)
        return StartResult(service, started, waited, self.pid(service))

    def describe(self, service: str) -> dict[str, Any]:
        entry = self.entry(service)
        container = self.container(service)
        state = self._state(container)
        return {
            "service": service,
            "runtime": self.name,
            "container": container.name,
            "state": state.get("Status"),
            "pid": state.get("Pid") or None,
            "address": entry.address,
            "chaos_target": entry.chaos_target and (container.labels or {}).get(TARGET_LABEL) == "true",
        }


###############################################################################
# Internals
###############################################################################
    def _state(self, container: Any) -> dict[str, Any]:
        try:
            container.reload()
        except docker.errors.NotFound:
            raise ChaosCheckoutError(f"container {container.name!r} was removed") from None
        return container.attrs.get("State", {})

    def _netns_is_own(self, container: Any, netns: str) -> bool:
        pid = self._state(container).get("Pid")
        if not pid:
            return True  # not running: nothing to point at
        return bool(netns_names.is_own(netns, pid))  # running and unnamed: attach

    def _attach_netns(self, container: Any, netns: str) -> None:
        """Re-point /run/netns/<netns> at the restarted container (netem follows the container)."""
        pid = self._state(container).get("Pid")
        if not pid:
            return
        try:
            netns_names.attach(netns, pid, self.settings.io_timeout_s)
        except netns_names.NetnsError as exc:
            logger.warning("could not name the netns of %s %r: %s", container.name, netns, exc)
