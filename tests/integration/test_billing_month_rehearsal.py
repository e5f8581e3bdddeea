"""One billing month rehearsed on an accelerated clock against the simulators: every real-life
trouble of issue 15 at once, and every number checked against the simulators' truth.

Real peers on loopback: simulated DL/T 645 and Modbus TCP meters, the gateway with its SQLite
store, its HTTP API (operator and reader tokens from the token file), the hash-chained audit
log on disk, and ``amr-gateway audit verify`` as a process. The clock
(:class:`gateway.billing.rehearsal.HoldingClock`) runs at 480,000× and *holds* at every
boundary and at every instant where the test plays a fitter, an engineer or a clerk, so a
live read sees exactly the register at that instant and the comparison can be exact; and at
every slot of the 6-hour schedule until each meter's reading of it is in, so no reading's
registers are sampled minutes apart on a loaded host (the review would then see troubles no
meter had). The
truth is each simulator's model: per physical meter and CT × PT in force, its register
difference × that multiplier (:meth:`Site.consumed`).

Cycle 2026-12, plan ``month`` (``stages: [11, 21]``: boundaries Dec 1, 11, 21, Jan 1 at
00:00 Asia/Shanghai, three stages), and what happens to whom:

====  ===================  ====================================================================
A     DL/T 645, CT 200/5   in service since 2019: its 6-digit import total passes 2 999 999.99
                           on Dec 16 (shown 996089.66 → 6132.41): counted exactly, ``rollover``
B     Modbus TCP, CT 100/5 exchanged (换表) on Dec 15 10:30 for a new meter behind new CTs
                           (150/5): the engineer edits the configuration (reload), the clerk
                           enters the exchange through the API; stage 2 = (old final − start) ×
                           20 + (end − new initial) × 30, ``exchange``
C     DL/T 645, CT 300/5,  CTs swapped to 600/5 on Dec 26 14:00 (the meter then advances half
      PT 10000/100         as fast); the configuration follows an hour later (reload: the
                           gateway's own record), the clerk enters the change with its real
                           time and registers through the API (superseding it): ``ratio_change``
D     DL/T 645             its daily freeze is stamped 12:00, not 00:00: at the stage
                           boundaries never ``meter_frozen``, read live (``actual``), and a
                           ``freeze_mismatch`` event per boundary names both times
E     Modbus TCP           on plan ``morning`` (the same stages at 08:00); the gateway clock
                           is not synchronized at its Dec 11 08:00 boundary (the clock check
                           command fails then, only then): ``clock_unverified``, its two
                           stages not complete until an operator confirms through the API
F     Modbus TCP           off the air from Dec 20 17:00 to Dec 21 09:30: its Dec 21
                           boundary is ``missing``; the clerk enters the reading taken on site
                           (补抄) through the API: ``manual``, never ``actual``
K, S  DL/T 645 (K),        customer K0001, two-part tariff: main meter K (its demand resets at
      Modbus TCP (S)       each stage day) minus its tenant's sub-meter S (主表减分表)
====  ===================  ====================================================================

Checked: every stage's and the month's consumption per register equals the truth exactly, for
every meter and for customer K0001 (K − S); every quality, flag and stage code as issue 15
describes; the daily and the cycle KPIs (on time, manual, missing) per meter, customer and
gateway; the review events are exactly the troubles played (nothing false across the
exchange, the CT changes or the rollover); the OpenAPI document describes every API route
served; the audit log holds every write, ``amr-gateway audit verify`` passes, and fails naming
the line after one byte of the log is changed.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from datetime import time as clock_time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import aiohttp

from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from drivers.modbus.simulator import ModbusSimulator, SimMeterSpec
from drivers.simulation.model import MeterModel
from gateway.audit import AUDIT_FILE
from gateway.billing.rehearsal import HoldingClock
from gateway.billing.settlement import NOT_CUMULATIVE
from gateway.config import load_settings_from_text
from gateway.model import iso_utc, loads_exact, parse_iso
from gateway.ports import free_port
from gateway.runtime import Gateway, reload
from gateway.settings import Settings
from gateway.tokens import Role, TokenFile
from tests.billingkit import SH, SlotSteps, capture_of, quality
from tests.servicefixtures import await_until

REPO = Path(__file__).resolve().parents[2]
RATE = 480_000.0
SETTLE_S = 30.0            # real seconds a held instant may take to settle on a loaded machine
CYCLE = "2026-12"
DAYS = [date(2026, 12, 1), date(2026, 12, 11), date(2026, 12, 21), date(2027, 1, 1)]


def at(day: date, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a Shanghai wall-clock time."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SH).timestamp()


MIDNIGHT = [at(d) for d in DAYS]                 # plan month
MORNING = [at(d, 8) for d in DAYS]               # plan morning (meter E)
START = MIDNIGHT[0] - 120
E_UNSYNCED = MORNING[1]                          # the gateway clock is not synchronized then
F_OFF, F_BACK = at(date(2026, 12, 20), 17), at(date(2026, 12, 21), 9, 30)
F_MISSED = MIDNIGHT[2]
B_EXCHANGE = at(date(2026, 12, 15), 10, 30)      # meter B replaced (换表): new meter, CT 100/5 → 150/5
B_NEW = {"ct": "150/5", "serial": "3412009876"}
C_CT_CHANGE = at(date(2026, 12, 26), 14)         # meter C's CTs swapped: 300/5 → 600/5
C_RELOAD = C_CT_CHANGE + 3600                    # the engineer edits the configuration an hour later
C_NEW_CT = "600/5"
#: the 6-hour schedule's slots after the first boundary (the gateway starts held there: its first slot is the next)
SLOTS = frozenset(MIDNIGHT[0] + k * 6 * 3600.0 for k in range(1, int((MIDNIGHT[-1] - MIDNIGHT[0]) // (6 * 3600)) + 1))
#: every instant the clock holds at: the boundaries, the troubles, and every slot of the 6-hour schedule
HOLDS = sorted({*MIDNIGHT, *MORNING, F_OFF, F_BACK, B_EXCHANGE, C_CT_CHANGE, C_RELOAD, *SLOTS})

CONFIG = """\
gateway: {{id: month-rehearsal, timezone: Asia/Shanghai, data_dir: {data},
          clock_check_command: "test -e {data}/synced"}}
