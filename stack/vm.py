"""Payments on a second host: the QEMU VM of ``stack up --remote-payments vm``.

The cached guest image (tests/vm/build.py, content-hash cache) boots in host mode
(``ccvm.mode=host``, tests/vm/guest/hostmode.py): sshd, the stack's payments service in
its own network namespace, and the reaper, under the guest's supervisord. On this machine
QEMU runs as the local supervisord's program ``vm`` (so ``stack down`` stops it), under
software emulation, with user networking ``restrict=on``; the only ways in and out are:

- ``hostfwd`` 127.0.0.1:<base+60> -> guest sshd (port 22);
- ``hostfwd`` 127.0.0.1:<base+2> -> guest payments (the stack's payments port, so the
  fault proxy's payments route and the health checks are unchanged);
- ``guestfwd`` 10.0.2.100:18113 in the guest -> this machine's 127.0.0.1:<base+13> (the
  fault proxy's provider route): payments' provider calls.

Per stack (never in the cached image), ``<state_dir>/secrets/ssh/`` gets a fresh host key
for the guest and a client key for the controller; the guest receives its host key, the
client's public key and payments' settings (``PAYMENTS_*`` of the caller's environment)
on a small read-only seed disk (a tar archive); ``known_hosts`` pins the guest's key.
The controller's registry marks payments ``remote`` (runtime ``ssh``; docs/vm-host.md).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.settings import StackSettings
from stack.supervisord import Program

__all__ = [
    "VmError",
    "VmFiles",
    "GUEST_STATE_DIR",
    "GUEST_PYTHON",
    "files",
    "build_image",
    "prepare",
    "program",
    "remote_entry",
    "wait_ssh_banner",
    "console_lines",
    "usable",
]

GUEST_ADDR = "10.0.2.15"
GUEST_PAYMENTS_PORT = 18102  # tests/vm/guest/hostmode.py PAYMENTS_GUEST_PORT
GUEST_PROVIDER_FWD = ("10.0.2.100", 18113)  # hostmode.py PROVIDER_FWD
GUEST_STATE_DIR = "/var/lib/chaoscheckout"
GUEST_PYTHON = "/opt/cc/bin/python"
MEMORY_MB = int(os.environ.get("CHAOSCHECKOUT_VM_MEMORY_MB", "768"))
SEED_BYTES = 1024 * 1024
KEYGEN_TIMEOUT_S = 30
# an emulated guest under load answers the SSH banner slowly (5 s timed out: journals/FINDINGS.md)
CONNECT_TIMEOUT_S = int(os.environ.get("CHAOSCHECKOUT_VM_CONNECT_TIMEOUT_S", "20"))
# remote calls run a fresh Python in the guest; under software emulation that takes seconds
CALL_TIMEOUT_S = int(os.environ.get("CHAOSCHECKOUT_VM_CALL_TIMEOUT_S", "60"))
# the keeper in the emulated guest reads heartbeats late when its vCPU is starved: a 1 s miss
# would revert a live controller's fault
KEEPER_MISS_S = float(os.environ.get("CHAOSCHECKOUT_VM_KEEPER_MISS_S", "5"))
GUESTFWD_RELAY = Path(__file__).resolve().parent / "guestfwd_relay.py"


class VmError(Exception):
    """The VM cannot be prepared or did not come up; one actionable line."""


@dataclass(frozen=True)
class VmFiles:
    """Where a stack's VM files live (all under its state dir)."""

    ssh_dir: Path
    client_key: Path
    known_hosts: Path
    host_key: Path
    seed_image: Path
    console_log: Path


def files(settings: StackSettings) -> VmFiles:
    ssh = settings.secrets_dir / "ssh"
    return VmFiles(ssh_dir=ssh, client_key=ssh / "id_ed25519", known_hosts=ssh / "known_hosts",
                   host_key=ssh / "guest_host_ed25519_key", seed_image=ssh / "seed.img",
                   console_log=settings.logs_dir / "vm-console.log")


