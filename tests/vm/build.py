"""Build (or reuse) the QEMU guest image in which tc netem is exercised for real.

This machine's kernel has no ``sch_netem``; Debian's ``linux-image-amd64`` kernel has it.
The image is a debootstrap rootfs (minbase + python3, iproute2, kmod, procps, openssh-server) with the
host-installed Debian kernel's modules copied in, this package and its dependencies
installed into ``/opt/cc`` (a venv) from wheels built on the host, and the guest harness
(``tests/vm/guest/``) in ``/opt/ccvm``. It is cached under
``$CHAOSCHECKOUT_VM_CACHE`` (default ``/var/cache/chaoscheckout-vm``) by a hash of its
inputs, so nothing is rebuilt when nothing changed:

- ``base-<hash>/``: the debootstrap rootfs with the guest's kernel modules (suite, mirror,
  package and module lists, kernel version, recipe);
- ``wheels-<hash>/``: the dependency wheels, ``stack`` extra included (``setup.cfg``,
  ``pyproject.toml``);
- ``image-<hash>/``: ``rootfs.img``, ``vmlinuz``, ``initrd.img``, ``meta.json`` (all of the
  above plus the package sources, ``stack/services`` and the guest harness).

Usage: ``python tests/vm/build.py [--cache-dir DIR] [--force] [--json]``. The host tools it
needs come from `make setup-test-tools`. Run as root (debootstrap, chroot).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Image", "build_image", "image_key", "DEFAULT_CACHE_DIR"]

ROOT = Path(__file__).resolve().parents[2]
VM_DIR = Path(__file__).resolve().parent
GUEST_DIR = VM_DIR / "guest"
DEFAULT_CACHE_DIR = Path(os.environ.get("CHAOSCHECKOUT_VM_CACHE", "/var/cache/chaoscheckout-vm"))

SUITE = "bookworm"
MIRROR = os.environ.get("CHAOSCHECKOUT_VM_MIRROR", "http://deb.debian.org/debian")
GUEST_PACKAGES = ["python3", "python3-venv", "iproute2", "kmod", "procps", "openssh-server"]
# kernel modules the guest loads (copied with their dependencies; the initrd has the disk ones);
# virtio_net: the host mode's network card (QEMU user networking)
GUEST_MODULES = ["sch_netem", "veth", "virtio_net"]
# host tool -> Debian package providing it
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "depmod": "kmod",
}
# package sources whose content goes into the image key
PACKAGE_FILES = ["setup.cfg", "pyproject.toml"]
PACKAGE_TREES = ["chaoscheckout"]
# the stack's services the guest runs for real (payments, provider); run from /opt/ccvm/repo
# (settings and supervisord: the host mode renders its supervisord.conf with the stack's code)
STACK_FILES = ["stack/__init__.py", "stack/settings.py", "stack/supervisord.py", "stack/procs.py",
               "stack/netns.py", "stack/relay.py"]  # the namespace builder and relay guest.py uses
STACK_TREES = ["stack/services"]
EXTRAS = "stack"  # the package is installed in the guest with this extra

KEEP_PER_LAYER = 2  # cache entries of each layer kept (newest first); older ones are pruned
LOCK_TIMEOUT_S = 1800
DEBOOTSTRAP_TIMEOUT_S = 900
PIP_TIMEOUT_S = 900
STEP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Image:
    """A built guest image: everything QEMU needs to boot it."""

    key: str
    directory: Path
    rootfs: Path
    kernel: Path
    initrd: Path
    kernel_version: str
    cached: bool
    build_s: float

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def build_image(cache_dir: Path = DEFAULT_CACHE_DIR, force: bool = False) -> Image:
    """Return the cached image for the current inputs, building what is missing.

    The inputs (package sources, guest harness) are copied to a snapshot first and both
    the key and the image come from that snapshot, so edits made meanwhile in the work
    tree cannot end up in an image cached under another key.
    """
    started = time.monotonic()
    _require_root()
    _ensure_host_tools()
    kernel_version = _pick_kernel()
    with tempfile.TemporaryDirectory(prefix="ccvm-inputs-") as snapshot_dir:
        inputs = Path(snapshot_dir)
        _snapshot_inputs(inputs)
        key = image_key(kernel_version, inputs)
        image_dir = cache_dir / f"image-{key}"
        if (image_dir / "meta.json").is_file() and not force:
            _progress(f"image cached: {image_dir}")
            return _image(image_dir, key, kernel_version, cached=True,
                          build_s=time.monotonic() - started)
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir):  # another test run may be building the same image right now
            if (image_dir / "meta.json").is_file() and not force:
                _progress(f"image built meanwhile by another process: {image_dir}")
                return _image(image_dir, key, kernel_version, cached=True,
                              build_s=time.monotonic() - started)
            _build(cache_dir, image_dir, inputs, key, kernel_version, force, started)
            _prune(cache_dir)
    build_s = time.monotonic() - started
    _progress(f"image built in {build_s:.1f} s: {image_dir}")
    return _image(image_dir, key, kernel_version, cached=False, build_s=build_s)


def image_key(kernel_version: str, inputs: Path | None = None) -> str:
    """Hash of every input of the image: base inputs, this script, sources, guest harness.

    ``inputs`` is a snapshot made by the build (default: a fresh one of the work tree).
    """
    if inputs is None:
        with tempfile.TemporaryDirectory(prefix="ccvm-inputs-") as snapshot_dir:
            _snapshot_inputs(Path(snapshot_dir))
            return image_key(kernel_version, Path(snapshot_dir))
    digest = hashlib.sha256()
    digest.update(_base_key(kernel_version).encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted(p for p in inputs.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(inputs)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------

def _build(cache_dir: Path, image_dir: Path, inputs: Path, key: str, kernel_version: str,
           force: bool, started: float) -> None:
    base = _base_rootfs(cache_dir, kernel_version, force)
    wheels = _wheels(cache_dir, inputs / "src", force)
    work = Path(tempfile.mkdtemp(prefix="image-build-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        _step("copy base rootfs", ["cp", "-a", str(base), str(rootfs)])
        _install_package(rootfs, wheels, inputs / "src")
        _install_guest_harness(rootfs, inputs / "guest", inputs / "repo")
        _make_ext4(rootfs, work / "rootfs.img")
        shutil.copy2(f"/boot/vmlinuz-{kernel_version}", work / "vmlinuz")
        shutil.copy2(f"/boot/initrd.img-{kernel_version}", work / "initrd.img")
        shutil.rmtree(rootfs)
        meta = {"key": key, "kernel_version": kernel_version, "built_at": time.time(),
                "build_s": round(time.monotonic() - started, 1), "packages": GUEST_PACKAGES}
        (work / "meta.json").write_text(json.dumps(meta, indent=2))
        if image_dir.exists():
            shutil.rmtree(image_dir)
        os.replace(work, image_dir)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _locked(cache_dir: Path):
    with open(cache_dir / ".lock", "w") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cache_dir}/.lock held for over {LOCK_TIMEOUT_S} s") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(cache_dir: Path) -> None:
    """Keep the newest KEEP_PER_LAYER entries of each layer; delete older ones and leftovers."""
    for leftover in cache_dir.glob("image-build-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for layer in ("image", "base", "wheels"):
        entries = sorted((p for p in cache_dir.glob(f"{layer}-*") if p.is_dir()),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP_PER_LAYER:]:
            _progress(f"pruning old cache entry {old.name}")
            shutil.rmtree(old, ignore_errors=True)


def _progress(message: str) -> None:
    print(f"[vm-build {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _step(label: str, argv: list[str], timeout: float = STEP_TIMEOUT_S, **kwargs) -> None:
    started = time.monotonic()
    _progress(f"{label} ...")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        tail = (proc.stdout[-2000:] + proc.stderr[-2000:]).strip()
        raise RuntimeError(f"{label} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    _progress(f"{label} done in {time.monotonic() - started:.1f} s")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("building the VM image needs root (debootstrap, chroot, apt)")


def _ensure_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not list(Path("/boot").glob("vmlinuz-*")):
        missing.append("linux-image-amd64")
    if missing:  # install steps live in the Makefile
        raise RuntimeError(f"missing host packages {', '.join(missing)}: run `make setup-test-tools` "
                           "(part of `make test`) or apt-get install them")


def _pick_kernel() -> str:
    """The newest /boot kernel that has an initrd and a sch_netem module."""
    versions = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (Path("/boot") / f"initrd.img-{version}").is_file() and any(
            (modules / "kernel/net/sched").glob("sch_netem.ko*")
        ):
            versions.append(version)
    if not versions:
        raise RuntimeError(
            "no usable guest kernel: need /boot/vmlinuz-V, /boot/initrd.img-V and "
            "/lib/modules/V/kernel/net/sched/sch_netem.ko* (apt-get install linux-image-amd64)"
        )
    return sorted(versions, key=_version_tuple)[-1]


def _version_tuple(version: str) -> tuple:
    parts = version.replace("-", ".").split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def _base_key(kernel_version: str) -> str:
    digest = hashlib.sha256()
    for item in (SUITE, MIRROR, kernel_version, *GUEST_PACKAGES, *GUEST_MODULES):
        digest.update(item.encode() + b"\0")
    for recipe in (_base_rootfs, _copy_modules):  # the recipe, not the whole script
        digest.update(inspect.getsource(recipe).encode())
    return digest.hexdigest()[:16]


def _wheels_key(src: Path) -> str:
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        digest.update((src / name).read_bytes())
    digest.update(sys.version.split()[0].rsplit(".", 1)[0].encode())
    digest.update(EXTRAS.encode())
    digest.update(inspect.getsource(_wheels).encode())
    return digest.hexdigest()[:16]


def _base_rootfs(cache_dir: Path, kernel_version: str, force: bool) -> Path:
    base = cache_dir / f"base-{_base_key(kernel_version)}"
    if (base / "rootfs" / "etc" / "os-release").exists() and (base / "done").exists() and not force:
        _progress(f"base rootfs cached: {base}")
        return base / "rootfs"
    if base.exists():
        shutil.rmtree(base)
    rootfs = base / "rootfs"
    rootfs.mkdir(parents=True)
    _step(
        f"debootstrap {SUITE} ({', '.join(GUEST_PACKAGES)})",
        ["debootstrap", "--variant=minbase", f"--include={','.join(GUEST_PACKAGES)}",
         SUITE, str(rootfs), MIRROR],
        timeout=DEBOOTSTRAP_TIMEOUT_S,
    )
    (rootfs / "lib/modules").mkdir(parents=True, exist_ok=True)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    _copy_modules(rootfs, kernel_version, GUEST_MODULES)
    _step("depmod", ["depmod", "-b", str(rootfs), kernel_version])
    (rootfs / "etc/hostname").write_text("ccvm\n")
    # openssh-server's postinst generated host keys: never ship them in a cached image (the
    # host mode gets a per-stack host key from its seed disk)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (base / "done").write_text(str(time.time()))
    return rootfs


def _copy_modules(rootfs: Path, kernel_version: str, names: list[str]) -> None:
    """Copy the named modules of the host's kernel, their dependencies and its index files."""
    src = Path("/lib/modules") / kernel_version
    dst = rootfs / "lib/modules" / kernel_version
    todo, done = list(names), set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        info = {}
        for field_name in ("filename", "depends"):
            info[field_name] = subprocess.run(
                ["modinfo", "-k", kernel_version, "-F", field_name, name],
                capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=True,
            ).stdout.strip()
        module = Path(info["filename"])
        target = dst / module.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, target)
        todo += [dep for dep in info["depends"].split(",") if dep]
    for index in src.glob("modules.builtin*"):
        shutil.copy2(index, dst / index.name)
    shutil.copy2(src / "modules.order", dst / "modules.order")
    _progress(f"kernel modules {kernel_version}: {', '.join(sorted(done))}")


