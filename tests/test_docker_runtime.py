"""The docker runtime against a real Docker engine (issue 6).

Installs the engine (Debian ``docker.io``) and starts ``dockerd`` when needed (skipped,
with the reason, only if it truly cannot start), builds the images (cached by a hash of
their inputs), brings the compose stack up through the Docker SDK on port base
``CHAOSCHECKOUT_DOCKER_TEST_PORT_BASE`` (default 31100), then: kill/start through the
SDK, refusal of an unlabelled container, a SIGKILLed run's faults reverted by the host
reaper at expiry, and the three experiments through ``run_experiments`` with the docker
runtime (the fixed checkout must hold, no fault left). Tears down containers, network
and volume. About 8 minutes, most of it the three real experiment windows.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

docker = pytest.importorskip("docker")

from chaoscheckout.disk.actions import fill_disk, release_disk  # noqa: E402
from chaoscheckout.disk.ballast import BALLAST_NAME  # noqa: E402
from chaoscheckout.errors import InvalidFaultArgument, TargetRefused  # noqa: E402
from chaoscheckout.faults.leases import LeaseStore  # noqa: E402
from chaoscheckout.network.actions import add_latency  # noqa: E402
from chaoscheckout.network.proxy_client import ProxyControl  # noqa: E402
from chaoscheckout.runner import run_experiments  # noqa: E402
from chaoscheckout.runtime import get_runtime  # noqa: E402
from chaoscheckout.runtime.registry import ProxyRoute, ServiceEntry, load_registry, save_registry  # noqa: E402
from chaoscheckout.service.actions import kill_service, start_service  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PORT_BASE = int(os.environ.get("CHAOSCHECKOUT_DOCKER_TEST_PORT_BASE", "31100"))
# one state dir per docker port base, as the port lock: two runs with other bases never share it
STATE_DIR = Path(os.environ.get("CHAOSCHECKOUT_TEST_STATE_DIR",
                                f"/var/tmp/chaoscheckout-docker-test-{PORT_BASE}")) / "docker"
DOCKERD_LOG = Path("/var/tmp/chaoscheckout-dockerd.log")
INTRUDER = f"cc{PORT_BASE}-intruder-test"
LOCK_WAIT_S = 1200


def _require_tool(command: str) -> None:
    """Install steps live in the Makefile (`make setup-test-tools`, run by `make test`)."""
    if shutil.which(command) is None:
        pytest.fail(f"{command} is not installed: run `make setup-test-tools` (part of `make test`)")


def _ping(timeout: int = 5) -> bool:
    try:
        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


@pytest.fixture(scope="module")
def port_lock() -> Iterator[None]:
    """One docker test run per port base at a time (a second run waits, bounded): the
    compose file's label and the published ports are shared by every run on this base."""
    path = Path(f"/var/tmp/chaoscheckout-docker-test-{PORT_BASE}.lock")
    with open(path, "a") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another docker test run holds {path} for more than {LOCK_WAIT_S} s")
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def engine(port_lock) -> Iterator[None]:
    """A running Docker engine: installed and started here if needed.

    A dockerd started here is left running (like the system service it normally is): other
    runs on other port bases may be using it.
    """
    started = None
    if not _ping():
        if shutil.which("dockerd") is None:
            _require_tool("dockerd")
        with open(DOCKERD_LOG, "ab") as log:
            started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not _ping() and time.monotonic() < deadline:
            if started.poll() is not None:
                pytest.skip(f"dockerd exited with {started.returncode}; see {DOCKERD_LOG}")
            time.sleep(0.5)
        if not _ping():
            started.terminate()
            pytest.skip(f"dockerd did not answer within 60 s; see {DOCKERD_LOG}")
    if started is not None:
        print(f"\nstarted dockerd (pid {started.pid}, log {DOCKERD_LOG}); it stays up")
    yield


