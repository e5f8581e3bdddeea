"""A bus whose meters speak several protocols: which drivers it gets, and what config refuses.

The behaviour on a real line (one pty, a DL/T 645 and a DL/T 698.45 meter, one gateway) is
``tests/integration/test_mixed_bus.py``; these pin the rules around it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import registry
from drivers.base import BusParams
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt698.driver import Dlt698Driver
from gateway.config import load_settings_from_text
from gateway.errors import ConfigError


def serial(protocol: str) -> BusParams:
    return BusParams(id="b1", type="serial", protocol=protocol, port="/dev/ttyS9", baudrate=9600)


def test_a_bus_of_one_family_keeps_one_driver_for_all_its_variants() -> None:
    drivers = registry.create_bus_drivers(serial("dlt645"), {"dlt645", "dlt645-1997"})
    assert set(drivers) == {"dlt645", "dlt645-1997"}
    assert drivers["dlt645"] is drivers["dlt645-1997"] and isinstance(drivers["dlt645"], Dlt645Driver)


def test_a_mixed_serial_line_gets_a_driver_per_protocol() -> None:
    drivers = registry.create_bus_drivers(serial("dlt645"), {"dlt698"})
    assert isinstance(drivers["dlt645"], Dlt645Driver) and isinstance(drivers["dlt698"], Dlt698Driver)
    assert drivers["dlt698"].bus.protocol == "dlt698" and drivers["dlt698"].bus.port == "/dev/ttyS9"


def test_protocols_that_cannot_share_a_line_or_a_tcp_bus_are_refused() -> None:
    assert not registry.shares_line("modbus-rtu") and registry.shares_line("dlt698")
    with pytest.raises(ConfigError, match="modbus-rtu cannot share a serial line"):
        registry.create_bus_drivers(serial("modbus-rtu"), {"dlt698"})
    tcp = BusParams(id="b2", type="tcp", protocol="dlt645", host="127.0.0.1", tcp_port=8899)
    with pytest.raises(ConfigError, match="a tcp bus speaks one protocol"):
        registry.create_bus_drivers(tcp, {"dlt698"})


CONFIG = """\
gateway: {{id: gw1}}
buses:
  - {{id: line, type: {type}, {where}, protocol: dlt645}}
meters:
  - {{id: m1, customer: C1, bus: line, address: "123456789012", profile: dlt645-2007}}
  - {{id: m2, customer: C2, bus: line, address: "000039200933", protocol: dlt698, profile: dlt698-3phase}}
schedules:
  interval: {{every: 15m}}
"""


def test_config_takes_a_meter_of_another_protocol_on_a_serial_line_only(tmp_path: Path) -> None:
    text = CONFIG.format(type="serial", where="port: /dev/ttyS1")
    settings = load_settings_from_text(text, "<test>", tmp_path, {})
    assert settings.meters["m2"].protocol == "dlt698" and settings.buses["line"].protocol == "dlt645"
    tcp = CONFIG.format(type="tcp", where="host: 10.0.0.5, port: 8899")
    with pytest.raises(ConfigError) as err:
        load_settings_from_text(tcp, "<test>", tmp_path, {})
    assert 'protocol dlt698 does not fit bus "line"' in str(err.value)
    assert "only a serial bus carries meters of several protocols" in str(err.value)
