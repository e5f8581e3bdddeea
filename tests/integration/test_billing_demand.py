"""Two-part tariff inputs against the DL/T 645 simulator on a pty: demand (value and time) and
power factor per stage and per cycle equal the simulator's true figures exactly.

Real peers: two simulated DL/T 645-2007 meters on one pseudo-terminal (an RS-485 line), the
gateway with its SQLite store and API, on an accelerated clock that holds at each boundary
of the December 2026 cycle (1st, 11th, 21st, 1 January; three stages):

* ``monthly`` resets its maximum demand on the 1st (one settlement day): stage 1's maximum
  is the demand register read on the 11th (its time falls in stage 1); the **cycle's**
  maximum is the settlement-day record read on 1 January (0101 0001) — the register itself
  was just reset to 0 there, which is how the cycle's demand used to be lost. Stages 2 and 3
  hold no maximum of their own on the meter (the month's maximum is in stage 1), and the
  gateway has no 15-minute readings of this meter: no demand, every window a gap, said so.
* ``staged`` resets on the 1st, 11th and 21st (three settlement days, 分次结算): every stage's
  maximum is the settlement-day record read at its end; the cycle's is the largest of them.

Power factor: Δ forward active and Δ(Q1 + Q4) per stage and cycle, × CT × PT, from the
simulator's quadrant registers at the boundaries.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from drivers.simulation.model import MeterModel
from gateway.billing import demand, view
from gateway.billing.rehearsal import HoldingClock
from gateway.config import load_settings_from_text
from gateway.model import iso_utc, loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.storecodec import register
from tests.billingkit import TOKEN, api_get, capture_of
from tests.servicefixtures import await_until

SH = ZoneInfo("Asia/Shanghai")
B = [datetime(2026, 12, d, tzinfo=SH).timestamp() for d in (1, 11, 21)] + [datetime(2027, 1, 1, tzinfo=SH).timestamp()]
METERS = ("monthly", "staged")

CONFIG = """\
gateway: {{id: two-part, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: rs485, type: serial, port: {line}, protocol: dlt645, baudrate: 9600, parity: N, timeout_ms: 500}}
meters:
  - {{id: monthly, customer: C1, bus: rs485, address: "000000000051", profile: dlt645-2007, ct_ratio: 300/5,
     schedules: [daily], billing: plan}}
  - {{id: staged, customer: C2, bus: rs485, address: "000000000052", profile: dlt645-2007, ct_ratio: 100/5,
     pt_ratio: 10000/100, schedules: [daily], billing: plan}}
