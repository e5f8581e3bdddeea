"""Review events from the running gateway on simulated meters, on an accelerated clock.

Real peers throughout (Modbus TCP/RTU and DL/T 645 simulators on loopback sockets and ptys,
SQLite on disk, the HTTP API on 127.0.0.1): a meter that stops answering raises
``read_failure`` and, once back, ``read_recovered``; both are in the outbox (what MQTT
publishes), in the review table and listed by ``GET /api/v1/events`` (JSON, CSV, filters,
400s and 404). A register that goes down in a reading fed through the engine raises
``register_decrease`` against the real register the meter showed before. The healthy
simulated meters raise nothing.

The engine and route are registered for these tests only (monkeypatched registries), so
other tests' gateways run without review.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.demo import demo_config_text
from gateway.model import PointValue
from gateway.ports import free_port
from gateway.review.engine import ReviewEngine
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from tests.servicefixtures import await_until

RATE = 120.0                                   # a 1-minute slot every 0.5 s
START = 1_795_939_200.0 + 14 * 60 + 50         # 2026-11-29 16:14:50 +08:00, just before an interval slot
TOKEN = "test-token"
DEAD = "c1002-main"


@dataclass
class Running:
    gw: Gateway
    fleet: SimulatedFleet
    clock: ScaledClock
    engine: ReviewEngine

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gw.api.port}"


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    text = demo_config_text(tmp_path, api_port=free_port(), mqtt=("127.0.0.1", free_port()))
    settings = load_settings_from_text(text, "<test>", tmp_path, {"AMR_API_TOKEN": TOKEN})
    clock = ScaledClock(START, RATE)
    fleet = SimulatedFleet(settings, clock, seed=7)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    try:
        await gw.start()
        engine = gw.review
        assert engine is not None
        yield Running(gw, fleet, clock, engine)
    finally:
        await gw.stop()
        await fleet.stop()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        return resp.status, await resp.text()


def stored_events(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT id, meter, type, state, raised_id, seq FROM review_event ORDER BY id"))
    finally:
        conn.close()


async def test_dead_meter_raises_read_failure_then_read_recovered_listed_by_the_api(running: Running) -> None:
    r = running
    await await_until(lambda: r.engine.state(DEAD).last_good_ts is not None, 10 * 60 / RATE,
                      f"a good reading of {DEAD} within 10 simulated minutes", step=0.1)
    await r.fleet.stop_meter(DEAD)

    def opened() -> bool:
        return ("read_failure", "") in r.engine.state(DEAD).active

    await await_until(opened, 8 * 60 / RATE, "read_failure within 8 simulated minutes of silence", step=0.1)
    await r.fleet.start_meter(DEAD)
    await await_until(lambda: not opened(), 10 * 60 / RATE, "read_recovered within 10 simulated minutes", step=0.1)
    assert await r.engine.drain()

    events = stored_events(r.gw.store_path)
    mine = [e for e in events if e[1] == DEAD]
    assert [(e[2], e[3]) for e in mine] == [("read_failure", "raised"), ("read_recovered", "cleared")]
    assert mine[1][4] == mine[0][0]                      # the recovery names the failure it clears
    assert [e for e in events if e[1] != DEAD] == []     # healthy simulated meters raise nothing

    async with aiohttp.ClientSession() as http:
        status, text = await get(http, f"{r.base}/api/v1/events?meter={DEAD}&since=2026-11-29")
        assert status == 200, text
        doc = json.loads(text)
        assert doc["count"] == 2 and [e["type"] for e in doc["events"]] == ["read_failure", "read_recovered"]
        failure = doc["events"][0]
        assert failure["seq"] == mine[0][5] and failure["evidence"]["failed_polls"] >= 3
        assert failure["evidence"]["threshold_polls"] == 3 and failure["evidence"]["last_good"]
        assert doc["events"][1]["raised_id"] == failure["id"]

        status, text = await get(http, f"{r.base}/api/v1/events?type=read_recovered&format=csv")
        assert status == 200
        table = list(csv.DictReader(io.StringIO(text)))
        assert [(row["meter"], row["type"], row["state"]) for row in table] == [(DEAD, "read_recovered", "cleared")]
        assert json.loads(table[0]["evidence"])["failed_polls"] >= 3

        status, text = await get(http, f"{r.base}/api/v1/events?type=phase_loss")
        assert status == 200 and json.loads(text)["count"] == 0
        for query, word in (("since=yesterday", "since"), ("type=bogus", "type"), ("state=bogus", "state"),
                            ("since=2026-11-30&until=2026-11-29", "earlier"), ("format=xml", "format"),
                            ("limit=0", "limit")):
            status, text = await get(http, f"{r.base}/api/v1/events?{query}")
            assert status == 400, query
            assert word in json.loads(text)["error"], (query, text)
        status, text = await get(http, f"{r.base}/api/v1/events?meter=nope")
        assert status == 404 and "nope" in json.loads(text)["error"]
        async with http.get(f"{r.base}/api/v1/events") as resp:
            assert resp.status == 401
        status, text = await get(http, f"{r.base}/openapi.json")
        assert "/api/v1/events" in json.loads(text)["paths"]

    # published: the outbox rows the MQTT sink sends on amr/{gw}/meters/{meter}/event
    conn = sqlite3.connect(r.gw.store_path)
    try:
        payloads = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE kind='event' AND meter=? ORDER BY seq", (DEAD,))]
    finally:
        conn.close()
    # the two events, and the worklist item of the failure closed by the recovery (its state change)
    assert [(p["schema"], p["type"], p["id"]) for p in payloads] == [
        ("amr.event.v1", "read_failure", mine[0][0]), ("amr.event.v1", "read_recovered", mine[1][0]),
        ("amr.event_state.v1", "read_failure", mine[0][0])]
    assert payloads[2]["worklist"]["state"] == "closed" and payloads[2]["worklist"]["cleared_by_event"] == mine[1][0]


async def test_register_decrease_from_a_real_reading_fed_through_the_engine(running: Running) -> None:
    r = running
    meter = "c2001-main"                                    # DL/T 645 on a pty, CT 300/5 × PT 10000/100

    def baseline() -> bool:
        return "energy_import_kwh" in r.engine.state(meter).registers

    await await_until(baseline, 20 * 60 / RATE, "an interval reading reviewed within 20 simulated minutes", step=0.1)
    assert await r.engine.drain()
    before = r.engine.state(meter).registers["energy_import_kwh"]
    # a reading exactly like the meter's, but the total register 1.00 lower
    last = r.engine.state(meter).registers_ts
    assert last is not None
    reading = r.gw.meters[meter].builder.build("interval", last + 1, last + 1, {})
    lower = before.raw - Decimal("1.00")
    factor = before.value / before.raw
    reading.points = {"energy_import_kwh": PointValue(lower, lower * factor, "kWh")}
    for observer in list(r.gw.observers):
        observer(r.gw.meters[meter], copy.copy(reading))
    r.gw.require_store().submit(reading)
    assert await r.engine.drain()

    events = [e for e in stored_events(r.gw.store_path) if e[1] == meter]
    assert [(e[2], e[3]) for e in events] == [("register_decrease", "raised")]
    async with aiohttp.ClientSession() as http:
        status, text = await get(http, f"{r.base}/api/v1/events?meter={meter}&type=register_decrease")
    assert status == 200
    ev = json.loads(text, parse_float=Decimal)["events"][0]
    assert ev["key"] == "energy_import_kwh"
    assert ev["evidence"]["before_raw"] == before.raw and ev["evidence"]["after_raw"] == lower
    assert ev["evidence"]["before_value"] == before.value     # × CT × PT, exact
    # the evidence links the readings and intervals around the event
    links = ev["evidence"]["links"]
    assert links["readings"].startswith(f"/api/v1/meters/{meter}/readings?from=")
    async with aiohttp.ClientSession() as http:
        for url in (links["readings"], links["intervals"]):
            status, text = await get(http, f"{r.base}{url}")
            assert status == 200, (url, text)
        status, text = await get(http, f"{r.base}{links['readings']}")
        assert json.loads(text)["readings"], "the reading before the decrease is in the linked window"


async def post(http: aiohttp.ClientSession, url: str, token: str, body: object | None = None) -> tuple[int, Any]:
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, json.loads(await resp.text())


async def test_a_reviewer_walks_the_worklist_from_the_api(running: Running) -> None:
    """List a customer's open events, acknowledge one with a note, see the change published and
    audited; the condition clearing closes it (rule); the next failure is closed by the operator
    with a reason. A reader may list but not act."""
    from gateway.audit import AUDIT_FILE, verify
    from gateway.tokens import Role

    r = running
    assert r.gw.api is not None
    operator, _ = r.gw.api.auth.tokens.add("reviewer-wang", Role.OPERATOR, "2026-11-29T08:00:00Z")
    reader, _ = r.gw.api.auth.tokens.add("billing-import", Role.READER, "2026-11-29T08:00:00Z")

    def failing() -> bool:
        return ("read_failure", "") in r.engine.state(DEAD).active

    async def outage() -> None:
        await r.fleet.stop_meter(DEAD)
        await await_until(failing, 8 * 60 / RATE, "read_failure within 8 simulated minutes of silence", step=0.1)
        assert await r.engine.drain()

    await await_until(lambda: r.engine.state(DEAD).last_good_ts is not None, 10 * 60 / RATE,
                      f"a good reading of {DEAD} within 10 simulated minutes", step=0.1)
    await outage()
    async with aiohttp.ClientSession() as http:
        status, text = await get(http, f"{r.base}/api/v1/events?customer=C1002&state=open&since=2026-11-29")
        assert status == 200, text
        listed = json.loads(text)
        assert [(e["meter"], e["type"], e["worklist"]["state"]) for e in listed["events"]] == [
            (DEAD, "read_failure", "open")]
        assert listed["events"][0]["severity"] == "medium" and listed["next_after_id"] is None
        event_id = listed["events"][0]["id"]
        status, _ = await get(http, f"{r.base}/api/v1/events?customer=C1002&state=acknowledged&since=2026-11-29")
        assert status == 200
        status, doc = await post(http, f"{r.base}/api/v1/events/{event_id}/ack", reader, {"note": "x"})
        assert status == 403 and "operator" in doc["error"]
        status, doc = await post(http, f"{r.base}/api/v1/events/{event_id}/ack", operator,
                                 {"note": "called the site: breaker tripped"})
        assert status == 200, doc
        work = doc["worklist"]
        assert work["state"] == "acknowledged" and work["note"] == "called the site: breaker tripped"
        assert work["acknowledged_by"].endswith("(reviewer-wang)") and work["acknowledged_at"]
        status, doc = await post(http, f"{r.base}/api/v1/events/{event_id}/ack", operator, {"note": "again"})
        assert status == 409 and "already acknowledged" in doc["error"]
        status, doc = await post(http, f"{r.base}/api/v1/events/999999/ack", operator, {})
        assert status == 404
        # the meter answers again: read_recovered closes the item (by the rule)
        await r.fleet.start_meter(DEAD)
        await await_until(lambda: not failing(), 10 * 60 / RATE, "read_recovered within 10 simulated minutes",
                          step=0.1)
        assert await r.engine.drain()
        status, text = await get(http, f"{r.base}/api/v1/events?meter={DEAD}&state=closed&since=2026-11-29")
        closed = json.loads(text)["events"]
        assert [(e["id"], e["worklist"]["closed_by"], e["worklist"]["reason"]) for e in closed] == [
            (event_id, "rule", "condition cleared")]
        status, doc = await post(http, f"{r.base}/api/v1/events/{event_id}/close", operator, {"reason": "late"})
        assert status == 409
        # a second outage, closed by the operator with a reason
        await outage()
        status, text = await get(http, f"{r.base}/api/v1/events?customer=C1002&state=open,acknowledged"
                                        "&since=2026-11-29&severity=medium")
        second = json.loads(text)["events"]
        assert len(second) == 1 and second[0]["id"] != event_id
        status, doc = await post(http, f"{r.base}/api/v1/events/{second[0]['id']}/close", operator, {})
        assert status == 400 and "reason" in doc["error"]
        status, doc = await post(http, f"{r.base}/api/v1/events/{second[0]['id']}/close", operator,
                                 {"reason": "modem replaced, meter read on site"})
        assert status == 200 and doc["worklist"]["state"] == "closed"
        assert doc["worklist"]["reason"] == "modem replaced, meter read on site"

    # published: the state changes on the meter's event topic (the outbox the MQTT sink sends)
    conn = sqlite3.connect(r.gw.store_path)
    try:
        changes = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE kind='event' AND meter=? ORDER BY seq", (DEAD,))]
    finally:
        conn.close()
    states = [(c["id"], c["worklist"]["state"], c["changed_by"].split(" ")[0]) for c in changes
              if c["schema"] == "amr.event_state.v1"]
    assert [(i, s) for i, s, _ in states] == [(event_id, "acknowledged"), (event_id, "closed"),
                                              (second[0]["id"], "closed")]
    assert states[1][2] == "review:rule" and states[0][2].startswith("token:")
    # audited: who, what, before and after, in an intact chain
    audit = r.gw.settings.gateway.data_dir / AUDIT_FILE
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    acts = [(e["action"], e["subject"], e["after"]["state"]) for e in entries if e["action"].startswith("event.")]
    assert acts == [("event.acknowledge", str(event_id), "acknowledged"), ("event.close", str(event_id), "closed"),
                    ("event.close", str(second[0]["id"]), "closed")]
    assert verify(audit).intact
