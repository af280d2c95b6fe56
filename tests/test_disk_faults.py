"""Disk fill against the real stack: Postgres gets ENOSPC, release makes writes work again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest

from chaoscheckout.disk.actions import fill_disk, release_disk
from chaoscheckout.disk.ballast import BALLAST_NAME
from chaoscheckout.disk.probes import disk_free_bytes, disk_usage
from chaoscheckout.errors import InvalidFaultArgument
from chaoscheckout.faults.leases import LeaseStore

TARGET = "postgres"


def _ballast(stack) -> Path:
    return Path(stack.registry.service(TARGET).data_dir) / BALLAST_NAME


def _leases(stack) -> list:
    return LeaseStore(stack.state_dir / "leases").live()


def _write_rows(dsn: str, rows: int) -> None:
    """Write ~1 KB rows in a table of its own (committed, then dropped)."""
    with psycopg.connect(dsn, connect_timeout=5, options="-c statement_timeout=10000") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ext_disk_probe (x text)")
        conn.execute(
            "INSERT INTO ext_disk_probe SELECT repeat('x', 1000) FROM generate_series(1, %s)", (rows,)
        )
        conn.commit()
        conn.execute("DROP TABLE ext_disk_probe")
        conn.commit()


def test_fill_gives_enospc_then_release_recovers(stack):
    dsn = stack.registry.extra["database_admin_url"]  # the probe role may not write
    free_before = disk_free_bytes(TARGET)
    result = fill_disk(TARGET, leave_bytes=0, duration_s=60)
    try:
        assert result["kind"] == "disk" and result["target"] == TARGET
        assert result["parameters"]["free_bytes_after"] < 64 * 1024
        assert _ballast(stack).is_file()
        assert disk_usage(TARGET)["ballast_bytes"] == result["parameters"]["ballast_bytes"]
        # the caller's view: a plain write and a Postgres insert both hit ENOSPC
        with pytest.raises(OSError) as err:
            (_ballast(stack).parent / "ext-probe").write_bytes(b"x" * 65536)
        assert err.value.errno == 28  # ENOSPC
        with pytest.raises(psycopg.Error, match="No space left on device"):
            _write_rows(dsn, 20000)
    finally:
        (_ballast(stack).parent / "ext-probe").unlink(missing_ok=True)
        released = release_disk(TARGET)
    assert released["removed"] is True and released["reverted_leases"] == [result["fault_id"]]
    assert not _ballast(stack).exists() and _leases(stack) == []
    assert disk_free_bytes(TARGET) > free_before - 16 * 1024 * 1024
    _write_rows(dsn, 2000)  # writes work again


def test_leave_bytes_is_honoured(stack):
    leave = 8 * 1024 * 1024
    result = fill_disk(TARGET, leave_bytes=leave, duration_s=30)
    try:
        free = disk_free_bytes(TARGET)
        assert leave - 1024 * 1024 <= free <= leave + 1024 * 1024, free
    finally:
        release_disk(TARGET)
    assert result["parameters"]["leave_bytes"] == leave


def test_release_without_fill_is_a_noop_that_says_so(stack):
    result = release_disk(TARGET)
    assert result == {**result, "removed": False, "freed_bytes": 0, "reverted_leases": []}


def test_second_fill_is_refused(stack):
    fill_disk(TARGET, leave_bytes=0, duration_s=30)
    try:
        with pytest.raises(Exception, match="already (filled|has a disk fault)"):
            fill_disk(TARGET, leave_bytes=0, duration_s=30)
        assert len(_leases(stack)) == 1
    finally:
        release_disk(TARGET)


def test_symlinked_ballast_is_refused(stack, tmp_path):
    outside = tmp_path / "outside"
    _ballast(stack).symlink_to(outside)
    try:
        with pytest.raises(InvalidFaultArgument, match="not a regular file"):
            fill_disk(TARGET, leave_bytes=0, duration_s=30)
        assert not outside.exists() and _leases(stack) == []
    finally:
        os.unlink(_ballast(stack))


def test_reaper_deletes_the_ballast_at_lease_expiry(stack):
    fill_disk(TARGET, leave_bytes=0, duration_s=2)
    expires_at = _leases(stack)[0].expires_at
    try:
        deadline = expires_at + 8
        while time.time() < deadline and _ballast(stack).exists():
            time.sleep(0.1)
        gone_after_expiry = time.time() - expires_at
        assert not _ballast(stack).exists(), "the reaper did not delete the ballast"
        assert gone_after_expiry > -0.5
        deadline = time.time() + 5
        while time.time() < deadline and _leases(stack):
            time.sleep(0.1)
        assert _leases(stack) == []
    finally:
        release_disk(TARGET)
