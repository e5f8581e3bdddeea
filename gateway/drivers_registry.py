"""Which driver serves which bus protocol, and how each compiles a meter's read plan.

The only place the core names concrete drivers; imports are lazy so a gateway without
DL/T 645 buses never loads that driver.
"""

from __future__ import annotations

from typing import Any

from drivers.base import MeterDriver
from drivers.dlt645.points import DiPoint
from drivers.modbus.points import RegisterPoint
from gateway.errors import ConfigError
from gateway.settings import BusSettings, MeterSettings, Profile

MODBUS = ("modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp")
DLT645 = ("dlt645", "dlt645-1997")


def create_driver(bus: BusSettings) -> MeterDriver:
    """A driver instance bound to one bus."""
    if bus.protocol in MODBUS:
        from drivers.modbus.driver import create_driver as create_modbus

        return create_modbus(bus)
    if bus.protocol in DLT645:
        from drivers.dlt645.driver import create_driver as create_dlt645

        return create_dlt645(bus)
    raise ConfigError(f"bus {bus.id}: no driver for protocol {bus.protocol!r}")


def compile_plan(bus: BusSettings, meter: MeterSettings, profile: Profile, names: list[str]) -> Any:
    """The read plan for ``names`` of ``profile`` on this bus (computed once, at load)."""
    points = [profile.points[n] for n in names]
    if bus.protocol in MODBUS:
        from drivers.modbus.plan import compile_plan as compile_modbus

        regs = [p for p in points if isinstance(p, RegisterPoint)]
        return compile_modbus(regs, profile.limits)
    from drivers.dlt645.plan import compile_plan as compile_dlt645

    dis = [p for p in points if isinstance(p, DiPoint)]
    if (meter.protocol or bus.protocol) == "dlt645-1997":
        return compile_dlt645(dis, protocol="dlt645-1997")
    return compile_dlt645(dis, protocol="dlt645")
