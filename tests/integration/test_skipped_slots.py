"""Every due slot has a row (issue 16 item 5): a slot skipped because the bus ran late or
because the meter is dead is stored as a failed read with its reason, on every bus type.

Real peers: the store is SQLite on disk; the dead meter is a Modbus TCP endpoint on a free
loopback port where nothing listens (connection refused, as a meter that lost power behind
its converter). The bus workers and the store are driven directly, on a still clock, so the
slots are exact.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from drivers.registry import create_driver
from gateway.config import load_settings_from_text
from gateway.model import iso_utc
from gateway.polling import BusWorker
from gateway.runtime import build_meters
from gateway.settings import Settings, StoreSettings
from gateway.store import Store
from tests.servicefixtures import StillClock, await_until, free_port

pytestmark = pytest.mark.integration

T0 = 1_796_000_000.0    # on a whole minute
FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


def settings_for(tmp: Path, bus: str) -> Settings:
    """One meter alone on one bus (so not a shared bus), on a 1-minute schedule."""
    text = f"""\
gateway: {{id: gw1}}
buses:
  - {bus}
meters:
  - {{id: m1, customer: C1, bus: b1, address: 1, profile: simulator}}
schedules:
  minute: {{every: 1m}}
"""
    return load_settings_from_text(text, "gw.yaml", tmp, env={})


async def rows(store: Store) -> list[dict[str, Any]]:
    """Every committed reading, in seq order."""
    await store.flush()
    return [json.loads(r.payload) for r in await store.pending("check", 1000, after=0)]


@pytest.mark.parametrize("bus", [
    "{id: b1, type: tcp, host: 127.0.0.1, port: 1, protocol: modbus-tcp}",
    "{id: b1, type: serial, port: /dev/null-amr-test, protocol: modbus-rtu}",
])
async def test_an_overrun_slot_is_stored_as_a_failed_read_with_its_reason(tmp_path: Path, bus: str) -> None:
    """The worker is not running, so the first slot's poll is still queued when the next slot
    is due: that slot is not polled, and it still has its row (on a TCP and a serial bus)."""
    settings = settings_for(tmp_path, bus)
    meter = build_meters(settings)["m1"]
    store = await Store.open(tmp_path / "amr.sqlite", FAST, "gw1")
    worker = BusWorker(settings.buses["b1"], create_driver(settings.buses["b1"]), store, StillClock(T0 + 61),
                       shared=False)
    try:
        assert worker.poll(meter, "minute", T0) is True
        assert worker.poll(meter, "minute", T0 + 60) is False
        assert worker.overruns == 1 and worker.queue_depth() == 1
        got = await rows(store)
        assert len(got) == 1
        assert got[0]["slot"] == iso_utc(T0 + 60) and got[0]["quality"] == "timeout"
        assert "ran late" in got[0]["error"] and "overrun" in got[0]["error"]
        assert all(p["quality"] == "timeout" and p["value"] is None for p in got[0]["points"].values())
        assert meter.stats.reads_skipped == 1 and meter.stats.reads_failed == 0
    finally:
        await store.close()


async def test_a_dead_meter_alone_on_a_tcp_bus_is_skipped_with_a_row_per_slot(tmp_path: Path) -> None:
    """A meter alone on its TCP bus that stops answering is dead like one on a shared line:
    its next slots are stored as failed reads naming the next probe, without a connection
    attempt, until the probe is due."""
    port = free_port()     # nothing listens there
    settings = settings_for(tmp_path, f"{{id: b1, type: tcp, host: 127.0.0.1, port: {port}, "
                                      "protocol: modbus-tcp, retries: 0, timeout_ms: 200}")
    meter = build_meters(settings)["m1"]
    store = await Store.open(tmp_path / "amr.sqlite", FAST, "gw1")
    clock = StillClock(T0)
    worker = BusWorker(settings.buses["b1"], create_driver(settings.buses["b1"]), store, clock, shared=False)
    task = asyncio.create_task(worker.run())
    try:
        worker.poll(meter, "minute", T0)
        await await_until(lambda: meter.dead, 10, "the meter turning dead")
        attempted = worker.transactions
        for k in (1, 2, 3):                      # slots before the first probe (15 s later): skipped
            clock.t = T0 + k * 4
            worker.poll(meter, "minute", T0 + k * 4)
            await await_until(lambda k=k: meter.stats.reads_skipped == k, 10, f"skipped slot {k}")
        assert worker.transactions == attempted  # the wire was not touched
        clock.t = T0 + 60
        worker.poll(meter, "minute", T0 + 60)     # the probe is due: one attempt
        await await_until(lambda: worker.transactions == attempted + 1, 10, "the probe")
        await await_until(lambda: meter.stats.reads_failed == 2, 10, "the probe's failed row")
        got = await rows(store)
        assert [r["slot"] for r in got] == [iso_utc(T0 + s) for s in (0, 4, 8, 12, 60)]   # every due slot
        assert all(r["quality"] == "timeout" for r in got)
        assert [("not polled" in r["error"]) for r in got] == [False, True, True, True, False]
        assert "next probe at" in got[1]["error"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
