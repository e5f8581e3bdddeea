"""Settlement authority: a daily freeze counts only when it was taken at the boundary.

Real peers on loopback: two simulated DL/T 645 meters on TCP and the gateway with its SQLite
store, on an accelerated clock that holds at the 2026-12-11 00:00 boundary. ``noon`` stamps
its daily freezes 12:00 (the simulator's ``freeze_at`` switch: the record for 2026-12-11 is
there, found by date, but its freeze time is not the boundary); ``midnight`` freezes at
00:00 as it should. The first must not be ``meter_frozen``: the capture reads the registers
(``actual`` at the held boundary), the reason names both times, and one ``freeze_mismatch``
review event (stored and published by the review engine) names both times too.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from gateway.billing.rehearsal import HoldingClock
from gateway.config import load_settings_from_text
from gateway.model import loads_exact, parse_iso
from gateway.ports import free_port
from tests.billingkit import await_settled, capture_of, gateway_with
from tests.servicefixtures import await_until

SH = ZoneInfo("Asia/Shanghai")
B = datetime(2026, 12, 11, tzinfo=SH).timestamp()
NOON = datetime(2026, 12, 11, 12, tzinfo=SH).timestamp()

CONFIG = """\
gateway: {{id: freeze-authority, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: tcp-noon, type: tcp, host: 127.0.0.1, port: {p1}, protocol: dlt645, timeout_ms: 500}}
  - {{id: tcp-midnight, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500}}
meters:
  - {{id: noon, customer: C1, bus: tcp-noon, address: "000000000041", profile: dlt645-2007, ct_ratio: 200/5,
     schedules: [interval], billing: plan}}
  - {{id: midnight, customer: C2, bus: tcp-midnight, address: "000000000042", profile: dlt645-2007,
     schedules: [interval], billing: plan}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: 15m, registers: [energy_import_kwh]}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{enabled: false}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


async def test_a_noon_freeze_is_not_the_midnight_settlement(tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    text = CONFIG.format(data=tmp_path, p1=p1, p2=p2)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    clock = HoldingClock(B - 300, 300.0, [B])
    specs = [
        SimDlt645Spec("noon", "000000000041", transport="tcp", seed=41, base_kw=500.0,
                      multiplier=settings.meters["noon"].multiplier, port=p1, freeze_at=clock_time(12, 0)),
        SimDlt645Spec("midnight", "000000000042", transport="tcp", seed=42, base_kw=50.0, port=p2),
    ]
    sim = Dlt645Simulator(specs, clock, "Asia/Shanghai")
    async with gateway_with(settings, clock, sim) as gw:
        cap = capture_of(gw)
        got = await await_settled(cap, B, ("noon", "midnight"))
        assert got == {"noon": "actual", "midnight": "meter_frozen"}, got
        await await_until(lambda: cap.events_raised, 10.0, "the freeze_mismatch billing event")
        assert gw.review is not None
        assert await gw.review.drain(10.0)

    conn = sqlite3.connect(gw.store_path)
    try:
        rows: dict[str, Any] = {m: loads_exact(body) for m, body in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL", (B,))}
        events = conn.execute("SELECT meter, type, state, key, message, evidence FROM review_event "
                              "WHERE type='freeze_mismatch'").fetchall()
    finally:
        conn.close()

    noon = rows["noon"]
    assert (noon["quality"], noon["source"], noon["frozen_at"]) == ("actual", "live_read", None)
    assert parse_iso(noon["read_at"]) == B
    assert "taken at 2026-12-11T12:00+08:00, not at the boundary 2026-12-11T00:00+08:00" in noon["reason"]
    day = datetime.fromtimestamp(B, SH).date()
    frozen = sim.model("noon").frozen_daily(day)["energy_import_kwh"]
    # the live read at the held boundary is the model's register at the boundary (= what a 00:00 freeze holds)
    assert noon["registers"]["energy_import_kwh"]["raw"] == frozen

    mid = rows["midnight"]
    assert (mid["quality"], mid["source"]) == ("meter_frozen", "daily_freeze")
    assert parse_iso(mid["frozen_at"]) == B

    assert len(events) == 1, events
    meter, etype, state, key, message, evidence = events[0]
    assert (meter, etype, state) == ("noon", "freeze_mismatch", "raised")
    assert parse_iso(key) == B
    assert "2026-12-11T12:00+08:00" in message and "2026-12-11T00:00+08:00" in message
    ev = loads_exact(evidence)
    assert parse_iso(ev["boundary"]) == B and parse_iso(ev["frozen_at"]) == NOON
