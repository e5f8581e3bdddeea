"""The daily read-completeness KPI on MQTT (``amr/{gateway}/kpi``), through the real mosquitto.

Real peers on loopback: the shared mosquitto on 127.0.0.1:1883, two Modbus TCP and two DL/T
645 TCP simulated meters, the gateway with its store, MQTT sink and HTTP API, on an
accelerated clock from 2026-12-10 23:50 (+08:00) that holds at the 2026-12-11 00:00
boundary and then at every slot of Dec 11 until its readings are in. Meter ``m2`` is offline
from 10:00 to 12:00 on Dec 11.

Five minutes after each local midnight the gateway publishes the finished day's KPI
(``amr.kpi.v1``, QoS 1). Checked, from what an independent subscriber receives:

* Dec 10 (the gateway ran its last ten minutes, no slot of that day fell after the start):
  96 slots scheduled per meter, none read, read completeness 0, no settlement due;
* Dec 11: 96 slots scheduled per meter; slots read good per meter equal the distinct good
  slots of that day in the store; the healthy meters read every slot, ``m2`` at
  least the eight slots of its outage fewer; one settlement due and captured per meter;
  bus and gateway rows are the sums of the meters'; and the counts equal the API's
  ``/api/v1/kpi?date=2026-12-11`` for the finished day.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.billing.kpi import COUNT_KEYS
from gateway.billing.rehearsal import HoldingClock, rehearsal_config_text
from gateway.config import load_settings_from_text
from gateway.model import loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from tests.billingkit import SlotSteps, capture_of, quality
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    Subscriber,
    _mosquitto_fixture,
    await_until,
)

pytestmark = pytest.mark.slow      # two simulated days, real MQTT

SH = ZoneInfo("Asia/Shanghai")
TOKEN = "billing-kpi-token"


def local(day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(2026, 12, day, hour, minute, tzinfo=SH).timestamp()


def good_slots(path: Path, meter: str, lo: float, hi: float) -> int:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT count(DISTINCT slot) FROM outbox WHERE meter=? AND kind='reading' "
                           "AND quality='good' AND slot>=? AND slot<?", (meter, lo, hi)).fetchone()
    finally:
        conn.close()
    return int(row[0])


async def test_daily_kpi_arrives_on_mqtt_with_the_days_counts(tmp_path: Path, mosquitto: Broker) -> None:
    gw_id = f"kpi-{uuid.uuid4().hex[:8]}"
    text = rehearsal_config_text(tmp_path, api_port=free_port()).replace("id: billing-rehearsal", f"id: {gw_id}")
    text += f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}, topic_prefix: amr}}\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    settings = load_settings_from_text(text, str(path), tmp_path, {"AMR_API_TOKEN": TOKEN})
    assert settings.gateway.id == gw_id and settings.mqtt is not None and settings.mqtt.enabled

    sub = Subscriber(mosquitto, f"amr/{gw_id}/kpi", f"sub-{gw_id}").start()
    clock = HoldingClock(local(10, 23, 50), 600.0, [local(11)])
    fleet = SimulatedFleet(settings, clock, seed=21)
    await fleet.start()
    gw = Gateway(settings, clock)
    every_meter, healthy = SlotSteps(clock, tuple(settings.meters)), SlotSteps(clock, ("m1", "d1", "d2"))
    every_meter.watch(gw)
    healthy.watch(gw)
    try:
        await gw.start()
        await await_until(lambda: clock.holding == local(11), 30.0, "the clock held at Dec 11 00:00")
        cap = capture_of(gw)
        await await_until(lambda: all(quality(cap, m, local(11)) not in (None, "missing") for m in settings.meters),
                          30.0, "every meter's settlement of the boundary, on the held clock",
                          detail=lambda: {m: quality(cap, m, local(11)) for m in settings.meters})
        clock.add_hold(local(11, 0, 15))
        clock.release()
        first = await await_until(lambda: sub.received(lambda ms: len(ms) >= 1), 30.0,
                                  "the KPI of Dec 10", detail=sub.summary)     # at 00:05
        # then slot by slot through Dec 11 (each slot held until its readings are in, so a
        # loaded host loses none), with m2 offline from 10:00 to 12:00
        clock.set_rate(30_000.0)
        await every_meter.run_to(local(11, 10))
        await fleet.stop_meter("m2")
        await healthy.run_to(local(11, 12))
        await fleet.start_meter("m2")
        await healthy.run_to(local(12))
        # Dec 11's last interval ends at Dec 12 00:00: every meter's reading of that slot (m2's
        # too) must be read and committed before the KPI goes out, 10 ms later at this rate
        # (observers see a reading before its commit: under a loaded suite it once came after)
        await every_meter.read_at(local(12))
        assert await gw.store.flush()
        clock.release()                                 # on to Dec 12 00:05, when the KPI of Dec 11 goes out
        msgs = await await_until(lambda: sub.received(lambda ms: len(ms) >= 2), 30.0,
                                 "the KPI of Dec 11", detail=sub.summary)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http, \
                http.get(f"http://127.0.0.1:{gw.api.port}/api/v1/kpi?date=2026-12-11") as resp:
            assert resp.status == 200
            api_doc = loads_exact(await resp.text())
    finally:
        await gw.stop()
        await fleet.stop()
        sub.stop()

    assert [m.topic for m in msgs[:2]] == [f"amr/{gw_id}/kpi"] * 2
    assert all(m.qos == 1 and not m.retain for m in msgs[:2])
    dec10, dec11 = first[0].json(), msgs[1].json()
    assert (dec10["schema"], dec10["date"], dec11["date"]) == ("amr.kpi.v1", "2026-12-10", "2026-12-11")
    assert dec10["timezone"] == "Asia/Shanghai"
    meters = set(settings.meters)

    d10 = {r["meter"]: r for r in dec10["meters"]}
    assert set(d10) == meters
    for r in d10.values():
        assert (r["slots_scheduled"], r["slots_read_good"], r["read_completeness"]) == (96, 0, 0)
        assert (r["settlements_due"], r["settlement_completeness"]) == (0, None)

    d11 = {r["meter"]: r for r in dec11["meters"]}
    assert set(d11) == meters
    for m, r in d11.items():
        good = good_slots(gw.store_path, m, local(11), local(12))
        assert r["slots_scheduled"] == 96, m
        assert r["slots_read_good"] == good, (m, r["slots_read_good"], good)
        assert r["read_completeness"] == round(good / 96, 4)
        assert (r["settlements_due"], r["settlements_captured"], r["settlements_missing"]) == (1, 1, 0), m
        assert r["settlement_completeness"] == 1.0
        assert r["intervals_expected"] == 96 and r["intervals_complete"] <= good
    healthy_good = sorted(d11[m]["slots_read_good"] for m in meters - {"m2"})
    assert healthy_good == [96, 96, 96], healthy_good     # every slot held until read
    assert d11["m2"]["slots_read_good"] <= 96 - 8         # its two-hour outage: 10:15 to 12:00

    buses = {b["bus"]: b for b in dec11["buses"]}
    for m, r in d11.items():
        bus = buses[settings.meters[m].bus]
        assert bus["meters"] == 1 and all(bus[k] == r[k] for k in COUNT_KEYS)
    total = dec11["gateway"]
    assert total["meters"] == 4
    for k in COUNT_KEYS:
        assert total[k] == sum(r[k] for r in d11.values()), k

    assert isinstance(api_doc, dict)
    api = {r["meter"]: r for r in api_doc["meters"]}
    for m, r in d11.items():
        assert {k: r[k] for k in COUNT_KEYS} == {k: api[m][k] for k in COUNT_KEYS}, m
    published: Any = dec11
    assert published["gateway"]["settlements_captured"] == 4
