"""The SSH runtime and the remote fault keeper against a real OpenSSH server on 127.0.0.1.

The fixture starts a private ``sshd`` (its own config, host key and client key in a tmp
dir, ``ListenAddress 127.0.0.1``, root login by key only) and a "remote host" state dir on
this machine with its own supervisord running a real service (``python -m http.server``)
and the reaper. The controller's registry lists that service with a ``remote`` entry, so
every runtime call and every fault goes through ssh and the remote agent, exactly as for
another host (same kernel here). Ports: ``CHAOSCHECKOUT_TEST_SSH_PORT`` (default: the test
port base + 170) is the sshd's; the service listens on the test port base + 171, the remote
host's fault proxy route to it on + 172; + 173 stays closed ("host down").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serviceprocs import wait_until

from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults.leases import LeaseStore
from chaoscheckout.runtime import get_runtime
from chaoscheckout.runtime.ssh import SshCallTimeout, SshHostDown, SshHostKeyRefused, SshLoginRefused
from chaoscheckout.service.actions import kill_service, start_service

SSHD = "/usr/sbin/sshd"
TEST_BASE = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100"))
SSH_PORT = int(os.environ.get("CHAOSCHECKOUT_TEST_SSH_PORT", str(TEST_BASE + 170)))
WEB_PORT = TEST_BASE + 171
PROXY_PORT = TEST_BASE + 172  # the remote host's fault proxy route to the service
DOWN_PORT = TEST_BASE + 173  # nothing listens there: "host down"
REVERT_BOUND_S = 5.0  # docs/ssh.md: effect gone <= 2 s median, <= 5 s worst after the controller dies

pytestmark = pytest.mark.skipif(not Path(SSHD).exists(), reason="openssh-server is not installed "
                                "(make setup-test-tools installs it)")


@dataclass
class Hosts:
    work: Path
    remote_state: Path  # the "remote host"'s state dir (its own supervisord, reaper, registry)
    ctl_state: Path  # the controller's state dir (its registry names the service as remote)
    remote_entry: dict

    @property
    def conf(self) -> dict[str, str]:
        return {"chaoscheckout_state_dir": str(self.ctl_state)}

    def write_ctl_registry(self, **remote_overrides: object) -> None:
        entry = {"host": "127.0.0.1", "port": WEB_PORT, "health_url": f"http://127.0.0.1:{WEB_PORT}/",
                 "chaos_target": True, "remote": {**self.remote_entry, **remote_overrides}}
        (self.ctl_state / "services.json").write_text(json.dumps(
            {"runtime": "local", "supervisor_url": None, "services": {"web": entry}}))

    def remote_leases(self) -> list:
        return LeaseStore(self.remote_state / "leases").live()

    def ctl_leases(self) -> list:
        return LeaseStore(self.ctl_state / "leases").live()


def _healthy() -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{WEB_PORT}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False



def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cc-test", "-f", str(path)],
                   check=True, timeout=30, capture_output=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> Iterator[Hosts]:
    work = tmp_path_factory.mktemp("ssh")
    work.chmod(0o700)
    sshd_dir, remote, ctl = work / "sshd", work / "remote", work / "ctl"
    for d in (sshd_dir, remote, ctl, ctl / "secrets"):
        d.mkdir(mode=0o700)
    _keygen(sshd_dir / "host_key")
    _keygen(ctl / "secrets" / "id_ed25519")
    shutil.copy(ctl / "secrets" / "id_ed25519.pub", sshd_dir / "authorized_keys")
    host_pub = (sshd_dir / "host_key.pub").read_text().split()[:2]
    (ctl / "secrets" / "known_hosts").write_text(f"[127.0.0.1]:{SSH_PORT} {' '.join(host_pub)}\n")
    (sshd_dir / "sshd_config").write_text(textwrap.dedent(f"""\
        ListenAddress 127.0.0.1
        Port {SSH_PORT}
        HostKey {sshd_dir / "host_key"}
        PidFile {sshd_dir / "sshd.pid"}
        AuthorizedKeysFile {sshd_dir / "authorized_keys"}
        PermitRootLogin prohibit-password
        AllowUsers root
        PubkeyAuthentication yes
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
        X11Forwarding no
        AllowTcpForwarding no
        MaxStartups 64:30:128
        LogLevel ERROR
        """))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    venv_bin = Path(sys.executable).parent
    (remote / "www").mkdir()
    (remote / "data").mkdir()  # the service's data dir: a small filesystem of its own (disk faults)
    with ExitStack() as cleanup:
        log = cleanup.enter_context(open(work / "sshd.log", "wb"))
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(sshd_dir / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=log)
        cleanup.callback(_stop, sshd)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(remote / "data")],
                       check=True, timeout=30)
        cleanup.callback(subprocess.run, ["umount", str(remote / "data")], timeout=30)
        _write_remote_host(remote)
        subprocess.run([str(venv_bin / "supervisord"), "-c", str(remote / "supervisord.conf")], check=True,
                       timeout=30, env={"PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin"})
        cleanup.callback(_stop_supervisord, remote / "supervisord.pid")
        handle = Hosts(work, remote, ctl, {
            "runtime": "ssh", "ssh_host": "127.0.0.1", "ssh_port": SSH_PORT, "user": "root",
            "key_file": "secrets/id_ed25519", "known_hosts": "secrets/known_hosts",
            "python": sys.executable, "state_dir": str(remote), "service": "web",
            "connect_timeout_s": 3, "call_timeout_s": 20})
        handle.write_ctl_registry()
        wait_until(lambda: _port_open(SSH_PORT), 15, "sshd listening")
        wait_until(_healthy, 30, "the remote host's service answering")
        wait_until(lambda: _port_open(PROXY_PORT), 30, "the remote host's fault proxy listening")
        yield handle


def _write_remote_host(remote: Path) -> None:
    """The remote host's supervisord (the service, the reaper) and its own registry."""
    (remote / "supervisord.conf").write_text(textwrap.dedent(f"""\
        [unix_http_server]
        file={remote / "supervisord.sock"}
        chmod=0700

        [supervisord]
        pidfile={remote / "supervisord.pid"}
        logfile={remote / "supervisord.log"}

        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

        [program:web]
        command={sys.executable} -m http.server {WEB_PORT} --bind 127.0.0.1 --directory {remote / "www"}
        autorestart=false
        startsecs=0

        [program:reaper]
        command={sys.executable} -m chaoscheckout.faults.reaper --state-dir {remote}
        autorestart=true

        [program:faultproxy]
        command={sys.executable} -m chaoscheckout.network.proxy --control unix:{remote / "proxy.sock"}
            --leases-dir {remote / "leases"} --route web={PROXY_PORT}:127.0.0.1:{WEB_PORT}
        autorestart=true
        """))
    web = {"host": "127.0.0.1", "port": WEB_PORT, "process": "web", "chaos_target": True,
           "health_url": f"http://127.0.0.1:{WEB_PORT}/", "data_dir": str(remote / "data"),
           "proxy": {"route": "web", "listen_port": PROXY_PORT}}
    (remote / "services.json").write_text(json.dumps({
        "runtime": "local", "supervisor_url": f"unix://{remote / 'supervisord.sock'}",
        "proxy_control_url": f"unix:{remote / 'proxy.sock'}", "services": {"web": web}}))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