schedules:
  daily: {{every: 1d, points: ["energy_import_kwh"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: 15m, demand: {{method: block, window_minutes: 15}}}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{listen: "127.0.0.1:{api_port}"}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


def shown(v: Decimal) -> Decimal:
    """Maximum demand as the meter sends it: XX.XXXX, half-up."""
    return v.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def frozen_everywhere(gw: Gateway, t: float) -> bool:
    cap = capture_of(gw)
    return all((k := cap.current.get((m, t))) is not None and k.quality == "meter_frozen" for m in METERS)


def true_pf(model: MeterModel, lo: float, hi: float, mult: Decimal) -> dict[str, Any]:
    """The simulator's true Δ registers over [lo, hi) × CT × PT and the power factor they give."""
    a, b = model.values_at(lo), model.values_at(hi)
    d = {n: (b[n] - a[n]) * mult for n in ("energy_import_kwh", "energy_q1_kvarh", "energy_q2_kvarh",
                                           "energy_q3_kvarh", "energy_q4_kvarh")}
    kwh, kvarh = d["energy_import_kwh"], d["energy_q1_kvarh"] + d["energy_q4_kvarh"]
    exact = kwh / (kwh * kwh + kvarh * kvarh).sqrt()
    return {"kwh": kwh, "kvarh": kvarh, "pf": exact.quantize(Decimal("0.0001")),
            "q": {f"q{k}": d[f"energy_q{k}_kvarh"] for k in range(1, 5)}}


async def test_demand_and_power_factor_equal_the_simulators_truth(tmp_path: Path) -> None:
    clock = HoldingClock(B[0] - 120, 400_000.0, B)
    specs = [
        SimDlt645Spec("monthly", "000000000051", transport="pty", line="bus", seed=51, base_kw=900.0,
                      multiplier=Decimal(60)),
        SimDlt645Spec("staged", "000000000052", transport="pty", line="bus", seed=52, base_kw=4000.0,
                      multiplier=Decimal(2000), settlement_days=((1, 0), (11, 0), (21, 0))),
    ]
    sim = Dlt645Simulator(specs, clock, "Asia/Shanghai")
    await sim.start()
    line = sim.serves_at("monthly")
    text = CONFIG.format(data=tmp_path, line=line, api_port=free_port())
    (tmp_path / "config.yaml").write_text(text)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {"AMR_API_TOKEN": TOKEN})
    plan = settings.billing["plan"]
    gw = Gateway(settings, clock, enable_sinks=False)
    api_doc: dict[str, Any] = {}
    try:
        await gw.start()
        for t in B:
            await await_until(lambda t=t: clock.holding == t, 60.0, f"the clock held at {iso_utc(t)}")
            await await_until(lambda t=t: frozen_everywhere(gw, t), 60.0, f"both meters settled at {iso_utc(t)}",
                              detail=lambda: {k: v.quality for k, v in capture_of(gw).current.items()})
            if t != B[-1]:
                clock.release()
        status, body = await api_get(gw, "/api/v1/meters/monthly/settlements?cycle=2026-12")
        assert status == 200, body
        api_doc = json.loads(body)
        status, csv_text = await api_get(gw, "/api/v1/meters/staged/settlements?cycle=2026-12&format=csv&table=stages")
        assert status == 200, csv_text
    finally:
        await gw.stop()
        await sim.stop()

    conn = register(sqlite3.connect(gw.store_path))   # load_ends renders compact readings
    try:
        views = {m: loads_exact(json.dumps(view.cycle_view(conn, m, plan, "2026-12", "Asia/Shanghai", B[-1], settings),
                                           default=str)) for m in METERS}
        ends = {m: loads_exact(b) for m, b in conn.execute(
            "SELECT meter, body FROM billing_settlement WHERE boundary=? AND superseded_by IS NULL", (B[-1],))}
    finally:
        conn.close()

    # --- power factor and quadrant reactive energy: every stage and the cycle, both meters
    for m in METERS:
        mult = settings.meters[m].multiplier
        periods = [*view_stages(views[m]), views[m]["cycle_total"]]
        spans = [(B[0], B[1]), (B[1], B[2]), (B[2], B[3]), (B[0], B[3])]
        for doc, (lo, hi) in zip(periods, spans, strict=True):
            truth = true_pf(sim.model(m), lo, hi, mult)
            assert doc["power_factor_registers"] == ["energy_import_kwh", "energy_q1_kvarh", "energy_q4_kvarh"]
            assert Decimal(str(doc["power_factor_kwh"])) == truth["kwh"], (m, lo)
            assert Decimal(str(doc["power_factor_kvarh"])) == truth["kvarh"], (m, lo)
            assert Decimal(str(doc["power_factor"])) == truth["pf"], (m, lo)
            assert {q: Decimal(str(v)) for q, v in doc["reactive_kvarh"].items()} == truth["q"], (m, lo)
            assert truth["q"]["q1"] > 0 and truth["q"]["q4"] > 0           # both quadrants moved

    # --- monthly: stage 1 from the register, the cycle from the settlement-day record
    mult = settings.meters["monthly"].multiplier
    st = view_stages(views["monthly"])
    kw1, at1 = sim.demand("monthly", 0, B[1])
    assert at1 is not None and B[0] <= at1 < B[1]
    assert (st[0]["demand_source"], st[0]["demand_detail"]) == ("meter", {"record": "current"})
    assert Decimal(str(st[0]["max_demand_kw"])) == shown(kw1) * mult
    assert st[0]["max_demand_at"] == iso_utc(at1)
    month_kw, month_at = sim.model("monthly").max_demand(B[0], B[3])           # the true cycle maximum
    assert month_at is not None and B[0] <= month_at < B[1]                    # hence none in stages 2 and 3
    end_regs = ends["monthly"]["registers"]
    assert Decimal(str(end_regs["demand_max_kw"]["raw"])) == 0                  # the reset register at the cycle end
    cyc = views["monthly"]["cycle_total"]
    assert (cyc["demand_source"], cyc["demand_detail"]) == ("meter", {"record": "settlement_day"})
    assert Decimal(str(cyc["max_demand_kw"])) == shown(month_kw) * mult
    assert cyc["max_demand_at"] == iso_utc(month_at)
    for k, later in enumerate(st[1:], start=1):   # no interval readings: nothing to compute from, and it says so
        assert later["max_demand_kw"] is None and later["demand_source"] is None
        assert later["demand_detail"]["gaps"] == later["demand_detail"]["windows"] == (B[k + 1] - B[k]) / 900
    assert api_doc["cycle_total"]["max_demand_at"] == iso_utc(month_at)
    assert Decimal(str(api_doc["cycle_total"]["max_demand_kw"])) == shown(month_kw) * mult
    api_pf, view_pf = api_doc["stages"][0]["power_factor"], views["monthly"]["stages"][0]["power_factor"]
    assert Decimal(str(api_pf)) == Decimal(str(view_pf))

    # --- staged: every stage from its own settlement-day record, the cycle the largest of them
    mult = settings.meters["staged"].multiplier
    st = view_stages(views["staged"])
    best: tuple[Decimal, float] | None = None
    for k, doc in enumerate(st):
        kw, at = sim.model("staged").max_demand(B[k], B[k + 1])
        assert at is not None
        assert (doc["demand_source"], doc["demand_detail"]) == ("meter", {"record": "settlement_day"}), k
        assert Decimal(str(doc["max_demand_kw"])) == shown(kw) * mult, k
        assert doc["max_demand_at"] == iso_utc(at), k
        if best is None or shown(kw) > best[0]:
            best = (shown(kw), at)
    assert best is not None
    cyc = views["staged"]["cycle_total"]
    assert cyc["demand_source"] == "meter" and cyc["demand_detail"]["record"] == "stages"
    assert (Decimal(str(cyc["max_demand_kw"])), cyc["max_demand_at"]) == (best[0] * mult, iso_utc(best[1]))
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    stage1 = [r for r in rows if r["stage"] == "1"]
    assert len(stage1) == 1 and stage1[0]["demand_source"] == "meter"
    assert stage1[0]["power_factor_registers"] == "energy_import_kwh+energy_q1_kvarh+energy_q4_kvarh"
    assert Decimal(stage1[0]["max_demand_kw"]) == Decimal(str(st[0]["max_demand_kw"]))
    assert stage1[0]["max_demand_at"] == st[0]["max_demand_at"]
    assert set(demand.TWO_PART_FIELDS) <= set(api_doc["stages"][1])


def view_stages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage documents of a cycle view."""
    stages: list[dict[str, Any]] = doc["stages"]
    return stages


# --- Modbus: the meter's demand register with its time, and demand computed from the gateway's readings

MODBUS_CONFIG = """\
gateway: {{id: two-part-modbus, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: tcp-a, type: tcp, host: 127.0.0.1, port: {pa}, protocol: modbus-tcp, timeout_ms: 500}}
  - {{id: tcp-b, type: tcp, host: 127.0.0.1, port: {pb}, protocol: modbus-tcp, timeout_ms: 500}}
  - {{id: tcp-c, type: tcp, host: 127.0.0.1, port: {pc}, protocol: modbus-tcp, timeout_ms: 500}}
meters:
  - {{id: register, customer: C1, bus: tcp-a, address: 1, profile: simulator, ct_ratio: 200/5, pt_ratio: 10000/100,
     schedules: [fine], billing: meter_demand}}
  - {{id: block, customer: C2, bus: tcp-b, address: 1, profile: simulator, ct_ratio: 100/5,
     schedules: [fine], billing: block}}
  - {{id: sliding, customer: C3, bus: tcp-c, address: 1, profile: simulator, ct_ratio: 100/5,
     schedules: [fine], billing: sliding}}
schedules:
  fine: {{every: 5m, points: ["energy_*"]}}
billing:
  meter_demand: {{cycle_day: 1, stages: [2], at: "00:00", tolerance: 15m}}
  block: {{cycle_day: 1, stages: [2], at: "00:00", tolerance: 15m, registers: [{regs}]}}
  sliding: {{cycle_day: 1, stages: [2], at: "00:00", tolerance: 15m, registers: [{regs}],
            demand: {{method: sliding, window_minutes: 15, slide_minutes: 5}}}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{enabled: false}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""
NO_DEMAND_REGISTERS = ", ".join(("energy_import_kwh", "energy_q1_kvarh", "energy_q2_kvarh", "energy_q3_kvarh",
                                 "energy_q4_kvarh"))
D1 = datetime(2026, 12, 1, tzinfo=SH).timestamp()
D2 = datetime(2026, 12, 2, tzinfo=SH).timestamp()
STEP = 300.0
MODBUS_METERS = ("register", "block", "sliding")


def true_window_max(model: MeterModel, mult: Decimal, lo: float, hi: float, window: float,
                    slide: float) -> tuple[Decimal, float]:
    """The largest window demand from the simulator's true registers at the window ends (earliest wins)."""
    best: tuple[Decimal, float] | None = None
    t = lo + window
    while t <= hi:
        d = (model.values_at(t)["energy_import_kwh"] - model.values_at(t - window)["energy_import_kwh"]) * mult
        kw = d * Decimal(3600) / Decimal(int(window))
        if best is None or kw > best[0]:
            best = (kw, t)
        t += slide
    assert best is not None
    return best


async def test_modbus_demand_from_the_register_and_computed_block_and_sliding(tmp_path: Path) -> None:
    from gateway.simulator.fleet import SimulatedFleet

    slots = [D1 + k * STEP for k in range(int((D2 - D1) // STEP) + 1)]
    clock = HoldingClock(D1 - 660, 30_000.0, [D1 - 600, *slots])    # held until the gateway has started
    text = MODBUS_CONFIG.format(data=tmp_path, pa=free_port(), pb=free_port(), pc=free_port(),
                                regs=NO_DEMAND_REGISTERS)
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    fleet = SimulatedFleet(settings, clock, seed=61)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False, enable_api=False)
    seen: set[tuple[str, float]] = set()
    try:
        gw.observers.append(lambda m, r: seen.add((m.id, r.slot)) if r.quality == "good" else None)
        await gw.start()
        cap = capture_of(gw)
        await await_until(lambda: clock.holding == D1 - 600, 60.0, "the clock held before the day")
        clock.release()
        for t in slots:
            await await_until(lambda t=t: clock.holding == t, 60.0, f"the clock held at {iso_utc(t)}")
            await await_until(lambda t=t: all((m, t) in seen for m in MODBUS_METERS), 60.0,
                              f"every meter read at {iso_utc(t)}", detail=lambda: sorted(seen)[-6:])
            if t in (D1, D2):
                await await_until(lambda t=t: all((k := cap.current.get((m, t))) is not None
                                                  and k.quality == "actual" for m in MODBUS_METERS),
                                  60.0, f"every meter settled at {iso_utc(t)}")
            if t != slots[-1]:
                clock.release()
    finally:
        await gw.stop()
        await fleet.stop()

    conn = register(sqlite3.connect(gw.store_path))   # load_ends renders compact readings
    try:
        docs = {m: view.cycle_view(conn, m, settings.billing[settings.meters[m].billing or ""], "2026-12",
                                   "Asia/Shanghai", D2, settings)["stages"][0] for m in MODBUS_METERS}
    finally:
        conn.close()

    # the meter's own register (simulator profile: demand_max_kw with its time, Unix seconds)
    model = fleet.model("register")
    kw, at = model.demand_at(D2)
    assert at is not None and D1 <= at < D2
    reg = docs["register"]
    assert (reg["demand_source"], reg["demand_detail"]["record"]) == ("meter", "current")
    assert "does not tell its demand resets" in reg["demand_detail"]["note"]
    assert reg["max_demand_kw"] == kw * settings.meters["register"].multiplier
    assert reg["max_demand_at"] == iso_utc(at)

    # computed from the 5-minute readings: block (aligned 15 min) and sliding (15 min every 5 min)
    for m, slide in (("block", 900.0), ("sliding", STEP)):
        mult = settings.meters[m].multiplier
        want_kw, want_at = true_window_max(fleet.model(m), mult, D1, D2, 900.0, slide)
        doc = docs[m]
        assert doc["demand_source"] == "computed", m
        assert doc["max_demand_kw"] == want_kw and doc["max_demand_at"] == iso_utc(want_at), m
        assert doc["demand_detail"]["gaps"] == 0
        assert doc["demand_detail"]["windows"] == (96 if slide == 900.0 else 286)
        truth = true_pf(fleet.model(m), D1, D2, mult)
        assert doc["power_factor"] == truth["pf"] and doc["power_factor_kvarh"] == truth["kvarh"], m
