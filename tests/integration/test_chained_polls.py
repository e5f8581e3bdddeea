"""Chained reads: a TCP meter's poll run from its connection's callbacks (gateway.polling).

A bus of one Modbus TCP meter that is connected and idle starts each poll straight from the
scheduler's call, as a chained read (``ModbusDriver.start_read``): no task wakes up between
the plan's requests. What needs waiting goes to the bus's task as before: the first
connection, a retry after a failed first attempt, a stop. These tests hold the chained path
to the promises of the general one.

Real peers: the project's Modbus TCP simulator on a free loopback port (its ``silent`` fault
keeps the connection open and stops answering, which pymodbus's server cannot be made to
do), and the store, SQLite on disk. The bus worker and the store are driven directly on a
still clock, so the values and slots are exact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.registry import create_driver
from gateway.config import load_settings_from_text
from gateway.errors import AmrError, ReadTimeout
from gateway.model import iso_utc
from gateway.poll_limit import PollLimit
from gateway.polling import BusWorker, MeterRuntime
from gateway.runtime import build_meters
from gateway.settings import Settings, StoreSettings
from gateway.simulator.fleet import SimulatedFleet
from gateway.store import Store
from tests.servicefixtures import StillClock, await_until, free_port

pytestmark = pytest.mark.integration

T0 = 1_796_000_000.0    # on a whole minute
FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


def settings_for(tmp: Path, port: int, retries: int = 1, points: str = "[energy_import_kwh*, power_kw, voltage_*]") \
        -> Settings:
    """One Modbus TCP meter alone on its bus, on a 1-minute schedule of ``points``."""
    text = f"""\
gateway: {{id: gw1, timezone: UTC}}
buses:
  - {{id: b1, type: tcp, host: 127.0.0.1, port: {port}, protocol: modbus-tcp, retries: {retries}, timeout_ms: 400}}
meters:
  - {{id: m1, customer: C1, bus: b1, address: 1, profile: simulator}}
schedules:
  minute: {{every: 1m, points: {points}}}
