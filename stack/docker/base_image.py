"""Build the local base image without a registry: debootstrap + ``docker import``.

    python -m stack.docker.base_image [--name chaoscheckout/base:bookworm] [--force]

Machines without an image registry cannot ``FROM debian:bookworm-slim``; this builds an
equivalent minbase Debian 12 root filesystem (plus what the stack's images need:
python3, python3-venv, iproute2, postgresql-15, prometheus) with ``debootstrap`` and
imports it through the Docker SDK. Idempotent: an existing image of that name is kept
unless ``--force``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
import docker.errors

__all__ = ["BASE_IMAGE", "PACKAGES", "ensure_base_image", "main"]

BASE_IMAGE = "chaoscheckout/base:bookworm"
PACKAGES = ("python3", "python3-venv", "iproute2", "ca-certificates", "procps",
            "postgresql-15", "prometheus")
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT_S = 900
IMPORT_TIMEOUT_S = 600


def ensure_base_image(name: str = BASE_IMAGE, force: bool = False, workdir: Path | None = None,
                      say=print) -> str:
    """The id of image ``name``, building it first when it is missing (or ``force``)."""
    client = docker.from_env(timeout=IMPORT_TIMEOUT_S)
    try:
        if not force:
            try:
                return client.images.get(name).id
            except docker.errors.ImageNotFound:
                pass
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
        with tempfile.TemporaryDirectory(prefix="cc-base-", dir=workdir) as tmp:
            rootfs = Path(tmp) / "rootfs"
            say(f"debootstrap bookworm ({', '.join(PACKAGES)}) into {rootfs}")
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 "bookworm", str(rootfs), MIRROR],
                check=True, timeout=DEBOOTSTRAP_TIMEOUT_S, capture_output=True,
            )
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                         "usr/share/man"):
                shutil.rmtree(rootfs / junk, ignore_errors=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
            tarball = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."],
                           check=True, timeout=IMPORT_TIMEOUT_S, capture_output=True)
            repo, _, tag = name.partition(":")
            say(f"docker import {tarball} as {name}")
            client.api.import_image_from_file(str(tarball), repository=repo, tag=tag or "latest")
        return client.images.get(name).id
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.docker.base_image",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=BASE_IMAGE)
    parser.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    args = parser.parse_args(argv)
    try:
        print(ensure_base_image(args.name, args.force))
    except (subprocess.SubprocessError, docker.errors.DockerException, RuntimeError, OSError) as exc:
        print(f"base image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
