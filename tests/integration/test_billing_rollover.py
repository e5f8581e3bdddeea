"""A register that rolls over inside a stage is counted exactly; an unexplained decrease is not.

Real peers on loopback: two simulated DL/T 645 meters on TCP (the same model, seed 33: its
import register goes 11967391.14 → 12005387.93 kWh across 2026-12-11 → 12, which a 6-digit
meter shows as 967391.14 → 5387.93) and the gateway with its SQLite store. The gateway runs
twice on one data directory, on accelerated clocks held at the 2026-12-11 and 2026-12-12
00:00 boundaries (a one-day stage), so the stage is captured in seconds.

* ``wrap`` uses the shipped DL/T 645 profile (capacity from the value format: 6 digits, 2
  decimals): the stage is exactly the model's true difference × CT, flagged ``rollover``,
  complete;
* ``wide`` uses a profile that claims 8 digits for the same meter: the decrease is then not
  a rollover the capacity explains — flagged ``negative``, not complete, and the review engine
  stores a ``negative`` event.

The review rules see the same two readings a day apart: ``register_decrease`` for ``wide``
only (``wrap``'s fall is a rollover within the capacity its profile states).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from gateway.billing import view
from gateway.billing.rehearsal import HoldingClock
from gateway.config import load_settings_from_text
from gateway.model import loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.settings import Settings
from tests.billingkit import await_settled, capture_of, gateway_with
from tests.servicefixtures import await_until

SH = ZoneInfo("Asia/Shanghai")
B1 = datetime(2026, 12, 11, tzinfo=SH).timestamp()
B2 = datetime(2026, 12, 12, tzinfo=SH).timestamp()

CONFIG = """\
gateway: {{id: rollover, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: tcp-wrap, type: tcp, host: 127.0.0.1, port: {p1}, protocol: dlt645, timeout_ms: 500}}
  - {{id: tcp-wide, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500}}
meters:
  - {{id: wrap, customer: C1, bus: tcp-wrap, address: "000000000051", profile: dlt645-2007, ct_ratio: 200/5,
     schedules: [interval], billing: plan}}
  - {{id: wide, customer: C2, bus: tcp-wide, address: "000000000052", profile: dlt645-8digit, ct_ratio: 200/5,
     schedules: [interval], billing: plan}}
schedules:
  interval: {{every: 1h, points: ["energy_import_kwh"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 12], at: "00:00", tolerance: 15m, registers: [energy_import_kwh]}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{enabled: false}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""

WIDE_PROFILE = """\
name: dlt645-8digit
protocol: dlt645
description: the import register of a DL/T 645-2007 meter, wrongly said to have 8 digits
points:
  energy_import_kwh: {di: "00010000", format: XXXXXX.XX, unit: kWh, side: secondary,
                      capacity: {digits: 8, decimals: 2}}
"""


async def run_at(settings: Settings, boundary: float, p1: int, p2: int,
                 events_due: int) -> tuple[Gateway, Dlt645Simulator, list[tuple[str, str, str]]]:
    """One gateway run on a clock held at ``boundary``, against fresh simulators of the two meters,
    until both are settled and ``events_due`` billing events were raised (bounded in time)."""
    clock = HoldingClock(boundary - 300, 300.0, [boundary])
    mult = settings.meters["wrap"].multiplier
    specs = [SimDlt645Spec(m, addr, transport="tcp", seed=33, base_kw=80000.0, multiplier=mult, port=port)
             for m, addr, port in (("wrap", "000000000051", p1), ("wide", "000000000052", p2))]
    sim = Dlt645Simulator(specs, clock, "Asia/Shanghai")
    async with gateway_with(settings, clock, sim) as gw:
        cap = capture_of(gw)
        got = await await_settled(cap, boundary, ("wrap", "wide"))
        assert got == {"wrap": "meter_frozen", "wide": "meter_frozen"}, got
        await await_until(lambda: len(cap.events_raised) >= events_due, 10.0, f"{events_due} billing event(s)")
        assert gw.review is not None and await gw.review.drain(10.0)
        events = list(cap.events_raised)
    return gw, sim, events


async def test_rollover_is_counted_exactly_and_an_unexplained_decrease_is_negative(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "dlt645-8digit.yaml").write_text(WIDE_PROFILE)
    p1, p2 = free_port(), free_port()
    text = CONFIG.format(data=tmp_path, p1=p1, p2=p2)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    mult = settings.meters["wrap"].multiplier
    assert mult == 40

    _gw, _sim, first_events = await run_at(settings, B1, p1, p2, 0)
    assert first_events == []
    gw, sim, events = await run_at(settings, B2, p1, p2, 1)

    model = sim.model("wrap")
    true_a = model.values_at(B1)["energy_import_kwh"]
    true_b = model.values_at(B2)["energy_import_kwh"]
    assert (true_a, true_b) == (Decimal("11967391.14"), Decimal("12005387.93"))   # crosses a multiple of 10^6

    conn = sqlite3.connect(gw.store_path)
    try:
        plan = settings.billing["plan"]
        wrap = view.cycle_view(conn, "wrap", plan, "2026-12", "Asia/Shanghai", B2)
        wide = view.cycle_view(conn, "wide", plan, "2026-12", "Asia/Shanghai", B2)
        stored = conn.execute("SELECT meter, type, state, evidence FROM review_event WHERE type='negative'").fetchall()
        decreases = conn.execute("SELECT DISTINCT meter FROM review_event WHERE type='register_decrease'").fetchall()
    finally:
        conn.close()
    # the review rules agree: wrap's fall is a rollover within its profile's capacity (not a
    # register_decrease); wide's profile claims 8 digits, so there it is a decrease
    assert decreases == [("wide",)]

    w = wrap["stages"][1]
    assert (w["start"], w["end"]) == ("2026-12-10T16:00:00.000Z", "2026-12-11T16:00:00.000Z")
    assert [s["registers"]["energy_import_kwh"]["raw"] for s in wrap["settlements"][1:3]] == \
        [Decimal("967391.14"), Decimal("5387.93")]                                   # what the meter showed
    assert wrap["settlements"][2]["registers"]["energy_import_kwh"]["value"] == Decimal("5387.93") * 40
    assert w["consumption"]["energy_import_kwh"] == (true_b - true_a) * mult == Decimal("37996.79") * 40
    assert w["codes"] == ["rollover"] and w["complete"] is True
    assert any(f.startswith("rollover: energy_import_kwh") for f in w["flags"])

    n = wide["stages"][1]
    assert n["codes"] == ["negative"] and n["complete"] is False
    assert n["consumption"]["energy_import_kwh"] == (Decimal("5387.93") - Decimal("967391.14")) * 40
    assert not wide["reconciliation"]["reconciled"]

    assert events == [("wide", "negative", "2026-12-10T16:00:00.000Z/2026-12-11T16:00:00.000Z")]
    assert len(stored) == 1 and stored[0][:3] == ("wide", "negative", "raised")
    evidence = loads_exact(stored[0][3])
    assert evidence["consumption"] == {"energy_import_kwh": (Decimal("5387.93") - Decimal("967391.14")) * 40}
