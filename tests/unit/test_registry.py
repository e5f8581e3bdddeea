"""The protocol registry: packages found by their descriptor, lookups, capabilities, unknown names."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import drivers
from drivers import registry
from drivers.base import NO_PLAN_OPTIONS, BusParams
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.plan import Dlt645Plan
from drivers.dlt645.points import DiPoint
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import ReadPlan
from drivers.modbus.points import ModbusLimits, RegisterPoint
from gateway.errors import ConfigError


def test_the_installed_protocols_are_found_in_listing_order() -> None:
    assert registry.families() == ("modbus", "dlt645", "dlt698")
    assert registry.protocol_names() == ("modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp", "dlt645",
                                         "dlt645-1997", "dlt698")
    assert registry.protocol_names("serial") == ("modbus-rtu", "dlt645", "dlt645-1997", "dlt698")
    assert registry.protocol_names("tcp") == ("modbus-tcp", "modbus-rtu-over-tcp", "dlt645", "dlt645-1997",
                                              "dlt698")


def test_an_unknown_protocol_is_a_config_error_naming_the_installed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        registry.descriptor_for("iec62056")
    assert str(err.value) == ("<config>: no installed protocol is called 'iec62056'; the installed ones are "
                              "modbus-rtu, modbus-tcp, modbus-rtu-over-tcp, dlt645, dlt645-1997, dlt698")
    with pytest.raises(ConfigError, match="the installed ones are modbus, dlt645"):
        registry.family("iec62056")


def test_variant_defaults_come_from_the_descriptors() -> None:
    assert registry.variant("dlt645").default_baudrate == 2400
    assert registry.variant("dlt645-1997").default_baudrate == 1200
    assert registry.variant("modbus-tcp").default_tcp_port == 502
    assert registry.variant("modbus-rtu-over-tcp").default_tcp_port is None
    assert [v.name for d in registry.descriptors() for v in d.variants if v.concurrent] == ["modbus-tcp"]
    assert registry.descriptor_for("dlt645-1997").default_timeout_ms == 1500
    assert registry.descriptor_for("modbus-rtu").default_timeout_ms == 1000


def test_capabilities_are_declared_per_protocol() -> None:
    assert registry.capabilities("modbus-tcp").names == ("read_points", "chained_reads")
    assert registry.capabilities("modbus-rtu-over-tcp").names == ("read_points",)
    assert registry.capabilities("dlt645").names == ("read_points", "freeze_records", "clock", "event_records")
    assert registry.capabilities("dlt698").names == ("read_points", "freeze_records", "event_counters", "event_records")
    assert registry.capabilities("dlt645-1997").names == ("read_points", "clock")


def test_a_capability_view_is_the_protocols_own_driver() -> None:
    dlt = registry.create_driver(BusParams(id="b", type="tcp", protocol="dlt645", host="127.0.0.1", tcp_port=1))
    mb = registry.create_driver(BusParams(id="m", type="tcp", protocol="modbus-tcp", host="127.0.0.1",
                                          tcp_port=1))
    assert isinstance(dlt, Dlt645Driver) and isinstance(mb, ModbusDriver)
    view = registry.capabilities("dlt645").freeze_records
    assert view is not None and view(dlt) is dlt
    with pytest.raises(TypeError, match="not a DL/T 645 driver: ModbusDriver"):
        view(mb)


def test_plans_are_compiled_by_the_meters_protocol() -> None:
    reg = RegisterPoint(name="power_kw", function=3, address=10, type="f32")
    di = DiPoint(name="energy_import_kwh", di=0x00010000, fmt="XXXXXX.XX")
    modbus = registry.compile_plan("modbus-rtu", [reg], ModbusLimits())
    dlt = registry.compile_plan("dlt645-1997", [DiPoint(name="energy_import_kwh", di=0x9010, fmt="XXXXXX.XX")],
                                NO_PLAN_OPTIONS)
    assert isinstance(modbus, ReadPlan) and modbus.request_count == 1
    assert isinstance(dlt, Dlt645Plan) and dlt.protocol == "dlt645-1997" and dlt.request_count == 1
    assert registry.compile_plan("dlt645", [di], NO_PLAN_OPTIONS).request_count == 1


async def test_a_driver_refuses_another_protocols_plan() -> None:
    plan = registry.compile_plan("dlt645", [DiPoint(name="energy_import_kwh", di=0x00010000, fmt="XXXXXX.XX")],
                                 NO_PLAN_OPTIONS)
    mb = registry.create_driver(BusParams(id="m", type="tcp", protocol="modbus-tcp", host="127.0.0.1",
                                          tcp_port=1))
    with pytest.raises(ConfigError, match="the Modbus driver needs a plan"):
        await mb.read("1", plan, 0.1)


def test_addresses_are_parsed_by_the_descriptor() -> None:
    modbus = registry.descriptor_for("modbus-tcp")
    assert modbus.parse_address("007", "modbus-tcp", True) == "7"
    assert modbus.parse_address("0", "modbus-tcp", True) == "0"
    with pytest.raises(registry.AddressError, match="between 1 and 247"):
        modbus.parse_address("0", "modbus-rtu", True)
    dlt = registry.descriptor_for("dlt645")
    assert dlt.parse_address("000000000001", "dlt645", False) == "000000000001"
    with pytest.raises(registry.AddressError, match="must be quoted"):
        dlt.parse_address("000000000001", "dlt645", True)


@pytest.fixture
def extra_protocol(tmp_path: Path) -> Iterator[str]:
    """A protocol package outside the source tree, put on ``drivers.__path__`` for one test.

    It is what a new protocol writes: a package with a descriptor module, nothing else
    anywhere (the descriptor reuses the Modbus functions; only its names are new).
    """
    pkg = tmp_path / "zzfake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A protocol that exists only in this test."""\n')
    (pkg / "descriptor.py").write_text(
        "from dataclasses import replace\n"
        "from drivers.modbus.descriptor import DESCRIPTOR as MODBUS\n"
        "from drivers.registry import ProtocolVariant\n"
        "DESCRIPTOR = replace(MODBUS, family='zzfake', title='Fake', rank=99,\n"
        "                     variants=(ProtocolVariant('zzfake-tcp', frozenset({'tcp'})),))\n")
    drivers.__path__.append(str(tmp_path))
    registry.descriptors.cache_clear()
    registry._by_protocol.cache_clear()
    try:
        yield "zzfake-tcp"
    finally:
        drivers.__path__.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("drivers.zzfake")]:
            del sys.modules[name]
        registry.descriptors.cache_clear()
        registry._by_protocol.cache_clear()


def test_a_new_protocol_package_is_found_without_any_list(extra_protocol: str) -> None:
    assert registry.families() == ("modbus", "dlt645", "dlt698", "zzfake")
    assert registry.protocol_names("tcp")[-1] == extra_protocol
    assert registry.descriptor_for(extra_protocol).title == "Fake"
