"""DL/T 698.45 values: A-XDR Data to reading values, scaler/unit applied exactly.

A meter sends integers and a scaler (attribute 3 of each object, ``Scaler_Unit``): the value
is ``raw × 10^scaler`` in the object's unit. Decoding is exact: numbers come back as
:class:`~decimal.Decimal` built with ``scaleb`` (never through ``float``), so 699 with scaler
−2 is ``Decimal("6.99")``. A point whose unit differs from the meter's by a power of ten
(power in W on the wire, kW in the gateway) adds that power to the scaler; still exact.

Rules:

* only the integer types (``double-long``, ``long-unsigned`` ...) take a scaler; a float32/
  float64 value becomes the Decimal of its shortest repr (no meter here sends floats);
* ``null`` means the meter has no value (an open event's end time, an empty freeze column):
  :class:`~gateway.errors.DecodeError`, never a number;
* a value of a type the catalogue does not list for that object is a ``DecodeError`` that
  names both types (frequency's type is **medium**: long-unsigned or double-long-unsigned are
  both accepted, see README);
* date_time_s → ISO text ``YYYY-MM-DDThh:mm:ss`` in the meter's local time (the meter knows
  no time zone), as the DL/T 645 driver reports ``meter_clock``;
* octet-string → its bytes as upper-case hex digits (the communication address 4001 reads
  as the 12 digits written on the nameplate).
"""

from __future__ import annotations

from decimal import Decimal

from drivers.dlt698.axdr import INTEGER_TYPES, Data, DataType, DateTime, DateTimeS
from gateway.errors import DecodeError

ReadingValue = Decimal | int | str


def element(d: Data, index: int) -> Data:
    """The ``index``-th element (1-based, as an OAD's index byte) of an array/structure;
    ``index`` 0 is the whole value."""
    if index == 0:
        return d
    items = d.items
    if not 1 <= index <= len(items):
        raise DecodeError(
            f"the meter sent {len(items)} elements but element {index} was asked; the meter "
            "has fewer tariffs or phases than the profile expects"
        )
    return items[index - 1]


def scaled(d: Data, scaler: int) -> Decimal:
    """An integer Data × 10^scaler, exactly (``699``, −2 → ``6.99``)."""
    if d.type == DataType.NULL:
        raise DecodeError("the meter sent null: it has no value for this item")
    if d.type in INTEGER_TYPES and isinstance(d.value, int) and not isinstance(d.value, bool):
        return Decimal(d.value).scaleb(scaler)
    if d.type in (DataType.FLOAT32, DataType.FLOAT64) and isinstance(d.value, float):
        if d.value != d.value or d.value in (float("inf"), float("-inf")):
            raise DecodeError(f"the meter sent {d.value} for a number")
        return Decimal(repr(d.value)).scaleb(scaler)
    raise DecodeError(f"expected a number, the meter sent {d.type.name}")


def datetime_text(d: Data) -> str:
    """date_time_s / date_time → ``YYYY-MM-DDThh:mm:ss`` (meter local time)."""
    if d.type == DataType.NULL:
        raise DecodeError("the meter sent null instead of a time: no time recorded")
    if isinstance(d.value, DateTimeS | DateTime):
        return d.value.to_datetime().isoformat(timespec="seconds")
    raise DecodeError(f"expected a date-time, the meter sent {d.type.name}")


def reading_value(d: Data, scaler: int | None, types: tuple[DataType, ...] = ()) -> ReadingValue:
    """A reading's raw value from one Data.

    ``types`` (when given) are the Data types accepted for this object; ``scaler`` None
    keeps integers as ``int`` (counters), else they become scaled Decimals.
    """
    if d.type == DataType.NULL:
        raise DecodeError("the meter sent null: it has no value for this item")
    if types and d.type not in types:
        want = " or ".join(t.name for t in types)
        raise DecodeError(f"the meter sent {d.type.name} where {want} was expected; check the profile")
    if d.type in (DataType.DATE_TIME_S, DataType.DATE_TIME):
        return datetime_text(d)
    if d.type == DataType.OCTET_STRING and isinstance(d.value, bytes):
        return d.value.hex().upper()
    if d.type in (DataType.VISIBLE_STRING, DataType.UTF8_STRING) and isinstance(d.value, str):
        return d.value
    if d.type == DataType.BOOL and isinstance(d.value, bool):
        return int(d.value)
    if scaler is None and d.type in INTEGER_TYPES and isinstance(d.value, int):
        return d.value
    return scaled(d, scaler or 0)
