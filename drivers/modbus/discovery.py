"""Finding Modbus slaves: probe each unit id of a range with a one-register read.

``amr-gateway scan --protocol modbus`` uses this (through :data:`DISCOVERY`, the shape every
protocol's scan shares). A unit that answers anything, even an exception reply, is there;
one that stays silent or answers garbage is not, and a transport failure on one unit does
not end the scan of the others.
"""

from __future__ import annotations

from typing import Final

from drivers.base import MeterDriver
from drivers.discovery import Discovery, Found, Progress
from drivers.modbus.units import SERIAL_UNITS, unit_bounds
from gateway.errors import AmrError, ConfigError

ALL_UNITS: Final = range(SERIAL_UNITS[0], SERIAL_UNITS[1] + 1)
"""The unicast unit ids of a Modbus serial line (1-247): the default scan."""


def unit_range(text: str | None, protocol: str = "modbus-rtu") -> list[int]:
    """Unit ids from ``1-247`` or ``1,5,9`` (or ranges and single ids mixed); all when None.

    Each id must be one ``protocol`` can address (:func:`drivers.modbus.units.unit_bounds`),
    the same range ``validate`` and ``read --unit`` accept.
    """
    if not text:
        return list(ALL_UNITS)
    units: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ConfigError(f"--range must look like 1-247 or 1,5,9, not {text!r}") from None
        first, last = unit_bounds(protocol)
        if not first <= lo <= hi <= last:
            raise ConfigError(f"--range {part!r} is outside {first}-{last}, the unit ids of "
                              f"{protocol}")
        units.extend(range(lo, hi + 1))
    return units


async def scan(driver: MeterDriver, wanted: str | None, timeout: float,
               progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """Probe every unit id of ``wanted`` (default 1-247); the ones that answered, in order.

    ``found(unit)`` hears of each answering unit at once (a stopped scan keeps them).
    """
    # The driver knows its bus's protocol; the scan shape (drivers.discovery) does not pass it.
    bus = getattr(driver, "bus", None)
    units = unit_range(wanted, str(getattr(bus, "protocol", "modbus-rtu")))
    answered: list[str] = []
    for i, unit in enumerate(units, 1):
        try:
            if await driver.probe(str(unit), timeout):
                answered.append(str(unit))
                if found is not None:
                    found(str(unit))
        except AmrError:
            pass
        if progress is not None:
            progress(i, len(units))
    return answered


def check_range(wanted: str, protocol: str) -> None:
    """Raise ConfigError when ``wanted`` is not a unit-id range of ``protocol`` (before the bus opens)."""
    unit_range(wanted, protocol)


DISCOVERY: Final = Discovery(label="unit id", scan=scan, check=check_range)
"""The Modbus scan, as ``amr-gateway scan`` calls it."""
