"""A runtime copy of the Python app services that the unprivileged stack user can read.

The venv and the project may sit where the user ``chaoscheckout`` cannot go (a checkout
under ``/root``, mode 0700; an interpreter under ``/root/.pyenv``). ``stack up`` therefore
stages what the app services (catalog, payments, provider, checkout) load into a root-owned
0755 tree, by default ``/var/lib/chaoscheckout-app`` (``CHAOSCHECKOUT_APP_STAGE_DIR``):

- ``site-<hash>/``: the installed distributions the services import, with every
  installed requirement of theirs (their RECORD files, copied as listed); ``<hash>``
  digests the Python version and each distribution's RECORD (which holds every file's
  sha256), so it changes exactly when an installed file does;
- ``src-<hash>/stack/``: ``stack/__init__.py``, ``stack/schema.sql`` and ``stack/services/*.py`` (the digest
  the services report in ``/version`` is unchanged) plus ``services/build.json`` with the
  checkout's git commit and dirty flag (the copy is not a checkout); ``<hash>`` digests
  those files.

A tree is built under a temporary name and renamed into place, so concurrent ``stack up``
runs never see half a copy, and is reused while its hash holds: the first ``up`` after a
change copies (about 30 MB of site-packages for a new venv; sources alone are ~100 KB),
later ones only hash RECORD files and sources. The tree root must be owned by root, not
group/other writable and no symlink; otherwise staging is refused (the caller says why).
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StagedApp", "StageError", "stage", "stage_root", "SERVICE_MODULES"]

DEFAULT_ROOT = Path("/var/lib/chaoscheckout-app")
SERVICE_MODULES = ("stack.services.catalog", "stack.services.payments", "stack.services.provider",
                   "stack.services.checkout")
# imported by uvicorn.run at start-up rather than at import of the services
# (uvloop and httptools only when installed: uvicorn's "auto" picks them then)
RUNTIME_MODULES = ("uvicorn.loops.auto", "uvicorn.protocols.http.auto", "uvicorn.protocols.websockets.auto",
                   "uvicorn.lifespan.on", "anyio._backends._asyncio", "uvloop", "httptools")
SUBPROCESS_TIMEOUT_S = 60
FORMAT = "2"  # of a staged tree: part of both keys, so a changed layout is never reused

# Run by the stack's own interpreter (root): which distributions do the services need?
_CLOSURE_SCRIPT = r"""
import importlib, json, re, sys
from importlib import metadata
before = set(sys.modules)  # the interpreter's own start-up (site, .pth hooks): not the services'
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # an optional runtime piece that is not installed
import os, site
sites = tuple(os.path.realpath(p) + os.sep for p in site.getsitepackages())
owners = metadata.packages_distributions()
roots = set()
for name, module in list(sys.modules.items()):
    if name in before:
        continue
    where = os.path.realpath(getattr(module, "__file__", None) or "/")
    if where.startswith(sites):  # installed, not the stdlib, not this project (on PYTHONPATH)
        roots.update(owners.get(name.split(".")[0], []))
seen, todo = set(), sorted(roots)
while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue  # a requirement that is not installed (an extra, another platform)
    seen.add(key)
    for req in dist.requires or []:
        if "extra ==" in req.replace("extra==", "extra =="):
            continue  # an optional extra: what is imported of it is a root already
        todo.append(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
out = []
for key in sorted(seen):
    dist = metadata.distribution(key)
    files = [str(f) for f in dist.files or []]
    out.append({"name": key, "base": str(dist.locate_file("")), "files": files,
                "record": dist.read_text("RECORD") or ""})
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "dists": out}))
"""


class StageError(Exception):
    """The runtime copy cannot be made or trusted; one line."""


@dataclass(frozen=True)
class StagedApp:
    src: Path  # holds stack/ (the cwd and first PYTHONPATH entry of the services)
    site: Path  # the services' site-packages
    version: str  # the Python X.Y the site-packages were installed for
    copied_bytes: int  # what this call copied (0: both trees were already there)

    @property
    def pythonpath(self) -> str:
        return f"{self.src}:{self.site}"


def stage_root(env: dict[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CHAOSCHECKOUT_APP_STAGE_DIR") or DEFAULT_ROOT)


def stage(project_dir: Path, root: Path | None = None, python: str = sys.executable) -> StagedApp:
    """Stage (or reuse) the services' sources and site-packages under ``root``."""
    root = Path(root or stage_root())
    _trusted_root(root)
    closure = _closure(project_dir, python, root)
    copied = 0
    site_key = hashlib.sha256(f"{FORMAT}\0{closure['version']}".encode())
    for dist in closure["dists"]:
        site_key.update(f"\0{dist['name']}\0{dist['record']}".encode())
    site = root / f"site-{site_key.hexdigest()[:16]}"
    if not site.is_dir():
        copied += _build(root, site, lambda tmp: _copy_dists(closure["dists"], tmp))
    sources = _sources(project_dir)
    build = _git_build(project_dir)
    src_key = hashlib.sha256(f"{FORMAT}\0{json.dumps(build, sort_keys=True)}".encode())
    for rel, data in sources:
        src_key.update(f"\0{rel}\0".encode() + data)
    src = root / f"src-{src_key.hexdigest()[:16]}"
    if not src.is_dir():
        def write_sources(tmp: Path) -> int:
            total = 0
            for rel, data in sources:
                target = tmp / rel
                _mkdirs(tmp, target.parent)
                target.write_bytes(data)
                os.chmod(target, 0o644)
                total += len(data)
            (tmp / "stack" / "services" / "build.json").write_text(json.dumps(build))
            _compile(tmp)
            return total
        copied += _build(root, src, write_sources)
    return StagedApp(src, site, closure["version"], copied)