buses:
{buses}
meters:
{meters}
schedules:
  interval: {{every: 6h, points: ["energy_*", "demand_*"]}}
billing:
  month: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: 15m}}
  morning: {{cycle_day: 1, stages: [11, 21], at: "08:00", tolerance: 15m}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{listen: "127.0.0.1:{api}"}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
customers:
  - id: K0001
    name: East Foundry
    contract_capacity_kva: 20000
    tariff: two_part
    meters:
      - {{meter: k, role: main}}
      - {{meter: s, role: deduct}}          # the tenant's sub-meter: 主表减分表
  - id: T0002
    name: Foundry canteen (tenant)
    meters:
      - {{meter: s, role: main}}
"""


@dataclass
class Meter:
    """One simulated meter of the rehearsal: its configuration line and its simulator spec."""

    id: str
    protocol: str                      # dlt645 | modbus-tcp
    address: str
    seed: int
    base_kw: float = 60.0
    ct: str = "1/1"
    pt: str = "1/1"
    plan: str = "month"
    customer: str = ""                 # default: C-<id>, a customer derived from the meter
    freeze_at: clock_time = clock_time(0, 0)
    epoch: float | None = None         # DL/T 645: when the model's registers start (None: 2026-01-01)
    settlement_days: tuple[tuple[int, int], ...] = ((1, 0),)   # DL/T 645: (day, hour) it resets its demand
    port: int = field(default_factory=free_port)

    @property
    def multiplier(self) -> Decimal:
        """CT × PT as configured."""
        (cp, cs), (pp, ps) = (map(Decimal, self.ct.split("/")), map(Decimal, self.pt.split("/")))
        return cp / cs * pp / ps

    def bus_line(self) -> str:
        return (f"  - {{id: tcp-{self.id}, type: tcp, host: 127.0.0.1, port: {self.port}, "
                f"protocol: {self.protocol}, timeout_ms: 500}}")

    def meter_line(self) -> str:
        profile = "dlt645-2007" if self.protocol == "dlt645" else "simulator"
        address = f'"{self.address}"' if self.protocol == "dlt645" else self.address
        return (f"  - {{id: {self.id}, customer: {self.customer or 'C-' + self.id}, bus: tcp-{self.id}, "
                f"address: {address}, "
                f"profile: {profile}, ct_ratio: {self.ct}, pt_ratio: {self.pt}, schedules: [interval], "
                f"billing: {self.plan}}}")


METERS = [
    # in service since 2019-02-11: its import total reaches 3 000 000 kWh (a 6-digit meter shows 0) on Dec 16
    Meter("a", "dlt645", "000000000071", seed=33, base_kw=2400.0, ct="200/5", epoch=at(date(2019, 2, 11))),
    Meter("b", "modbus-tcp", "1", seed=72, base_kw=150.0, ct="100/5"),
    Meter("c", "dlt645", "000000000073", seed=73, base_kw=5000.0, ct="300/5", pt="10000/100"),
    Meter("d", "dlt645", "000000000074", seed=74, base_kw=400.0, ct="100/5", freeze_at=clock_time(12, 0)),
    Meter("e", "modbus-tcp", "1", seed=75, base_kw=120.0, ct="150/5", plan="morning"),
    Meter("f", "modbus-tcp", "1", seed=76, base_kw=90.0, ct="50/5"),
]
METERS += [
    # customer K0001 (two-part tariff): main meter K, settling in stages (its demand resets on
    # the 1st, 11th and 21st), minus its tenant's sub-meter S (customer T0002's own meter)
    Meter("k", "dlt645", "000000000081", seed=81, base_kw=6000.0, ct="400/5", pt="10000/100", customer="K0001",
          settlement_days=((1, 0), (11, 0), (21, 0))),
    Meter("s", "modbus-tcp", "1", seed=82, base_kw=300.0, ct="200/5", customer="T0002"),
]
BY_ID = {m.id: m for m in METERS}


class Site:
    """The simulators, the gateway and how the test talks to them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.config = tmp / "config.yaml"
        self.ct = {m.id: m.ct for m in METERS}              # the CT ratio the configuration says now
        (tmp / "synced").touch()                            # the gateway clock is synchronized (until E's turn)
        self.settings = self.configure()
        tokens = TokenFile(tmp)
        self.operator, _ = tokens.add("billing-clerk", Role.OPERATOR, "2026-11-30T00:00:00Z")
        self.reader, _ = tokens.add("billing-import", Role.READER, "2026-11-30T00:00:00Z")
        self.clock = HoldingClock(START, RATE, HOLDS)
        self.dlt645 = Dlt645Simulator([self.dlt645_spec(m) for m in METERS if m.protocol == "dlt645"
                                       and m.id != "c"], self.clock, "Asia/Shanghai")
        self.c_meter = Dlt645Simulator([self.dlt645_spec(BY_ID["c"])], self.clock, "Asia/Shanghai")
        self.profile = self.settings.profiles["simulator"]
        self.modbus = ModbusSimulator([self.modbus_spec(m) for m in METERS if m.protocol == "modbus-tcp"
                                       and m.id != "b"], self.clock, "Asia/Shanghai")
        self.b_meter = ModbusSimulator([self.modbus_spec(BY_ID["b"])], self.clock, "Asia/Shanghai")
        #: meter → [(from, model, multiplier)]: which physical meter and CT × PT counted when
        self.segments: dict[str, list[tuple[float, MeterModel, Decimal]]] = {}
        #: every meter's readings (good or not, a skipped slot too), to wait at each slot for all of them
        self.slots = SlotSteps(self.clock, tuple(m.id for m in METERS), every_s=6 * 3600.0)
        self.gw = Gateway(self.settings, self.clock, enable_sinks=False)
        self.slots.watch(self.gw)

    def configure(self) -> Settings:
        """Write the configuration file with the CT ratios in force and load it."""
        text = CONFIG.format(data=self.tmp, api=self.api_port, buses="\n".join(m.bus_line() for m in METERS),
                             meters="\n".join(replace(m, ct=self.ct[m.id]).meter_line() for m in METERS))
        self.config.write_text(text)
        return load_settings_from_text(text, str(self.config), self.tmp, {})

    @staticmethod
    def dlt645_spec(m: Meter, ct: str | None = None) -> SimDlt645Spec:
        mult = replace(m, ct=ct).multiplier if ct is not None else m.multiplier
        return SimDlt645Spec(m.id, m.address, transport="tcp", seed=m.seed, base_kw=m.base_kw, multiplier=mult,
                             port=m.port, freeze_at=m.freeze_at, epoch=m.epoch, settlement_days=m.settlement_days)

    def modbus_spec(self, m: Meter, seed: int | None = None, ct: str | None = None) -> SimMeterSpec:
        mult = replace(m, ct=ct).multiplier if ct is not None else m.multiplier
        return SimMeterSpec(m.id, "modbus-tcp", int(m.address), self.profile, seed=m.seed if seed is None else seed,
                            base_kw=m.base_kw, ct=mult, port=m.port)

    async def start(self) -> None:
        await self.dlt645.start()
        await self.modbus.start()
        await self.b_meter.start()
        await self.c_meter.start()
        self.segments = {m.id: [(0.0, self.model(m.id), m.multiplier)] for m in METERS}
        await self.gw.start()

    async def stop(self) -> None:
        await self.gw.stop()
        await self.b_meter.stop()
        await self.c_meter.stop()
        await self.modbus.stop()
        await self.dlt645.stop()

    def model(self, meter: str) -> MeterModel:
        """The meter's simulator model (the one installed now)."""
        if meter in ("b", "c"):
            return (self.b_meter if meter == "b" else self.c_meter).model(meter)
        return (self.dlt645 if BY_ID[meter].protocol == "dlt645" else self.modbus).model(meter)

    def truth(self, meter: str, t: float) -> dict[str, Decimal]:
        """The installed meter's registers at ``t`` as its model has them (not wrapped at the display's capacity)."""
        return self.model(meter).values_at(t)

    def consumed(self, meter: str, name: str, t0: float, t1: float) -> Decimal:
        """True consumption of ``name`` from ``t0`` to ``t1``: per physical meter and CT × PT in
        force, its register difference × that multiplier, summed."""
        segs = self.segments[meter]
        total = Decimal(0)
        for i, (since, model, mult) in enumerate(segs):
            until = segs[i + 1][0] if i + 1 < len(segs) else float("inf")
            a, b = max(t0, since), min(t1, until)
            if a < b:
                total += (model.values_at(b)[name] - model.values_at(a)[name]) * mult
        return total

    async def reload(self) -> None:
        """Reload the gateway with the configuration file as it is now (an engineer's edit)."""
        self.settings = self.configure()
        before = self.gw
        self.gw = await reload(self.gw, self.settings)
        self.slots.watch(self.gw)
        assert self.gw is not before and self.gw.settings is self.settings, self.gw.reload_status

    async def call(self, method: str, path: str, token: str | None = None, body: object = None) -> tuple[int, Any]:
        """One API request (the reader token unless another is given): status and exact JSON."""
        headers = {"Authorization": f"Bearer {token or self.reader}"}
        async with aiohttp.ClientSession() as http, \
                http.request(method, f"http://127.0.0.1:{self.api_port}{path}", headers=headers,
                             json=body) as resp:
            text = await resp.text()
            return resp.status, loads_exact(text) if resp.content_type == "application/json" else text

    async def view(self, meter: str) -> dict[str, Any]:
        status, doc = await self.call("GET", f"/api/v1/meters/{meter}/settlements?cycle={CYCLE}")
        assert status == 200, doc
        assert isinstance(doc, dict)
        return doc


def energy(values: dict[str, Decimal]) -> list[str]:
    """The cumulative registers among a simulated meter's values (active by tariff, reactive)."""
    return [n for n in values if n.startswith("energy_")]


def brand_new(shown: dict[str, Decimal]) -> dict[str, Decimal]:
    """Offsets that make a meter showing ``shown`` show what a new meter does: each register
    below 1 kWh, the tariffs still summing to their total."""
    totals = ("energy_import_kwh", "energy_export_kwh")
    delta = {n: -(shown[n] // 1) for n in energy(shown) if n not in totals}
    for total in totals:
        delta[total] = sum((delta[f"{total}_t{k}"] for k in range(1, 5)), Decimal(0))
    return delta


def due_at(t: float) -> list[str]:
    """The meters with a boundary at ``t``."""
    plan_times = {"month": MIDNIGHT, "morning": MORNING}
    return [m.id for m in METERS if t in plan_times[m.plan]]


def cumulative(settings: Settings, meter: str) -> list[str]:
    plan = settings.billing[settings.meters[meter].billing or ""]
    return [r for r in plan.registers if r not in NOT_CUMULATIVE]


async def play_month(site: Site) -> None:
    """Run the clock from hold to hold, playing each instant's part; the clock stays at the last."""
    clock = site.clock
    actions: dict[float, Callable[[], Awaitable[None]]] = {}

    async def f_goes_silent() -> None:
        await site.modbus.stop_meter("f")

    async def f_manual_reading() -> None:
        # the clerk reads the meter's registers as they stood at 00:00 (its display of the
        # day's values) on site at 09:30, and enters them
        truth = site.truth("f", F_MISSED)
        regs = {r: str(truth[r]) for r in cumulative(site.settings, "f")}
        status, doc = await site.call("POST", "/api/v1/meters/f/manual-readings", site.operator, {
            "registers": regs, "read_at": iso_utc(F_BACK), "boundary": iso_utc(F_MISSED),
            "note": "补抄: 00:00 registers read from the meter's display on site"})
        assert status == 201, doc
        assert doc["quality"] == "manual" and doc["supersedes"]["quality"] == "missing"
        await site.modbus.start_meter("f")

    async def b_exchanged() -> None:
        # the fitter takes meter B out at 10:30, notes its registers, fits a new meter (new CTs
        # too) and notes its registers; the engineer edits the configuration's ct_ratio (reload);
        # the clerk enters the exchange through the API with the real time and registers
        registers = [r for r in cumulative(site.settings, "b") if r in site.profile.points]
        old_final = site.truth("b", B_EXCHANGE)
        await site.b_meter.stop()
        site.b_meter = ModbusSimulator([site.modbus_spec(BY_ID["b"], ct=B_NEW["ct"])], site.clock, "Asia/Shanghai")
        await site.b_meter.start()
        new = site.model("b")                   # the same load, seen through the new CTs by a new meter:
        shown = new.values_at(B_EXCHANGE)       # its registers start below 1 kWh (tariffs sum to the total)
        new.faults.offsets.append((B_EXCHANGE, brand_new(shown)))
        site.segments["b"].append((B_EXCHANGE, new, replace(BY_ID["b"], ct=B_NEW["ct"]).multiplier))
        new_initial = site.truth("b", B_EXCHANGE)
        site.ct["b"] = B_NEW["ct"]
        await site.reload()
        # the clerk enters the exchange once the gateway has taken its own record of the new CTs,
        # which it then supersedes (entered while that record is being taken, neither names the
        # other: gateway.billing.db.effective still splits the stage once, tests/unit/test_billing_changes.py)
        await await_until(lambda: capture_of(site.gw).ratio_changes == 1, SETTLE_S, "the reload's CT record")
        status, doc = await site.call("POST", "/api/v1/meters/b/exchanges", site.operator, {
            "at": iso_utc(B_EXCHANGE), "old_final": {r: str(old_final[r]) for r in registers},
            "new_initial": {r: str(new_initial[r]) for r in registers}, "new_serial": B_NEW["serial"],
            "ct": B_NEW["ct"], "note": "换表: meter replaced after a failed display; CTs 100/5 → 150/5"})
        assert status == 201, doc
        assert doc["supersedes"] is not None, doc            # the gateway's own record of the new CTs

    c_shown: dict[str, Decimal] = {}

    async def c_ct_changed() -> None:
        # the CTs of meter C are swapped at 14:00 (300/5 → 600/5): from now on the meter sees half
        # the secondary current, so its registers advance half as fast for the same load (the
        # simulator plays the meter with the new CT, continuing from its registers at 14:00);
        # the fitter notes the registers
        c_shown.update(site.truth("c", C_CT_CHANGE))
        await site.c_meter.stop()
        site.c_meter = Dlt645Simulator([site.dlt645_spec(BY_ID["c"], ct=C_NEW_CT)], site.clock, "Asia/Shanghai")
        await site.c_meter.start()
        new = site.model("c")
        now = new.values_at(C_CT_CHANGE)
        new.faults.offsets.append((C_CT_CHANGE, {n: c_shown[n] - now[n] for n in energy(now)}))
        assert new.values_at(C_CT_CHANGE) == {**now, **{n: c_shown[n] for n in energy(now)}}
        site.segments["c"].append((C_CT_CHANGE, new, replace(BY_ID["c"], ct=C_NEW_CT).multiplier))

    async def c_configured() -> None:
        # an hour later the engineer edits the configuration (reload: the gateway records the
        # change by itself, at the reload, read then); the clerk enters it through the API with
        # its real time and the fitter's registers, superseding the gateway's own record
        site.ct["c"] = C_NEW_CT
        await site.reload()
        await await_until(lambda: capture_of(site.gw).ratio_changes == 1, SETTLE_S, "the reload's CT record")
        registers = cumulative(site.settings, "c")
        status, doc = await site.call("POST", "/api/v1/meters/c/ratio-changes", site.operator, {
            "at": iso_utc(C_CT_CHANGE), "ct": C_NEW_CT, "registers": {r: str(c_shown[r]) for r in registers},
            "note": "CTs 300/5 replaced by 600/5 (the old ones ran near saturation)"})
        assert status == 201, doc
        assert doc["supersedes"] is not None, doc

    actions[F_OFF] = f_goes_silent
    actions[F_BACK] = f_manual_reading
    actions[B_EXCHANGE] = b_exchanged
    actions[C_CT_CHANGE] = c_ct_changed
    actions[C_RELOAD] = c_configured
    for t in HOLDS:
        when = datetime.fromtimestamp(t, SH)
        await await_until(lambda: clock.holding == t, 60.0, f"the clock held at {when}",  # noqa: B023
                          detail=lambda: datetime.fromtimestamp(clock.time(), SH))
        if t in SLOTS:       # every register of a reading sampled at its slot's instant, however loaded the host
            await site.slots.read_at(t, SETTLE_S)
        cap = capture_of(site.gw)
        for meter in due_at(t):
            want_missing = meter == "f" and t == F_MISSED
            await await_until(lambda: (q := quality(cap, meter, t)) is not None  # noqa: B023
                              and (q == "missing") == want_missing, SETTLE_S,  # noqa: B023
                              f"{meter} settled at {when}", detail=lambda: quality(cap, meter, t))  # noqa: B023
        if t in actions:
            await actions[t]()
        if t == MIDNIGHT[1]:
            (site.tmp / "synced").unlink()       # the gateway loses its time source until E's boundary
        if t == E_UNSYNCED:
            (site.tmp / "synced").touch()
        if t != HOLDS[-1]:
            clock.release()


def shown_demand(kw: Decimal) -> Decimal:
    """Maximum demand as a DL/T 645 meter sends it: XX.XXXX, half-up."""
    return kw.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def true_pf(site: Site, meter: str, lo: float, hi: float) -> Decimal:
    """cos φ of [lo, hi) from the simulator's true Δ active import and Δ(Q1 + Q4), to 4 places."""
    kwh = site.consumed(meter, "energy_import_kwh", lo, hi)
    kvarh = site.consumed(meter, "energy_q1_kvarh", lo, hi) + site.consumed(meter, "energy_q4_kvarh", lo, hi)
    return (kwh / (kwh * kwh + kvarh * kvarh).sqrt()).quantize(Decimal("0.0001"))


def rolled(before: Decimal, after: Decimal) -> bool:
    """Whether a 6-digit register passed 999999.99 between two true values."""
    return before // 1_000_000 != after // 1_000_000


async def test_a_month_of_trouble_settles_exactly(tmp_path: Path) -> None:
    site = Site(tmp_path)
    try:
        await site.start()
        await play_month(site)
        views = {m.id: await site.view(m.id) for m in METERS}
        # ---- E: an operator confirms the boundary read while the gateway clock was unsynchronized
        e_unverified = views["e"]["settlements"][1]
        assert e_unverified["flags"] == ["clock_unverified"]
        assert [s["complete"] for s in views["e"]["stages"]] == [False, False, True]
        reason = "gateway clock checked against the substation GPS clock: 0.2 s off at 08:00"
        status, confirmed = await site.call("POST", f"/api/v1/settlements/{e_unverified['id']}/confirm",
                                            site.operator, {"reason": reason})
        assert status == 200, confirmed
        views["e"] = await site.view("e")
        status, customer = await site.call("GET", f"/api/v1/customers/K0001/settlements?cycle={CYCLE}")
        assert status == 200, customer
        status, bulk_csv = await site.call("GET", f"/api/v1/settlements?cycle={CYCLE}")
        assert status == 200, bulk_csv
        status, cycle_kpi = await site.call("GET", f"/api/v1/kpi?cycle={CYCLE}")
        assert status == 200, cycle_kpi
        kpis = {}
        for day in DAYS:
            status, kpis[day] = await site.call("GET", f"/api/v1/kpi?date={day.isoformat()}")
            assert status == 200
        status, events_doc = await site.call("GET", "/api/v1/events?since=2026-11-30")
        assert status == 200
        status, openapi = await site.call("GET", "/openapi.json")
        assert status == 200 and site.gw.api is not None
        served = {(r.method.lower(), r.resource.canonical) for r in site.gw.api.app.router.routes()
                  if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    finally:
        await site.stop()

    settings = site.settings
    # ---- every stage of every meter: the simulator's true difference × CT × PT, exactly
    for m in METERS:
        view = views[m.id]
        times = MORNING if m.plan == "morning" else MIDNIGHT
        registers = cumulative(settings, m.id)
        assert len(view["stages"]) == 3, m.id
        for k, stage in enumerate(view["stages"]):
            for name in registers:
                want = site.consumed(m.id, name, times[k], times[k + 1])
                assert stage["consumption"][name] == want, (m.id, k + 1, name)
            assert stage["consumption"]["energy_import_kwh"] > 0
        for name in registers:
            want = site.consumed(m.id, name, times[0], times[3])
            assert view["cycle_total"]["consumption"][name] == want, (m.id, "month", name)
        assert view["reconciliation"]["stage_sum"] == view["reconciliation"]["cycle_consumption"], m.id

    # ---- A: rollover, counted exactly, flagged, complete
    a = views["a"]
    assert [s["quality"] for s in a["settlements"]] == ["meter_frozen"] * 4
    truths_a = [site.truth("a", t)["energy_import_kwh"] for t in MIDNIGHT]
    wraps = [rolled(truths_a[k], truths_a[k + 1]) for k in range(3)]
    assert wraps[1], truths_a                                   # the seed is chosen for a rollover in stage 2
    for k, stage in enumerate(a["stages"]):
        assert stage["complete"] is True, stage
        assert ("rollover" in stage["codes"]) == wraps[k], (k + 1, stage["codes"])
    raw = [s["registers"]["energy_import_kwh"]["raw"] for s in a["settlements"]]
    assert raw[2] < raw[1] and raw == [v % 1_000_000 for v in truths_a]   # what the 6-digit meter showed

    # ---- B: exchanged inside stage 2 (entered through the API): split there, each part with
    # its own multiplier, complete
    b = views["b"]
    assert [s["quality"] for s in b["settlements"]] == ["actual"] * 4
    assert [s["multiplier"] for s in b["settlements"]] == [20, 20, 30, 30]
    assert [st["codes"] for st in b["stages"]] == [[], ["exchange"], []], [
        (x["boundary"], x["quality"], x["read_at"], x["gateway_clock"], x["flags"], x["revision"],
         [(h["quality"], h["read_at"], h["gateway_clock"]) for h in x["history"]]) for x in b["settlements"]]
    assert all(st["complete"] for st in b["stages"])
    assert any(f.startswith("exchange: meter exchanged at") for f in b["stages"][1]["flags"])

    # ---- C: CT changed inside stage 3 (entered through the API): split there, complete
    c = views["c"]
    assert [s["quality"] for s in c["settlements"]] == ["meter_frozen"] * 4
    assert [s["multiplier"] for s in c["settlements"]] == [6000, 6000, 6000, 12000]
    assert [st["codes"] for st in c["stages"]] == [[], [], ["ratio_change"]]
    assert all(st["complete"] for st in c["stages"])

    # ---- K: the two-part tariff inputs from the main meter, equal to the simulator's truth:
    # every stage's maximum demand (value and time) from the meter's settlement-day record, the
    # cycle's the largest of them; power factor of Δ active import and Δ(Q1 + Q4)
    k, k_model, k_mult = views["k"], site.model("k"), BY_ID["k"].multiplier
    best: tuple[Decimal, float] | None = None
    for n, stage in enumerate(k["stages"]):
        kw, when = k_model.max_demand(MIDNIGHT[n], MIDNIGHT[n + 1])
        assert when is not None
        assert (stage["demand_source"], stage["demand_detail"]) == ("meter", {"record": "settlement_day"}), n
        assert (stage["max_demand_kw"], stage["max_demand_at"]) == (shown_demand(kw) * k_mult, iso_utc(when)), n
        if best is None or shown_demand(kw) > best[0]:
            best = (shown_demand(kw), when)
        assert stage["power_factor"] == true_pf(site, "k", MIDNIGHT[n], MIDNIGHT[n + 1]), n
    assert best is not None
    assert (k["cycle_total"]["max_demand_kw"], k["cycle_total"]["max_demand_at"]) == (best[0] * k_mult,
                                                                                      iso_utc(best[1]))
    assert k["cycle_total"]["power_factor"] == true_pf(site, "k", MIDNIGHT[0], MIDNIGHT[3])
    assert k["stages"][0]["power_factor_registers"] == ["energy_import_kwh", "energy_q1_kvarh", "energy_q4_kvarh"]

    # ---- D: a 12:00 daily freeze is never the 00:00 settlement: at the stage boundaries the
    # registers are read live (exact at the held boundary); at the cycle start and end its
    # settlement-day record (stamped 00:00 on the 1st) is the meter's own, rightly meter_frozen
    d = views["d"]
    for k, (s, t) in enumerate(zip(d["settlements"], MIDNIGHT, strict=True)):
        if k in (1, 2):
            assert (s["quality"], s["source"], parse_iso(s["read_at"])) == ("actual", "live_read", t), s
            assert "12:00+08:00, not at the boundary" in s["reason"], s["reason"]
        else:
            assert (s["quality"], s["source"], parse_iso(s["frozen_at"])) == ("meter_frozen", "settlement_day", t), s
    assert all(st["complete"] and st["codes"] == [] for st in d["stages"])

    # ---- E: clock_unverified at 12-11 08:00 only; its stages complete once confirmed
    e = views["e"]
    assert [s["quality"] for s in e["settlements"]] == ["actual"] * 4
    assert [s["gateway_clock"]["synchronized"] for s in e["settlements"]] == [True, False, True, True]
    assert "exited 1" in e["settlements"][1]["gateway_clock"]["detail"]
    assert e["settlements"][1]["confirmed"]["reason"] == reason
    assert [h["flags"] for h in e["settlements"][1]["history"]] == [["clock_unverified"]]
    assert all(st["complete"] and st["codes"] == [] for st in e["stages"])
    assert sum(f.startswith("clock_unverified confirmed") for st in e["stages"] for f in st["flags"]) == 2
    for m in ("a", "d", "f"):       # everyone else read with a synchronized clock
        assert all(s["gateway_clock"] is None or s["gateway_clock"]["synchronized"]
                   for s in views[m]["settlements"] if s["quality"] != "manual"), m

    # ---- F: missing, filled by the operator's manual reading; never actual
    f = views["f"]
    assert [s["quality"] for s in f["settlements"]] == ["actual", "actual", "manual", "actual"]
    filled = f["settlements"][2]
    assert [h["quality"] for h in filled["history"]] == ["missing"]
    assert filled["entered_by"].endswith("(billing-clerk)") and parse_iso(filled["read_at"]) == F_BACK
    assert [(st["start_quality"], st["end_quality"], st["complete"]) for st in f["stages"]] == [
        ("actual", "actual", True), ("actual", "manual", True), ("manual", "actual", True)]

    # ---- customer K0001, two-part tariff: main meter K minus its tenant's sub-meter S, per
    # stage and for the month, equal to the simulators' truth (K × 8000, S × 40) per register
    assert [(m["meter"], m["role"], m["sign"]) for m in customer["meters"]] == [("k", "main", 1), ("s", "deduct", -1)]
    periods = [*customer["stages"], customer["cycle_total"]]
    spans = [(MIDNIGHT[n], MIDNIGHT[n + 1]) for n in range(3)] + [(MIDNIGHT[0], MIDNIGHT[3])]
    for doc, (lo, hi) in zip(periods, spans, strict=True):
        both = set(cumulative(settings, "k")) & set(site.profile.points)
        for name in both:
            want = site.consumed("k", name, lo, hi) - site.consumed("s", name, lo, hi)
            assert doc["consumption"][name] == want, (doc.get("stage"), name)
        assert {"energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t4", "energy_export_kwh",
                "energy_import_kvarh"} <= both
        assert (doc["quality"], doc["complete"], doc["codes"]) == ("actual", True, []), doc
        assert doc["consumption"]["energy_import_kwh"] > 0
        # two-part tariff inputs: the main meter's maximum demand and time; the power factor of
        # the signed sums, P = Δ import, Q = Δ(Q1 + Q4), K's minus S's
        k_view = views["k"]
        main = k_view["cycle_total"] if doc is customer["cycle_total"] else k_view["stages"][int(doc["stage"]) - 1]
        assert (doc["max_demand_kw"], doc["max_demand_at"], doc["demand_source"]) == (
            main["max_demand_kw"], main["max_demand_at"], "meter"), doc
        p_kwh = site.consumed("k", "energy_import_kwh", lo, hi) - site.consumed("s", "energy_import_kwh", lo, hi)
        q_kvarh = sum((site.consumed(m, f"energy_q{q}_kvarh", lo, hi) * sign for m, sign in (("k", 1), ("s", -1))
                       for q in (1, 4)), Decimal(0))
        assert (doc["power_factor_kwh"], doc["power_factor_kvarh"]) == (p_kwh, q_kvarh), doc
        assert doc["power_factor"] == (p_kwh / (p_kwh * p_kwh + q_kvarh * q_kvarh).sqrt()).quantize(Decimal("0.0001"))
        assert doc["power_factor_registers"] == ["energy_import_kwh", "energy_q1_kvarh", "energy_q4_kvarh"]
    bulk = [r for r in csv.DictReader(io.StringIO(bulk_csv)) if r["customer"] == "K0001" and r["record"] == "customer"]
    assert [r["stage"] for r in bulk] == ["1", "2", "3", "total"] and {r["csv_version"] for r in bulk} == {"2"}
    for row, doc in zip(bulk, periods, strict=True):
        assert Decimal(row["energy_import_kwh"]) == doc["consumption"]["energy_import_kwh"]
        assert (row["quality"], row["complete"]) == ("actual", "True")

    # ---- the cycle KPIs: on time (meter_frozen or actual within the tolerance) over due, and
    # the manual boundary counted apart, per meter, per customer and for the gateway
    rows = {r["meter"]: r for r in cycle_kpi["meters"]}
    for m in METERS:
        got = rows[m.id]
        want = (4, 3, 0, 1, 0, 0) if m.id == "f" else (4, 4, 0, 0, 0, 0)
        assert (got["settlements_due"], got["settlements_on_time"], got["settlements_late"], got["settlements_manual"],
                got["settlements_estimated"], got["settlements_missing"]) == want, (m.id, got)
    by_customer = {r["customer"]: r for r in cycle_kpi["customers"]}
    assert (by_customer["K0001"]["meters"], by_customer["K0001"]["settlements_due"],
            by_customer["K0001"]["settlements_on_time"], by_customer["K0001"]["on_time_rate"]) == (2, 8, 8, 1.0)
    assert (by_customer["C-f"]["settlements_manual"], by_customer["C-f"]["on_time_rate"]) == (1, 0.75)
    whole = cycle_kpi["gateway"]
    due = 4 * len(METERS)
    assert (whole["settlements_due"], whole["settlements_on_time"], whole["settlements_manual"]) == (due, due - 1, 1)
    assert whole["on_time_rate"] == Decimal(str(round((due - 1) / due, 4)))

    # ---- the KPIs count them: per day, captured (meter_frozen/actual/late), manual, missing
    for day, kpi in kpis.items():
        rows = {r["meter"]: r for r in kpi["meters"]}
        for m in METERS:
            want = (0, 1, 0) if (m.id, day) == ("f", DAYS[2]) else (1, 0, 0)
            got = rows[m.id]
            assert got["settlements_due"] == 1, (day, m.id)
            assert (got["settlements_captured"], got["settlements_manual"], got["settlements_missing"]) == want, \
                (day, m.id, got)

    # ---- review events: exactly the troubles played, each once, and nothing false (no
    # register_decrease across the exchange, no meter_fast, reverse_energy or consumption_jump
    # across the CT changes, no tariff_sum_mismatch on the rolled-over total)
    got_events = sorted(((e["meter"], e["type"], e["state"], parse_iso(e["key"]) if e["key"][:2] == "20" else None)
                         for e in events_doc["events"]), key=str)
    assert got_events == sorted([
        *(("d", "freeze_mismatch", "raised", t) for t in MIDNIGHT),
        ("b", "ratio_change", "raised", B_EXCHANGE),        # the reload's own record, superseded
        ("b", "meter_exchange", "raised", B_EXCHANGE),
        ("c", "ratio_change", "raised", C_RELOAD),          # the reload's own record, superseded
        ("c", "ratio_change", "raised", C_CT_CHANGE),       # the clerk's, with the real time
        ("f", "read_failure", "raised", None), ("f", "read_recovered", "cleared", None),
    ], key=str), "\n".join(str((e["meter"], e["type"], e["state"], e["key"], e["message"]))
                            for e in events_doc["events"] if e["type"] != "freeze_mismatch")

    # ---- the OpenAPI document describes every API route the gateway serves, the billing ones too
    documented = {(method, path) for path, ops in openapi["paths"].items() for method in ops
                  if method in ("get", "post", "put", "delete")}
    assert served - documented == set()
    assert {("get", "/api/v1/meters/{id}/settlements"), ("post", "/api/v1/meters/{id}/manual-readings"),
            ("post", "/api/v1/settlements/{id}/confirm"), ("post", "/api/v1/meters/{id}/exchanges"),
            ("post", "/api/v1/meters/{id}/ratio-changes"), ("get", "/api/v1/kpi")} <= documented

    # ---- the audit log: every write, the chain intact; one changed byte breaks it
    audit = tmp_path / AUDIT_FILE
    lines = audit.read_text().splitlines()
    clerk = [loads_exact(line)["action"] for line in lines if "billing-clerk" in loads_exact(line)["actor"]]
    assert sorted(clerk) == ["meter.exchange", "meter.ratio_change", "reading.manual", "settlement.confirm"], clerk
    ok = audit_verify(site.config)
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stderr
    data = bytearray(audit.read_bytes())
    second = data.index(b"\n") + 1
    where = data.index(b'"after"', second) + 12          # a byte inside the second entry's record
    data[where] ^= 0x01
    audit.write_bytes(bytes(data))
    broken = audit_verify(site.config)
    assert broken.returncode == 1, broken.stdout
    assert "line 2 (entry 2) is broken" in broken.stderr, broken.stderr


def audit_verify(config: Path) -> subprocess.CompletedProcess[str]:
    """``amr-gateway audit verify -c CONFIG`` as a process."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "-c", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)

