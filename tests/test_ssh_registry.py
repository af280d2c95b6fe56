"""Fast tier: the registry's ``remote`` entries, the ssh argument list, error mapping and
the keeper's argument checks (no sshd, no stack; tests/test_ssh_runtime.py is the real tier)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest

from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument, TargetRefused
from chaoscheckout.faults.halt import FaultsHalted
from chaoscheckout.faults.inject import FaultConflict
from chaoscheckout.remote.keeper import keep
from chaoscheckout.remote.wire import RemoteCallFailed, error_from_wire, error_to_wire
from chaoscheckout.runtime import get_runtime
from chaoscheckout.runtime.registry import load_registry
from chaoscheckout.runtime.ssh import (
    RoutingRuntime,
    SshError,
    SshHostDown,
    SshHostKeyRefused,
    SshLoginRefused,
    agent_command,
    classify_ssh_failure,
    ssh_argv,
)

REMOTE = {"runtime": "ssh", "ssh_host": "10.0.2.15", "ssh_port": 2222, "user": "root",
          "key_file": "secrets/id", "known_hosts": "secrets/known_hosts", "python": "/opt/cc/bin/python",
          "state_dir": "/var/lib/chaoscheckout", "service": "payments"}


def _write(state: Path, **remote: object) -> Path:
    (state / "secrets").mkdir(exist_ok=True)
    (state / "secrets" / "id").write_text("key")
    (state / "secrets" / "known_hosts").write_text("hosts")
    entry = {"host": "127.0.0.1", "port": 18102, "chaos_target": True, "remote": {**REMOTE, **remote}}
    path = state / "services.json"
    path.write_text(json.dumps({"runtime": "local", "services": {"payments": entry}}))
    return path


def test_a_remote_entry_loads_with_paths_resolved_against_the_state_dir(tmp_path):
    spec = load_registry(_write(tmp_path)).service("payments").remote
    assert spec is not None and spec.key_file == str(tmp_path / "secrets" / "id")
    assert spec.known_hosts == str(tmp_path / "secrets" / "known_hosts")
    assert (spec.connect_timeout_s, spec.call_timeout_s) == (5.0, 20.0)


@pytest.mark.parametrize("override, message", [
    ({"key_file": "secrets/missing"}, "key_file .* does not exist"),
    ({"known_hosts": "/nonexistent/known_hosts"}, "known_hosts .* does not exist"),
    ({"ssh_port": 0}, "ssh_port 0 is not a TCP port"),
    ({"ssh_port": "22"}, "ssh_port '22' is not a TCP port"),
    ({"ssh_port": 70000}, "not a TCP port"),
    ({"user": "root; rm -rf /"}, "not a safe user name"),
    ({"user": "-oProxyCommand=x"}, "not a safe user name"),
    ({"ssh_host": "-oProxyCommand=touch /tmp/x"}, "not a host name"),
    ({"ssh_host": "host name"}, "not a host name"),
    ({"python": "bin/python"}, "python .* must be an absolute path"),
    ({"state_dir": "/var/lib/../etc"}, "state_dir .* without '..'"),
    ({"service": "../payments"}, "not a safe name"),
    ({"runtime": "telnet"}, "only 'ssh'"),
    ({"connect_timeout_s": 0}, "connect_timeout_s"),
    ({"call_timeout_s": float("inf")}, "call_timeout_s"),
    ({"keeper_miss_s": 61}, "keeper_miss_s"),
    ({"password": "x"}, "unknown keys: password"),
])
def test_bad_remote_values_are_refused_with_the_reason(tmp_path, override, message):
    with pytest.raises(ChaosCheckoutError, match=f"invalid service registry .*{message}"):
        load_registry(_write(tmp_path, **override))


def test_remote_services_are_routed_over_ssh_and_still_need_the_target_flag(tmp_path):
    path = _write(tmp_path)
    runtime = get_runtime({"chaoscheckout_state_dir": str(tmp_path)})
    assert isinstance(runtime, RoutingRuntime) and runtime.is_remote("payments")
    raw = json.loads(path.read_text())
    raw["services"]["payments"]["chaos_target"] = False
    path.write_text(json.dumps(raw))
    with pytest.raises(TargetRefused):
        get_runtime({"chaoscheckout_state_dir": str(tmp_path)}).target("payments")


def test_the_ssh_argument_list_pins_the_host_key_and_quotes_the_remote_command(tmp_path):
    spec = load_registry(_write(tmp_path)).service("payments").remote
    argv = ssh_argv(spec, agent_command(spec, "pid", {"service": "pay ments; rm -rf /"}))
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={spec.known_hosts}",
                   "ConnectTimeout=5", "IdentitiesOnly=yes"):
        assert option in argv
    assert "accept-new" not in " ".join(argv)
    assert argv[-3:-1] == ["--", "10.0.2.15"] and argv[argv.index("-p") + 1] == "2222"
    remote = shlex.split(argv[-1])  # what the remote login shell runs: one argument per word
    assert remote[:4] == ["/opt/cc/bin/python", "-m", "chaoscheckout.remote", "pid"]
    assert json.loads(remote[-1]) == {"service": "pay ments; rm -rf /"}


@pytest.mark.parametrize("stderr, error", [
    ("Host key verification failed.", SshHostKeyRefused),
    ("root@127.0.0.1: Permission denied (publickey).", SshLoginRefused),
    ("ssh: connect to host 127.0.0.1 port 22187: Connection refused", SshHostDown),
    ("ssh: connect to host 10.9.9.9 port 22: Connection timed out", SshHostDown),
    ("kex_exchange_identification: something odd", SshError),
])
def test_ssh_failures_map_to_one_clear_error_each(tmp_path, stderr, error):
    spec = load_registry(_write(tmp_path)).service("payments").remote
    assert type(classify_ssh_failure(spec, 255, stderr)) is error
    assert classify_ssh_failure(spec, 1, stderr) is None  # the remote command's own exit


def test_remote_errors_come_back_as_the_extensions_types():
    for exc in (FaultsHalted("halted by x"), FaultConflict("other run"), InvalidFaultArgument("bad")):
        back = error_from_wire(error_to_wire(exc), "root@h:22")
        assert type(back) is type(exc) and "on root@h:22" in str(back)
    assert type(error_from_wire({"type": "KeyError", "message": "x"}, "h")) is RemoteCallFailed


@pytest.mark.parametrize("kind, args, expires, message", [
    ("response_loss", {"service": "web"}, 60, "cannot be kept on a remote host"),
    ("nosuch", {"service": "web"}, 60, "unknown fault kind"),
    ("kill", {}, 60, "naming the service"),
    ("kill", {"service": "web", "configuration": {}}, 60, "must not carry a configuration"),
    ("kill", {"service": "web"}, -5, "not in the future"),
])
def test_the_keeper_refuses_bad_sessions_before_injecting(tmp_path, kind, args, expires, message):
    out = tmp_path / "out"
    with open(out, "w") as stdout:
        code = keep(str(tmp_path), kind, args, "run-x", time.time() + expires, stdout=stdout)
    assert code == 1
    answer = json.loads(out.read_text())
    assert answer["error"]["type"] == "InvalidFaultArgument" and message in answer["error"]["message"]
    assert not (tmp_path / "leases").exists()
