"""The DL/T 645 driver against the simulator: a pty line (parity N) and TCP on loopback.

The simulator's clock is frozen, so every value the driver reads can be compared exactly
with the meter model (``MeterModel.values_at``). A pty ignores the baud rate (bytes arrive
at once) and rejects even parity on some kernels, so the pty bus runs 2400 baud parity N.
"""

from __future__ import annotations

import errno
import termios
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from drivers.dlt645 import catalogue
from drivers.dlt645.discovery import find_single_meter, probe_addresses
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.plan import compile_plan
from drivers.dlt645.points import DiPoint
from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from drivers.transport.serial import serial_open_error, serial_pipe
from gateway.errors import DeviceException, FrameError, ReadTimeout, TransportError
from tests.servicefixtures import dlt645_bus, still_dlt645_simulator

pytestmark = pytest.mark.integration

TZ = "Asia/Shanghai"
ZONE = ZoneInfo(TZ)
NOW = datetime(2026, 3, 15, 10, 7, 0, tzinfo=ZONE)
GAP = date(2026, 3, 10)
PLAN = compile_plan(catalogue.CANONICAL_2007)
ENERGY_POINTS = [p.name for p in catalogue.CANONICAL_2007 if p.name.startswith("energy_")]


SPECS = [
    SimDlt645Spec("m1", "123456789012", transport="pty", line="bus", seed=11, freeze_gaps=frozenset({GAP}),
                  settlement_days=((1, 0), (11, 0), (21, 0))),
    SimDlt645Spec("m2", "000000000002", transport="pty", line="bus", seed=12, refuse_blocks=True,
                  reply_preamble=4),
    SimDlt645Spec("m3", "000000000003", transport="pty", line="bus", seed=13, max_data_len=16),
    SimDlt645Spec("m4", "000000000004", transport="tcp", seed=14, clock_offset_s=90),
    SimDlt645Spec("m5", "000000000005", transport="pty", line="old", seed=15, protocol="dlt645-1997"),
]


@pytest.fixture
async def sim() -> AsyncIterator[Dlt645Simulator]:
    async with still_dlt645_simulator(SPECS, NOW.timestamp(), TZ) as simulator:
        yield simulator


@pytest.fixture
async def drivers(sim: Dlt645Simulator) -> AsyncIterator[dict[str, Dlt645Driver]]:
    made: dict[str, Dlt645Driver] = {}
    for mid in ("m1", "m4", "m5"):
        made[mid] = Dlt645Driver(dlt645_bus(sim, mid, allow_writes=True), response_delay=0.1)
    try:
        yield made
    finally:
        for d in made.values():
            await d.close()


def expected(sim: Dlt645Simulator, mid: str, t: float | None = None) -> dict[str, Decimal]:
    return sim.model(mid).values_at(NOW.timestamp() if t is None else t)


async def test_pty_energy_totals_tariffs_and_instantaneous(
    sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]
) -> None:
    assert sim.endpoint("m1").kind == "pty"
    out = await drivers["m1"].read("123456789012", PLAN, 1.0)
    assert {r.quality for r in out.values()} == {"good"}
    exp = expected(sim, "m1")
    for name in ENERGY_POINTS:
        assert out[name].raw == exp[name], name
    tariffs = sum(out[f"energy_import_kwh_t{k}"].raw for k in range(1, 5))  # type: ignore[misc]
    assert tariffs == out["energy_import_kwh"].raw
    assert out["voltage_v_l1"].raw == exp["voltage_v_l1"].quantize(Decimal("0.1"))
    assert out["current_a_l2"].raw == exp["current_a_l2"].quantize(Decimal("0.001"))
    assert out["power_kw"].raw == exp["power_kw"].quantize(Decimal("0.0001"))
    assert out["frequency_hz"].raw == exp["frequency_hz"]
    assert out["meter_clock"].raw == "2026-03-15T10:07:00"
    assert out["event_cover_open_count"].raw == 1


async def test_block_fallback_is_remembered_per_meter(sim: Dlt645Simulator) -> None:
    d = Dlt645Driver(dlt645_bus(sim, "m2"), response_delay=0.1)
    try:
        first = await d.read("000000000002", PLAN, 1.0)
        exp = expected(sim, "m2")
        assert [first[n].raw for n in ENERGY_POINTS] == [exp[n] for n in ENERGY_POINTS]
        assert all(r.quality == "good" for r in first.values())
        assert 0x0001FF00 in d.unsupported_blocks("000000000002")
        asked = [di for _, di in sim.requests("m2")]
        assert asked.count(0x0001FF00) == 1 and 0x00010300 in asked
        n = len(asked)
        await d.read("000000000002", PLAN, 1.0)
        again = [di for _, di in sim.requests("m2")][n:]
        assert not any(di is not None and (di >> 8) & 0xFF == 0xFF for di in again)
    finally:
        await d.close()


async def test_follow_up_chain_on_a_long_reply(sim: Dlt645Simulator) -> None:
    d = Dlt645Driver(dlt645_bus(sim, "m3"), response_delay=0.1)
    try:
        out = await d.read("000000000003", PLAN, 1.0)
        exp = expected(sim, "m3")
        assert [out[n].raw for n in ENERGY_POINTS] == [exp[n] for n in ENERGY_POINTS]
        controls = [c for c, _ in sim.requests("m3")]
        assert 0x12 in controls
    finally:
        await d.close()


async def test_error_reply_marks_only_that_point(sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]) -> None:
    points = [*catalogue.CANONICAL_2007[:1], DiPoint("x_apparent_power_kva", 0x02050000, "XX.XXXX", "kVA")]
    out = await drivers["m1"].read("123456789012", compile_plan(points), 1.0)
    assert out["energy_import_kwh"].quality == "good"
    assert out["x_apparent_power_kva"].quality == "exception"
    assert out["x_apparent_power_kva"].raw is None
    assert "no requested data" in (out["x_apparent_power_kva"].reason or "")