def _stop_supervisord(pidfile: Path) -> None:
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, "the remote supervisord stopping")


@pytest.fixture(autouse=True)
def clean_slate(hosts: Hosts) -> Iterator[None]:
    """Each test starts with the registry as the fixture wrote it and the service up; and
    leaves no lease behind on either side."""
    hosts.write_ctl_registry()
    yield
    hosts.write_ctl_registry()
    wait_until(lambda: not hosts.remote_leases(), 30, "no remote lease left")
    for lease in hosts.ctl_leases():
        LeaseStore(hosts.ctl_state / "leases").remove(lease.fault_id)
    if not _healthy():
        get_runtime(hosts.conf).start("web", timeout_s=30)


def _controller(hosts: Hosts, code: str) -> subprocess.Popen[str]:
    """A controller process that injects a fault on the remote service, prints the result
    line, then waits (until the test kills or stops it)."""
    script = "\n".join([
        "import json, time",
        f"conf = {{'chaoscheckout_state_dir': {str(hosts.ctl_state)!r}}}",
        code,
        "print(json.dumps(result), flush=True)",
        "time.sleep(600)",
    ])
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()  # the fault is in place when the line comes
    assert line, f"controller failed: {proc.stderr.read() if proc.poll() is not None else ''}"
    result = json.loads(line)
    assert result["kind"] == "kill" and result["backend"] == "ssh", result
    return proc


