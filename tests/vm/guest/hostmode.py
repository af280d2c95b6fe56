"""Host mode of the VM (``ccvm.mode=host``): a long-running second host for the stack.

Run by /opt/ccvm/init as root (exec'd: this is PID 1). It sets the guest up, then
replaces itself with supervisord (PID 1 from then on, so it also reaps orphans). What the guest runs:

- ``eth0`` (virtio-net, QEMU user networking with ``restrict=on``): 10.0.2.15/24. The host
  reaches sshd (port 22) and payments' relay (``PAYMENTS_GUEST_PORT``) through QEMU's
  ``hostfwd``; the guest reaches the host's provider path only through the ``guestfwd``
  address ``PROVIDER_FWD`` (QEMU connects it to the fault proxy's provider port on the
  host's 127.0.0.1). Nothing else leaves the guest.
- network namespace ``payments`` (veth pair ``veth-host`` 10.77.0.1 / ``veth-pay``
  10.77.0.2): the stack's real payments service listens on 10.77.0.2 inside it. Two relays
  in the root namespace connect it to eth0: callers -> 10.0.2.15:PORT -> 10.77.0.2:PORT,
  payments -> 10.77.0.1:PROVIDER_PORT -> PROVIDER_FWD. netem on payments' namespace
  (``veth-pay`` egress) therefore slows every packet payments sends (its answers to
  checkout, its calls to the provider) and nothing of sshd or the relays.
- supervisord (state dir ``/var/lib/chaoscheckout``: ``services.json`` with payments as a
  local chaos target with ``netns: payments``, ``leases/``, ``owners/``) runs sshd, the
  relays, payments and the reaper.

The seed disk (``/dev/vdb``, a tar archive written by the host per stack) carries
``ssh_host_ed25519_key``, ``authorized_keys`` and ``seed.json`` (payments' settings); the
cached image holds no key. A setup failure prints ``ccvm-host ... FAILED`` and powers off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

PY = "/opt/cc/bin/python"
REPO = "/opt/ccvm/repo"
SEED_DEV = "/dev/vdb"
SEED_DIR = Path("/run/ccseed")
STATE_DIR = Path("/var/lib/chaoscheckout")
NETNS = "payments"
GUEST_ADDR = "10.0.2.15"
PAY_ADDR = "10.77.0.2"
HOST_SIDE_ADDR = "10.77.0.1"
PAYMENTS_GUEST_PORT = 18102
PROVIDER_RELAY_PORT = 18113
PROVIDER_FWD = ("10.0.2.100", 18113)
CMD_TIMEOUT_S = 60
SEED_FILES = ("ssh_host_ed25519_key", "authorized_keys", "seed.json")
PASSTHROUGH_PREFIX = "PAYMENTS_"

sys.path.insert(0, REPO)  # the stack's code, as copied into the image (tests/vm/build.py)
from stack import netns  # noqa: E402
from stack.netns import VethLink  # noqa: E402

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"ccvm-host [{time.monotonic() - T0:6.1f}s] {message}", flush=True)


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def read_seed() -> dict:
    """Unpack the seed disk's tar archive into /run/ccseed (0700, root) and return seed.json."""
    SEED_DIR.mkdir(mode=0o700, exist_ok=True)
    with open(SEED_DEV, "rb") as dev, tarfile.open(fileobj=dev, mode="r|") as tar:
        for member in tar:
            if member.name not in SEED_FILES or not member.isfile():
                raise RuntimeError(f"unexpected seed entry {member.name!r}")
            data = tar.extractfile(member).read()
            path = SEED_DIR / member.name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    missing = [name for name in SEED_FILES if not (SEED_DIR / name).is_file()]
    if missing:
        raise RuntimeError(f"seed disk lacks {', '.join(missing)}")
    return json.loads((SEED_DIR / "seed.json").read_text())


