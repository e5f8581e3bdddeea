"""``meter_frozen`` settlements carry reactive energy and maximum demand from the daily freeze.

Real peers on loopback: two simulated DL/T 645 meters on TCP, the gateway with its SQLite
store, on an accelerated clock that holds at the 2026-12-11 00:00 boundary:

* ``full`` freezes every block: its settlement is ``meter_frozen`` with every plan register
  from the freeze — reactive import/export equal to the meter model at the freeze instant,
  maximum demand as the meter displays it with its time — and no register has a quality of
  its own;
* ``active`` freezes active energy only (refuses 050603/04/09nn): the settlement is still
  ``meter_frozen`` for the active registers, and the reactive and demand registers come from
  a live read at the boundary, each marked ``actual`` with its read time, the reason says
  so, and the stage consumption flags them.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from gateway.billing.capture import BillingCapture
from gateway.billing.db import for_meter
from gateway.billing.rehearsal import HoldingClock
from gateway.billing.settlement import stage_consumption
from gateway.config import load_settings_from_text
from gateway.model import loads_exact, parse_iso
from gateway.ports import free_port
from gateway.runtime import Gateway
from tests.billingkit import capture_of
from tests.servicefixtures import await_until

SH = ZoneInfo("Asia/Shanghai")
B = datetime(2026, 12, 11, tzinfo=SH).timestamp()
REACTIVE_AND_DEMAND = ("energy_import_kvarh", "energy_export_kvarh", "demand_max_kw", "energy_q1_kvarh",
                       "energy_q2_kvarh", "energy_q3_kvarh", "energy_q4_kvarh")

CONFIG = """\
gateway: {{id: frozen-registers, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: tcp-full, type: tcp, host: 127.0.0.1, port: {p1}, protocol: dlt645, timeout_ms: 500}}
  - {{id: tcp-active, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500}}
meters:
  - {{id: full, customer: C1, bus: tcp-full, address: "000000000031", profile: dlt645-2007, ct_ratio: 300/5,
     schedules: [interval], billing: plan}}
  - {{id: active, customer: C2, bus: tcp-active, address: "000000000032", profile: dlt645-2007, ct_ratio: 100/5,
     pt_ratio: 10000/100, schedules: [interval], billing: plan}}
schedules:
  interval: {{every: 15m, points: ["energy_*", "demand_*"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: 15m}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{enabled: false}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


def settled_at_b(cap: BillingCapture, meters: tuple[str, ...]) -> dict[str, str] | None:
    """Settlement quality per meter at boundary B once none of ``meters`` is still missing."""
    got = {m: k.quality for (m, b), k in cap.current.items() if b == B}
    return got if all(got.get(m) not in (None, "missing") for m in meters) else None


async def test_frozen_settlement_carries_reactive_and_demand(tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    text = CONFIG.format(data=tmp_path, p1=p1, p2=p2)
    (tmp_path / "config.yaml").write_text(text)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    clock = HoldingClock(B - 300, 300.0, [B])
    specs = [
        SimDlt645Spec("full", "000000000031", transport="tcp", seed=31, base_kw=900.0,
                      multiplier=settings.meters["full"].multiplier, port=p1),
        SimDlt645Spec("active", "000000000032", transport="tcp", seed=32, base_kw=4000.0,
                      multiplier=settings.meters["active"].multiplier, port=p2,
                      freeze_kinds=frozenset({0x01, 0x02})),
    ]
    sim = Dlt645Simulator(specs, clock, "Asia/Shanghai")
    await sim.start()
    gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
    try:
        await gw.start()
        cap = capture_of(gw)
        got = await await_until(lambda: settled_at_b(cap, ("full", "active")), 30.0, "both meters settled at B",
                                detail=lambda: {m: k.quality for (m, b), k in cap.current.items() if b == B})
        assert got == {"full": "meter_frozen", "active": "meter_frozen"}, got
    finally:
        await gw.stop()
        await sim.stop()

    conn = sqlite3.connect(gw.store_path)
    try:
        rows: dict[str, Any] = {m: loads_exact(body) for m, body in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL", (B,))}
        full_rows = for_meter(conn, "full", B, B)
        active_rows = for_meter(conn, "active", B, B)
    finally:
        conn.close()

    day = datetime.fromtimestamp(B, SH).date()
    for m in ("full", "active"):
        doc = rows[m]
        frozen = sim.model(m).frozen_daily(day)
        mult = settings.meters[m].multiplier
        regs = doc["registers"]
        assert (doc["quality"], doc["source"]) == ("meter_frozen", "daily_freeze")
        assert parse_iso(doc["frozen_at"]) == B
        assert set(regs) == set(settings.billing["plan"].registers), set(regs) ^ set(settings.billing["plan"].registers)
        for name, reg in regs.items():
            want = frozen[name]
            if name == "demand_max_kw":
                want = want.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)   # XX.XXXX on the meter
            assert reg["raw"] == want, (m, name)
            assert reg["value"] == want * mult, (m, name)
        _kw, true_at = sim.demand(m, 0, B)                         # when the meter's maximum occurred
        assert true_at is not None
        assert regs["demand_max_kw"]["at"] == datetime.fromtimestamp(true_at, SH).strftime("%Y-%m-%dT%H:%M")
        assert regs["energy_import_kvarh"]["raw"] > 0

    full = rows["full"]["registers"]
    assert not any("quality" in r for r in full.values())
    assert "freeze has no" not in (rows["full"]["reason"] or "")

    active = rows["active"]["registers"]
    for name in REACTIVE_AND_DEMAND:
        assert active[name]["quality"] == "actual", name
        assert parse_iso(active[name]["read_at"]) == B          # the clock held at the boundary
    assert not any("quality" in active[n] for n in active if n not in REACTIVE_AND_DEMAND)
    reason = rows["active"]["reason"]
    assert ("freeze has no energy_import_kvarh, energy_export_kvarh, demand_max_kw, energy_q1_kvarh, "
            "energy_q2_kvarh, energy_q3_kvarh, energy_q4_kvarh") in reason
    assert "live read at the boundary" in reason

    # Stage consumption: the flag names the registers that are not the meter's freeze
    (sa,) = active_rows
    st = stage_consumption(2, B, B + 864000, sa, sa, list(settings.billing["plan"].registers))
    assert st.consumption["energy_import_kvarh"] == 0 and st.complete
    assert any("energy_import_kvarh at the end is a live read (actual)" in f for f in st.flags)
    (sf,) = full_rows
    st = stage_consumption(2, B, B + 864000, sf, sf, list(settings.billing["plan"].registers))
    assert st.flags == () and st.consumption["energy_export_kvarh"] == 0
