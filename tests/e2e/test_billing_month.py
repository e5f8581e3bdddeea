"""A whole three-stage billing month on an accelerated clock, checked against the simulators.

Real peers on loopback: two Modbus TCP, two DL/T 645 TCP and one DL/T 698.45 TCP simulated
meters (with and without CT/PT), SQLite on disk, the HTTP API. The clock runs at 2,500,000×
between slots and *holds* at every 3-hour slot (:class:`gateway.billing.rehearsal.HoldingClock`, stepped
by :class:`tests.billingkit.SlotSteps`) until every meter's reading of it is in, and at each
boundary until every settlement of it is stored, so a Modbus live read sees exactly the
register at the boundary and the comparison with the simulator can be exact; the DL/T 645 and
698.45 meters give their own daily freeze, stamped with its freeze time. Held, every register
of a reading is sampled at its slot's instant, however loaded the host: free-running at
250,000×, a read that a busy host stretched to 20 ms sampled its import and export registers
5,000 simulated seconds apart, and the review saw a healthy meter export what it never did.

Checked, from the API (what billing pulls) and the outbox (what MQTT publishes):
* every boundary of cycle 2026-12 (Dec 1, Dec 11, Dec 21, Jan 1) has a settlement per meter,
  ``meter_frozen`` (DL/T 645 and 698.45, frozen at the boundary) or ``actual`` (Modbus, read at it);
* the review rules ran on the month's readings and raised nothing for these healthy meters;
* each stage's consumption per register (total and tariffs) equals the simulator's true
  register difference × CT × PT exactly, and the stages sum to the month (reconciled);
* every settlement is in the outbox once as ``amr.settlement.v1``;
* readings carry consumption since the stage start, consistent with the settlements.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from gateway.billing.capture import BillingCapture
from gateway.billing.rehearsal import HoldingClock, rehearsal_config_text
from gateway.config import load_settings_from_text
from gateway.model import loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from gateway.storecodec import PAYLOAD_SQL, register
from tests.billingkit import SlotSteps, capture_of
from tests.servicefixtures import await_until

SH = ZoneInfo("Asia/Shanghai")
TOKEN = "billing-month-token"
BOUNDARIES = [datetime(2026, 12, 1, tzinfo=SH), datetime(2026, 12, 11, tzinfo=SH),
              datetime(2026, 12, 21, tzinfo=SH), datetime(2027, 1, 1, tzinfo=SH)]
START = datetime(2026, 11, 30, 23, 58, tzinfo=SH).timestamp()
RATE = 2_500_000.0
EVERY_S = 3 * 3600.0    # the rehearsal's interval schedule here (every="3h")
HOLD_WAIT_S = 30.0      # real seconds a boundary may take to settle on a loaded machine
EXPECTED = {"m1": "actual", "m2": "actual", "d1": "meter_frozen", "d2": "meter_frozen", "p1": "meter_frozen"}

#: One DL/T 698.45 meter joins the rehearsal (issue 20): billing runs on it unchanged.
DLT698_BUS = "  - {{id: tcp-p1, type: tcp, host: 127.0.0.1, port: {port}, protocol: dlt698, timeout_ms: 500}}\n"
DLT698_METER = ('  - {id: p1, customer: C5, bus: tcp-p1, address: "000039200933", profile: dlt698-3phase,'
                ' ct_ratio: 200/5, pt_ratio: 10000/100, schedules: [interval], billing: plan}\n')


def with_dlt698_meter(text: str) -> str:
    """The rehearsal configuration with the DL/T 698.45 meter added."""
    text = text.replace("meters:\n", DLT698_BUS.format(port=free_port())
                        + "meters:\n", 1)
    return text.replace("schedules:\n", DLT698_METER + "schedules:\n", 1)


def _qualities(cap: BillingCapture, t: float) -> dict[str, str]:
    return {m: k.quality for (m, b), k in cap.current.items() if b == t}


def _settled(cap: BillingCapture, t: float) -> dict[str, str] | None:
    """Every meter's settlement quality at boundary ``t`` once none is missing, else None."""
    got = _qualities(cap, t)
    return got if len(got) == len(EXPECTED) and all(q != "missing" for q in got.values()) else None


def _truth(fleet: SimulatedFleet, meter: str, t: float) -> dict[str, Decimal]:
    model = fleet.model(meter)
    if meter.startswith(("d", "p")):
        return model.frozen_daily(datetime.fromtimestamp(t, SH).date())
    return model.values_at(t)