def test_runtime_calls_go_over_ssh(hosts: Hosts):
    runtime = get_runtime(hosts.conf)
    assert runtime.is_remote("web")
    started = time.monotonic()
    pid = runtime.pid("web")
    call_s = time.monotonic() - started
    described = runtime.describe("web")
    assert described["pid"] == pid and described["remote"]["ssh_host"] == "127.0.0.1", described
    assert described["state"] == "RUNNING"
    assert runtime.is_healthy("web")
    killed = runtime.kill("web")
    assert killed.pid == pid and not _healthy() and runtime.pid("web") is None
    again = runtime.start("web")
    assert again.started and _healthy() and again.pid not in (None, pid)
    print(f"ssh call (pid verb) took {call_s:.3f} s")


def test_fault_through_the_keeper_then_rollback(hosts: Hosts):
    result = kill_service("web", duration_s=60, configuration=hosts.conf)
    assert result["backend"] == "ssh" and result["parameters"]["remote_fault_id"].startswith("kill-web-")
    assert not _healthy()
    (local,) = hosts.ctl_leases()
    (remote,) = hosts.remote_leases()
    assert local.params["remote"] is True and local.params["remote_fault_id"] == remote.fault_id
    assert remote.owner.pid == result["parameters"]["keeper_pid"]
    assert remote.owner.run_id == local.owner.run_id
    undone = start_service("web", configuration=hosts.conf)
    assert undone["reverted_leases"] == [local.fault_id] and _healthy()
    assert not hosts.ctl_leases() and not hosts.remote_leases()


def test_disk_fault_through_the_keeper(hosts: Hosts):
    from chaoscheckout.disk.actions import fill_disk, release_disk

    data = hosts.remote_state / "data"
    fault = fill_disk("web", leave_bytes=1 << 20, duration_s=60, configuration=hosts.conf)
    assert fault["backend"] == "ssh" and fault["parameters"]["remote_parameters"]["ballast_bytes"] > 0
    assert (data / ".chaoscheckout-ballast").exists() and shutil.disk_usage(data).free <= 2 << 20
    with pytest.raises(Exception, match="remote"):  # its data dir is not on this machine
        get_runtime(hosts.conf).data_dir("web")
    released = release_disk("web", configuration=hosts.conf)
    assert released["reverted_leases"] == [fault["fault_id"]]
    assert not (data / ".chaoscheckout-ballast").exists() and not hosts.remote_leases()


