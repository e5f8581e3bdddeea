"""The store on a really full disk: a small tmpfs this test mounts (as root) and fills.

Memory for uncommitted readings stays bounded by ``store.max_pending`` with the documented
drop order (realtime samples first, the oldest first; interval readings only when no
realtime sample is left), every drop counted; ``pressure`` reads the free space as well
as the cap; the failure and the recovery are each logged once, however many retries; and
everything still held commits, in order, once space returns.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.settings import StoreSettings
from gateway.store import Store
from tests.servicefixtures import await_until, make_reading

pytestmark = pytest.mark.integration

FS_BYTES = 8 * 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of its own (needs root: mount(2) is privileged)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    """Write zeros until the filesystem says it is full (bounded by its size)."""
    chunk = b"\0" * 65536
    with open(path, "wb") as f:
        for _ in range(FS_BYTES // len(chunk) + 2):
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return
    pytest.fail("the tmpfs never filled")


async def test_full_disk_bounds_memory_drops_realtime_first_and_commits_the_rest(
        small_fs: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amr.store")
    settings = StoreSettings(synchronous="NORMAL", commit_interval_s=0.05, min_free_bytes=1_000_000,
                             max_pending=200)
    store = await Store.open(small_fs / "amr.sqlite", settings, "gw1")
    try:
        await store.append_readings([make_reading("m0", ts=0.0)])
        assert await store.refresh_size() == "ok"
        fill(small_fs / "filler")
        assert await store.refresh_size() == "full"        # free space, not the store's size
        assert store.free_bytes is not None and store.free_bytes < settings.min_free_bytes

        # 100 interval readings the disk refuses: they stay queued, retried every 50 ms.
        with pytest.raises(StoreError, match="disk is full"):
            await store.append_readings([make_reading("iv", ts=1000.0 + i) for i in range(100)])
        # 50 more interval readings and 300 realtime samples, interleaved, oldest first.
        for i in range(300):
            store.submit_nowait(make_reading("rt", ts=2000.0 + i), "realtime")
            if i % 6 == 0:
                store.submit_nowait(make_reading("iv", ts=1100.0 + i // 6), "interval")
        assert store.pending_readings <= settings.max_pending
        assert store.dropped["interval"] == 0 and store.dropped["keep"] == 0
        assert store.dropped["realtime"] == 450 - store.pending_readings

        # Realtime gone, then interval readings go, the oldest first.
        for i in range(100):
            store.submit_nowait(make_reading("iv", ts=1200.0 + i), "interval")
        assert store.pending_readings <= settings.max_pending
        assert store.dropped["realtime"] == 300
        assert store.dropped["interval"] == 250 - store.pending_readings
        kept_interval = store.pending_readings

        await await_until(lambda: store.commit_failures >= 4, 10, "several failed retries")
        assert store.pressure == "full"
        os.unlink(small_fs / "filler")
        await await_until(lambda: store.pending_readings == 0, 10, "the held readings' commit")
        assert store.last_error is None
        assert await store.refresh_size() == "ok"

        rows = await store.read(lambda c: c.execute("SELECT meter, ts FROM outbox ORDER BY seq").fetchall())
        assert rows[0] == ("m0", 0.0)
        committed = [ts for meter, ts in rows[1:] if meter == "iv"]
        assert len(committed) == kept_interval == len(rows) - 1
        assert committed == sorted(committed)                               # in order
        assert committed[-1] == 1299.0                                      # the newest kept
        assert 1000.0 not in committed                                      # the oldest dropped first

        messages = [r.getMessage() for r in caplog.records]
        assert sum("cannot commit readings" in m for m in messages) == 1   # once, however many retries
        assert sum("accepts writes again" in m for m in messages) == 1
        assert sum("store.max_pending" in m and "dropping" in m for m in messages) == 1
        assert sum("pressure full" in m for m in messages) == 1
        assert sum("pressure ok again" in m for m in messages) == 1
    finally:
        await store.close()
