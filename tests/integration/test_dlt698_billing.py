"""Billing with a DL/T 698.45 meter: the settlement at a stage boundary comes from the meter's
own day freeze (5004, found by its freeze time) and is ``meter_frozen``, unchanged billing code.

Real peers on loopback: a simulated DL/T 698.45 meter on TCP beside a DL/T 645 one, the
gateway with its SQLite store, on an accelerated clock that holds at the 2026-12-11 00:00
boundary (as ``test_billing_frozen_registers`` does for DL/T 645 alone).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from drivers.dlt698.simulator import Dlt698Simulator, SimDlt698Spec
from gateway.billing.capture import BillingCapture
from gateway.billing.rehearsal import HoldingClock
from gateway.config import load_settings_from_text
from gateway.demo import free_port
from gateway.model import loads_exact, parse_iso
from gateway.runtime import Gateway
from tests.billingkit import capture_of
from tests.servicefixtures import await_until

pytestmark = pytest.mark.integration

SH = ZoneInfo("Asia/Shanghai")
B = datetime(2026, 12, 11, tzinfo=SH).timestamp()

CONFIG = """\
gateway: {{id: dlt698-billing, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: tcp-698, type: tcp, host: 127.0.0.1, port: {p1}, protocol: dlt698, timeout_ms: 500}}
  - {{id: tcp-645, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500}}
meters:
  - {{id: m698, customer: C1, bus: tcp-698, address: "000039200933", profile: dlt698-3phase, ct_ratio: 300/5,
     schedules: [interval], billing: plan}}
  - {{id: m645, customer: C2, bus: tcp-645, address: "000000000032", profile: dlt645-2007, ct_ratio: 100/5,
     schedules: [interval], billing: plan}}
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


async def test_a_dlt698_meter_settles_from_its_day_freeze(tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    text = CONFIG.format(data=tmp_path, p1=p1, p2=p2)
    (tmp_path / "config.yaml").write_text(text)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    clock = HoldingClock(B - 300, 300.0, [B])
    sim698 = Dlt698Simulator([SimDlt698Spec("m698", "000039200933", transport="tcp", seed=31, base_kw=900.0,
                                            multiplier=settings.meters["m698"].multiplier, port=p1)],
                             clock, "Asia/Shanghai")
    sim645 = Dlt645Simulator([SimDlt645Spec("m645", "000000000032", transport="tcp", seed=32, base_kw=400.0,
                                            multiplier=settings.meters["m645"].multiplier, port=p2)],
                             clock, "Asia/Shanghai")
    await sim698.start()
    await sim645.start()
    gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
    try:
        await gw.start()
        cap = capture_of(gw)
        got = await await_until(lambda: settled_at_b(cap, ("m698", "m645")), 30.0, "both meters settled at B",
                                detail=lambda: {m: k.quality for (m, b), k in cap.current.items() if b == B})
        assert got == {"m698": "meter_frozen", "m645": "meter_frozen"}, got
    finally:
        await gw.stop()
        await sim698.stop()
        await sim645.stop()

    conn = sqlite3.connect(gw.store_path)
    try:
        rows: dict[str, Any] = {m: loads_exact(body) for m, body in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL", (B,))}
    finally:
        conn.close()
    doc = rows["m698"]
    assert (doc["quality"], doc["source"]) == ("meter_frozen", "daily_freeze")
    assert parse_iso(doc["frozen_at"]) == B
    frozen = sim698.model("m698").frozen_daily(datetime.fromtimestamp(B, SH).date())
    mult = settings.meters["m698"].multiplier
    regs = doc["registers"]
    assert set(regs) == set(settings.billing["plan"].registers)
    for name, reg in regs.items():
        want = frozen[name]
        if name == "demand_max_kw":
            want = want.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)     # scaler -4 on the meter
        assert reg["raw"] == want, name
        assert reg["value"] == want * mult, name
    assert regs["energy_import_kwh"]["raw"] > 0
    # the demand's time, meter local, in the same form as the DL/T 645 meter's
    assert regs["demand_max_kw"]["at"] == "2026-12-01T00:00"      # the DL/T 698.45 simulator stamps the month start
    _kw, true_at = sim645.demand("m645", 0, B)                     # the DL/T 645 one: its true time, meter local
    assert true_at is not None
    assert rows["m645"]["registers"]["demand_max_kw"]["at"] == datetime.fromtimestamp(true_at, SH).strftime(
        "%Y-%m-%dT%H:%M")
    assert rows["m645"]["quality"] == "meter_frozen"
