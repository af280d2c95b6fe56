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
        # until the child has exec'd, its cmdline is this process's: wait for the exec
        deadline = time.monotonic() + 10
        while not procs.cmdline_has(proc.pid, b"cc-procs-marker") and time.monotonic() < deadline:
            time.sleep(0.02)
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


# --- chaos targets in their own network namespaces (CHAOSCHECKOUT_TARGET_NETNS) ---------------


def no_netem_kernel_for_tests() -> tuple[bool, str]:
    """Stands in for a kernel without sch_netem (chaoscheckout.network.netem.kernel_has_netem)."""
    return False, "the kernel has no sch_netem (stand-in for tests)"


def _netns_settings(mode: str, base: str = "20000"):
    return settings_from_env({"CHAOSCHECKOUT_STATE_DIR": "/var/lib/x", "CHAOSCHECKOUT_PORT_BASE": base,
                              "CHAOSCHECKOUT_TARGET_NETNS": mode})


def test_target_netns_auto_is_off_without_netem_and_the_stack_is_today_s():
    from stack import targetns
    from stack.appuser import AppUser

    settings = _netns_settings("auto")
    assert settings.target_netns == "auto" and settings.netns_services == ()
    used, why = targetns.resolve(settings, no_netem_kernel_for_tests)
    assert not used and why.startswith("auto:"), why
    assert not targetns.resolve(_netns_settings("off"), no_netem_kernel_for_tests)[0]
    # this machine's own kernel, probed for real (no sch_netem here: see docs/netem.md)
    from chaoscheckout.network.netem import kernel_has_netem

    if not kernel_has_netem()[0]:
        assert not targetns.resolve(settings)[0]
    # not resolved to namespaces: programs and registry are those of `off`
    app = AppUser("chaoscheckout", 999, 999, True, python="/usr/bin/python3", pythonpath="/s", cwd="/s")
    off = _netns_settings("off")
    assert layout.programs(settings, Path("/pg"), {}, app) == layout.programs(off, Path("/pg"), {}, app)
    assert layout.registry(settings).to_dict() == layout.registry(off).to_dict()
    assert all(e.netns is None for e in layout.registry(settings).services.values())


def test_target_netns_setting_is_checked():
    import pytest

    from stack.settings import StackConfigError

    with pytest.raises(StackConfigError, match="CHAOSCHECKOUT_TARGET_NETNS"):
        _netns_settings("yes")
    assert _netns_settings(" ON ").target_netns == "on"


def test_target_netns_links_are_per_stack_and_fit_the_kernel_s_limits():
    import ipaddress

    from stack import targetns

    seen: dict[str, int] = {}
    for base in range(1024, 65475, 61):
        for link in targetns.all_links(_netns_settings("on", str(base))).values():
            assert len(link.host_if) <= 15 and len(link.ns_if) <= 15
            net = ipaddress.ip_network(f"{link.host_addr}/{link.prefix}", strict=False)
            assert ipaddress.ip_address(link.ns_addr) in net and net.subnet_of(targetns.LINK_NET)
            assert ipaddress.ip_address("169.254.169.254") not in net  # cloud metadata address
            for addr in (link.host_addr, link.ns_addr):
                assert seen.setdefault(addr, base) == base, f"{addr}: bases {seen[addr]} and {base}"


def test_target_netns_on_places_payments_and_catalog_behind_relays():
    import dataclasses

    from stack import targetns
    from stack.appuser import AppUser

    settings = _netns_settings("on")
    settings = dataclasses.replace(settings, netns_services=targetns.local_targets(settings))
    links = targetns.all_links(settings)
    app = AppUser("chaoscheckout", 999, 998, True, python="/usr/bin/python3", pythonpath="/s", cwd="/s")
    progs = {p.name: p for p in layout.programs(settings, Path("/pg"), {}, app)}
    pay = progs["payments"]
    assert pay.command[:4] == ["ip", "netns", "exec", "cc20000-local-payments"] and pay.user is None
    assert pay.command[4:9] == ["setpriv", "--reuid=999", "--regid=998", "--init-groups", "--"]
    assert pay.environment["CHAOSCHECKOUT_BIND_HOST"] == links["payments"].ns_addr
    assert pay.environment["PAYMENTS_PROVIDER_URL"] == f"http://{links['payments'].host_addr}:20013"
    assert progs["relay-payments"].command[-4:] == ["127.0.0.1", "20002", links["payments"].ns_addr, "20002"]
    assert progs["relay-payments-provider"].command[-4:] == [links["payments"].host_addr, "20013",
                                                              "127.0.0.1", "20013"]
    assert progs["relay-catalog"].command[-4:] == ["127.0.0.1", "20001", links["catalog"].ns_addr, "20001"]
    assert progs["checkout"].command[:2] == ["/usr/bin/python3", "-s"]
    assert progs["checkout"].user == "chaoscheckout"
    entries = layout.registry(settings).services
    assert {n: e.netns for n, e in entries.items() if e.netns} == {
        "catalog": "cc20000-local-catalog", "payments": "cc20000-local-payments"}
    assert entries["payments"].host == "127.0.0.1" and entries["payments"].port == 20002  # the relay
    remote = dataclasses.replace(settings, remote_payments="vm")
    assert targetns.local_targets(remote) == ("catalog",)
