"""Issue 16: no local user can use the stack's control planes, and the state dir is trusted
only if it is trustworthy.

The "as nobody" tests run real processes as uid 65534 with no capability, using the
system interpreter (stdlib only) and psql, against the real session stack.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from chaoslib.exceptions import ActivityFailed

from chaoscheckout.config import settings_from as settings_from_configuration
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.network import netem
from chaoscheckout.network.proxy_client import ProxyControl, ProxyError
from chaoscheckout.runtime.supervisor import SupervisorClient
from chaoscheckout.service.actions import kill_service
from chaoscheckout.sli import guards
from chaoscheckout.sli import probes as sli_probes
from stack import appstage, appuser, layout, manage, statedir
from stack.postgres import find_pg_bindir, postgres_ids
from stack.settings import settings_from_env
from stack.supervisord import Program, SupervisordError, check_programs

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"


def _as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"})


# --- control planes, as user nobody ---------------------------------------------------------

UNIX_ATTEMPT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
    s.sendall(sys.argv[2].encode())
    print("answered", s.recv(100))
except OSError as exc:
    print("refused", type(exc).__name__)
"""


def test_nobody_cannot_use_supervisord_or_the_fault_proxy(stack):
    ctl = stack.state_dir / "ctl"
    calls = {
        ctl / "supervisord.sock": "POST /RPC2 HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
        ctl / "faultproxy.sock": "PUT /routes/payments/latency HTTP/1.0\r\nContent-Length: 17\r\n\r\n"
                                 '{"delay_ms": 500}',
    }
    for sock, request in calls.items():
        assert oct(sock.stat().st_mode & 0o777) == "0o600" and sock.stat().st_uid == 0
        result = _as_nobody(SYSTEM_PYTHON, "-c", UNIX_ATTEMPT, str(sock), request)
        assert result.stdout.startswith("refused PermissionError"), (sock, result.stdout, result.stderr)
    # nothing reachable over TCP either: supervisord and the proxy control API have no port
    assert not [p for p in (stack.port_base + 40, stack.port_base + 50) if _listening(p)]
    assert ProxyControl(stack.registry.proxy_control_url).latency("payments") is None


def test_no_toxic_without_fault_id_expiry_and_lease_even_for_root(stack):
    control = ProxyControl(stack.registry.proxy_control_url, timeout_s=5)
    with pytest.raises(ProxyError, match="fault_id is required"):
        control.set_latency("payments", delay_ms=500, expires_at=time.time() + 60)
    with pytest.raises(ProxyError, match="expires_at is required"):
        control.set_latency("payments", delay_ms=500, fault_id="no-expiry")
    with pytest.raises(ProxyError, match="no lease 'made-up'"):  # the stack's proxy checks leases/
        control.set_latency("payments", delay_ms=500, fault_id="made-up", expires_at=time.time() + 60)
    assert control.latency("payments") is None


def test_nobody_gets_no_postgres_role_and_cannot_read_the_secrets(stack):
    psql = str(find_pg_bindir(os.environ) / "psql")
    port = str(stack.port_base + 20)
    for role in ("postgres", "checkout_app", "checkout_probe"):
        result = _as_nobody(psql, "-w", "-h", "127.0.0.1", "-p", port, "-U", role, "-d", "checkout",
                            "-c", "COPY (SELECT 1) TO PROGRAM 'id'")
        assert result.returncode != 0 and "no password supplied" in result.stderr, (role, result.stderr)
    peer = _as_nobody(psql, "-w", "-h", str(stack.state_dir / "run"), "-p", port, "-U", "postgres",
                      "-d", "checkout", "-c", "SELECT 1")
    assert peer.returncode != 0 and "Peer authentication failed" in peer.stderr, peer.stderr
    for secret in (stack.state_dir / "secrets").iterdir():
        assert oct(secret.stat().st_mode & 0o777) == "0o600", secret
        assert _as_nobody("cat", str(secret)).returncode != 0, secret


def test_app_and_probe_roles_hold_only_their_rights(stack):
    settings = settings_from_env(stack.env, ROOT)
    refused = psycopg.errors.InsufficientPrivilege
    with psycopg.connect(settings.app_database_url, connect_timeout=5, autocommit=True) as app:
        superuser = app.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert superuser == (False,)
        for statement in ("COPY (SELECT 1) TO PROGRAM 'id'", "DELETE FROM orders",
                          "CREATE TABLE forged (x int)", "DROP TABLE orders"):
            with pytest.raises((refused, psycopg.errors.UndefinedTable)):
                app.execute(statement)
    with psycopg.connect(stack.registry.extra["database_url"], connect_timeout=5, autocommit=True) as probe:
        assert probe.execute("SELECT count(*) FROM orders").fetchone()[0] >= 0
        forged = "INSERT INTO orders VALUES (gen_random_uuid(), '[]', 1, 'paid')"
        for statement in (forged, "UPDATE orders SET status = 'paid'", "COPY (SELECT 1) TO PROGRAM 'id'"):
            with pytest.raises(refused):
                probe.execute(statement)