def test_latency_through_the_keeper(hosts: Hosts):
    from chaoscheckout.network.actions import add_latency, remove_latency
    from chaoscheckout.network.proxy_client import ProxyControl

    def through_proxy_s() -> float:
        started = time.monotonic()
        httpx.get(f"http://127.0.0.1:{PROXY_PORT}/", timeout=10).raise_for_status()
        return time.monotonic() - started

    control = ProxyControl(f"unix:{hosts.remote_state / 'proxy.sock'}")
    fault = add_latency("web", delay_ms=400, duration_s=60, backend="proxy", configuration=hosts.conf)
    assert fault["backend"] == "ssh" and fault["parameters"]["remote_backend"] == "proxy"
    assert control.latency("web")["fault_id"] == fault["parameters"]["remote_fault_id"]
    assert through_proxy_s() >= 0.4  # the remote host's proxy delays the service's callers
    removed = remove_latency("web", configuration=hosts.conf)
    assert removed["reverted"] == [fault["fault_id"]] and control.latency("web") is None
    assert not hosts.remote_leases() and not hosts.ctl_leases()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_controller_death_reverts_the_remote_fault(hosts: Hosts, how: str):
    proc = _controller(hosts, 'from chaoscheckout.service.actions import kill_service\n'
                              'result = kill_service("web", duration_s=120, configuration=conf)')
    try:
        assert not _healthy() and hosts.remote_leases()
        os.kill(proc.pid, getattr(signal, how))
        gone_s = wait_until(_healthy, 30, f"the remote service back after the controller's {how}")
        wait_until(lambda: not hosts.remote_leases(), 10, "the remote lease removed")
        print(f"controller {how}: remote fault reverted (service healthy) after {gone_s:.2f} s")
        assert gone_s <= REVERT_BOUND_S, f"reverted after {gone_s:.2f} s (bound {REVERT_BOUND_S} s)"
    finally:
        proc.kill()
        proc.wait(10)


def test_the_remote_reaper_reverts_when_the_keeper_dies(hosts: Hosts):
    result = kill_service("web", duration_s=120, configuration=hosts.conf)
    os.kill(result["parameters"]["keeper_pid"], signal.SIGKILL)  # the remote lease's owner
    gone_s = wait_until(_healthy, 30, "the remote reaper starting the service again")
    wait_until(lambda: not hosts.remote_leases(), 10, "the remote lease removed")
    print(f"keeper SIGKILL: the remote reaper reverted after {gone_s:.2f} s")
    undone = start_service("web", configuration=hosts.conf)  # the keeper is gone: over ssh, verified
    assert undone["reverted_leases"] == [result["fault_id"]] and not hosts.ctl_leases()


def test_a_lost_link_reverts_the_remote_fault(hosts: Hosts):
    """The controller lives but its heartbeats stop reaching the host (its ssh client is
    frozen: what a dead network looks like to the keeper)."""
    proc = _controller(hosts, 'from chaoscheckout.service.actions import kill_service\n'
                              'result = kill_service("web", duration_s=120, configuration=conf)')
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ssh_clients = [int(c) for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "ssh"]
    try:
        assert len(ssh_clients) == 1 and not _healthy()
        os.kill(ssh_clients[0], signal.SIGSTOP)
        gone_s = wait_until(_healthy, 30, "the remote service back after the link froze")
        wait_until(lambda: not hosts.remote_leases(), 10, "the remote lease removed")
        print(f"link lost: remote fault reverted after {gone_s:.2f} s")
        assert gone_s <= REVERT_BOUND_S
    finally:
        for pid in ssh_clients:
            os.kill(pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)


def test_halt_reverts_a_remote_fault(hosts: Hosts):
    proc = _controller(hosts, 'from chaoscheckout.service.actions import kill_service\n'
                              'result = kill_service("web", duration_s=120, configuration=conf)')
    env = {**os.environ, "CHAOSCHECKOUT_STATE_DIR": str(hosts.ctl_state)}
    cli = [str(Path(sys.executable).parent / "chaoscheckout"), "halt"]
    try:
        halted = subprocess.run([*cli, "--reason", "ssh test"], env=env, capture_output=True, text=True,
                                timeout=90)
        assert halted.returncode == 0, halted.stdout + halted.stderr
        assert _healthy() and not hosts.remote_leases() and not hosts.ctl_leases(), halted.stdout
        with pytest.raises(Exception, match="halted"):
            kill_service("web", duration_s=30, configuration=hosts.conf)
        assert _healthy()
    finally:
        subprocess.run([*cli, "--clear"], env=env, capture_output=True, timeout=30)
        proc.kill()
        proc.wait(10)


def test_invalid_arguments_are_refused_before_anything(hosts: Hosts):
    for bad in (-1, 0, "x", float("nan"), 10**9):
        with pytest.raises(InvalidFaultArgument):
            kill_service("web", duration_s=bad, configuration=hosts.conf)
    from chaoscheckout.disk.actions import fill_disk
    from chaoscheckout.network.actions import add_latency

    with pytest.raises(InvalidFaultArgument):
        add_latency("web", delay_ms=-5, configuration=hosts.conf)
    with pytest.raises(InvalidFaultArgument):
        fill_disk("web", leave_bytes=-1, configuration=hosts.conf)
    assert _healthy() and not hosts.ctl_leases() and not hosts.remote_leases()