"""
    return load_settings_from_text(text, "gw.yaml", tmp, env={})


class Rig:
    """The simulator, the store, one bus worker running, and what its task polled."""

    def __init__(self, settings: Settings, fleet: SimulatedFleet, store: Store, worker: BusWorker,
                 meter: MeterRuntime, clock: StillClock) -> None:
        self.settings, self.fleet, self.store, self.worker, self.meter, self.clock = (
            settings, fleet, store, worker, meter, clock)
        #: (slot, prior failure) of every poll the bus's task ran (the general path)
        self.by_task: list[tuple[float, AmrError | None]] = []
        general = worker._poll

        async def spy(meter: MeterRuntime, schedule: str, slot: float, prior: AmrError | None = None) -> None:
            self.by_task.append((slot, prior))
            await general(meter, schedule, slot, prior)

        worker._poll = spy  # type: ignore[method-assign]
        self.task = asyncio.create_task(worker.run())

    @property
    def simulator(self) -> Any:
        """The Modbus simulator serving m1 (for its protocol-level faults)."""
        return self.fleet._owner["m1"]

    async def rows(self) -> list[dict[str, Any]]:
        """Every committed reading, in seq order."""
        await self.store.flush()
        return [json.loads(r.payload) for r in await self.store.pending("check", 1000, after=0)]

    async def poll(self, k: int) -> None:
        """Poll slot ``k`` (minutes after T0) and wait for its row."""
        before = self.meter.stats.reads_ok + self.meter.stats.reads_failed
        self.clock.t = T0 + 60 * k
        self.worker.poll(self.meter, "minute", T0 + 60 * k)
        await await_until(lambda: self.meter.stats.reads_ok + self.meter.stats.reads_failed > before, 10,
                          f"the reading of slot {k}")
        await self.idle()

    async def idle(self) -> None:
        """Wait until the bus has finished its job (the task returns from it after the reading)."""
        await await_until(lambda: not self.worker._busy, 10, "the bus idle")


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    retries, limit, points = getattr(request, "param", (1, None, None))
    settings = (settings_for(tmp_path, free_port(), retries) if points is None
                else settings_for(tmp_path, free_port(), retries, points))
    clock = StillClock(T0)
    fleet = SimulatedFleet(settings, clock, seed=3)
    await fleet.start()
    store = await Store.open(tmp_path / "amr.sqlite", FAST, "gw1")
    meter = build_meters(settings)["m1"]
    bus = settings.buses["b1"]
    worker = BusWorker(bus, create_driver(bus), store, clock, shared=False,
                       limiter=PollLimit(limit) if limit else None)
    r = Rig(settings, fleet, store, worker, meter, clock)
    try:
        yield r
    finally:
        r.task.cancel()
        await asyncio.gather(r.task, return_exceptions=True)
        await store.close()
        await fleet.stop()


async def test_a_connected_meter_is_polled_by_chained_reads_with_the_same_values(rig: Rig) -> None:
    """The first poll connects (the bus's task); the next ones are chained reads, and their
    readings carry exactly the values the general path read at the same instant."""
    await rig.poll(0)
    assert [slot for slot, _ in rig.by_task] == [T0]
    for k in (1, 2, 3):
        rig.clock.t = T0          # the same instant: the simulator serves the same registers
        rig.worker.poll(rig.meter, "minute", T0 + 60 * k)
        await await_until(lambda k=k: rig.meter.stats.reads_ok == k + 1, 10, f"slot {k}")
        await rig.idle()
    assert [slot for slot, _ in rig.by_task] == [T0], "a poll of a connected idle meter went to the task"
    got = await rig.rows()
    assert [r["slot"] for r in got] == [iso_utc(T0 + 60 * k) for k in range(4)]
    assert all(r["quality"] == "good" for r in got)
    assert len(got[0]["points"]) >= 6
    assert all(r["points"] == got[0]["points"] for r in got[1:]), "a chained read decoded other values"
    assert rig.worker.transactions == 4 and rig.meter.stats.reads_ok == 4


async def test_a_chained_read_that_times_out_is_retried_by_the_bus_task(rig: Rig) -> None:
    """The meter misses the chained read's request, then answers again: the poll goes on to
    its retry on the bus's task, which reads it; two transactions, one good reading."""
    await rig.poll(0)
    rig.simulator.set_fault("m1", "silent")
    rig.clock.t = T0 + 60
    rig.worker.poll(rig.meter, "minute", T0 + 60)
    await asyncio.sleep(0.1)                     # the request went unanswered; its timeout runs
    rig.simulator.set_fault("m1", None)
    await await_until(lambda: rig.meter.stats.reads_ok == 2, 10, "the retried reading")
    assert [slot for slot, _ in rig.by_task] == [T0, T0 + 60]
    assert isinstance(rig.by_task[1][1], ReadTimeout), "the retry did not know its first attempt failed"
    assert rig.worker.transactions == 3 and rig.meter.stats.reads_failed == 0
    got = await rig.rows()
    assert [(r["slot"], r["quality"]) for r in got] == [(iso_utc(T0), "good"), (iso_utc(T0 + 60), "good")]


@pytest.mark.parametrize("rig", [(0, None, None), (1, None, None)], indirect=True, ids=["retries0", "retries1"])
async def test_a_silent_meter_fails_its_slot_as_the_general_path_records_it(rig: Rig) -> None:
    """A meter that stops answering: its slot is one failed reading (every attempt made, the
    first by the chained read), quality timeout and the reply timeout named, and it is dead."""
    await rig.poll(0)
    rig.simulator.set_fault("m1", "silent")
    attempts = 1 + rig.settings.buses["b1"].retries
    await rig.poll(1)
    assert rig.worker.transactions == 1 + attempts
    got = await rig.rows()
    assert got[-1]["slot"] == iso_utc(T0 + 60) and got[-1]["quality"] == "timeout"
    assert got[-1]["error"].startswith("unit 1 on 127.0.0.1:")
    assert "did not answer within 0.4 s; check the unit id" in got[-1]["error"]
    assert rig.meter.dead and rig.meter.stats.reads_failed == 1


@pytest.mark.parametrize("rig", [(1, 1, None)], indirect=True, ids=["limit1"])
async def test_stopping_the_bus_during_a_chained_read_stores_nothing_and_gives_back_the_permit(rig: Rig) -> None:
    """A stop while a chained read waits for its reply: no reading is made of it, no retry is
    queued, and the poll permit it held (the TCP buses' shared budget) is given back."""
    await rig.poll(0)
    limit = rig.worker.limiter
    assert limit is not None and limit.free == 1
    rig.simulator.set_fault("m1", "silent")
    rig.clock.t = T0 + 60
    rig.worker.poll(rig.meter, "minute", T0 + 60)
    assert limit.free == 0, "the chained read holds no permit"
    rig.task.cancel()
    await asyncio.gather(rig.task, return_exceptions=True)
    await asyncio.sleep(0.6)                     # past the request's timeout
    assert limit.free == 1
    assert rig.worker.queue_depth() == 0
    assert [r["slot"] for r in await rig.rows()] == [iso_utc(T0)]
    assert rig.meter.stats.reads_failed == 0 and rig.worker.transactions == 1


@pytest.mark.parametrize("rig", [(1, None, "[energy_import_kwh, event_cover_open_count]")], indirect=True,
                         ids=["event-counter"])
async def test_event_counters_of_a_protocol_without_event_records_are_chained(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A counter that rose sends the bus back to the meter for the event's record, which only
    the bus's task does; Modbus keeps no records to read (its counters are only values), so
    such a plan is chained on Modbus, and goes to the task once the protocol offers records."""
    for k in (0, 1, 2):
        await rig.poll(k)
    assert [slot for slot, _ in rig.by_task] == [T0]
    assert [r["points"]["event_cover_open_count"]["quality"] for r in await rig.rows()] == ["good"] * 3

    from dataclasses import replace

    from drivers import registry
    modbus = registry.capabilities("modbus-tcp")
    with_records = replace(modbus, event_records=lambda driver: driver)  # type: ignore[arg-type,return-value]
    monkeypatch.setattr(registry, "capabilities", lambda protocol: with_records)
    rig.worker._chained_by.clear()
    await rig.poll(3)
    assert [slot for slot, _ in rig.by_task] == [T0, T0 + 180]
