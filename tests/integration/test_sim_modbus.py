"""The Modbus simulator served through the real driver equals the meter model exactly."""

from __future__ import annotations

import socket
import struct
from dataclasses import replace
from decimal import Decimal

import pytest

from drivers.modbus.decode import shortest_f32
from drivers.modbus.driver import ModbusDriver, create_driver
from drivers.modbus.plan import compile_plan
from drivers.modbus.points import ModbusLimits, RegisterPoint
from drivers.modbus.simulator import ModbusSimulator, SimMeterSpec
from drivers.simulation.model import MODEL_POINTS
from gateway.clock import ScaledClock
from gateway.errors import ReadTimeout
from gateway.settings import BusSettings, Profile
from tests.servicefixtures import StillClock

pytestmark = pytest.mark.integration

T = 1_780_000_000.0     # 2026-05-28, a fixed simulated instant


def profile(side: str) -> Profile:
    """Every model point: energies u32 ×0.01 (u64 ×0.001 for kvarh), the rest f32."""
    points: dict[str, RegisterPoint] = {}
    address = 0
    for name in MODEL_POINTS:
        if name.startswith("energy_") and name.endswith("kvarh"):
            kind, scale = "u64", "0.001"
        elif name.startswith("energy_"):
            kind, scale = "u32", "0.01" if side == "secondary" else "1"
        else:
            kind, scale = "f32", "1"
        points[name] = RegisterPoint(name=name, function=3, address=address, type=kind,  # type: ignore[arg-type]
                                     scale=Decimal(scale), side=side)  # type: ignore[arg-type]
        address += points[name].width
    # a tail of input registers, little-endian words, to exercise FC4 and word order
    points["energy_export_kwh"] = replace(points["energy_export_kwh"], function=4, address=10,
                                          word_order="little")
    return Profile(name=f"sim-{side}", protocol="modbus", points=dict(points))


def bus_for(ep: tuple[str, int] | str, protocol: str = "modbus-tcp") -> BusSettings:
    if isinstance(ep, str):
        return BusSettings(id="line", type="serial", protocol="modbus-rtu", port=ep, parity="N",
                           timeout_s=1.0)
    return BusSettings(id="lan", type="tcp", protocol=protocol, host=ep[0], tcp_port=ep[1],  # type: ignore[arg-type]
                       timeout_s=1.0)


def expected(name: str, value: Decimal, point: RegisterPoint) -> Decimal:
    """What the register shows after encoding: exact for integers, f32-rounded for floats."""
    if point.type == "f32":
        return Decimal(shortest_f32(struct.unpack(">f", struct.pack(">f", float(value)))[0]))
    return (value / point.scale).to_integral_value(rounding="ROUND_FLOOR") * point.scale


@pytest.mark.parametrize("side", ["secondary", "primary"])
async def test_served_values_equal_the_model_through_the_driver(side: str) -> None:
    prof = profile(side)
    specs = [
        SimMeterSpec(id="tcp", protocol="modbus-tcp", unit=1, profile=prof, seed=11,
                     ct=Decimal(40), pt=Decimal(100), base_kw=4000.0),
        SimMeterSpec(id="rtu-a", protocol="modbus-rtu", unit=1, profile=prof, seed=12),
        SimMeterSpec(id="rtu-b", protocol="modbus-rtu", unit=2, profile=prof, seed=13,
                     ct=Decimal(20)),
        SimMeterSpec(id="rot", protocol="modbus-rtu-over-tcp", unit=7, profile=prof, seed=14),
    ]
    plan = compile_plan([p for p in prof.points.values() if isinstance(p, RegisterPoint)],
                        ModbusLimits())
    assert [r.function for r in plan.requests] == [3, 4]    # the gap at 10..11 is read through
    async with ModbusSimulator(specs, StillClock(T)) as sim:
        assert sim.endpoint("rtu-a") == sim.endpoint("rtu-b")      # one line, two units
        for spec in specs:
            protocol = "modbus-rtu-over-tcp" if spec.protocol == "modbus-rtu-over-tcp" else "modbus-tcp"
            driver: ModbusDriver = create_driver(bus_for(sim.endpoint(spec.id), protocol))
            try:
                result = await driver.read(str(spec.unit), plan, 1.0)
            finally:
                await driver.close()
            model = sim.model(spec.id)
            secondary = model.values_at(T)
            for name, point in prof.points.items():
                assert isinstance(point, RegisterPoint)
                true = sim.meters[spec.id].true_value(name, T)
                if side == "secondary":
                    assert true == secondary[name]
                got = result[name]
                assert got.quality == "good", (spec.id, name, got)
                assert got.raw == expected(name, true, point), (spec.id, name)
            if side == "primary" and spec.id == "tcp":
                assert result["energy_import_kwh"].raw == expected(
                    "energy_import_kwh", secondary["energy_import_kwh"] * 4000,
                    prof.points["energy_import_kwh"])  # type: ignore[arg-type]