###############################################################################
# Internals
###############################################################################
def _trusted_root(root: Path) -> None:
    """Create ``root`` (0755, root) or check it: root-owned, not group/other writable, no
    symlink in its path."""
    if not root.is_absolute():
        raise StageError(f"{root} is not an absolute path")
    for part in [*reversed(root.parents), root]:
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            break
        if stat.S_ISLNK(info.st_mode):
            raise StageError(f"{part} is a symlink: the app runtime copy is not made through symlinks")
    try:
        root.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        raise StageError(f"cannot create {root}: {exc.strerror or exc}") from None
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise StageError(f"{root} must be a directory owned by root and not group/other writable "
                         f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})")
    os.chmod(root, 0o755)


def _closure(project_dir: Path, python: str, root: Path) -> dict:
    """Which distributions the services need (cached under ``root`` while no RECORD of the
    running interpreter's site-packages changed)."""
    cache = None
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        key = hashlib.sha256(sys.version.encode())
        for sitedir in site.getsitepackages():
            for record in sorted(Path(sitedir).glob("*.dist-info/RECORD")):
                info = record.stat()
                key.update(f"\0{record}\0{info.st_mtime_ns}\0{info.st_size}".encode())
        cache = root / f"closure-{key.hexdigest()[:16]}.json"
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass
    closure = _list_closure(project_dir, python)
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(closure))
        os.chmod(tmp, 0o644)
        os.replace(tmp, cache)
    return closure


def _list_closure(project_dir: Path, python: str) -> dict:
    try:
        done = subprocess.run([python, "-c", _CLOSURE_SCRIPT, *SERVICE_MODULES, *RUNTIME_MODULES],
                              cwd=project_dir, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                              check=False, env={**os.environ, "PYTHONPATH": str(project_dir)})
    except (OSError, subprocess.SubprocessError) as exc:
        raise StageError(f"cannot list the services' distributions: {exc}") from None
    if done.returncode != 0:
        raise StageError("cannot list the services' distributions: "
                         + ((done.stderr.strip().splitlines() or ["?"])[-1]))
    return json.loads(done.stdout)


def _copy_dists(dists: list[dict], tmp: Path) -> int:
    total = 0
    for dist in dists:
        base = Path(dist["base"]).resolve()
        for rel in dist["files"]:
            source = (base / rel).resolve()
            if base not in source.parents:  # e.g. ../../bin/uvicorn: not the library
                continue
            try:
                info = os.lstat(source)
            except FileNotFoundError:
                continue  # RECORD lists a .pyc that was never written
            if not stat.S_ISREG(info.st_mode):
                continue
            target = tmp / source.relative_to(base)
            _mkdirs(tmp, target.parent)
            shutil.copy2(source, target)  # with its mtime: a .pyc is valid only for its source's mtime
            os.chmod(target, 0o755 if info.st_mode & 0o111 else 0o644)
            total += info.st_size
    _compile(tmp)
    return total


def _compile(tree: Path) -> None:
    """Byte-compile what has no valid .pyc yet: the stack user cannot write __pycache__ here,
    and without it every start of a service would compile its imports again."""
    compileall.compile_dir(str(tree), quiet=2, workers=1)
    for path in tree.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() or path.stat().st_mode & 0o111 else 0o644)


def _sources(project_dir: Path) -> list[tuple[str, bytes]]:
    services = sorted((project_dir / "stack" / "services").glob("*.py"))
    # schema.sql: checkout creates the orders table from it when stack up has not
    files = [project_dir / "stack" / "__init__.py", project_dir / "stack" / "schema.sql", *services]
    return [(str(path.relative_to(project_dir)), path.read_bytes()) for path in files]


def _git_build(project_dir: Path) -> dict:
    """What ``build_info`` would read from git in the checkout (the copy is none)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(project_dir / "stack" / "services"), *args],
                                  capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _build(root: Path, final: Path, fill) -> int:
    """Fill a fresh temporary dir under ``root`` and rename it to ``final`` (atomic; a
    concurrent builder that won the race keeps its copy)."""
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        os.chmod(tmp, 0o755)
        copied = fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        return copied
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mkdirs(top: Path, path: Path) -> None:
    if path == top or path.is_dir():
        return
    _mkdirs(top, path.parent)
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
