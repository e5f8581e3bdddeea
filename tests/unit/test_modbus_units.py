"""One Modbus unit-id range per protocol variant: validate, the driver and scan agree.

``validate`` (the descriptor's parse_address), the driver (parse_unit) and ``scan --range``
(unit_range) must accept exactly the same ids for each variant; ``read --unit`` is checked
as a real process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from drivers import registry
from drivers.modbus.descriptor import parse_address
from drivers.modbus.discovery import unit_range
from drivers.modbus.driver import parse_unit
from drivers.modbus.units import unit_bounds
from gateway.errors import ConfigError


def _accepts(check: object, unit: int) -> bool:
    try:
        check(unit)  # type: ignore[operator]
    except (ConfigError, registry.AddressError):
        return False
    return True


@pytest.mark.parametrize("protocol", [v.name for v in registry.descriptor_for("modbus-rtu").variants])
def test_validate_driver_and_scan_accept_the_same_unit_ids(protocol: str) -> None:
    for unit in range(-1, 257):
        by_validate = _accepts(lambda u: parse_address(str(u), protocol, True), unit)
        by_driver = _accepts(lambda u: parse_unit(str(u), protocol), unit)
        by_scan = _accepts(lambda u: unit_range(str(u), protocol), unit) if unit >= 0 else False
        lo, hi = unit_bounds(protocol)
        assert by_validate == by_driver == by_scan == (lo <= unit <= hi), (protocol, unit)


def test_the_ranges_are_the_serial_and_tcp_ones() -> None:
    assert unit_bounds("modbus-rtu") == unit_bounds("modbus-rtu-over-tcp") == (1, 247)
    assert unit_bounds("modbus-tcp") == (0, 255)
    with pytest.raises(ConfigError, match="outside 1-247, the unit ids of modbus-rtu"):
        unit_range("0-3", "modbus-rtu")
    assert unit_range("0,255", "modbus-tcp") == [0, 255]


def test_read_unit_0_on_a_serial_line_is_refused_before_opening_the_port() -> None:
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "read", "--serial", "/dev/amr-no-such-port",
                          "--unit", "0", "--profile", "simulator"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert "--unit must be a Modbus unit id between 1 and 247" in res.stderr
    assert "Traceback" not in res.stderr and "amr-no-such-port" not in res.stderr