def _refused(hosts: Hosts, error: type[Exception], match: str, **overrides: object) -> None:
    hosts.write_ctl_registry(**overrides)
    with pytest.raises(error, match=match):
        get_runtime(hosts.conf).pid("web")
    with pytest.raises(error, match=match):
        kill_service("web", duration_s=30, configuration=hosts.conf)
    assert _healthy() and not hosts.ctl_leases() and not hosts.remote_leases()


def test_unknown_host_key_is_refused(hosts: Hosts):
    _keygen(hosts.work / "other_host")
    other = (hosts.work / "other_host.pub").read_text().split()[:2]
    wrong = hosts.ctl_state / "secrets" / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{SSH_PORT} {' '.join(other)}\n")
    _refused(hosts, SshHostKeyRefused, "host key", known_hosts="secrets/wrong_known_hosts")


def test_refused_login_is_one_clear_error(hosts: Hosts):
    _keygen(hosts.ctl_state / "secrets" / "stranger")
    _refused(hosts, SshLoginRefused, "login refused", key_file="secrets/stranger")


def test_host_down_is_one_clear_error(hosts: Hosts):
    assert not _port_open(DOWN_PORT)
    _refused(hosts, SshHostDown, "host down", ssh_port=DOWN_PORT)


def test_a_hanging_remote_command_times_out(hosts: Hosts):
    hang = hosts.work / "hanging-python"
    hang.write_text("#!/bin/sh\nexec sleep 8\n")  # outlives the 2 s call timeout, then ends
    hang.chmod(0o755)
    started = time.monotonic()
    _refused(hosts, SshCallTimeout, "did not finish within 2 s", python=str(hang), call_timeout_s=2)
    assert time.monotonic() - started < 30


def test_a_chaos_run_on_the_remote_service_ends_with_its_fault_reverted(hosts: Hosts, tmp_path):
    """chaos run: the keeper session lives in chaos's process; the safety control reverts
    the remote fault at the end through it (no rollback declared)."""
    experiment = {
        "title": "kill a remote service", "description": "written by tests/test_ssh_runtime.py",
        "controls": [{"name": "chaoscheckout-safety",
                      "provider": {"type": "python", "module": "chaoscheckout.controls.safety"}}],
        "method": [
            {"type": "action", "name": "kill-web",
             "provider": {"type": "python", "module": "chaoscheckout.service.actions", "func": "kill_service",
                          "arguments": {"service": "web", "duration_s": 60}}},
            {"type": "probe", "name": "web-down",
             "provider": {"type": "python", "module": "chaoscheckout.service.probes",
                          "func": "service_is_healthy", "arguments": {"service": "web"}}},
        ],
        "rollbacks": [],
    }
    (tmp_path / "experiment.json").write_text(json.dumps(experiment))
    journal_path = tmp_path / "journal.json"
    env = {**os.environ, "CHAOSCHECKOUT_STATE_DIR": str(hosts.ctl_state)}
    proc = subprocess.run([str(Path(sys.executable).parent / "chaos"), "--no-version-check", "run",
                           "--journal-path", str(journal_path), str(tmp_path / "experiment.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    journal = json.loads(journal_path.read_text())
    assert journal["status"] == "completed", proc.stdout + proc.stderr
    injected, probed = (run["output"] for run in journal["run"])
    assert injected["backend"] == "ssh" and probed is False  # the fault was in place on the host
    reverted = journal["chaoscheckout_safety"]["reverted"]
    assert [(r["kind"], r["verified"]) for r in reverted] == [("kill", True)], reverted
    assert reverted[0]["action"] == "reverted by the keeper", reverted
    assert _healthy() and not hosts.ctl_leases() and not hosts.remote_leases()