def network_card(timeout_s: float = 60) -> str:
    """The virtio NIC (eth0 with ``net.ifnames=0``; whatever it is named otherwise)."""
    deadline = time.monotonic() + timeout_s
    while True:
        nics = sorted(n for n in os.listdir("/sys/class/net")
                      if n != "lo" and Path(f"/sys/class/net/{n}/device").exists())
        if nics:
            return nics[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no network card (interfaces: {os.listdir('/sys/class/net')})")
        time.sleep(0.2)


def setup_network() -> None:
    run(["modprobe", "virtio_net"])
    run(["ip", "link", "set", "lo", "up"])
    nic = network_card()
    run(["ip", "addr", "add", f"{GUEST_ADDR}/24", "dev", nic])
    run(["ip", "link", "set", nic, "up"])
    # the stack's own namespace builder (stack/netns.py), as `stack up` uses it
    netns.create(VethLink(NETNS, "veth-host", "veth-pay", HOST_SIDE_ADDR, PAY_ADDR, 24),
                 modules=("sch_netem", "veth"))


def write_sshd_config() -> Path:
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    conf = SEED_DIR / "sshd_config"
    conf.write_text("\n".join([
        f"ListenAddress {GUEST_ADDR}:22",
        f"HostKey {SEED_DIR / 'ssh_host_ed25519_key'}",
        f"AuthorizedKeysFile {SEED_DIR / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "PermitTunnel no",
        "MaxStartups 20:30:60",
        "ClientAliveInterval 10",
        "ClientAliveCountMax 3",
        "LogLevel INFO",
        "",
    ]))
    os.chmod(conf, 0o600)
    run(["/usr/sbin/sshd", "-t", "-f", str(conf)])
    return conf


def write_registry() -> None:
    """The guest's own registry: payments is a local chaos target in its namespace."""
    registry = {
        "runtime": "local",
        "supervisor_url": f"unix://{STATE_DIR / 'ctl' / 'supervisord.sock'}",
        "prometheus_url": None,
        "proxy_control_url": None,
        "services": {
            "payments": {
                "host": PAY_ADDR, "port": PAYMENTS_GUEST_PORT, "process": "payments",
                "health_url": f"http://{PAY_ADDR}:{PAYMENTS_GUEST_PORT}/healthz",
                "chaos_target": True, "data_dir": None, "netns": NETNS, "proxy": None,
            },
        },
        "extra": {"state_dir": str(STATE_DIR), "vm_host_mode": True},
    }
    path = STATE_DIR / "services.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(registry, indent=2))
    os.replace(tmp, path)


def render_supervisord(seed: dict, sshd_conf: Path) -> Path:
    """supervisord.conf through the stack's own renderer (stack/supervisord.py)."""
    from stack.settings import StackSettings
    from stack.supervisord import Program, render_conf

    settings = StackSettings(state_dir=STATE_DIR, port_base=18100, pg_disk_size="64m",
                             project_dir=Path(REPO))
    for sub, mode in (("logs", 0o700), ("ctl", 0o700), ("leases", 0o700), ("owners", 0o700)):
        (STATE_DIR / sub).mkdir(mode=mode, parents=True, exist_ok=True)
    common = {"CHAOSCHECKOUT_STATE_DIR": str(STATE_DIR), "PYTHONUNBUFFERED": "1", "PYTHONPATH": REPO}
    settings_env = {k: str(v) for k, v in (seed.get("payments_env") or {}).items()
                    if k.startswith(PASSTHROUGH_PREFIX)}
    payments_env = dict(common, **settings_env,
                        PAYMENTS_PORT=str(PAYMENTS_GUEST_PORT), CHAOSCHECKOUT_BIND_HOST=PAY_ADDR,
                        PAYMENTS_PROVIDER_URL=f"http://{HOST_SIDE_ADDR}:{PROVIDER_RELAY_PORT}")
    relay = [PY, f"{REPO}/stack/relay.py"]
    programs = [
        Program("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_conf)], autorestart=True),
        Program("relay-payments", [*relay, GUEST_ADDR, str(PAYMENTS_GUEST_PORT), PAY_ADDR,
                                   str(PAYMENTS_GUEST_PORT)], autorestart=True),
        Program("relay-provider", [*relay, HOST_SIDE_ADDR, str(PROVIDER_RELAY_PORT),
                                   *PROVIDER_FWD[:1], str(PROVIDER_FWD[1])], autorestart=True),
        Program("reaper", [PY, "-m", "chaoscheckout.faults.reaper", "--state-dir", str(STATE_DIR)],
                autorestart=True, environment=common),
        # a killed payments stays down (the kill fault); started at boot
        Program("payments", ["ip", "netns", "exec", NETNS, PY, "-m", "stack.services.payments"],
                autorestart=False, autostart=True, environment=payments_env, startsecs=1),
    ]
    return render_conf(settings, programs)


def power_off() -> None:
    os.sync()
    Path("/proc/sysrq-trigger").write_text("o")
    time.sleep(10)
    sys.exit(1)  # PID 1 exiting panics; panic=-1 and -no-reboot end QEMU


def main() -> None:
    log(f"kernel {os.uname().release}; uptime {Path('/proc/uptime').read_text().split()[0]} s")
    try:
        seed = read_seed()
        setup_network()
        sshd_conf = write_sshd_config()
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(STATE_DIR, 0o700)
        write_registry()
        conf = render_supervisord(seed, sshd_conf)
    except Exception as exc:  # noqa: BLE001 - the console is all the host sees
        log(f"FAILED: {exc!r}\n{traceback.format_exc()[-2000:]}")
        power_off()
    log(f"setup done; exec supervisord -n -c {conf}")
    os.execv(f"{Path(PY).parent}/supervisord", [f"{Path(PY).parent}/supervisord", "-n", "-c", str(conf)])


if __name__ == "__main__":
    main()
