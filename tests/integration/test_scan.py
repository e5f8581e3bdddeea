"""``amr-gateway scan``'s one interface, per protocol, against the simulators on pty lines.

Each protocol package's ``discovery.DISCOVERY`` is called the same way (driver, ``--range``
text, timeout, progress); these tests hold both to that shape with real peers.
"""

from __future__ import annotations

import pytest

from drivers.dlt645.discovery import DISCOVERY as DLT645_DISCOVERY
from drivers.dlt645.driver import create_driver as create_dlt645
from drivers.dlt645.simulator import Dlt645Simulator, SimDlt645Spec
from drivers.modbus.discovery import DISCOVERY as MODBUS_DISCOVERY
from drivers.modbus.discovery import unit_range
from drivers.modbus.driver import create_driver as create_modbus
from drivers.modbus.simulator import ModbusSimulator, SimMeterSpec
from gateway.config import SHIPPED_PROFILES_DIR
from gateway.errors import ConfigError
from gateway.profiles import find_profile
from gateway.settings import BusSettings
from tests.servicefixtures import StillClock, dlt645_bus

pytestmark = pytest.mark.integration

T = 1_780_000_000.0     # 2026-05-28, a fixed simulated instant
TZ = "Asia/Shanghai"


async def test_modbus_scan_finds_the_units_on_a_line_in_order_with_progress() -> None:
    profile = find_profile("simulator", [SHIPPED_PROFILES_DIR])
    specs = [SimMeterSpec(id=f"u{u}", protocol="modbus-rtu", unit=u, profile=profile, line="l")
             for u in (5, 2)]
    async with ModbusSimulator(specs, StillClock(T, TZ), TZ) as sim:
        port = sim.endpoint("u2")
        assert isinstance(port, str)
        driver = create_modbus(BusSettings(id="l", type="serial", protocol="modbus-rtu", port=port,
                                           parity="N", timeout_s=0.2, retries=0))
        seen: list[tuple[int, int]] = []
        heard: list[str] = []
        await driver.open()
        try:
            found = await MODBUS_DISCOVERY.scan(driver, "1-3,5", 0.2, lambda d, t: seen.append((d, t)),
                                                heard.append)
        finally:
            await driver.close()
    assert found == heard == ["2", "5"]         # each one heard of as it answered
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert MODBUS_DISCOVERY.label == "unit id"


def test_modbus_unit_range_notation() -> None:
    assert unit_range(None) == list(range(1, 248))
    assert unit_range("1-3,9") == [1, 2, 3, 9]
    with pytest.raises(ConfigError, match="must look like 1-247"):
        unit_range("one")
    with pytest.raises(ConfigError, match="outside 1-247"):
        unit_range("240-248")
    with pytest.raises(ConfigError, match="outside 0-255"):
        unit_range("250-256", "modbus-tcp")


async def test_dlt645_scan_probes_a_range_or_asks_the_single_meter() -> None:
    specs = [SimDlt645Spec(id=f"m{n}", address=f"12345678901{n}", transport="pty", line="bus")
             for n in (1, 3)]
    specs.append(SimDlt645Spec(id="alone", address="000000000042", transport="pty", line="own"))
    async with Dlt645Simulator(specs, StillClock(T, TZ), TZ) as sim:
        shared = create_dlt645(dlt645_bus(sim, "m1", timeout_s=0.3, retries=0))
        heard: list[str] = []
        await shared.open()
        try:
            found = await DLT645_DISCOVERY.scan(shared, "123456789010-123456789013", 0.3, None, heard.append)
        finally:
            await shared.close()
        alone = create_dlt645(dlt645_bus(sim, "alone", timeout_s=0.3, retries=0))
        seen: list[tuple[int, int]] = []
        await alone.open()
        try:
            single = await DLT645_DISCOVERY.scan(alone, None, 0.3, lambda d, t: seen.append((d, t)))
        finally:
            await alone.close()
    assert found == heard == ["123456789011", "123456789013"]
    assert single == ["000000000042"]
    assert seen == [(0, 1), (1, 1)]
    assert DLT645_DISCOVERY.label == "address"


async def test_dlt645_scan_refuses_another_protocols_driver() -> None:
    driver = create_modbus(BusSettings(id="x", type="tcp", protocol="modbus-tcp", host="127.0.0.1",
                                       tcp_port=1))
    with pytest.raises(TypeError, match="needs a Dlt645Driver"):
        await DLT645_DISCOVERY.scan(driver, None, 0.1, None)