async def test_energy_advances_with_an_accelerated_clock() -> None:
    prof = profile("secondary")
    clock = ScaledClock(start=T, rate=36000.0)        # ten simulated hours per second
    specs = [SimMeterSpec(id="m", protocol="modbus-tcp", unit=1, profile=prof, seed=3, base_kw=500.0)]
    plan = compile_plan([prof.points["energy_import_kwh"]], ModbusLimits())  # type: ignore[list-item]
    async with ModbusSimulator(specs, clock) as sim:
        driver = create_driver(bus_for(sim.endpoint("m")))
        try:
            first = (await driver.read("1", plan, 1.0))["energy_import_kwh"].raw
            await clock.sleep(3600.0)                 # the scenario: an hour passes (0.1 s of real time)
            second = (await driver.read("1", plan, 1.0))["energy_import_kwh"].raw
        finally:
            await driver.close()
    assert isinstance(first, Decimal) and isinstance(second, Decimal)
    assert second > first


async def test_address_space_and_function_codes() -> None:
    prof = profile("secondary")
    specs = [SimMeterSpec(id="m", protocol="modbus-tcp", unit=1, profile=prof, seed=3)]
    async with ModbusSimulator(specs, StillClock(T)) as sim:
        meter = sim.meters["m"]
        assert meter.registers(3, 0, 2) != meter.registers(3, 2, 2)
        assert meter.registers(3, 5000, 2) == 2      # outside the mapped space
        assert meter.registers(3, 0, 126) == 3       # too many registers
        assert meter.registers(6, 0, 1) == 1         # not a read
        driver = create_driver(bus_for(sim.endpoint("m")))
        try:
            bad = compile_plan([RegisterPoint(name="x", function=3, address=4000, type="u16")],
                               ModbusLimits())
            result = await driver.read("1", bad, 1.0)
            assert result["x"].quality == "exception"
            assert await driver.probe("1", 1.0)
            assert not await driver.probe("2", 0.2)      # own port: another unit is silent
        finally:
            await driver.close()


async def test_stop_and_start_one_meter_on_a_shared_port() -> None:
    prof = profile("secondary")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    specs = [SimMeterSpec(id=f"m{u}", protocol="modbus-tcp", unit=u, profile=prof, seed=u, port=port)
             for u in (1, 2)]
    plan = compile_plan([prof.points["energy_import_kwh"]], ModbusLimits())  # type: ignore[list-item]
    async with ModbusSimulator(specs, StillClock(T)) as sim:
        driver = create_driver(bus_for(sim.endpoint("m1")))
        try:
            await sim.stop_meter("m2")
            with pytest.raises(ReadTimeout):
                await driver.read("2", plan, 0.3)
            assert (await driver.read("1", plan, 1.0))["energy_import_kwh"].quality == "good"
            await sim.start_meter("m2")
            assert (await driver.read("2", plan, 1.0))["energy_import_kwh"].quality == "good"
            assert sim.meters["m2"].requests == 1      # the stopped meter saw nothing
        finally:
            await driver.close()
    with pytest.raises(ValueError, match="unique"):
        ModbusSimulator([specs[0], specs[0]], StillClock(T))