def usable() -> str | None:
    """None when this machine can run the VM, else what is missing."""
    missing = [tool for tool in ("qemu-system-x86_64", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not found: run `make setup-test-tools` "
                "(apt-get install qemu-system-x86 openssh-client)")
    return None


def build_image(settings: StackSettings, progress: Callable[[str], None]):
    """The cached guest image (tests/vm/build.py), built when its inputs changed."""
    path = settings.project_dir / "tests" / "vm" / "build.py"
    if not path.is_file():
        raise VmError(f"{path} missing: the VM image recipe lives in the repository's tests/vm/")
    spec = importlib.util.spec_from_file_location("ccvm_build", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ccvm_build"] = module
    spec.loader.exec_module(module)
    started = time.monotonic()
    try:
        image = module.build_image()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise VmError(f"VM image build failed: {exc}") from None
    progress(f"vm image {'cached' if image.cached else 'built'} in {time.monotonic() - started:.1f}s: "
             f"{image.directory}")
    return image


def prepare(settings: StackSettings, env: Mapping[str, str]) -> VmFiles:
    """Fresh keys, known_hosts and the seed disk for this stack (secrets/ssh, 0700)."""
    vm = files(settings)
    shutil.rmtree(vm.ssh_dir, ignore_errors=True)
    vm.ssh_dir.mkdir(mode=0o700, parents=True)
    os.chmod(vm.ssh_dir, 0o700)
    for key in (vm.client_key, vm.host_key):
        _keygen(key)
    host_pub = Path(f"{vm.host_key}.pub").read_text().split()
    known = f"[127.0.0.1]:{settings.port('vm_ssh')} {host_pub[0]} {host_pub[1]}\n"
    _write_private(vm.known_hosts, known.encode())
    seed = {"payments_env": {k: v for k, v in env.items() if k.startswith("PAYMENTS_")}}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("ssh_host_ed25519_key", vm.host_key.read_bytes()),
                           ("authorized_keys", Path(f"{vm.client_key}.pub").read_bytes()),
                           ("seed.json", json.dumps(seed).encode())):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    raw = archive.getvalue()
    if len(raw) > SEED_BYTES:
        raise VmError(f"seed archive {len(raw)} bytes > {SEED_BYTES}")
    _write_private(vm.seed_image, raw.ljust(SEED_BYTES, b"\0"))
    return vm


def program(settings: StackSettings, image, vm: VmFiles) -> Program:
    """The supervisord program running QEMU (killed with the stack; never restarted)."""
    for path in (image.kernel, image.initrd, image.rootfs, vm.seed_image, GUESTFWD_RELAY,
                 Path(sys.executable)):
        if "," in str(path):
            raise VmError(f"{path}: QEMU option values cannot hold a comma here")
    append = " ".join(["root=/dev/vda", "rw", "rootfstype=ext4", "console=ttyS0", "panic=-1",
                       "quiet", "loglevel=3", "fsck.mode=skip", "net.ifnames=0", "init=/opt/ccvm/init",
                       "ccvm.mode=host"])
    fwd_cmd = f"{sys.executable} -I -S {GUESTFWD_RELAY} 127.0.0.1 {settings.port('proxy_provider')}"
    netdev = ",".join([
        "user", "id=net0", "restrict=on", "ipv6=off",
        f"hostfwd=tcp:127.0.0.1:{settings.port('vm_ssh')}-{GUEST_ADDR}:22",
        f"hostfwd=tcp:127.0.0.1:{settings.port('payments')}-{GUEST_ADDR}:{GUEST_PAYMENTS_PORT}",
        f"guestfwd=tcp:{GUEST_PROVIDER_FWD[0]}:{GUEST_PROVIDER_FWD[1]}-cmd:{fwd_cmd}",
    ])
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(MEMORY_MB), "-smp", "1",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
        "-drive", f"file={image.rootfs},if=virtio,format=raw,snapshot=on",
        "-drive", f"file={vm.seed_image},if=virtio,format=raw,readonly=on",
        "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0",
        "-display", "none", "-monitor", "none", "-serial", f"file:{vm.console_log}",
        "-no-reboot",
    ]
    return Program("vm", argv, autorestart=False, autostart=True, startsecs=1, startretries=0)


def remote_entry(settings: StackSettings) -> dict[str, Any]:
    """The registry's ``remote`` object for payments (docs/ssh.md; paths relative to the
    controller's state dir)."""
    vm = files(settings)
    return {
        "runtime": "ssh",
        "ssh_host": "127.0.0.1", "ssh_port": settings.port("vm_ssh"), "user": "root",
        "key_file": str(vm.client_key.relative_to(settings.state_dir)),
        "known_hosts": str(vm.known_hosts.relative_to(settings.state_dir)),
        "python": GUEST_PYTHON,
        "state_dir": GUEST_STATE_DIR,
        "service": "payments",
        "connect_timeout_s": CONNECT_TIMEOUT_S, "call_timeout_s": CALL_TIMEOUT_S,
        "keeper_miss_s": KEEPER_MISS_S,
    }


def wait_ssh_banner(port: int, timeout_s: float = 2.0) -> str | None:
    """The SSH banner the guest's sshd sends through the hostfwd port, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            data = sock.recv(256)
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line if line.startswith("SSH-") else None


def console_lines(settings: StackSettings, seen: int) -> tuple[list[str], int]:
    """New complete ``ccvm`` lines of the guest console since byte ``seen``."""
    try:
        text = files(settings).console_log.read_text(errors="replace")
    except OSError:
        return [], seen
    complete = text[: text.rfind("\n") + 1]
    lines = [line for line in complete[seen:].splitlines() if line.startswith("ccvm")]
    return lines, len(complete)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _keygen(path: Path) -> None:
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "chaoscheckout-vm",
                           "-f", str(path)], capture_output=True, text=True, timeout=KEYGEN_TIMEOUT_S)
    if proc.returncode != 0:
        raise VmError(f"ssh-keygen failed: {proc.stderr.strip()}")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
