"""Fast tier: one stack topology (stack/topology.py) and what is derived from it or checked
against it: the compose file, the docker Prometheus config, the registries of both runtimes,
the one schema file and the one Postgres tuning file."""

from __future__ import annotations

import time
from pathlib import Path

from stack import layout, postgres, prometheus_config, topology
from stack.docker.compose import COMPOSE_PORT_BASE, load_compose
from stack.settings import settings_from_env

ROOT = Path(__file__).resolve().parent.parent


def _settings(state_dir: str):
    return settings_from_env({"CHAOSCHECKOUT_STATE_DIR": state_dir, "CHAOSCHECKOUT_PORT_BASE": "20000"})


def test_compose_file_matches_the_topology():
    compose = load_compose(port_base=COMPOSE_PORT_BASE)
    specs = {s.service: s for s in compose.specs}
    docker = {s.name: s for s in topology.services("docker")}
    assert set(specs) == {name for name, svc in docker.items() if svc.port_key_in("docker")}
    for name, spec in specs.items():
        svc = docker[name]
        keys = [svc.port_key_in("docker")] + ([svc.proxy[1] for svc in topology.SERVICES
                                               if svc.proxy] if name == "faultproxy" else [])
        expected = {topology.CONTAINER_PORTS[k]: COMPOSE_PORT_BASE + topology.HOST_OFFSETS[k] for k in keys}
        assert spec.ports == expected, name
        assert spec.main_port == COMPOSE_PORT_BASE + topology.HOST_OFFSETS[keys[0]], name
        assert (spec.labels.get("org.chaoscheckout.target") == "true") == svc.chaos_target, name
        assert spec.labels.get("org.chaoscheckout.health-path") == topology.health_path(svc, "docker"), name
        assert spec.labels.get("org.chaoscheckout.proxy-route") == (svc.proxy[0] if svc.proxy else None), name
        if svc.module:
            assert spec.command[:3] == ["python", "-m", svc.module], name
    proxy = specs["faultproxy"].command
    routes = sorted(v for f, v in zip(proxy, proxy[1:], strict=False) if f == "--route")
    assert routes == sorted(f"{s.proxy[0]}={topology.CONTAINER_PORTS[s.proxy[1]]}:{s.name}:"
                            f"{topology.CONTAINER_PORTS[s.port_key]}" for s in topology.SERVICES if s.proxy)
    assert proxy[proxy.index("--control") + 1] == f"0.0.0.0:{topology.CONTAINER_PORTS['proxy_control']}"


def test_docker_prometheus_config_is_rendered_from_the_topology():
    """stack/docker/prometheus.yml is generated (`python -m stack.topology prometheus`)."""
    assert prometheus_config.DOCKER_CONFIG.read_text() == prometheus_config.docker_config_text()
    targets = topology.scrape_targets("docker")
    assert targets["checkout"] == "checkout:8000" and targets["faultproxy"] == "faultproxy:9050"
    assert "remediator" not in targets  # not a container


def test_local_prometheus_config_scrapes_every_local_service(tmp_path):
    settings = _settings(str(tmp_path))
    text = prometheus_config.render(settings).read_text()
    for job, port in (("checkout", 20000), ("catalog", 20001), ("payments", 20002), ("provider", 20003),
                      ("remediator", 20004), ("prometheus", 20030)):
        assert f"- job_name: {job}\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]" in text
    assert f"  - {tmp_path}/prometheus/rules.yml" in text


def test_local_registry_from_the_topology():
    settings = _settings("/var/lib/x")
    reg = layout.registry(settings)
    assert reg.runtime == "local" and reg.supervisor_url == settings.supervisor_url
    assert set(reg.services) == {"postgres", "prometheus", "provider", "catalog", "payments", "checkout",
                                 "remediator"}
    assert reg.services["payments"].proxy.listen_port == 20012
    assert reg.services["postgres"].data_dir == "/var/lib/x/pgdisk"
    assert reg.services["prometheus"].health_url == "http://127.0.0.1:20030/-/ready"
    assert all(e.netns is None and e.process == e.name for e in reg.services.values())


def test_docker_registry_from_the_topology():
    published = {k: 20000 + off for k, off in topology.HOST_OFFSETS.items()}
    reg = topology.registry(
        "docker", published.__getitem__, process=lambda n: f"cc20000-{n}", data_dir="/data",
        supervisor_url=None, proxy_control_url="http://127.0.0.1:20050", database_url="db",
        database_admin_url="admin", state_dir="/s", netns=lambda n: f"cc20000-{n}",
        extra={"docker_stack": "cc20000"})
    assert set(reg.services) == {"postgres", "prometheus", "provider", "catalog", "payments", "checkout",
                                 "faultproxy"}
    proxy = reg.services["faultproxy"]
    assert (proxy.port, proxy.health_url, proxy.netns, proxy.chaos_target) == \
        (20050, "http://127.0.0.1:20050/healthz", None, False)
    pg = reg.services["postgres"]
    assert pg.netns == "cc20000-postgres" and pg.data_dir == "/data"
    assert reg.extra["docker_stack"] == "cc20000" and reg.extra["checkout_url"] == "http://127.0.0.1:20000"


def test_one_schema_and_one_tuning_file(tmp_path):
    from stack.services.checkout import CREATE_ORDERS_TABLE

    schema = ROOT / "stack" / "schema.sql"
    assert postgres.SCHEMA_SQL == CREATE_ORDERS_TABLE == schema.read_text()
    assert "CREATE TABLE IF NOT EXISTS orders" in postgres.SCHEMA_SQL
    dockerfile = (ROOT / "stack" / "docker" / "Dockerfile.postgres").read_text()
    assert "COPY stack/schema.sql /opt/cc/schema.sql" in dockerfile
    assert "COPY stack/postgresql.conf /opt/cc/postgresql.conf" in dockerfile
    entrypoint = (ROOT / "stack" / "docker" / "postgres-entrypoint.sh").read_text()
    assert 'cat /opt/cc/postgresql.conf >> "$PGDATA/postgresql.conf"' in entrypoint
    assert "shared_buffers" not in entrypoint  # the tuning is declared once
    settings = _settings(str(tmp_path))
    conf = postgres.server_conf(settings)
    assert conf.startswith(postgres.TUNING_FILE.read_text())
    assert "port = 20020\n" in conf and "max_connections = 60\n" in conf


def test_host_process_checks_shared_by_both_stacks():
    """stack/procs.py: supervisord's pid checks and the docker stack's host reaper use it."""
    import subprocess
    import sys

    from stack import procs

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "cc-procs-marker"])
    try:
        assert procs.alive(proc.pid) and procs.cmdline_has(proc.pid, b"cc-procs-marker")
        assert not procs.cmdline_has(proc.pid, b"supervisord")
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while procs.alive(proc.pid) and time.monotonic() < deadline:  # a zombie until reaped: not alive
        time.sleep(0.05)
    assert not procs.alive(proc.pid)
    proc.wait(5)
    assert not procs.alive(proc.pid) and not procs.cmdline_has(proc.pid, b"cc-procs-marker")
