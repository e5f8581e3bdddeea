"""Finding Modbus devices on a bus: probe unit ids one by one.

``amr-gateway scan --protocol modbus-rtu`` uses :func:`scan`. Every unit id in the range
gets a one-register read; any reply (an exception reply too) means a device is there.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.base import MeterDriver
from gateway.errors import AmrError, ConfigError


def unit_range(text: str | None) -> list[int]:
    """The unit ids of ``--range`` (``1-247``, ``1,5,9``); every serial unit id when None."""
    if not text:
        return list(range(1, 248))
    units: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            raise ConfigError(f"--range must look like 1-247 or 1,5,9, not {text!r}") from None
        if not 0 <= lo <= hi <= 255:
            raise ConfigError(f"--range {part!r} is outside 0-255")
        units.extend(range(lo, hi + 1))
    return units


async def scan(driver: MeterDriver, id_range: str | None, timeout: float,
               progress: Callable[[int, int], None]) -> list[str]:
    """The unit ids of ``id_range`` that answer (a device error answers too), in order."""
    units = unit_range(id_range)
    found: list[str] = []
    for i, unit in enumerate(units, 1):
        try:
            if await driver.probe(str(unit), timeout):
                found.append(str(unit))
        except AmrError:
            pass
        progress(i, len(units))
    return found
