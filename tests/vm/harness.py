"""Boot the netem test VM under QEMU and return the guest's JSON result.

The root disk is attached with ``snapshot=on`` (the cached image is never written); a
second raw disk receives the result JSON (``/dev/vdb`` in the guest); the serial console
goes to a log file that is streamed as progress. QEMU runs under a hard timeout and is
killed when it passes it. ``panic=-1`` plus ``-no-reboot`` make QEMU exit if the guest's
init dies instead of powering off.

Usage: ``python tests/vm/harness.py [--mode package|plain] [--delay-ms 100] ...`` (builds
or reuses the image first, prints the result JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BootResult", "boot", "qemu_usable", "load_build_module"]

VM_DIR = Path(__file__).resolve().parent
RESULTS_DISK_BYTES = 8 * 1024 * 1024
DEFAULT_TIMEOUT_S = 600
BEGIN, END = "CCVM-RESULT-BEGIN", "CCVM-RESULT-END"


@dataclass
class BootResult:
    result: dict[str, Any] | None
    console: str
    wall_s: float
    returncode: int | None
    timed_out: bool
    init_up_uptime_s: float | None = None
    notes: list[str] = field(default_factory=list)


def load_build_module():
    """Import tests/vm/build.py without making tests/ a package."""
    spec = importlib.util.spec_from_file_location("ccvm_build", VM_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ccvm_build"] = module
    spec.loader.exec_module(module)
    return module


def qemu_usable() -> str | None:
    """None when QEMU can run here, else the reason it cannot."""
    if sys.platform != "linux":
        return f"QEMU harness needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "building the VM image needs root (debootstrap, chroot)"
    if shutil.which("qemu-system-x86_64") is None:
        return "no qemu-system-x86_64: run `make setup-test-tools` (part of `make test`)"
    return None


def boot(
    image,
    mode: str = "package",
    delay_ms: int = 100,
    jitter_ms: int = 10,
    samples: int = 15,
    lease_s: float = 10,
    chaos_run: bool = True,
    memory_mb: int = 1024,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress=print,
) -> BootResult:
    """Boot ``image`` (a build.Image) once and collect the guest's result."""
    if mode not in ("package", "plain"):
        raise ValueError(f"mode must be 'package' or 'plain', got {mode!r}")
    append = " ".join([
        "root=/dev/vda", "rw", "rootfstype=ext4", "console=ttyS0", "panic=-1", "quiet",
        "loglevel=3", "fsck.mode=skip", "init=/opt/ccvm/init",
        f"ccvm.mode={mode}", f"ccvm.delay_ms={int(delay_ms)}", f"ccvm.jitter_ms={int(jitter_ms)}",
        f"ccvm.samples={int(samples)}", f"ccvm.lease_s={float(lease_s):g}",
        f"ccvm.chaos_run={1 if chaos_run else 0}",
    ])
    with tempfile.TemporaryDirectory(prefix="ccvm-run-") as tmp:
        results_disk = Path(tmp) / "results.img"
        with open(results_disk, "wb") as fh:
            fh.truncate(RESULTS_DISK_BYTES)
        console_log = Path(tmp) / "console.log"
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mb), "-smp", "1",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
            "-drive", f"file={image.rootfs},if=virtio,format=raw,snapshot=on",
            "-drive", f"file={results_disk},if=virtio,format=raw",
            "-nic", "none", "-display", "none", "-monitor", "none",
            "-serial", f"file:{console_log}", "-no-reboot",
        ]
        progress(f"[vm] booting: {' '.join(argv[:8])} ... (timeout {timeout_s:.0f} s)")
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        timed_out = False
        seen = 0
        init_up = None
        while proc.poll() is None:
            if time.monotonic() - started > timeout_s:
                timed_out = True
                proc.kill()
                break
            time.sleep(0.5)
            seen, init_up = _stream(console_log, seen, started, progress, init_up)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        wall_s = time.monotonic() - started
        seen, init_up = _stream(console_log, seen, started, progress, init_up)
        qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        console = console_log.read_text(errors="replace") if console_log.exists() else ""
        notes = [f"qemu output: {qemu_out.strip()[-1000:]}"] if qemu_out.strip() else []
        result = _read_results_disk(results_disk) or _parse_console(console)
    progress(f"[vm] QEMU exited rc={proc.returncode} after {wall_s:.1f} s"
             f"{' (TIMED OUT, killed)' if timed_out else ''}")
    return BootResult(result=result, console=console, wall_s=round(wall_s, 1),
                      returncode=proc.returncode, timed_out=timed_out, init_up_uptime_s=init_up,
                      notes=notes)


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------

def _stream(console_log: Path, seen: int, started: float, progress, init_up):
    if not console_log.exists():
        return seen, init_up
    text = console_log.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    for line in complete[seen:].splitlines():
        if line.startswith("ccvm") and BEGIN not in line:
            progress(f"[vm +{time.monotonic() - started:5.1f}s] {line[:300]}")
            if line.startswith("ccvm: init up at "):
                try:
                    init_up = float(line.split()[4])
                except (IndexError, ValueError):
                    pass
    return len(complete), init_up


def _read_results_disk(path: Path) -> dict[str, Any] | None:
    raw = path.read_bytes().split(b"\0", 1)[0].strip()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _parse_console(console: str) -> dict[str, Any] | None:
    if BEGIN not in console or END not in console:
        return None
    body = console.split(BEGIN, 1)[1].split(END, 1)[0]
    try:
        return json.loads(body.strip())
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="package", choices=["package", "plain"])
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--jitter-ms", type=int, default=10)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--lease-s", type=float, default=10)
    parser.add_argument("--no-chaos-run", action="store_true", help="skip the in-VM `chaos run`")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--console", action="store_true", help="print the whole console log")
    args = parser.parse_args(argv)
    build = load_build_module()
    image = build.build_image()
    booted = boot(image, mode=args.mode, delay_ms=args.delay_ms, jitter_ms=args.jitter_ms,
                  samples=args.samples, lease_s=args.lease_s, chaos_run=not args.no_chaos_run,
                  timeout_s=args.timeout_s)
    if args.console or booted.result is None:
        print(booted.console)
    print(json.dumps({"image": image.to_dict(), "wall_s": booted.wall_s,
                      "init_up_uptime_s": booted.init_up_uptime_s, "timed_out": booted.timed_out,
                      "notes": booted.notes, "result": booted.result}, indent=2, default=str))
    return 0 if booted.result is not None else 1


if __name__ == "__main__":
    sys.exit(main())
