"""Register images ⇄ values for every Modbus data type a profile may name (pure).

Registers travel big-endian ("ABCD": high word first, high byte first). Vendors differ:
``word_order: little`` means the low 16-bit word comes first (CDAB), ``byte_order:
little`` swaps the two bytes of every register (BADC, or DCBA with both). The decoder
first brings the bytes into ABCD order, then interprets them.

* Integer types (u16/i16/u32/i32/u64/i64) × ``scale`` give an exact ``Decimal``.
* ``bcd16``/``bcd32``: each nibble a decimal digit; a nibble above 9 is a
  :class:`~gateway.errors.DecodeError` (the register does not hold a BCD number).
* ``f32``/``f64``: the value is taken at its *shortest* decimal representation for its
  own width (an f32 holding 230.1 decodes as ``Decimal('230.1')``, not
  ``230.1000061035…``), then × ``scale``. NaN and ±infinity are a DecodeError: meters
  use them to say "no value".

:func:`encode_point` is the inverse, used by the simulator to build register images.
Integer encodings truncate toward −∞ at the scale's resolution, like a display register.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from drivers.modbus.points import RegisterPoint
from gateway.errors import DecodeError

_ONE = Decimal(1)
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_INT_TYPES = {"u16": (False, 2), "i16": (True, 2), "u32": (False, 4), "i32": (True, 4),
              "u64": (False, 8), "i64": (True, 8)}
_BCD_DIGITS = frozenset(b"0123456789")


def to_abcd(point: RegisterPoint, data: bytes) -> bytes:
    """Reorder a point's wire bytes into big-endian (ABCD) order per its word/byte order."""
    if point.byte_order == "little":
        swapped = bytearray(len(data))
        swapped[0::2] = data[1::2]
        swapped[1::2] = data[0::2]
        data = bytes(swapped)
    if point.word_order == "little" and len(data) > 2:
        data = b"".join(data[i:i + 2] for i in range(len(data) - 2, -1, -2))
    return data


def from_abcd(point: RegisterPoint, data: bytes) -> bytes:
    """Inverse of :func:`to_abcd`: big-endian bytes into the point's wire order."""
    if point.word_order == "little" and len(data) > 2:
        data = b"".join(data[i:i + 2] for i in range(len(data) - 2, -1, -2))
    if point.byte_order == "little":
        swapped = bytearray(len(data))
        swapped[0::2] = data[1::2]
        swapped[1::2] = data[0::2]
        data = bytes(swapped)
    return data


def shortest_f32(value: float) -> str:
    """Shortest decimal text that reads back as the same 32-bit float."""
    packed = _F32.pack(value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        try:
            if _F32.pack(float(text)) == packed:
                return text
        except OverflowError:       # rounded up past the largest f32
            continue
    return repr(value)


def decode_bytes(point: RegisterPoint, data: bytes) -> Decimal:
    """Decode a point from its ``2 × width`` wire bytes (the driver's fast path)."""
    kind = point.type
    if len(data) != 2 * point.width:
        raise DecodeError(
            f"point {point.name!r} ({kind}) needs {2 * point.width} bytes, got {len(data)}")
    if point.word_order != "big" or point.byte_order != "big":
        data = to_abcd(point, data)
    scale = point.scale
    spec = _INT_TYPES.get(kind)
    if spec is not None:
        n = int.from_bytes(data, "big", signed=spec[0])
        return Decimal(n) if scale == _ONE else Decimal(n) * scale
    if kind in {"f32", "f64"}:
        f = (_F32 if kind == "f32" else _F64).unpack(data)[0]
        if not math.isfinite(f):
            raise DecodeError(
                f"point {point.name!r} holds {f!r} (the meter has no value for it); "
                "check the register address and type in the profile")
        d = Decimal(shortest_f32(f) if kind == "f32" else repr(f))
        return d if scale == _ONE else d * scale
    if kind in {"bcd16", "bcd32"}:
        text = data.hex()
        if not _BCD_DIGITS.issuperset(text.encode()):
            raise DecodeError(
                f"point {point.name!r} holds 0x{text} which is not BCD (a nibble above 9); "
                "check the register address and type in the profile")
        d = Decimal(int(text))
        return d if scale == _ONE else d * scale
    raise DecodeError(f"point {point.name!r} has unknown type {kind!r}")


def decode_point(point: RegisterPoint, regs: Sequence[int]) -> Decimal | float:
    """Decode a point from its registers (16-bit ints in wire order)."""
    if len(regs) != point.width:
        raise DecodeError(
            f"point {point.name!r} ({point.type}) needs {point.width} registers, got {len(regs)}")
    try:
        data = b"".join(r.to_bytes(2, "big") for r in regs)
    except OverflowError as exc:
        raise DecodeError(f"point {point.name!r}: a register is outside 0..65535") from exc
    return decode_bytes(point, data)


def encode_point(point: RegisterPoint, value: Decimal | float | int) -> list[int]:
    """Registers (wire order) that a meter shows for ``value`` under this point's definition.

    Raises ValueError when the value does not fit the type (e.g. a negative u32).
    """
    kind = point.type
    try:
        raw = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
        if point.scale != _ONE:
            raw = raw / point.scale
    except InvalidOperation as exc:
        raise ValueError(f"cannot encode {value!r} for point {point.name!r}") from exc
    spec = _INT_TYPES.get(kind)
    if spec is not None:
        n = int(raw.to_integral_value(ROUND_FLOOR))
        try:
            data = n.to_bytes(spec[1], "big", signed=spec[0])
        except OverflowError as exc:
            raise ValueError(f"{value} does not fit point {point.name!r} ({kind})") from exc
    elif kind == "f32":
        data = _F32.pack(float(raw))
    elif kind == "f64":
        data = _F64.pack(float(raw))
    elif kind in {"bcd16", "bcd32"}:
        n = int(raw.to_integral_value(ROUND_FLOOR))
        width = 4 if kind == "bcd16" else 8
        if n < 0 or n >= 10**width:
            raise ValueError(f"{value} does not fit point {point.name!r} ({kind})")
        data = bytes.fromhex(f"{n:0{width}d}")
    else:
        raise ValueError(f"point {point.name!r} has unknown type {kind!r}")
    data = from_abcd(point, data)
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
