"""The docker stack's images: built from stack/docker/Dockerfile.*, each skipped while a hash
of its inputs (Dockerfile, the files it copies, the base image id) is unchanged; the app
image's pinned wheels downloaded once on the host (the builds run without network)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from stack.docker.compose import PROJECT_DIR, DockerStackError, Spec

__all__ = ["HASH_LABEL", "IMAGE_INPUTS", "CACHE_DIR", "build_images", "download_wheels"]

HASH_LABEL = "org.chaoscheckout.inputs-hash"
BUILD_TIMEOUT_S = 900
CACHE_DIR = Path(os.environ.get("CHAOSCHECKOUT_DOCKER_CACHE", "/var/tmp/chaoscheckout-docker-cache"))
# what each image is built from (besides the base image), for the rebuild-skip hash
IMAGE_INPUTS = {
    "stack/docker/Dockerfile.app": ("chaoscheckout", "stack", "stack/docker/requirements.txt"),
    "stack/docker/Dockerfile.postgres": ("stack/docker/postgres-entrypoint.sh", "stack/schema.sql",
                                         "stack/postgresql.conf", "stack/docker/roles.sql"),
    "stack/docker/Dockerfile.prometheus": ("stack/docker/prometheus.yml", "stack/prometheus/rules.yml"),
}


def build_images(client: Any, specs: list[Spec], base_image: str,
                 say: Callable[[str], None] = print) -> dict[str, str]:
    """Build every image whose inputs changed; returns image -> 'built'|'cached'."""
    from stack.docker.base_image import ensure_base_image

    base_id = ensure_base_image(base_image, say=say)
    done: dict[str, str] = {}
    for spec in specs:
        if not spec.dockerfile or spec.image in done:
            continue
        digest = _inputs_hash(spec.dockerfile, base_id)
        old = None
        try:
            old = client.images.get(spec.image)
            if old.labels.get(HASH_LABEL) == digest:
                done[spec.image] = "cached"
                say(f"image {spec.image}: inputs unchanged ({digest[:12]}), not rebuilt")
                continue
        except docker.errors.ImageNotFound:
            pass
        t0 = time.monotonic()
        _build(spec, digest, base_image, say)
        if old is not None and old.id != client.images.get(spec.image).id:
            try:  # the replaced image, now untagged (kept if a container still uses it)
                client.images.remove(old.id)
            except docker.errors.APIError:
                pass
        done[spec.image] = "built"
        say(f"image {spec.image}: built in {time.monotonic() - t0:.1f}s")
    for spec in specs:  # images without a build section must exist
        if spec.image not in done:
            client.images.get(spec.image)
    return done


def _inputs_hash(dockerfile: str, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for rel in (dockerfile, *IMAGE_INPUTS.get(dockerfile, ())):
        for path in _files(PROJECT_DIR / rel):
            digest.update(str(path.relative_to(PROJECT_DIR)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()

def _build(spec: Spec, digest: str, base_image: str, say: Callable[[str], None]) -> None:
    context = CACHE_DIR / "context"
    shutil.rmtree(context, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "wheels")
    for top in ("chaoscheckout", "stack"):
        shutil.copytree(PROJECT_DIR / top, context / top, ignore=ignore)
    wheels = context / "stack" / "docker" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    no_index = "0"
    if spec.dockerfile.endswith("Dockerfile.app"):
        for wheel in download_wheels(say):
            shutil.copy2(wheel, wheels / wheel.name)
        no_index = "1"
    say(f"building {spec.image} from {spec.dockerfile} (base {base_image})")
    client = docker.from_env(timeout=BUILD_TIMEOUT_S)
    try:
        client.images.build(
            path=str(context), dockerfile=spec.dockerfile, tag=spec.image, rm=True, forcerm=True,
            buildargs={"BASE_IMAGE": base_image, "PIP_NO_INDEX": no_index},
            labels={HASH_LABEL: digest}, network_mode="none", timeout=BUILD_TIMEOUT_S,
        )
    except docker.errors.BuildError as exc:
        tail = " | ".join(str(line.get("stream", line.get("error", ""))).strip()
                          for line in list(exc.build_log)[-5:])
        raise DockerStackError(f"build of {spec.image} failed: {exc.msg}: {tail}") from None
    finally:
        client.close()


def download_wheels(say: Callable[[str], None] = print) -> list[Path]:
    """Pinned wheels for the app image, downloaded once on the host (the build has no network)."""
    requirements = PROJECT_DIR / "stack" / "docker" / "requirements.txt"
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    cache = CACHE_DIR / f"wheels-{key}"
    if not (cache / ".complete").exists():
        cache.mkdir(parents=True, exist_ok=True)
        say(f"downloading wheels into {cache}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
             "--only-binary=:all:",
             "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
             "-d", str(cache), "-r", str(requirements)],
            check=True, timeout=300, capture_output=True,
        )
        (cache / ".complete").touch()
    return sorted(cache.glob("*.whl"))


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        if child.is_file() and "__pycache__" not in child.parts and "wheels" not in child.parts:
            yield child
