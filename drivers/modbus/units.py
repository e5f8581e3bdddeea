"""The one range of Modbus unit ids per protocol variant, for validate, scan and read alike.

A serial line (``modbus-rtu``, and ``modbus-rtu-over-tcp``, whose serial server forwards to
one) addresses slaves 1–247: 0 is broadcast (no reply) and 248–255 are reserved. Over
``modbus-tcp`` the unit id is 0–255: 0 and 255 address the TCP device itself. The config
check (:mod:`drivers.modbus.descriptor`), the driver and ``scan --range`` all ask here, so a
unit id that validates is one the driver reads and the scan probes.
"""

from __future__ import annotations

from typing import Final

SERIAL_UNITS: Final = (1, 247)
"""The unicast unit ids of a Modbus serial line."""

_BOUNDS: Final = {"modbus-tcp": (0, 255)}


def unit_bounds(protocol: str) -> tuple[int, int]:
    """The lowest and highest unit id a meter of ``protocol`` may have."""
    return _BOUNDS.get(protocol, SERIAL_UNITS)


def unit_problem(unit: int, protocol: str) -> str | None:
    """Why ``unit`` cannot be a unit id on ``protocol`` (None when it can)."""
    lo, hi = unit_bounds(protocol)
    if lo <= unit <= hi:
        return None
    return f"{unit} is outside {lo}-{hi}, the unit ids of {protocol}"
