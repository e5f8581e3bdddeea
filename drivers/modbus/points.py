"""What a Modbus meter profile says about one point; built by :mod:`drivers.modbus.profile_schema`."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from drivers.capacity import RegisterCapacity

RegisterType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bcd16", "bcd32"]

REGISTER_WIDTH: dict[str, int] = {
    "u16": 1, "i16": 1, "bcd16": 1,
    "u32": 2, "i32": 2, "f32": 2, "bcd32": 2,
    "u64": 4, "i64": 4, "f64": 4,
}


@dataclass(frozen=True, slots=True)
class RegisterPoint:
    """One canonical point mapped to Modbus registers.

    ``word_order``/``byte_order`` are ``big`` (ABCD: high word first, high byte first) or
    ``little``. ``scale`` multiplies the decoded integer/float (exact Decimal).
    ``side`` is ``secondary`` when the value must be multiplied by CT/PT in the gateway.
    """

    name: str
    function: int
    address: int
    type: RegisterType
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    scale: Decimal = Decimal(1)
    unit: str = ""
    side: Literal["secondary", "primary"] = "primary"
    capacity: RegisterCapacity | None = None    # where a cumulative register rolls over (drivers.capacity)

    @property
    def width(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return REGISTER_WIDTH[self.type]


@dataclass(frozen=True, slots=True)
class ModbusLimits:
    """Per-profile device limits and named workarounds for read-plan compilation."""

    max_registers_per_request: int = 125
    gap_fill: int = 10
    pause_between_requests_ms: float = 0.0
    one_request_per_point: bool = False