def _wheels(cache_dir: Path, src: Path, force: bool) -> Path:
    """Dependency wheels for the package (built/downloaded with the host's pip)."""
    wheels = cache_dir / f"wheels-{_wheels_key(src)}"
    if (wheels / "done").exists() and not force:
        _progress(f"dependency wheels cached: {wheels}")
        return wheels
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="ccsrc-") as tmp:
        build_src = Path(tmp) / "src"  # pip may write build files next to the sources
        shutil.copytree(src, build_src)
        _step(f"pip wheel (package[{EXTRAS}] + dependencies)",
              [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
               f"{build_src}[{EXTRAS}]"],
              timeout=PIP_TIMEOUT_S)
    for own in wheels.glob("chaostoolkit_checkout-*.whl"):
        own.unlink()  # rebuilt from the current sources for every image
    (wheels / "done").write_text(str(time.time()))
    return wheels


def _snapshot_inputs(dst: Path) -> None:
    """Copy the image's inputs: package sources to ``dst/src``, the stack's services to
    ``dst/repo``, the guest harness to ``dst/guest``.

    Only the package (never the work tree itself) is built, so building writes nothing
    into the work tree.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src = dst / "src"
    src.mkdir(parents=True)
    for name in PACKAGE_FILES:
        shutil.copy2(ROOT / name, src / name)
    readme = ROOT / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "chaoscheckout\n")
    for tree in PACKAGE_TREES:
        shutil.copytree(ROOT / tree, src / tree, ignore=ignore)
    repo = dst / "repo"
    for name in STACK_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    for tree in STACK_TREES:
        shutil.copytree(ROOT / tree, repo / tree, ignore=ignore)
    shutil.copytree(GUEST_DIR, dst / "guest", ignore=ignore)


def _install_package(rootfs: Path, wheels: Path, src: Path) -> None:
    staging = rootfs / "tmp" / "wheels"
    shutil.copytree(wheels, staging)
    with tempfile.TemporaryDirectory(prefix="ccsrc-") as tmp:
        build_src = Path(tmp) / "src"
        shutil.copytree(src, build_src)
        _step("pip wheel (package only)",
              [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(staging),
               str(build_src)],
              timeout=PIP_TIMEOUT_S)
    _step("guest venv /opt/cc", ["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", "/opt/cc"])
    _step(
        "guest pip install (offline, from host wheels)",
        ["chroot", str(rootfs), "/opt/cc/bin/pip", "install", "-q", "--no-index",
         "--disable-pip-version-check", "--find-links", "/tmp/wheels",
         f"chaostoolkit-checkout[{EXTRAS}]"],
        timeout=PIP_TIMEOUT_S,
    )
    shutil.rmtree(staging)


def _install_guest_harness(rootfs: Path, guest: Path, repo: Path) -> None:
    dst = rootfs / "opt" / "ccvm"
    shutil.copytree(guest, dst)
    shutil.copytree(repo, dst / "repo")
    os.chmod(dst / "init", 0o755)


def _make_ext4(rootfs: Path, image: Path) -> None:
    used = int(subprocess.run(["du", "-sb", str(rootfs)], capture_output=True, text=True,
                              timeout=STEP_TIMEOUT_S, check=True).stdout.split()[0])
    size_mb = used * 13 // 10 // (1024 * 1024) + 256
    _step(f"mkfs.ext4 -d ({size_mb} MiB)",
          ["mkfs.ext4", "-q", "-F", "-L", "ccroot", "-d", str(rootfs), str(image), f"{size_mb}M"])


def _image(directory: Path, key: str, kernel_version: str, cached: bool, build_s: float) -> Image:
    return Image(key=key, directory=directory, rootfs=directory / "rootfs.img",
                 kernel=directory / "vmlinuz", initrd=directory / "initrd.img",
                 kernel_version=kernel_version, cached=cached, build_s=round(build_s, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--force", action="store_true", help="rebuild every layer")
    parser.add_argument("--json", action="store_true", help="print the image as JSON")
    args = parser.parse_args(argv)
    image = build_image(args.cache_dir, force=args.force)
    if args.json:
        print(json.dumps(image.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