# --- the state dir ----------------------------------------------------------------------------


@pytest.fixture
def scratch() -> Path:
    """A root-owned 0755 dir under /var/tmp (root-owned, sticky 1777: an accepted parent)."""
    path = Path(f"/var/tmp/cc-statedir-test-{os.getpid()}")
    subprocess.run(["rm", "-rf", str(path)], check=True, timeout=30)
    path.mkdir(mode=0o755)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=True, timeout=30)


def test_state_dir_rules(scratch: Path):
    statedir.check(scratch / "state")  # missing, under trusted parents: fine
    (scratch / "real").mkdir()
    (scratch / "link").symlink_to(scratch / "real")
    with pytest.raises(statedir.StateDirError, match="is a symlink"):
        statedir.check(scratch / "link" / "state")
    other = scratch / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)
    with pytest.raises(statedir.StateDirError, match="owned by uid 65534, not by uid 0"):
        statedir.check(other)
    with pytest.raises(statedir.StateDirError, match="parent .* is owned by uid 65534"):
        statedir.check(other / "state")
    loose = scratch / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(statedir.StateDirError, match="without the sticky bit"):
        statedir.check(loose / "state")
    with pytest.raises(statedir.StateDirError, match="group/other writable"):
        statedir.check(loose)
    state = scratch / "state"
    state.mkdir()
    (state / "pgdisk").symlink_to(scratch / "real")
    with pytest.raises(statedir.StateDirError, match="pgdisk is a symlink"):
        statedir.check(state)


def test_layout_modes_are_explicit_whatever_the_umask(scratch: Path):
    settings = settings_from_env({"CHAOSCHECKOUT_STATE_DIR": str(scratch / "a" / "state")}, ROOT)
    old = os.umask(0o002)
    try:
        statedir.prepare(settings, app_uid=65534, postgres_uid=65534)
    finally:
        os.umask(old)
    assert oct(settings.state_dir.stat().st_mode & 0o777) == "0o755"
    assert oct((scratch / "a").stat().st_mode & 0o777) == "0o755"
    for name, (mode, owner) in statedir.LAYOUT.items():
        st = (settings.state_dir / name).stat()
        assert st.st_mode & 0o777 == mode, name
        assert st.st_uid == (0 if owner == "root" else 65534), name


