"""Settlement capture against simulated meters when things go wrong, on an accelerated clock.

Real peers on loopback (two Modbus TCP and two DL/T 645 TCP simulators, SQLite on disk, the
HTTP API, the ``amr-gateway export`` process):

* a meter offline across a boundary: the settlement is ``missing`` at once; after the meter
  comes back three simulated days later it becomes ``meter_frozen`` with the meter's freeze
  of the boundary date (DL/T 645) or ``late`` with the real read time (Modbus) — never
  ``actual``, never ``estimated`` (the plan does not allow it) — and the ``missing`` stays in
  the history; ``amr-gateway export settlements`` writes the same CSV as the API;
* the gateway down across a boundary: at the next start it catches up (frozen by date for
  DL/T 645, late for Modbus);
* interval data over a window with a one-hour outage: ``missing`` slots and one
  ``spans_gap`` interval whose consumption is the register difference across the gap;
  the export writes the same CSV as the API, for intervals and for readings.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.billing.rehearsal import HoldingClock
from gateway.model import loads_exact, parse_iso
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from tests.billingkit import SH, api_get, capture_of, export, local, quality, rehearsal_settings, shown
from tests.servicefixtures import await_until


def stamp(text: str) -> float:
    return parse_iso(text)


async def test_offline_across_a_boundary_missing_then_frozen_by_date_or_late(tmp_path: Path) -> None:
    # 2 s to answer, not the rehearsal's 0.5 s: in a loaded parallel run the healthy m1 once
    # answered late at the held boundary and stood missing beside the two offline meters
    settings, config = rehearsal_settings(tmp_path, timeout_ms=2000)
    b = local(2026, 12, 11)
    clock = HoldingClock(local(2026, 12, 10, 23, 59), 600.0, [b])
    fleet = SimulatedFleet(settings, clock, seed=5)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    try:
        await gw.start()
        cap = capture_of(gw)
        await fleet.stop_meter("d1")
        await fleet.stop_meter("m2")
        await await_until(lambda: clock.holding == b, 30.0, "the clock held at the boundary")
        await await_until(lambda: {quality(cap, m, b) for m in ("d1", "m2")} == {"missing"}
                          and quality(cap, "m1", b) == "actual" and quality(cap, "d2", b) == "meter_frozen", 30.0,
                          "the boundary settled: d1 and m2 missing, m1 actual, d2 meter_frozen",
                          detail=lambda: {m: quality(cap, m, b) for m in ("d1", "m2", "m1", "d2")})
        clock.release()
        clock.set_rate(50_000.0)                       # three days offline, quickly
        await await_until(lambda: clock.time() >= b + 3 * 86400, 30.0, "three simulated days offline")
        clock.set_rate(600.0)
        await fleet.start_meter("d1")
        await fleet.start_meter("m2")
        back = clock.time()
        await await_until(lambda: quality(cap, "d1", b) == "meter_frozen" and quality(cap, "m2", b) == "late",
                          40.0, "d1 meter_frozen and m2 late",
                          detail=lambda: (quality(cap, "d1", b), quality(cap, "m2", b)))
        status, text = await api_get(gw, "/api/v1/meters/d1/settlements?cycle=2026-12")
        assert status == 200
        d1 = loads_exact(text)
        status, text = await api_get(gw, "/api/v1/meters/m2/settlements?cycle=2026-12")
        m2 = loads_exact(text)
        status, api_csv = await api_get(gw, "/api/v1/meters/d1/settlements?cycle=2026-12&format=csv")
        assert status == 200
    finally:
        await gw.stop()
        await fleet.stop()
    assert isinstance(d1, dict) and isinstance(m2, dict)

    item = d1["settlements"][1]
    assert item["boundary"] == "2026-12-10T16:00:00.000Z"
    assert (item["quality"], item["source"]) == ("meter_frozen", "daily_freeze")
    assert stamp(item["frozen_at"]) == b and stamp(item["read_at"]) >= back
    assert [h["quality"] for h in item["history"]] == ["missing"]
    assert item["history"][0]["registers"] == {}
    frozen = fleet.model("d1").frozen_daily(datetime.fromtimestamp(b, SH).date())
    for name, reg in item["registers"].items():
        assert reg["raw"] == shown(name, frozen[name]), name
        assert reg["value"] == shown(name, frozen[name]) * settings.meters["d1"].multiplier

    item = m2["settlements"][1]
    assert item["quality"] == "late" and item["source"] == "live_read"
    assert stamp(item["read_at"]) > b + settings.billing["plan"].tolerance_s
    assert stamp(item["read_at"]) >= back
    assert [h["quality"] for h in item["history"]] == ["missing"]
    revisions = [i["quality"] for v in (d1, m2) for s in v["settlements"] for i in [s, *s["history"]]]
    assert "estimated" not in revisions
    assert all(q != "actual" for v in (d1, m2) for q in [v["settlements"][1]["quality"]])

    conn = sqlite3.connect(gw.store_path)
    try:
        pub = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE kind='settlement' AND meter='d1' ORDER BY seq")]
    finally:
        conn.close()
    mine = [d for d in pub if d["boundary"] == "2026-12-10T16:00:00.000Z"]
    assert [d["quality"] for d in mine] == ["missing", "meter_frozen"]     # both published, in order
    assert mine[1]["supersedes"]["quality"] == "missing" and mine[1]["revision"] == 2

    exported = await asyncio.to_thread(export, config, "settlements", "--meter", "d1", "--cycle", "2026-12")
    assert exported == api_csv
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert {r["quality"] for r in rows if r["boundary_index"] == "1"} == {"meter_frozen", "missing"}


async def test_gateway_down_across_a_boundary_catches_up_at_start(tmp_path: Path) -> None:
    settings, _ = rehearsal_settings(tmp_path)
    b = local(2026, 12, 21)
    clock = HoldingClock(local(2026, 12, 20, 23, 40), 600.0)
    fleet = SimulatedFleet(settings, clock, seed=9)
    await fleet.start()
    try:
        gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
        await gw.start()
        await await_until(lambda: clock.time() >= local(2026, 12, 20, 23, 45), 30.0, "the clock at Dec 20 23:45")
        await gw.stop()
        assert clock.time() < b
        clock.set_rate(100_000.0)                      # down for a day and a half
        await await_until(lambda: clock.time() >= b + 1.5 * 86400, 30.0, "a day and a half of downtime")
        clock.set_rate(600.0)
        gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
        await gw.start()
        restarted = clock.time()
        cap = capture_of(gw)
        want = {"d1": "meter_frozen", "d2": "meter_frozen", "m1": "late", "m2": "late"}
        await await_until(lambda: {m: quality(cap, m, b) for m in want} == want, 40.0,
                          f"the settlements after the restart: {want}",
                          detail=lambda: {m: quality(cap, m, b) for m in want})
        await gw.stop()
    finally:
        await fleet.stop()
    conn = sqlite3.connect(gw.store_path)
    try:
        rows = {m: loads_exact(body) for m, body in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL", (b,))}
        history = conn.execute("SELECT count(*) FROM billing_settlement WHERE boundary=?", (b,)).fetchone()[0]
    finally:
        conn.close()
    assert history == 4                                # nothing missing was stored: captured at the start
    for m in ("d1", "d2"):
        doc: Any = rows[m]
        assert stamp(doc["frozen_at"]) == b
        frozen = fleet.model(m).frozen_daily(datetime.fromtimestamp(b, SH).date())
        assert all(r["raw"] == shown(n, frozen[n]) for n, r in doc["registers"].items())
    for m in ("m1", "m2"):
        doc = rows[m]
        assert stamp(doc["read_at"]) >= restarted


@pytest.mark.slow                   # about 10 s of accelerated clock
async def test_one_hour_outage_shows_missing_slots_and_a_spans_gap_interval(tmp_path: Path) -> None:
    settings, config = rehearsal_settings(tmp_path)
    t0 = local(2026, 12, 5, 9, 50)
    clock = HoldingClock(t0, 1200.0)
    fleet = SimulatedFleet(settings, clock, seed=3)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    window = "from=2026-12-05T10:00:00%2B08:00&to=2026-12-05T13:00:00%2B08:00"
    try:
        await gw.start()
        await await_until(lambda: clock.time() >= local(2026, 12, 5, 10, 50), 30.0, "the clock at 10:50")
        await fleet.stop_meter("m1")
        await fleet.stop_meter("d1")
        await await_until(lambda: clock.time() >= local(2026, 12, 5, 11, 50), 30.0, "the clock at 11:50")
        await fleet.start_meter("m1")
        await fleet.start_meter("d1")
        await await_until(lambda: clock.time() >= local(2026, 12, 5, 13, 5), 30.0, "the clock at 13:05")
        views: dict[str, Any] = {}
        for m in ("m1", "d1", "m2"):
            status, text = await api_get(gw, f"/api/v1/meters/{m}/intervals?{window}&step=15m")
            assert status == 200, text
            views[m] = loads_exact(text)
            status, text = await api_get(gw, f"/api/v1/meters/{m}/readings?from=2026-12-05T10:00:00%2B08:00"
                                         "&to=2026-12-05T13:00:01%2B08:00&schedule=interval")
            views[m + "/readings"] = loads_exact(text)
        status, api_csv = await api_get(gw, f"/api/v1/meters/m1/intervals?{window}&step=15m&format=csv")
        # readings of a range an hour behind the clock: no poll of it can still be in flight
        status, readings_csv = await api_get(gw, "/api/v1/meters/m1/readings?from=2026-12-05T10:00:00%2B08:00"
                                             "&to=2026-12-05T12:00:00%2B08:00&format=csv")
        assert status == 200, readings_csv
        status, readings_json = await api_get(gw, "/api/v1/meters/m1/readings?from=2026-12-05T10:00:00%2B08:00"
                                              "&to=2026-12-05T12:00:00%2B08:00")
        assert status == 200, readings_json
        status, hourly = await api_get(gw, f"/api/v1/meters/d1/intervals?{window}&step=1h")
        status, kpi = await api_get(gw, "/api/v1/kpi?date=2026-12-05")
    finally:
        await gw.stop()
        await fleet.stop()

    for m in ("m1", "d1"):
        items = views[m]["intervals"]
        assert len(items) == 12
        statuses = [i["status"] for i in items]
        assert statuses.count("missing") >= 3, statuses
        assert statuses.count("spans_gap") == 1, statuses
        by_slot = {r["slot"]: r for r in views[m + "/readings"]["readings"] if r["quality"] == "good"}
        for i in items:
            if i["status"] == "missing":
                assert all(v is None for v in i["consumption"].values())
                continue
            start = i["span_start"] if i["status"] == "spans_gap" else i["start"]
            a, z = by_slot[start]["points"], by_slot[i["end"]]["points"]
            for name, cons in i["consumption"].items():
                assert cons == z[name]["value"] - a[name]["value"], (m, i["start"], name)
        gap = next(i for i in items if i["status"] == "spans_gap")
        assert stamp(gap["end"]) - stamp(gap["span_start"]) >= 4 * 900     # known only across the gap
        first = next(i for i in items if i["status"] == "complete")
        last = items[-1]
        assert last["status"] == "complete"
        total = sum(i["consumption"]["energy_import_kwh"] for i in items if i["status"] != "missing"
                    and stamp(i["start"]) >= stamp(first["start"]))
        assert total == (by_slot[last["end"]]["points"]["energy_import_kwh"]["value"]
                         - by_slot[first["start"]]["points"]["energy_import_kwh"]["value"])
    assert {i["status"] for i in views["m2"]["intervals"]} == {"complete"}       # the healthy meter
    hourly_doc = loads_exact(hourly)
    assert isinstance(hourly_doc, dict)
    assert "spans_gap" in {i["status"] for i in hourly_doc["intervals"]} or \
        "missing" in {i["status"] for i in hourly_doc["intervals"]}
    kpi_doc = loads_exact(kpi)
    assert isinstance(kpi_doc, dict)
    per = {r["meter"]: r for r in kpi_doc["meters"]}
    assert per["m1"]["slots_read_good"] < per["m2"]["slots_read_good"]
    assert per["m1"]["interval_completeness"] < per["m2"]["interval_completeness"]

    exported_readings = await asyncio.to_thread(export, config, "readings", "--meter", "m1", "--from",
                                                "2026-12-05T10:00:00+08:00", "--to", "2026-12-05T12:00:00+08:00")
    assert exported_readings == readings_csv                  # the same bytes: one export module
    reading_rows = list(csv.DictReader(io.StringIO(exported_readings)))
    qualities = {r["quality"] for r in reading_rows}
    assert "good" in qualities and qualities - {"good"}, qualities      # the outage is in the range
    assert len({r["seq"] for r in reading_rows}) >= 4
    assert all(r["meter"] == "m1" and r["point"] for r in reading_rows)
    exported_json = await asyncio.to_thread(export, config, "readings", "--meter", "m1", "--format", "json",
                                            "--from", "2026-12-05T10:00:00+08:00", "--to", "2026-12-05T12:00:00+08:00")
    assert exported_json == readings_json + "\n"
    json_doc = loads_exact(exported_json)
    assert isinstance(json_doc, dict) and json_doc["count"] == len({r["seq"] for r in reading_rows})

    exported = await asyncio.to_thread(export, config, "intervals", "--meter", "m1", "--step", "15m",
                                       "--from", "2026-12-05T10:00:00+08:00", "--to", "2026-12-05T13:00:00+08:00")
    assert exported == api_csv
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [r["status"] for r in rows] == [i["status"] for i in views["m1"]["intervals"]]
    assert Decimal(next(r for r in rows if r["status"] == "spans_gap")["energy_import_kwh"]) == next(
        i for i in views["m1"]["intervals"] if i["status"] == "spans_gap")["consumption"]["energy_import_kwh"]
