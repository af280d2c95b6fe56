"""Ending a frozen owner's keeper session from another process (fast tier, real processes).

``revert_remote_lease`` in the reaper or ``halt`` SIGTERMs the ssh client recorded in the
lease (``keeper_ssh``) so the remote keeper reads EOF and reverts at once; it must never
signal anything else: another program, a reused pid, another host's or boot's record."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from chaoscheckout.faults.owner import process_record
from chaoscheckout.remote import session

pytestmark = pytest.mark.fast


@pytest.fixture
def fake_ssh(tmp_path: Path):
    """A real process whose comm is ``ssh`` (a copy of sleep named ssh)."""
    binary = tmp_path / "ssh"
    shutil.copy(shutil.which("sleep"), binary)
    proc = subprocess.Popen([str(binary), "60"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def test_the_recorded_ssh_client_is_ended(fake_ssh):
    recorded = process_record(fake_ssh.pid)
    assert session._end_keeper_session(recorded) == f"ssh client pid {fake_ssh.pid} sent SIGTERM"
    assert fake_ssh.wait(timeout=10) == -15


@pytest.mark.parametrize("change", [{"start_ticks": -1}, {"host": "elsewhere"}, {"boot_id": "other-boot"},
                                    {"pid": "1"}])
def test_a_record_that_is_not_this_very_process_ends_nothing(fake_ssh, change):
    recorded = {**process_record(fake_ssh.pid), **change}
    assert session._end_keeper_session(recorded) is None
    assert fake_ssh.poll() is None


def test_another_program_is_never_signalled():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert session._end_keeper_session(process_record(proc.pid)) is None
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("recorded", [None, {}, "1234", {"pid": None}])
def test_no_record_ends_nothing(recorded):
    assert session._end_keeper_session(recorded) is None
