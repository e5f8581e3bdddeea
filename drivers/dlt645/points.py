"""What a DL/T 645 meter profile says about one point; built by :mod:`drivers.dlt645.profile_schema`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.capacity import RegisterCapacity, format_capacity


@dataclass(frozen=True, slots=True)
class DiPoint:
    """One canonical point mapped to a DL/T 645 data identifier.

    ``di`` is the 4-byte (2007) or 2-byte (1997) identifier as an int (DI3..DI0 as written,
    e.g. ``0x00010000``). ``fmt`` names the value format (``XXXXXX.XX``, ``XX.XXXX``, ...).
    ``block``/``index``: when set, the point can also be read as value number ``index`` of
    the block DI ``block`` (e.g. 0x0001FF00 index 2 = tariff 2); the driver prefers the block
    and falls back to ``di`` when the meter answers "no requested data".
    ``declared_capacity``: the profile's ``capacity`` (see :mod:`drivers.capacity`).
    """

    name: str
    di: int
    fmt: str
    unit: str = ""
    side: Literal["secondary", "primary"] = "secondary"
    block: int | None = None
    index: int = 0
    declared_capacity: RegisterCapacity | None = None

    @property
    def capacity(self) -> RegisterCapacity | None:
        """Where the register rolls over: the profile's ``capacity``, else the value format's digits."""
        return self.declared_capacity if self.declared_capacity is not None else format_capacity(self.fmt)