async def test_daily_freeze_is_found_by_date_across_a_gap(
    sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]
) -> None:
    d = drivers["m1"]
    model = sim.model("m1")
    for day in (date(2026, 3, 14), date(2026, 3, 11), date(2026, 3, 9), date(2026, 1, 20)):
        when, values = await d.read_daily_freeze("123456789012", day, 1.0)
        assert when == datetime(day.year, day.month, day.day)
        frozen = model.frozen_daily(day)
        for name in ENERGY_POINTS[:10]:
            assert values[name] == frozen[name], (day, name)
    # The index of 2026-03-09 is shifted by the gap: it must have been found by date.
    assert sim.freeze_days("m1").index(date(2026, 3, 9)) == 5
    with pytest.raises(DeviceException, match="no record for 2026-03-10"):
        await d.read_daily_freeze("123456789012", GAP, 1.0)
    with pytest.raises(DeviceException, match="not frozen yet"):
        await d.read_daily_freeze("123456789012", date(2026, 3, 16), 1.0)
    with pytest.raises(DeviceException, match="too old"):
        await d.read_daily_freeze("123456789012", NOW.date() - timedelta(days=80), 1.0)
    aware, _ = await d.read_daily_freeze("123456789012", date(2026, 3, 14), 1.0, tz=ZONE)
    assert aware.timestamp() == model.local_midnight(date(2026, 3, 14))


async def test_settlement_day_snapshots(sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]) -> None:
    when, values = await drivers["m1"].read_settlement("123456789012", 1, 1.0)
    assert when == datetime(2026, 3, 11)
    exp = expected(sim, "m1", datetime(2026, 3, 11, tzinfo=ZONE).timestamp())
    for name in ENERGY_POINTS:
        assert values[name] == exp[name], name
    when4, values4 = await drivers["m4"].read_settlement("000000000004", 2, 1.0, tz=ZONE)
    assert when4 == datetime(2026, 2, 1, tzinfo=ZONE)
    assert values4["energy_import_kwh"] == expected(sim, "m4", when4.timestamp())["energy_import_kwh"]


async def test_tcp_read_and_meter_clock_offset(sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]) -> None:
    assert sim.endpoint("m4").kind == "tcp" and sim.endpoint("m4").host == "127.0.0.1"
    out = await drivers["m4"].read("000000000004", PLAN, 1.0)
    exp = expected(sim, "m4")
    assert out["energy_export_kwh_t3"].raw == exp["energy_export_kwh_t3"]
    assert out["meter_clock"].raw == "2026-03-15T10:08:30"


async def test_broadcast_time_sync_sets_the_meter_clock(
    sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]
) -> None:
    await drivers["m4"].broadcast_time_sync(datetime(2026, 3, 15, 10, 7, 0))
    clock_point = [p for p in catalogue.CANONICAL_2007 if p.name == "meter_clock"]
    out = await drivers["m4"].read("000000000004", compile_plan(clock_point), 1.0)
    assert out["meter_clock"].raw == "2026-03-15T10:07:00"


async def test_offline_meter_times_out_then_answers_again(
    sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]
) -> None:
    plan = compile_plan(catalogue.CANONICAL_2007[:5])
    await sim.stop_meter("m1")
    with pytest.raises(ReadTimeout, match="123456789012"):
        await drivers["m1"].read("123456789012", plan, 0.2)
    await sim.start_meter("m1")
    out = await drivers["m1"].read("123456789012", plan, 0.2)
    assert out["energy_import_kwh"].quality == "good"


async def test_discovery_wildcard_and_probing(sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]) -> None:
    assert await find_single_meter(drivers["m4"], 0.5) == "000000000004"
    with pytest.raises(FrameError, match="several meters"):
        await find_single_meter(drivers["m1"], 0.2)
    calls: list[tuple[int, int]] = []
    found = await probe_addresses(drivers["m1"], ["2", "000000000003", "4", "123456789012"], 0.2,
                                  lambda done, total: calls.append((done, total)))
    assert found == ["000000000002", "000000000003", "123456789012"]
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]


async def test_1997_meter_on_its_own_line(sim: Dlt645Simulator, drivers: dict[str, Dlt645Driver]) -> None:
    plan = compile_plan(catalogue.CANONICAL_1997, protocol="dlt645-1997")
    out = await drivers["m5"].read("000000000005", plan, 1.0)
    exp = expected(sim, "m5")
    assert out["energy_import_kwh"].raw == exp["energy_import_kwh"]
    assert out["energy_export_kwh_t4"].raw == exp["energy_export_kwh_t4"]
    assert out["voltage_v_l1"].raw == exp["voltage_v_l1"].quantize(Decimal(1))
    assert out["meter_clock"].raw == "2026-03-15T10:07:00"
    assert all(c == 0x01 for c, _ in sim.requests("m5"))


async def test_serial_open_errors_name_port_and_setting() -> None:
    missing = serial_pipe("/dev/amr-no-such-port", 2400, "E")
    with pytest.raises(TransportError, match="/dev/amr-no-such-port does not exist"):
        await missing.open()
    await missing.close()
    err = serial_open_error("/dev/ttyS9", termios.error(errno.EINVAL, "Invalid argument"), 2400, "E", 1)
    assert "/dev/ttyS9" in str(err) and "2400 baud 8E1" in str(err) and "EINVAL" in str(err)
    assert "check the bus settings (a pseudo-terminal accepts parity N only)" in str(err)  # the hint