def test_up_with_a_planted_pgdisk_symlink_is_one_clear_error(stack, scratch: Path):
    """The issue's attack: pgdisk symlinked elsewhere made root mount the tmpfs there."""
    state = scratch / "state"
    state.mkdir(mode=0o755)
    target = scratch / "elsewhere"
    target.mkdir()
    (state / "pgdisk").symlink_to(target)
    env = {**stack.env, "CHAOSCHECKOUT_STATE_DIR": str(state),
           "CHAOSCHECKOUT_PORT_BASE": str(stack.port_base + 210)}
    proc = subprocess.run([sys.executable, "-m", "stack.manage", "up"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "pgdisk is a symlink" in proc.stderr, proc.stderr
    assert not _mounted(target) and not _mounted(state / "pgdisk")
    assert sorted(os.listdir(state)) == ["pgdisk"]


# --- what is rendered -------------------------------------------------------------------------


@pytest.mark.parametrize("environment, message", [
    ({"CHECKOUT_RETRIES": "1\n[program:evil]\ncommand=/bin/sh -c id"}, "control character"),
    ({"CHECKOUT_RETRIES": 'a",EVIL="b'}, "contains a quote"),
    ({"BAD KEY": "1"}, "is not valid"),
])
def test_supervisord_values_that_would_inject_are_refused(environment, message):
    with pytest.raises(SupervisordError, match=message):
        check_programs([Program("checkout", ["python"], autorestart=False, environment=environment)])


def test_up_with_a_newline_in_a_checkout_setting_starts_nothing(stack, scratch: Path):
    state = scratch / "state"
    env = {**stack.env, "CHAOSCHECKOUT_STATE_DIR": str(state),
           "CHAOSCHECKOUT_PORT_BASE": str(stack.port_base + 210),
           "CHECKOUT_RETRIES": "1\n[program:evil]\ncommand=/usr/bin/touch /tmp/cc-evil"}
    proc = subprocess.run([sys.executable, "-m", "stack.manage", "up"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "CHECKOUT_RETRIES contains the control character" in proc.stderr, proc.stderr
    assert not state.exists()


# ---------------------------------------------------------------------------------------------


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == str(path) for line in fh)


# --- limits cannot be switched off ---------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "0", "1e9", "later", True])
def test_configured_limits_out_of_bounds_are_refused(value):
    for key in ("chaoscheckout_max_fault_duration_s", "chaoscheckout_io_timeout_s"):
        with pytest.raises(InvalidFaultArgument, match=key):
            settings_from_configuration({key: value})


def test_a_nan_limit_refuses_the_fault_before_anything_changes(stack):
    configuration = {"chaoscheckout_state_dir": str(stack.state_dir),
                     "chaoscheckout_max_fault_duration_s": "nan"}
    pid = stack.registry.service("catalog")
    before = _supervisor_pid(stack, "catalog")
    with pytest.raises(InvalidFaultArgument, match="must be a finite number"):
        kill_service("catalog", duration_s=1e9, configuration=configuration)
    assert _supervisor_pid(stack, "catalog") == before and pid
    assert not list((stack.state_dir / "leases").glob("*.json"))


@pytest.mark.parametrize("guard, kwargs", [
    ("money_guard", {"since_s": -5}),
    ("money_guard", {"grace_s": float("inf")}),
    ("money_guard", {"grace_s": float("nan")}),
    ("money_guard", {"max_unobserved_s": float("inf")}),
    ("latency_guard", {"max_ms": float("nan"), "during_fault": True}),
    ("latency_guard", {"max_ms": -1, "during_fault": True}),
    ("latency_guard", {"quantile": 2, "during_fault": True}),
    ("availability_guard", {"min_ratio": float("nan"), "during_fault": True}),
    ("availability_guard", {"window": "forever", "during_fault": True}),
])
def test_guards_refuse_bad_arguments_at_once(guard, kwargs, tmp_path):
    """No stack, no fault live: the arguments alone are judged (the guard never passes)."""
    configuration = {"chaoscheckout_state_dir": str(tmp_path), "provider_url": "http://127.0.0.1:9",
                     "database_url": "postgresql://x@127.0.0.1:9/x"}
    with pytest.raises(InvalidFaultArgument):
        getattr(guards, guard)(**kwargs, configuration=configuration)


@pytest.mark.parametrize("kwargs", [{"grace_s": float("inf")}, {"grace_s": float("nan")},
                                    {"since_s": float("inf")}, {"since": float("nan")}, {"grace_s": True}])
def test_money_probe_refuses_unbounded_windows(kwargs):
    with pytest.raises(InvalidFaultArgument):
        sli_probes.charges_without_order(**kwargs)


def test_money_probe_that_judged_nothing_says_so(stack):
    since = time.time()  # no charge can be older than the grace period in this window
    details = sli_probes.charges_without_order_details(grace_s=5, since=since)
    assert details["judged"] is False and details["checked"] == 0
    with pytest.raises(ActivityFailed, match="money safety not judged"):
        sli_probes.charges_without_order(grace_s=5, since=since)


def _supervisor_pid(stack, name: str) -> int | None:
    return SupervisorClient(stack.registry.supervisor_url, timeout_s=5).pid(name)


# --- names that end up in paths -----------------------------------------------------------


@pytest.mark.parametrize("services, message", [
    ({"x/../y": {"port": 1, "chaos_target": True}}, "service name 'x/../y' is not a safe name"),
    ({"..": {"port": 1, "chaos_target": True}}, "service name '..' is not a safe name"),
    ({"web": {"port": 1, "chaos_target": True, "netns": ".."}}, "netns '..' is not a safe name"),
    ({"web": {"port": 1, "chaos_target": True, "process": "a\nb"}}, "process 'a\\\\nb' is not a safe"),
    ({"web": {"port": "80; rm", "chaos_target": True}}, "is not a TCP port"),
    ({"web": {"port": 1, "data_dir": "/var/../etc"}}, "without '..'"),
])
def test_registry_names_that_would_escape_a_path_are_refused(tmp_path, services, message):
    (tmp_path / "services.json").write_text(json.dumps({"runtime": "local", "services": services,
                                                        "supervisor_url": "unix:///nonexistent"}))
    (tmp_path / "leases").mkdir()
    name = next(iter(services))
    with pytest.raises(ChaosCheckoutError, match=f"invalid service registry .*{message}"):
        kill_service(name, duration_s=5, configuration={"chaoscheckout_state_dir": str(tmp_path)})
    assert os.listdir(tmp_path / "leases") == []  # no lease, no temp file


@pytest.mark.parametrize("name", [".", "..", "a/b", "ns\n", "", "-x"])
def test_netns_names_that_are_not_plain_names_are_refused(name):
    with pytest.raises(ChaosCheckoutError, match="invalid network namespace name"):
        netem.check_netns_name(name)


# --- who the programs run as, with what environment -----------------------------------------


def test_programs_run_unprivileged_with_a_minimal_environment(stack):
    """The real processes: the Python app services run as the stack user (from the runtime
    copy, even when the venv lives under a 0700 home), root only where it is documented."""
    app_uid = pwd.getpwnam(appuser.APP_USER).pw_uid
    rpc = SupervisorClient(stack.registry.supervisor_url, timeout_s=5)
    uids = {p["name"]: _uid(p["pid"]) for p in rpc.all_process_info() if p["pid"]}
    assert uids["prometheus"] == app_uid
    assert {n: uids[n] for n in ("catalog", "payments", "provider", "checkout")} == dict.fromkeys(
        ("catalog", "payments", "provider", "checkout"), app_uid)
    for name in ("catalog", "payments", "provider", "checkout"):  # the copy, not the checkout
        cwd = Path(os.readlink(f"/proc/{rpc.pid(name)}/cwd"))
        assert cwd.parent == appstage.stage_root() and cwd.name.startswith("src-"), (name, cwd)
        assert (cwd / "stack" / "services" / f"{name}.py").read_bytes() == \
            (ROOT / "stack" / "services" / f"{name}.py").read_bytes()
    version = httpx.get(f"{stack.registry.extra['checkout_url']}/version", timeout=5).json()["build"]
    assert version["commit"] == subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True,
                                               capture_output=True, timeout=10).stdout.strip()
    assert {n: uids[n] for n in ("faultproxy", "reaper", "remediator")} == dict.fromkeys(
        ("faultproxy", "reaper", "remediator"), 0)
    assert uids["postgres"] == postgres_ids()[0]
    environ = Path(f"/proc/{rpc.pid('catalog')}/environ").read_bytes().split(b"\0")
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert "CHAOSCHECKOUT_TEST_PORT_BASE" not in names and "PYTEST_CURRENT_TEST" not in names, names
    assert names <= {"PATH", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME", "SHELL", "SUPERVISOR_ENABLED",
                     "SUPERVISOR_SERVER_URL", "SUPERVISOR_PROCESS_NAME", "SUPERVISOR_GROUP_NAME",
                     "CHAOSCHECKOUT_STATE_DIR", "PYTHONUNBUFFERED", "PYTHONPATH"} | {
        n for n in names if n.startswith("CATALOG_")}, names


def test_app_user_falls_back_to_root_with_a_reason_only_when_it_truly_cannot(tmp_path):
    hidden = tmp_path / "private"  # an interpreter the user cannot reach (a 0700 dir, as /root)
    hidden.mkdir(mode=0o700)
    (hidden / "python3").symlink_to(os.path.realpath(sys.executable))
    app = appuser.resolve(ROOT, candidates=[str(hidden / "python3")])
    assert not app.python_ok and app.python_user is None
    assert "can run no Python" in app.reason and "Permission denied" in app.reason, app.reason
    line = manage.app_user_line(app)
    assert line.startswith("warning: the Python app programs run as root: "), line
    settings = settings_from_env({"CHAOSCHECKOUT_STATE_DIR": str(tmp_path),
                                  "CHAOSCHECKOUT_PORT_BASE": "24000"})
    programs = {p.name: p for p in layout.programs(settings, Path("/usr/bin"), {}, app)}
    assert programs["catalog"].user is None and programs["catalog"].command[0] == sys.executable
    assert programs["prometheus"].user == appuser.APP_USER  # it needs no Python
    untrusted = tmp_path / "stage"  # a stage dir others may write to: never used
    untrusted.mkdir(mode=0o777)
    os.chmod(untrusted, 0o777)
    app = appuser.resolve(ROOT, stage_dir=untrusted)
    assert not app.python_ok and "not group/other writable" in app.reason, app.reason
    ok = appuser.resolve(ROOT)  # the default: a copy and an interpreter the user can run
    assert ok.python_ok, ok.reason
    assert manage.app_user_line(ok).startswith(f"app services run as {appuser.APP_USER} with {ok.python}")


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise AssertionError(f"no Uid line for pid {pid}")