@pytest.fixture(scope="module")
def dstack(engine) -> Iterator[dict[str, str]]:
    """The compose stack, up through the SDK; yields the env pointing at its state dir."""
    from stack.docker.compose import STACK_LABEL
    from stack.docker.containers import DockerStack

    os.environ.setdefault("PYTHONPATH", str(ROOT))
    _require_tool("debootstrap")  # builds the local base image (no registry here)
    stack = DockerStack(STATE_DIR, PORT_BASE, say=lambda line: print(line, flush=True))
    stack.down(quiet=True, force=True)  # left over by an interrupted run (we hold the port lock)
    first = stack.build_images()
    again = stack.build_images()
    print(f"\nimages: first pass {first}, second pass {again}")
    assert set(again.values()) == {"cached"}, "unchanged inputs must not rebuild"
    stack.up()
    env = {"CHAOSCHECKOUT_STATE_DIR": str(STATE_DIR), "CHAOSCHECKOUT_RUNTIME": "docker",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    try:
        yield env
    finally:
        _remove_intruder()
        stack.down()
        client = docker.from_env(timeout=30)
        label = {"label": f"{STACK_LABEL}={stack.prefix}"}
        assert client.containers.list(all=True, filters=label) == []
        assert client.networks.list(filters=label) == []
        assert client.volumes.list(filters=label) == []
        assert not (STATE_DIR / "services.json").exists()
        client.close()


def _config(state_dir: Path = STATE_DIR) -> dict[str, str]:
    return {"chaoscheckout_state_dir": str(state_dir), "chaoscheckout_runtime": "docker"}


def _container(name: str):
    client = docker.from_env(timeout=30)
    try:
        container = client.containers.get(name)
        container.reload()
        return container
    finally:
        client.close()


def _no_fault_left() -> None:
    assert LeaseStore(STATE_DIR / "leases").live() == []
    registry = load_registry(STATE_DIR / "services.json")
    for name, entry in registry.services.items():
        assert _container(entry.process).status == "running", name
    ballast = get_runtime(_config()).data_dir("postgres") / BALLAST_NAME
    assert not ballast.exists()
    assert _live_toxics(registry.proxy_control_url) == {}


def _live_toxics(control_url: str) -> dict[str, object]:
    routes = ProxyControl(control_url, timeout_s=5).routes()  # the URL names the token file
    return {name: r["latency"] for name, r in routes.items() if r.get("latency")}


def test_compose_up_then_attach(engine, tmp_path):
    """The user path: `docker compose up` (Debian's docker-compose 1.29), attach, a kill/start.

    Runs before the SDK stack (same published ports); cleans up with `down -v`.
    """
    from stack.docker.base_image import ensure_base_image
    from stack.docker.compose import COMPOSE_FILE
    from stack.docker.containers import DockerStack
    from stack.docker.images import download_wheels

    _require_tool("docker-compose")
    _require_tool("debootstrap")
    base = ensure_base_image()
    wheels_dir = COMPOSE_FILE.parent / "docker" / "wheels"
    copied = []
    for wheel in download_wheels():
        shutil.copy2(wheel, wheels_dir / wheel.name)
        copied.append(wheels_dir / wheel.name)
    state = tmp_path / "state"
    DockerStack(state, PORT_BASE).write_secrets()  # the credentials compose mounts (see its header)
    env = {**os.environ, "CHAOSCHECKOUT_BASE_IMAGE": "chaoscheckout/base:bookworm",
           "CHAOSCHECKOUT_PIP_NO_INDEX": "1", "CHAOSCHECKOUT_STATE_DIR": str(state)}
    compose = ["docker-compose", "-p", "cctestcompose", "-f", str(COMPOSE_FILE)]
    try:
        t0 = time.monotonic()
        up = subprocess.run([*compose, "up", "-d", "--build"], env=env, capture_output=True, text=True,
                            timeout=600, check=False)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        print(f"\ndocker-compose up --build: {time.monotonic() - t0:.1f} s (base {base[:19]})")
        stack = DockerStack(state, PORT_BASE, say=lambda line: None)
        stack.attach()
        try:
            config = _config(state)
            assert get_runtime(config).describe("catalog")["container"] == "cctestcompose_catalog_1"
            fault = kill_service("catalog", duration_s=30, configuration=config)
            assert get_runtime(config).pid("catalog") is None
            started = start_service("catalog", timeout_s=30, configuration=config)
            assert started["reverted_leases"] == [fault["fault_id"]]
        finally:
            stack.detach()
    finally:
        down = subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        for wheel in copied:
            wheel.unlink(missing_ok=True)
    assert down.returncode == 0, down.stderr
    client = docker.from_env(timeout=30)
    project = {"label": "com.docker.compose.project=cctestcompose"}
    assert client.containers.list(all=True, filters=project) == []
    assert client.volumes.list(filters=project) == []
    client.close()


def test_stack_serves_checkouts_through_the_proxy(dstack):
    registry = load_registry(STATE_DIR / "services.json")
    assert registry.runtime == "docker"
    answer = httpx.post(f"{registry.extra['checkout_url']}/checkout", timeout=10,
                        json={"items": [{"sku": "sku-001", "qty": 1}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "paid"
    # every published port is on 127.0.0.1 only
    client = docker.from_env(timeout=30)
    for entry in registry.services.values():
        ports = client.containers.get(entry.process).attrs["HostConfig"]["PortBindings"]
        for bindings in ports.values():
            assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, entry.process
    client.close()


def test_plain_stack_status_finds_the_docker_stack(dstack):
    """`stack status` without --runtime asks the state dir's registry which runtime runs."""
    env = {k: v for k, v in os.environ.items() if k != "CHAOSCHECKOUT_PORT_BASE"}
    env.update(CHAOSCHECKOUT_STATE_DIR=str(STATE_DIR), PYTHONPATH=str(ROOT))
    status = subprocess.run([sys.executable, "-m", "stack.manage", "status", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["runtime"] == "docker" and report["up"] is True
    assert {row["service"] for row in report["services"]} >= {"checkout", "catalog", "payments"}


def test_down_from_another_state_dir_is_refused(dstack, tmp_path):
    """Two stacks on one port base never remove each other's containers."""
    from stack.docker.compose import DockerStackError
    from stack.docker.containers import DockerStack

    other = DockerStack(tmp_path / "other", PORT_BASE, say=lambda line: None)
    with pytest.raises(DockerStackError, match="belong to another stack state dir"):
        other.down()
    assert _container(f"cc{PORT_BASE}-checkout").status == "running"
    assert (STATE_DIR / "services.json").exists()


def test_kill_keeps_container_down_until_start(dstack):
    config = _config()
    fault = kill_service("catalog", duration_s=60, configuration=config)
    assert fault["backend"] == "docker"
    container = _container(f"cc{PORT_BASE}-catalog")
    time.sleep(2)  # restart policy "no": it must stay down
    container.reload()
    assert container.status == "exited"
    assert get_runtime(config).pid("catalog") is None
    started = start_service("catalog", timeout_s=30, configuration=config)
    assert started["started"] is True and started["reverted_leases"] == [fault["fault_id"]]
    print(f"\ncatalog container down after {fault['parameters']['down_after_s']} s, "
          f"healthy {started['healthy_after_s']} s after start")
    _no_fault_left()


def test_start_repairs_a_netns_name_left_on_a_dead_namespace(dstack):
    """A killed container started again by someone else (or by a reverter that died before
    re-naming its netns) leaves /run/netns/<name> on the dead namespace: the revert must
    still start-check-repair, not be refused forever."""
    config = _config()
    fault = kill_service("catalog", duration_s=60, configuration=config)
    container = _container(f"cc{PORT_BASE}-catalog")
    container.start()  # behind the runtime's back: the netns name now points at nothing alive
    container.reload()
    netns = load_registry(STATE_DIR / "services.json").services["catalog"].netns
    own = f"/proc/{container.attrs['State']['Pid']}/ns/net"
    assert os.stat(f"/run/netns/{netns}").st_ino != os.stat(own).st_ino
    started = start_service("catalog", timeout_s=30, configuration=config)
    assert started["reverted_leases"] == [fault["fault_id"]], started
    assert os.stat(f"/run/netns/{netns}").st_ino == os.stat(own).st_ino  # re-pointed
    again = kill_service("catalog", duration_s=60, configuration=config)  # the target check passes again
    start_service("catalog", timeout_s=30, configuration=config)
    assert again["backend"] == "docker"
    _no_fault_left()


def test_netem_uses_the_container_netns_with_the_kernel_check(dstack):
    """netem targets the container's own namespace; on a kernel without sch_netem it is refused cleanly."""
    from chaoscheckout.errors import BackendUnavailable
    from chaoscheckout.network import netem
    from chaoscheckout.network.actions import remove_latency

    config = _config()
    entry = load_registry(STATE_DIR / "services.json").services["payments"]
    assert entry.netns and netem.netns_exists(entry.netns)
    assert netem.netns_devices(entry.netns) == ["eth0"]  # the container's interface, not the host's
    has_netem, why = netem.kernel_has_netem()
    if has_netem:
        fault = add_latency("payments", 50, duration_s=30, backend="netem", configuration=config)
        assert fault["backend"] == "netem"
        assert remove_latency("payments", configuration=config)["netem_removed"]
    else:
        with pytest.raises(BackendUnavailable, match="sch_netem"):
            add_latency("payments", 50, duration_s=30, backend="netem", configuration=config)
        print(f"\nnetem refused as expected: {why}")
    _no_fault_left()


def _remove_intruder() -> None:
    client = docker.from_env(timeout=30)
    try:
        for remove in (lambda: client.containers.get(INTRUDER).remove(force=True),
                       lambda: client.volumes.get(f"{INTRUDER}-data").remove(force=True)):
            try:
                remove()
            except docker.errors.NotFound:
                pass
    finally:
        client.close()


def test_unlabelled_container_is_refused(dstack, tmp_path):
    """A registry that lists a container without the target label gets nothing done."""
    client = docker.from_env(timeout=30)
    _remove_intruder()
    intruder = client.containers.run(
        "chaoscheckout/app:dev", ["python", "-m", "http.server", "8080"], name=INTRUDER, detach=True,
        labels={"purpose": "chaoscheckout refusal test"}, restart_policy={"Name": "no"},
        tmpfs={"/scratch": "size=1m"}, volumes={f"{INTRUDER}-data": {"bind": "/data", "mode": "rw"}},
        network_mode="none",
    )
    client.close()
    registry = load_registry(STATE_DIR / "services.json")
    lying = dict(registry.services)
    lying["intruder"] = ServiceEntry(
        name="intruder", host="127.0.0.1", port=1, process=INTRUDER, chaos_target=True,
        data_dir="/data", proxy=ProxyRoute("catalog", registry.services["catalog"].proxy.listen_port),
    )
    state = tmp_path / "state"
    save_registry(dataclasses.replace(registry, services=lying), state / "services.json")
    config = _config(state)
    with pytest.raises(TargetRefused, match="not labelled org.chaoscheckout.target=true"):
        kill_service("intruder", duration_s=30, configuration=config)
    with pytest.raises(TargetRefused, match="not labelled"):
        add_latency("intruder", 200, duration_s=30, backend="proxy", configuration=config)
    with pytest.raises(TargetRefused, match="not labelled"):
        fill_disk("intruder", duration_s=30, configuration=config)
    # reverts too (a kill's revert starts, a fill's release deletes), and a configuration
    # that names the local runtime over a docker registry cannot skip the label check
    with pytest.raises(TargetRefused, match="not labelled"):
        start_service("intruder", configuration=config)
    with pytest.raises(TargetRefused, match="not labelled"):
        release_disk("intruder", configuration=config)
    local = {**config, "chaoscheckout_runtime": "local"}
    with pytest.raises(InvalidFaultArgument, match="docker stack's"):
        kill_service("intruder", duration_s=30, configuration=local)
    with pytest.raises(InvalidFaultArgument, match="docker stack's"):  # the runtime is its only door
        add_latency("intruder", 200, duration_s=30, backend="proxy", configuration=local)
    intruder.reload()
    assert intruder.status == "running"
    assert LeaseStore(state / "leases").live() == []
    client = docker.from_env(timeout=30)
    try:
        mountpoint = Path(client.volumes.get(f"{INTRUDER}-data").attrs["Mountpoint"])
    finally:
        client.close()
    assert not (mountpoint / BALLAST_NAME).exists()
    # nothing reached the proxy either: catalog's route has no toxic
    assert _live_toxics(registry.proxy_control_url) == {}
    _remove_intruder()


def test_docker_postgres_needs_a_password_and_roles_are_limited(dstack):
    """scram, no trust: no password, no connection; the probe role only reads orders."""
    registry = load_registry(STATE_DIR / "services.json")
    port = str(registry.services["postgres"].port)
    psql = "/usr/lib/postgresql/15/bin/psql"
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", psql, "-w",
                             "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "checkout",
                             "-c", "SELECT 1"],
                            capture_output=True, text=True, timeout=30, env={"PGCONNECT_TIMEOUT": "5"})
    assert nobody.returncode != 0 and "no password supplied" in nobody.stderr, nobody.stderr
    with psycopg.connect(registry.extra["database_url"], connect_timeout=5, autocommit=True) as probe:
        assert probe.execute("SELECT count(*) FROM orders").fetchone()[0] >= 0
        for statement in ("INSERT INTO orders VALUES (gen_random_uuid(), '[]', 1, 'paid')",
                          "COPY orders FROM PROGRAM 'id'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                probe.execute(statement)


def test_netns_of_another_container_is_refused(dstack, tmp_path):
    """A registry naming payments' netns for catalog: nothing is done in it."""
    registry = load_registry(STATE_DIR / "services.json")
    lying = dict(registry.services)
    lying["catalog"] = dataclasses.replace(lying["catalog"], netns=registry.services["payments"].netns)
    state = tmp_path / "state"
    save_registry(dataclasses.replace(registry, services=lying), state / "services.json")
    for action in (lambda: add_latency("catalog", 200, duration_s=30, backend="netem",
                                       configuration=_config(state)),
                   lambda: kill_service("catalog", duration_s=30, configuration=_config(state))):
        with pytest.raises(TargetRefused, match="is not the network namespace of container"):
            action()
    assert _container(registry.services["catalog"].process).status == "running"
    assert LeaseStore(state / "leases").live() == []


CHILD = textwrap.dedent("""
    import sys, time
    from chaoscheckout.disk.actions import fill_disk
    from chaoscheckout.service.actions import kill_service
    config = {"chaoscheckout_state_dir": sys.argv[1]}
    kill_service("catalog", duration_s=60, configuration=config)
    fill_disk("postgres", leave_bytes=0, duration_s=60, configuration=config)
    print("injected", flush=True)
    time.sleep(600)
""")


def test_sigkilled_run_is_reverted_by_the_dead_man_switch(dstack):
    """Faults of a SIGKILLed process are reverted by the host reaper within seconds of the
    kill (the owner is gone), long before their 60 s leases expire."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(STATE_DIR)], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT, env={**os.environ, **dstack})
    try:
        line = child.stdout.readline()
        assert line.strip() == "injected", line
    finally:
        child.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        child.wait(timeout=10)
    runtime = get_runtime(_config())
    ballast = runtime.data_dir("postgres") / BALLAST_NAME
    deadline = killed_at + 30
    while time.monotonic() < deadline:
        if not LeaseStore(STATE_DIR / "leases").live() and runtime.is_healthy("catalog"):
            break
        time.sleep(0.05)
    gone_after_s = time.monotonic() - killed_at
    print(f"\nhost reaper reverted kill + disk {gone_after_s:.1f} s after the SIGKILL (leases of 60 s)")
    assert runtime.is_healthy("catalog")
    assert not ballast.exists()
    assert gone_after_s < 5, gone_after_s
    _no_fault_left()


def test_weakened_checkout_is_caught_on_docker(dstack, tmp_path):
    """Detection power on docker: the first-version checkout breaks payments-latency."""
    from stack.docker.containers import DockerStack

    stack = DockerStack(STATE_DIR, PORT_BASE, say=lambda line: None)
    stack.recreate("checkout", {"CHECKOUT_RESILIENCE": "0"})
    try:
        env = _container(f"cc{PORT_BASE}-checkout").attrs["Config"]["Env"]
        assert "CHECKOUT_RESILIENCE=0" in env
        (outcome,) = run_experiments([ROOT / "experiments" / "payments-latency.json"], tmp_path,
                                     report=False, env=dstack, cwd=ROOT)
        print(f"\nweakened checkout: {outcome.line()}")
        assert outcome.verdict == "broke", outcome.reason
        assert "checkout-p95-latency-ms-30s" in outcome.reason
    finally:
        stack.recreate("checkout")
    _no_fault_left()


@pytest.mark.parametrize("name", ["kill-catalog", "payments-latency", "fill-pg-disk"])
def test_experiment_holds_on_docker(dstack, tmp_path, name):
    (outcome,) = run_experiments([ROOT / "experiments" / f"{name}.json"], tmp_path, report=False,
                                 env=dstack, cwd=ROOT)
    print(f"\n{outcome.line()}")
    assert outcome.verdict == "held", outcome.reason
    deadline = time.monotonic() + 60  # the rollback restarted what it had to; wait for health
    while time.monotonic() < deadline and LeaseStore(STATE_DIR / "leases").live():
        time.sleep(1)
    _no_fault_left()


def test_compose_file_is_the_contract(tmp_path):
    """No engine needed: ports shift with the base, 127.0.0.1 only, targets labelled, schema in sync."""
    from stack.docker.compose import DockerStackError, load_compose
    from stack.postgres import SCHEMA_FILE

    compose = load_compose(port_base=40000)
    ports = {s.service: s.main_port for s in compose.specs}
    assert ports["checkout"] == 40000 and ports["postgres"] == 40020 and ports["faultproxy"] == 40050
    targets = {s.service for s in compose.specs if s.labels.get("org.chaoscheckout.target") == "true"}
    assert targets == {"checkout", "catalog", "payments", "provider", "postgres"}
    order = [s.service for s in compose.specs]
    assert order.index("checkout") > max(order.index("postgres"), order.index("faultproxy"))
    dockerfile = (ROOT / "stack" / "docker" / "Dockerfile.postgres").read_text()
    assert "COPY stack/schema.sql " in dockerfile and SCHEMA_FILE == ROOT / "stack" / "schema.sql"
    exposed = tmp_path / "compose.yml"
    exposed.write_text('services:\n  x:\n    image: y\n    ports: ["0.0.0.0:31100:8000"]\n')
    with pytest.raises(DockerStackError, match="only 127.0.0.1"):
        load_compose(exposed)
