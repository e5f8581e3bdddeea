"""The DL/T 698.45 driver against its simulator: a pty line (parity N) and TCP on loopback.

The simulator's clock stands still (``StillClock``), so every value the driver reads is
compared exactly with the meter model (``MeterModel.values_at``) at the scalers of the
profile. A pty ignores the baud rate and rejects even parity on some kernels, so the pty
bus runs 9600 baud parity N. The driver rides the shared byte pipe (``drivers.transport``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from drivers import registry
from drivers.base import BusParams
from drivers.dlt698.catalogue import BY_NAME, OadPoint
from drivers.dlt698.discovery import DISCOVERY, describe
from drivers.dlt698.driver import Dlt698Driver
from drivers.dlt698.plan import compile_plan
from drivers.dlt698.simulator import Dlt698Simulator, SimDlt698Spec
from drivers.transport.tcp import tcp_pipe
from gateway.errors import DeviceException, ReadTimeout
from gateway.model import PointResult
from gateway.profiles import load_profile
from tests.servicefixtures import StillClock

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
NOW = datetime(2026, 3, 15, 10, 7, 0, tzinfo=ZONE)
GAP = date(2026, 3, 10)
PROFILE = load_profile(Path(__file__).resolve().parents[2] / "drivers" / "dlt698" / "profiles" / "dlt698-3phase.yaml")
POINTS = [p for p in PROFILE.points.values() if isinstance(p, OadPoint)]
PLAN = compile_plan(POINTS)
EVENT_COUNTS = {"event_cover_open_count": 1, "event_programming_count": 3, "event_time_set_count": 1,
                "event_power_down_count": 2}          # the simulator's DEFAULT_EVENTS

SPECS = [
    SimDlt698Spec("m1", "000039200933", transport="pty", line="bus", seed=11, freeze_gaps=frozenset({GAP})),
    SimDlt698Spec("m2", "000000000002", transport="pty", line="bus", seed=12, reply_preamble=4),
    SimDlt698Spec("m3", "000000000003", transport="tcp", seed=13, clock_offset_s=90),
    SimDlt698Spec("m4", "201507210143", transport="pty", line="solo", seed=14),
    # meters that refuse GET-Request-NormalList, each its own way, on one more pty line
    SimDlt698Spec("r-dar", "000000000101", transport="pty", line="refusers", seed=15, lists="dar"),
    SimDlt698Spec("r-silent", "000000000102", transport="pty", line="refusers", seed=16, lists="silent"),
    SimDlt698Spec("r-error", "000000000103", transport="pty", line="refusers", seed=17, lists="error"),
]


@pytest.fixture
async def sim() -> AsyncIterator[Dlt698Simulator]:
    simulator = Dlt698Simulator(SPECS, clock=StillClock(NOW.timestamp(), TZ), timezone=TZ)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


def bus(sim: Dlt698Simulator, meter_id: str) -> BusParams:
    ep = sim.serves_at(meter_id)
    if isinstance(ep, str):
        return BusParams(id="sim-dlt698", type="serial", protocol="dlt698", port=ep, baudrate=9600, parity="N")
    return BusParams(id="sim-dlt698", type="tcp", protocol="dlt698", host=ep[0], tcp_port=ep[1])


@pytest.fixture
async def driver_for(sim: Dlt698Simulator) -> AsyncIterator[dict[str, Dlt698Driver]]:
    made = {mid: Dlt698Driver(bus(sim, mid)) for mid in ("m1", "m3", "m4")}
    try:
        yield made
    finally:
        for d in made.values():
            await d.close()


def q(value: Decimal, exponent: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)


def check_all_points(out: dict[str, PointResult], exp: dict[str, Decimal], clock: str) -> None:
    for p in POINTS:
        r = out[p.name]
        assert r.quality == "good", (p.name, r)
    for p in POINTS:
        name = p.name
        raw = out[name].raw
        if name == "meter_clock":
            assert raw == clock
        elif name == "demand_max_kw_at":
            assert raw == "2026-03-01T00:00:00"
        elif name.startswith("energy_q"):               # the model's true quadrant registers
            assert raw == exp[name], name
        elif name.startswith("event_"):
            assert raw == EVENT_COUNTS[name], name
        else:
            assert p.exponent is not None
            assert raw == q(exp[name], p.exponent), name
            assert isinstance(raw, Decimal) and raw.as_tuple().exponent == p.exponent, name


async def test_pty_reads_every_canonical_point_with_normal_lists(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    assert isinstance(sim.serves_at("m1"), str)
    out = await driver_for["m1"].read("000039200933", PLAN, 1.0)
    check_all_points(dict(out), sim.model("m1").values_at(NOW.timestamp()), "2026-03-15T10:07:00")
    gets = sim.requests("m1")
    assert len(gets) == PLAN.request_count == 2              # 34 distinct OADs, 24 per request
    assert all(apdu[:2] == b"\x05\x02" for apdu in gets)


async def test_tcp_reads_every_canonical_point_and_the_drifted_clock(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    out = await driver_for["m3"].read("000000000003", PLAN, 1.0)
    check_all_points(dict(out), sim.model("m3").values_at(NOW.timestamp()), "2026-03-15T10:08:30")


async def test_a_meter_with_fe_preamble_on_a_shared_line(sim: Dlt698Simulator) -> None:
    d = Dlt698Driver(bus(sim, "m2"))
    try:
        out = await d.read("000000000002", PLAN, 1.0)
    finally:
        await d.close()
    assert out["energy_import_kwh"].raw == sim.model("m2").values_at(NOW.timestamp())["energy_import_kwh"]


async def test_an_object_the_meter_lacks_is_an_exception_with_its_dar(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    plan = compile_plan([BY_NAME["power_kva"], BY_NAME["energy_import_kwh"]])
    out = await driver_for["m1"].read("000039200933", plan, 1.0)
    assert out["power_kva"].quality == "exception" and out["power_kva"].raw is None
    assert "DAR 6 (object does not exist)" in str(out["power_kva"].reason)
    assert out["energy_import_kwh"].quality == "good"


async def test_settlement_day_freeze_with_its_time(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    when, values = await driver_for["m1"].read_settlement("000039200933", 1, 1.0, tz=ZONE)
    assert when == datetime(2026, 3, 1, tzinfo=ZONE)
    exp = sim.model("m1").values_at(when.timestamp())
    for name in ("energy_import_kwh", "energy_import_kwh_t3", "energy_export_kwh", "energy_import_kvarh"):
        assert values[name] == exp[name], name
    when2, _ = await driver_for["m3"].read_settlement("000000000003", 2, 1.0, tz=ZONE)
    assert when2 == datetime(2026, 2, 1, tzinfo=ZONE)


async def test_daily_freeze_by_freeze_time_and_a_gap(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    stamps: dict[str, datetime] = {}
    when, values = await driver_for["m1"].read_daily_freeze("000039200933", date(2026, 3, 14), 1.0,
                                                            tz=ZONE, stamps=stamps)
    assert when == datetime(2026, 3, 14, tzinfo=ZONE)
    frozen = sim.model("m1").frozen_daily(date(2026, 3, 14))
    assert values["energy_import_kwh"] == frozen["energy_import_kwh"]
    assert values["energy_export_kwh_t2"] == frozen["energy_export_kwh_t2"]
    assert values["demand_max_kw"] == q(frozen["demand_max_kw"], -4)
    assert stamps["demand_max_kw_at"] == datetime(2026, 3, 1)          # meter local, as DL/T 645 gives it
    with pytest.raises(DeviceException, match="no record for 2026-03-10"):
        await driver_for["m1"].read_daily_freeze("000039200933", GAP, 1.0, tz=ZONE)


async def test_event_records(sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]) -> None:
    (cover,) = await driver_for["m3"].read_events("000000000003", "cover_open", 5, 1.0)
    assert (cover.number, cover.start, cover.end) == (1, "2026-03-14T08:00:00", "2026-03-14T08:05:00")
    assert await driver_for["m3"].read_event_counters("000000000003", 1.0) == EVENT_COUNTS   # no 301C on it
    programming = await driver_for["m1"].read_events("000039200933", "programming", 2, 1.0)
    assert [e.start for e in programming] == ["2026-03-14T08:00:00", "2026-03-13T08:00:00"]
    assert [e.number for e in programming] == [3, 2]


async def test_scan_by_wildcard_and_by_range(sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]) -> None:
    assert await DISCOVERY.scan(driver_for["m4"], None, 1.0, None) == ["201507210143"]
    seen: list[tuple[int, int]] = []
    found = await DISCOVERY.scan(driver_for["m1"], "000000000001-000000000003", 0.3,
                                 lambda done, total: seen.append((done, total)))
    assert found == ["000000000002"]
    assert seen[-1] == (3, 3)
    assert await DISCOVERY.scan(driver_for["m1"], "000039200933,000000000002", 0.3, None) == [
        "000039200933", "000000000002"]


async def test_describe_gives_the_clock_offset_and_the_energy(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    before = time.time()
    facts = await describe(driver_for["m3"], "000000000003", 1.0, ZONE)
    after = time.time()
    # m3's clock is 90 s ahead of the (still) simulated clock, which stands at NOW
    assert facts.clock_offset_s is not None
    assert NOW.timestamp() + 90 - after - 1 <= facts.clock_offset_s <= NOW.timestamp() + 90 - before + 1
    assert facts.energy_import_kwh == sim.model("m3").values_at(NOW.timestamp())["energy_import_kwh"]
    assert facts.problem == ""
    await sim.stop_meter("m3")
    silent = await describe(driver_for["m3"], "000000000003", 0.2, ZONE)
    assert (silent.clock_offset_s, silent.energy_import_kwh) == (None, None) and "did not answer" in silent.problem


async def test_a_silent_meter_times_out_and_comes_back(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    await sim.stop_meter("m3")
    with pytest.raises(ReadTimeout, match="did not answer"):
        await driver_for["m3"].read("000000000003", PLAN, 0.3)
    await sim.start_meter("m3")
    out = await driver_for["m3"].read("000000000003", PLAN, 1.0)
    assert out["energy_import_kwh"].quality == "good"


async def test_the_registry_builds_the_driver_and_plan(sim: Dlt698Simulator) -> None:
    assert "dlt698" in registry.protocol_names("serial") and "dlt698" in registry.protocol_names("tcp")
    assert registry.capabilities("dlt698").names == ("read_points", "freeze_records", "event_counters")
    plan = registry.compile_plan("dlt698", list(PROFILE.points.values()), PROFILE.limits)
    driver = registry.create_driver(bus(sim, "m3"))
    try:
        out = await driver.read("000000000003", plan, 1.0)
    finally:
        await driver.close()
    assert {r.quality for r in out.values()} == {"good"}


async def test_a_dead_meter_on_a_shared_line_leaves_the_other_readable(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    await sim.stop_meter("m1")
    line = driver_for["m1"]                       # the pty bus that m1 and m2 share
    for _ in range(2):
        with pytest.raises(ReadTimeout):
            await line.read("000039200933", PLAN, 0.2)
        out = await line.read("000000000002", PLAN, 1.0)
        assert {r.quality for r in out.values()} == {"good"}
    assert await line.probe("000000000002", 0.5) and not await line.probe("000039200933", 0.2)


@pytest.mark.parametrize("meter_id", ["r-dar", "r-silent", "r-error"])
async def test_a_meter_that_refuses_normal_lists_is_read_one_oad_per_request_logged_once(
    sim: Dlt698Simulator, meter_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    address = next(m.address for m in SPECS if m.id == meter_id)
    d = Dlt698Driver(bus(sim, meter_id))
    caplog.set_level(logging.WARNING, logger="amr.dlt698")
    first: list[bytes] = [b"\x05\x02", b"\x05\x01"]         # the list, the single GET that checks
    try:
        if meter_id == "r-silent":
            # silence to a list is a dead meter's until told apart: the read fails, and the next
            # read (the bus worker's retry) asks a single GET, then the list again
            with pytest.raises(ReadTimeout):
                await d.read(address, PLAN, 0.3)
            first.append(b"\x05\x02")
        for _ in range(2):
            out = await d.read(address, PLAN, 0.3)
            check_all_points(dict(out), sim.model(meter_id).values_at(NOW.timestamp()), "2026-03-15T10:07:00")
    finally:
        await d.close()
    gets = sim.requests(meter_id)
    distinct = len({p.oad for p in POINTS})
    assert [g[:2] for g in gets] == first + [b"\x05\x01"] * (2 * distinct)     # then singles, two reads
    assert address in d.singles
    logged = [r.getMessage() for r in caplog.records if address in r.getMessage()]
    assert len(logged) == 1 and "one OAD per request" in logged[0], logged


async def test_a_dead_meter_costs_one_request_per_read(sim: Dlt698Simulator) -> None:
    endpoint = sim.serves_at("m3")
    assert isinstance(endpoint, tuple)
    pipe = tcp_pipe(*endpoint)
    d = Dlt698Driver(bus(sim, "m3"), pipe=pipe)
    await sim.stop_meter("m3")
    try:
        for _ in range(3):
            with pytest.raises(ReadTimeout):
                await d.read("000000000003", PLAN, 0.2)
    finally:
        await d.close()
    assert pipe.stats["requests"] == 3       # a list, a single GET in its place, a list: one per read
    assert "000000000003" not in d.singles


async def test_a_list_of_objects_the_meter_lacks_is_not_a_refusal(
    sim: Dlt698Simulator, driver_for: dict[str, Dlt698Driver]
) -> None:
    plan = compile_plan([BY_NAME["power_kva"], BY_NAME["event_terminal_cover_open_count"]])
    line = driver_for["m1"]
    for _ in range(2):
        out = await line.read("000039200933", plan, 1.0)
        assert {r.quality for r in out.values()} == {"exception"}
    assert "000039200933" not in line.singles
    gets = sim.requests("m1")
    assert [g[:2] for g in gets] == [b"\x05\x02", b"\x05\x01", b"\x05\x02"]   # checked once, lists after
