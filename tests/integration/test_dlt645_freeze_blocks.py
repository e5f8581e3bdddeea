"""The daily freeze's reactive and maximum-demand blocks: driver against the simulator on a pty.

DL/T 645-2007 daily freeze, same nn as the freeze time 050600nn: 050603nn / 050604nn combined
reactive 1 / 2 and 050609nn forward active maximum demand + time. The simulator's clock
stands still; each frozen value must equal the meter model's register at the freeze
instant (local 00:00 of the day), as the meter displays it. A second meter freezes active
energy only (it refuses the other blocks with D1 / 0x02): the driver leaves those points
out instead of failing the whole freeze.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest

from drivers.dlt645 import catalogue
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from gateway.settings import BillingPlan
from tests.servicefixtures import dlt645_bus, still_dlt645_simulator

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
NOW = datetime(2026, 3, 15, 10, 7, 0, tzinfo=ZONE)
DAYS = (date(2026, 3, 15), date(2026, 3, 1), date(2026, 2, 20))
PLAN_REGISTERS = BillingPlan("p").registers


SPECS = [
    SimDlt645Spec("full", "000000000021", transport="pty", line="bus", seed=21, base_kw=60.0),
    SimDlt645Spec("active", "000000000022", transport="pty", line="bus", seed=22,
                  freeze_kinds=frozenset({0x01, 0x02})),
]


@pytest.fixture
async def sim() -> AsyncIterator[Dlt645Simulator]:
    async with still_dlt645_simulator(SPECS, NOW.timestamp(), TZ) as simulator:
        yield simulator


@pytest.fixture
async def driver(sim: Dlt645Simulator) -> AsyncIterator[Dlt645Driver]:
    d = Dlt645Driver(dlt645_bus(sim, "full"), response_delay=0.1)
    try:
        yield d
    finally:
        await d.close()


def shown(v: Decimal, places: str) -> Decimal:
    """A model value as the meter displays it (the format's decimals, half-up)."""
    return v.quantize(Decimal(places), rounding=ROUND_HALF_UP)


async def test_daily_freeze_carries_reactive_and_max_demand(sim: Dlt645Simulator, driver: Dlt645Driver) -> None:
    model = sim.model("full")
    seen_demand = False
    for day in DAYS:
        stamps: dict[str, datetime] = {}
        when, values = await driver.read_daily_freeze("000000000021", day, 1.0, points=PLAN_REGISTERS,
                                                      stamps=stamps)
        assert when == datetime(day.year, day.month, day.day)
        frozen = model.values_at(model.local_midnight(day))
        for name in ("energy_import_kvarh", "energy_export_kvarh", "energy_import_kwh", "energy_export_kwh_t4",
                     "energy_q1_kvarh", "energy_q4_kvarh"):
            assert values[name] == frozen[name], (day, name)
        assert values["demand_max_kw"] == shown(frozen["demand_max_kw"], "0.0001"), day
        true_kw, true_at = sim.demand("full", 0, model.local_midnight(day))     # the meter's own maximum
        assert values["demand_max_kw"] == shown(true_kw, "0.0001"), day
        if true_at is None:                    # a settlement day: the register was just reset
            assert values["demand_max_kw"] == 0 and "demand_max_kw" not in stamps
            continue
        assert stamps["demand_max_kw"] == datetime.fromtimestamp(true_at, ZONE).replace(tzinfo=None)
        assert stamps["demand_max_kw_at"] == stamps["demand_max_kw"]
        seen_demand = seen_demand or values["demand_max_kw"] > 0
    assert seen_demand                       # not only month starts (where the maximum is still 0)
    asked = {di for _, di in sim.requests("full") if di is not None}
    n = sim.freeze_days("full").index(DAYS[0]) + 1
    for kind in (0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x09):
        assert catalogue.daily_freeze_energy_di(n, kind) in asked, hex(kind)


async def test_only_the_blocks_the_points_need_are_read(sim: Dlt645Simulator, driver: Dlt645Driver) -> None:
    before = len(sim.requests("full"))
    _, values = await driver.read_daily_freeze("000000000021", DAYS[0], 1.0, points=["energy_import_kwh"])
    asked = [di for _, di in sim.requests("full")[before:] if di is not None]
    kinds = {(di >> 8) & 0xFF for di in asked if di >> 16 == 0x0506}
    assert kinds == {0x00, 0x01}
    assert "energy_import_kvarh" not in values and "demand_max_kw" not in values


async def test_a_meter_without_reactive_or_demand_freeze_gives_active_only(sim: Dlt645Simulator) -> None:
    d = Dlt645Driver(dlt645_bus(sim, "active"), response_delay=0.1)
    try:
        stamps: dict[str, datetime] = {}
        _, values = await d.read_daily_freeze("000000000022", DAYS[1], 1.0, points=PLAN_REGISTERS, stamps=stamps)
    finally:
        await d.close()
    frozen = sim.model("active").values_at(sim.model("active").local_midnight(DAYS[1]))
    assert values["energy_import_kwh"] == frozen["energy_import_kwh"]
    assert values["energy_export_kwh_t2"] == frozen["energy_export_kwh_t2"]
    assert not {"energy_import_kvarh", "energy_export_kvarh", "demand_max_kw"} & set(values)
    assert stamps == {}
    refused = {di for _, di in sim.requests("active") if di is not None and di >> 16 == 0x0506
               and (di >> 8) & 0xFF in (0x03, 0x04, 0x09)}
    assert len(refused) == 3                  # asked once each, refused, no retry storm


def test_catalogue_describes_the_freeze_blocks() -> None:
    demand = catalogue.describe(0x05060901)
    assert demand is not None and demand.record == ("XX.XXXX", "YYMMDDhhmm") and demand.size == 40
    reverse = catalogue.describe(0x05060A05)
    assert reverse is not None and reverse.size == 40 and "reverse" in reverse.name
    reactive = catalogue.describe(0x05060301)
    assert reactive is not None and reactive.size == 20 and reactive.unit == "kvarh"
    assert catalogue.is_signed(0x05060301) and not catalogue.is_signed(0x05060901)
    assert catalogue.daily_freeze_kinds(["energy_import_kvarh"]) == (0x01, 0x03)
    assert catalogue.daily_freeze_kinds(["demand_max_kw", "energy_export_kwh_t1"]) == (0x01, 0x02, 0x09)
    assert catalogue.daily_freeze_kinds(None) == (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09)
    assert catalogue.daily_freeze_kinds(["energy_q4_kvarh"]) == (0x01, 0x08)