async def test_three_stage_month_matches_the_simulators_exactly(tmp_path: Path) -> None:
    api_port = free_port()
    text = with_dlt698_meter(rehearsal_config_text(tmp_path, api_port=api_port, every="3h"))
    settings = load_settings_from_text(text, "<billing-month>", tmp_path, {"AMR_API_TOKEN": TOKEN})
    holds = [b.timestamp() for b in BOUNDARIES]
    clock = HoldingClock(START, RATE, holds[:1])
    steps = SlotSteps(clock, tuple(EXPECTED), every_s=EVERY_S)
    fleet = SimulatedFleet(settings, clock, seed=11)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    steps.watch(gw)
    try:
        await gw.start()
        cap = capture_of(gw)
        for t in holds:
            when = datetime.fromtimestamp(t, SH)
            await steps.run_to(t, HOLD_WAIT_S)
            assert clock.holding == t, "the clock must stand at the boundary"
            got = await await_until(lambda: _settled(cap, t), HOLD_WAIT_S, f"every meter settled at {when}",  # noqa: B023
                                    detail=lambda: _qualities(cap, t))  # noqa: B023
            assert got == EXPECTED, (datetime.fromtimestamp(t, SH), got)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            views: dict[str, Any] = {}
            for meter in EXPECTED:
                url = f"http://127.0.0.1:{gw.api.port}/api/v1/meters/{meter}/settlements?cycle=2026-12"
                async with http.get(url) as resp:
                    assert resp.status == 200
                    views[meter] = loads_exact(await resp.text())
            # the review rules ran on every reading of the month, the DL/T 698.45 meter's too,
            # and a healthy simulated meter of any protocol raised nothing
            async with http.get(f"http://127.0.0.1:{gw.api.port}/api/v1/events?since=2026-11-30") as resp:
                assert resp.status == 200
                events = loads_exact(await resp.text())["events"]
            assert gw.review is not None and gw.review.processed > 0
    finally:
        await gw.stop()
        await fleet.stop()

    assert [(e["meter"], e["type"]) for e in events] == []
    for meter, view in views.items():
        ms = settings.meters[meter]
        profile = settings.profiles[ms.profile]
        items = view["settlements"]
        assert [i["quality"] for i in items] == [EXPECTED[meter]] * 4, meter
        assert all(i["history"] == [] for i in items)
        assert [i["ct"] for i in items] == [str(ms.ct_ratio)] * 4
        truths = [_truth(fleet, meter, t) for t in holds]
        for i, t in zip(items, holds, strict=True):
            stamp = i["frozen_at"] if meter.startswith(("d", "p")) else i["read_at"]
            assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() == t, (meter, i)
        checked = 0
        for k, stage in enumerate(view["stages"]):
            assert stage["complete"] and stage["flags"] == [], (meter, stage)
            before, after = truths[k], truths[k + 1]
            for name, cons in stage["consumption"].items():
                point = profile.points[name]
                factor = ms.multiplier if point.side == "secondary" else Decimal(1)
                assert cons == (after[name] - before[name]) * factor, (meter, k + 1, name)
                checked += 1
            assert {"energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t4",
                    "energy_export_kwh"} <= set(stage["consumption"])
        assert checked >= 3 * 10, (meter, checked)
        rec = view["reconciliation"]
        assert rec["reconciled"] and rec["flags"] == []
        assert rec["stage_sum"] == rec["cycle_consumption"]
        month = view["cycle_total"]["consumption"]["energy_import_kwh"]
        assert month == sum(s["consumption"]["energy_import_kwh"] for s in view["stages"])
        assert month > 0

    conn = register(sqlite3.connect(gw.store_path))
    try:
        published = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE kind='settlement' ORDER BY seq")]
        readings: list[Any] = [loads_exact(p) for (p,) in conn.execute(
            f"SELECT {PAYLOAD_SQL} FROM outbox WHERE kind='reading' AND meter='m1' AND quality='good' ORDER BY seq")]
    finally:
        conn.close()
    assert len(published) == 4 * len(EXPECTED)
    assert {d["schema"] for d in published} == {"amr.settlement.v1"}
    assert len({(d["meter"], d["boundary"]) for d in published}) == len(published)   # each exactly once

    # Near real time: a reading inside stage 2 carries consumption since the stage start.
    view = views["m1"]
    stage2_start = view["settlements"][1]["registers"]["energy_import_kwh"]["value"]
    inside = [r for r in readings if r.get("billing", {}).get("stage") == 2 and r["billing"]["cycle"] == "2026-12"
              and r["billing"]["since_stage_start_kwh"] is not None]
    assert inside, "readings of stage 2 must carry consumption since the stage start"
    for r in inside:
        assert r["billing"]["since_stage_start_kwh"] == r["points"]["energy_import_kwh"]["value"] - stage2_start
