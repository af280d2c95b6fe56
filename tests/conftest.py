"""Shared fixtures: one real checkout stack per test session.

``CHAOSCHECKOUT_TEST_PORT_BASE`` (default 28100) and ``CHAOSCHECKOUT_TEST_STATE_DIR``
(default /var/tmp/chaoscheckout-test-<base>) keep the test stack apart from a demo stack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaoscheckout.runtime.registry import Registry, load_registry

ROOT = Path(__file__).resolve().parent.parent
# The fast tier (`make check`, `pytest -m fast`): modules that need no root, no stack, no
# Postgres and no network beyond a subprocess of `chaos`. Everything else is the real tier.
FAST_MODULES = {"test_discover", "test_experiments", "test_report", "test_ownership", "test_response_loss",
                "test_stack_topology", "test_validate", "test_ssh_registry"}
# The suite's stacks are the plain layout (its assertions: proxy backend for `auto`, the program
# count) whatever the kernel: on a host with sch_netem, `auto` would put catalog and payments in
# namespaces. tests/test_target_netns.py and tests/test_ssh_vm.py cover that layout; export
# CHAOSCHECKOUT_TARGET_NETNS yourself to run the whole suite under it.
os.environ.setdefault("CHAOSCHECKOUT_TARGET_NETNS", "off")
if str(ROOT) not in sys.path:  # tests import the reference stack (stack/), which is not installed
    sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in FAST_MODULES:
            item.add_marker(pytest.mark.fast)


@dataclass
class StackHandle:
    state_dir: Path
    port_base: int
    env: dict[str, str]

    @property
    def registry(self) -> Registry:
        return load_registry(self.state_dir / "services.json")

    def manage(self, *args: str, timeout: float = 180, check: bool = True):
        return subprocess.run(
            [sys.executable, "-m", "stack.manage", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=check,
        )


def _stack_env(state_dir: Path, port_base: int) -> dict[str, str]:
    env = dict(os.environ)
    env["CHAOSCHECKOUT_STATE_DIR"] = str(state_dir)
    env["CHAOSCHECKOUT_PORT_BASE"] = str(port_base)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def stack() -> Iterator[StackHandle]:
    port_base = int(os.environ.get("CHAOSCHECKOUT_TEST_PORT_BASE", "28100"))
    state_dir = Path(
        os.environ.get("CHAOSCHECKOUT_TEST_STATE_DIR", f"/var/tmp/chaoscheckout-test-{port_base}")
    )
    handle = StackHandle(state_dir, port_base, _stack_env(state_dir, port_base))
    handle.manage("down", check=False)  # a stack left over by an interrupted session
    up = handle.manage("up", check=False)
    if up.returncode != 0:
        handle.manage("down", check=False)
        pytest.fail(f"stack up failed:\n{up.stdout}\n{up.stderr}")
    os.environ["CHAOSCHECKOUT_STATE_DIR"] = str(state_dir)
    try:
        yield handle
    finally:
        handle.manage("down", check=False)
