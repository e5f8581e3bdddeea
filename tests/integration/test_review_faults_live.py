"""Simulator faults through the wire into the running gateway's review, on an accelerated clock.

The demo configuration with an ``events`` schedule reading the DL/T 645 event counters every
simulated minute; the fleet's DL/T 645 simulator serves the counters its model recorded. A
meter cover opened at run time is a ``cover_open`` event carrying the counter before and
after, cleared once no new opening is counted; both meters of the RS-485 DL/T 645 line going
silent is one ``bus_failure`` naming them (their ``read_failure`` suppressed), cleared when the
line answers again. Real peers: simulators on a pty and loopback TCP, SQLite on disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.demo import demo_config_text
from gateway.ports import free_port
from tests.reviewlive import Running, running_review, stored_events
from tests.servicefixtures import await_until

RATE = 120.0                                   # a simulated minute every 0.5 s
START = 1_795_939_200.0 + 14 * 60 + 50         # 2026-11-29 16:14:50 +08:00
EVENTS_SCHEDULE = '  events: {every: 1m, points: ["event_*"]}\n'


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    text = demo_config_text(tmp_path, api_port=free_port(), mqtt=("127.0.0.1", free_port()))
    text = text.replace("schedules:\n", "schedules:\n" + EVENTS_SCHEDULE, 1)
    for meter in ("c2001-main", "c2002-main", "c2003-main"):
        head, _, tail = text.partition(f"{{id: {meter},")
        tail = tail.replace("schedules: [realtime, interval]", "schedules: [realtime, interval, events]", 1)
        text = f"{head}{{id: {meter},{tail}"
    settings = load_settings_from_text(text, "<test>", tmp_path, {"AMR_API_TOKEN": "t"})
    clock = ScaledClock(START, RATE)
    async with running_review(settings, clock, 7) as running:
        yield running


events = stored_events


def real_s(simulated_s: float) -> float:
    return simulated_s / RATE + 5.0            # + headroom for a loaded host


async def test_a_cover_opened_on_the_wire_is_a_cover_open_event_with_its_counts(running: Running) -> None:
    r, meter = running, "c2003-main"
    await await_until(lambda: "cover_open" in r.engine.state(meter).counters, real_s(3 * 60),
                      "the first event-counter reading of c2003-main")
    await r.fleet.set_fault(meter, "cover_open")
    await await_until(lambda: ("cover_open", "cover_open") in r.engine.state(meter).active, real_s(3 * 60),
                      "cover_open raised")
    await r.fleet.clear_fault(meter, "cover_open")
    await await_until(lambda: ("cover_open", "cover_open") not in r.engine.state(meter).active, real_s(5 * 60),
                      "cover_open cleared")
    assert await r.engine.drain()
    got = [e for e in events(r.gw.store_path, meter) if e["type"] == "cover_open"]
    assert [(e["state"], e["key"]) for e in got] == [("raised", "cover_open"), ("cleared", "cover_open")]
    ev = got[0]["evidence"]
    assert ev["counter_after"] == ev["counter_before"] + 1     # the simulator starts from its spec's count


async def test_a_silent_rs485_line_is_one_bus_failure_naming_both_meters(running: Running) -> None:
    r = running
    line = ("c2001-main", "c2002-main")
    await await_until(lambda: all(r.engine.state(m).last_good_ts for m in line), real_s(3 * 60),
                      "both meters of rs485-dlt645 read")
    for m in line:
        await r.fleet.set_fault(m, "silent")
    bus = "bus:rs485-dlt645"
    await await_until(lambda: ("bus_failure", "") in r.engine.state(bus).active, real_s(10 * 60),
                      "bus_failure raised")
    for m in line:
        await r.fleet.clear_fault(m, "silent")
    await await_until(lambda: ("bus_failure", "") not in r.engine.state(bus).active, real_s(10 * 60),
                      "bus_failure cleared")
    assert await r.engine.drain()
    got = events(r.gw.store_path, bus)
    assert [(e["type"], e["state"]) for e in got] == [("bus_failure", "raised"), ("bus_failure", "cleared")]
    assert sorted(got[0]["evidence"]["meters"]) == sorted(line)
    for m in line:
        assert [e for e in events(r.gw.store_path, m) if e["type"] in ("read_failure", "read_recovered")] == []
