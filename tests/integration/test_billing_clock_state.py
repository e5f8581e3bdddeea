"""Boundary reads carry the gateway clock's state and the meter's clock offset, and an
untrustworthy one is ``clock_unverified`` and keeps its stage from being ``complete``.

Real peers on loopback: two simulated DL/T 645 meters on TCP (``good`` with a true clock,
``skewed`` whose clock runs 10 min fast) and the gateway with its SQLite store, run twice on
one data directory on accelerated clocks held at the 2026-12-11 and 2026-12-12 00:00
boundaries (a one-day stage).

* The gateway clock's state comes from ``gateway.clock_check_command`` — a real command,
  ``test -e <dir>/synced``, whose exit status the test sets by creating or removing the file
  (the way a GPS or B-code box reports lock). The kernel's NTP state cannot be set by a test.
* At 12-11 the clock is synchronized: ``good`` is verified; ``skewed`` (600 s > the plan's
  ``max_meter_offset: 5m``) is ``clock_unverified``. At 12-12 the clock is not synchronized:
  both are. The 12-11 → 12-12 stage of either meter is then flagged and not complete.

A third run injects a clock-state source into the capture (said so: the kernel state cannot
be set) that reports the kernel's unsynchronized status, and checks it is stored as such.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from gateway.billing import view
from gateway.billing.clockstate import GatewayClockState
from gateway.billing.rehearsal import HoldingClock
from gateway.config import load_settings_from_text
from gateway.model import loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.settings import Settings
from tests.billingkit import capture_of
from tests.servicefixtures import await_until

SH = ZoneInfo("Asia/Shanghai")
B1 = datetime(2026, 12, 11, tzinfo=SH).timestamp()
B2 = datetime(2026, 12, 12, tzinfo=SH).timestamp()
B3 = datetime(2026, 12, 21, tzinfo=SH).timestamp()

CONFIG = """\
gateway: {{id: clock-state, timezone: Asia/Shanghai, data_dir: {data}, clock_check_command: "test -e {data}/synced"}}
buses:
  - {{id: tcp-good, type: tcp, host: 127.0.0.1, port: {p1}, protocol: dlt645, timeout_ms: 500}}
  - {{id: tcp-skewed, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500}}
meters:
  - {{id: good, customer: C1, bus: tcp-good, address: "000000000061", profile: dlt645-2007,
     schedules: [interval], billing: plan}}
  - {{id: skewed, customer: C2, bus: tcp-skewed, address: "000000000062", profile: dlt645-2007,
     schedules: [interval], billing: plan}}
schedules:
  interval: {{every: 1h, points: ["energy_import_kwh"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 12, 21], at: "00:00", tolerance: 15m, registers: [energy_import_kwh],
          max_meter_offset: 5m}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{enabled: false}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


async def run_at(settings: Settings, boundary: float, p1: int, p2: int,
                 inject: GatewayClockState | None = None) -> Gateway:
    """One gateway run on a clock held at ``boundary`` until both meters are settled there."""
    clock = HoldingClock(boundary - 300, 300.0, [boundary])
    specs = [SimDlt645Spec("good", "000000000061", transport="tcp", seed=61, port=p1),
             SimDlt645Spec("skewed", "000000000062", transport="tcp", seed=62, port=p2, clock_offset_s=600.0)]
    sim = Dlt645Simulator(specs, clock, "Asia/Shanghai")
    await sim.start()
    gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
    try:
        await gw.prepare()
        cap = capture_of(gw)
        if inject is not None:
            async def injected() -> GatewayClockState:
                return inject
            cap.clock_state = injected
        await gw.start()
        await await_until(lambda: all(
            (k := cap.current.get((m, boundary))) is not None and k.quality != "missing"
            for m in ("good", "skewed")), 30.0, "both settlements")
    finally:
        await gw.stop()
        await sim.stop()
    return gw


def _bodies(gw: Gateway, boundary: float) -> dict[str, Any]:
    conn = sqlite3.connect(gw.store_path)
    try:
        return {m: loads_exact(body) for m, body in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL", (boundary,))}
    finally:
        conn.close()


async def test_clock_state_and_meter_offset_are_kept_and_an_unverified_read_is_not_complete(tmp_path: Path) -> None:
    p1, p2 = free_port(), free_port()
    text = CONFIG.format(data=tmp_path, p1=p1, p2=p2)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    plan = settings.billing["plan"]
    assert plan.max_meter_offset_s == 300.0
    assert settings.gateway.clock_check_command == f"test -e {tmp_path}/synced"

    (tmp_path / "synced").touch()
    gw = await run_at(settings, B1, p1, p2)
    first = _bodies(gw, B1)
    good, skewed = first["good"], first["skewed"]
    assert good["quality"] == skewed["quality"] == "meter_frozen"
    assert good["gateway_clock"]["synchronized"] is True and good["gateway_clock"]["source"] == "command"
    assert "exited 0" in good["gateway_clock"]["detail"]
    assert abs(good["meter_offset_s"]) < 1 and good["meter_clock"].startswith("2026-12-11T00:0")
    assert good.get("flags") is None
    assert Decimal(599) < skewed["meter_offset_s"] < Decimal(601)
    assert skewed["flags"] == ["clock_unverified"]
    assert "the meter clock is" in skewed["reason"] and "the plan allows 300 s" in skewed["reason"]

    (tmp_path / "synced").unlink()
    gw = await run_at(settings, B2, p1, p2)
    second = _bodies(gw, B2)
    for m in ("good", "skewed"):
        doc = second[m]
        assert doc["gateway_clock"]["synchronized"] is False, m
        assert "exited 1" in doc["gateway_clock"]["detail"]
        assert doc["flags"] == ["clock_unverified"], m
        assert "the gateway clock is not synchronized" in doc["reason"]

    conn = sqlite3.connect(gw.store_path)
    try:
        cv = {m: view.cycle_view(conn, m, plan, "2026-12", "Asia/Shanghai", B2) for m in ("good", "skewed")}
    finally:
        conn.close()
    # stage 1 (12-01 → 12-11) has no start; stage 2 (12-11 → 12-12) is the one both runs captured
    for m in ("good", "skewed"):
        st = cv[m]["stages"][1]
        assert st["codes"] == ["clock_unverified"], (m, st)
        assert st["complete"] is False
        assert st["consumption"]["energy_import_kwh"] is not None and st["consumption"]["energy_import_kwh"] > 0
        assert cv[m]["settlements"][2]["flags"] == ["clock_unverified"]
    assert sum(f.startswith("clock_unverified: the start") for f in cv["skewed"]["stages"][1]["flags"]) == 1
    assert not any(f.startswith("clock_unverified: the start") for f in cv["good"]["stages"][1]["flags"])

    # an injected source (the kernel's NTP state cannot be set by a test) is what gets stored
    (tmp_path / "synced").touch()
    kernel_unsync = GatewayClockState(False, "injected", "kernel NTP status 0x2040 (STA_UNSYNC), maxerror 16 s",
                                      Decimal(16))
    gw = await run_at(settings, B3, p1, p2, inject=kernel_unsync)
    third = _bodies(gw, B3)
    assert third["good"]["gateway_clock"] == {"synchronized": False, "source": "injected",
                                              "detail": kernel_unsync.detail, "maxerror_s": Decimal(16)}
    assert third["good"]["flags"] == ["clock_unverified"]
