"""A-XDR ``Data`` of DL/T 698.45: tagged values, encoded and decoded exactly (``docs/protocols/dlt698-45.md`` §4).

Each Data on the wire is a type tag and its value; integers are big-endian two's
complement; variable lengths and element counts take one byte below 0x80, else ``0x80 | k``
followed by k big-endian length bytes. A decoded :class:`Data` keeps its type, so a value
re-encodes to the same bytes (the simulator and the byte-for-byte tests rely on that).

=====  ========================  ==========================================================
tag    type                      Python value
=====  ========================  ==========================================================
00     null                      ``None``
01/02  array / structure         ``tuple[Data, ...]``
03     bool                      ``bool``
04     bit-string                :class:`BitString` (bit count + bytes)
05 06  double-long (unsigned)    ``int`` (4 bytes)
09     octet-string              ``bytes``
0A 0C  visible / UTF-8 string    ``str``
0F 11  integer / unsigned        ``int`` (1 byte)
10 12  long / long-unsigned      ``int`` (2 bytes)
14 15  long64 (unsigned)         ``int`` (8 bytes)
16     enum                      ``int`` (1 byte)
17 18  float32 / float64         ``float``
19     date_time                 :class:`DateTime` (10 bytes, weekday and milliseconds)
1A     date                      :class:`Date` (5 bytes)
1B     time                      :class:`Time` (3 bytes)
1C     date_time_s               :class:`DateTimeS` (7 bytes: year BE, month .. second)
50     OI                        ``int`` (2 bytes)
51     OAD                       ``int`` (4 bytes: OI, attribute, index)
52     ROAD                      :class:`Road`
53     OMD                       ``int`` (4 bytes)
54     TI                        :class:`Ti` (unit + long-unsigned interval)
55     TSA                       ``bytes`` (AF + address, length-prefixed)
59     Scaler_Unit               :class:`ScalerUnit`
=====  ========================  ==========================================================

Date fields are kept as sent (``FF`` may mean "unspecified", **medium**); converting to a
``datetime`` is a separate step that raises :class:`~gateway.errors.DecodeError` for a
date that does not exist. Malformed bytes (unknown tag, truncated value, nesting deeper than
:data:`MAX_DEPTH`) raise :class:`~gateway.errors.FrameError` from :class:`Reader`: a Data
whose length cannot be known spoils the rest of the APDU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import IntEnum
from typing import Final, TypeAlias

from gateway.errors import DecodeError, FrameError

#: Arrays and structures nest at most this deep (records of demand are 3 levels).
MAX_DEPTH: Final = 8


class DataType(IntEnum):
    """A-XDR Data type tags used by meters."""

    NULL = 0
    ARRAY = 1
    STRUCTURE = 2
    BOOL = 3
    BIT_STRING = 4
    DOUBLE_LONG = 5
    DOUBLE_LONG_UNSIGNED = 6
    OCTET_STRING = 9
    VISIBLE_STRING = 10
    UTF8_STRING = 12
    INTEGER = 15
    LONG = 16
    UNSIGNED = 17
    LONG_UNSIGNED = 18
    LONG64 = 20
    LONG64_UNSIGNED = 21
    ENUM = 22
    FLOAT32 = 23
    FLOAT64 = 24
    DATE_TIME = 25
    DATE = 26
    TIME = 27
    DATE_TIME_S = 28
    OI = 80
    OAD = 81
    ROAD = 82
    OMD = 83
    TI = 84
    TSA = 85
    SCALER_UNIT = 89


#: Fixed-size integer types: tag → (bytes, signed).
INTEGER_TYPES: Final[dict[DataType, tuple[int, bool]]] = {
    DataType.DOUBLE_LONG: (4, True),
    DataType.DOUBLE_LONG_UNSIGNED: (4, False),
    DataType.INTEGER: (1, True),
    DataType.LONG: (2, True),
    DataType.UNSIGNED: (1, False),
    DataType.LONG_UNSIGNED: (2, False),
    DataType.LONG64: (8, True),
    DataType.LONG64_UNSIGNED: (8, False),
    DataType.ENUM: (1, False),
    DataType.OI: (2, False),
    DataType.OAD: (4, False),
    DataType.OMD: (4, False),
}


# --- value classes ----------------------------------------------------------------------------


def _to_datetime(what: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
                 second: int = 0, micro: int = 0) -> datetime:
    try:
        return datetime(year, month, day, hour, minute, second, micro)
    except ValueError as exc:
        raise DecodeError(
            f"the meter sent {what} {year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:"
            f"{second:02d}, which is not a valid time ({exc}); set the meter's clock"
        ) from exc


@dataclass(frozen=True, slots=True)
class DateTimeS:
    """date_time_s: the fields as sent (year, month, day, hour, minute, second)."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: int

    @classmethod
    def of(cls, value: datetime) -> DateTimeS:
        """From a naive (meter-local) datetime; microseconds are dropped."""
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second)

    def to_datetime(self) -> datetime:
        """A naive meter-local datetime; :class:`DecodeError` when it does not exist."""
        return _to_datetime("date_time_s", self.year, self.month, self.day, self.hour, self.minute,
                            self.second)

    def encode(self) -> bytes:
        """The 7 value bytes (no tag)."""
        return struct.pack(">HBBBBB", self.year, self.month, self.day, self.hour, self.minute, self.second)


@dataclass(frozen=True, slots=True)
class DateTime:
    """date_time: year, month, day, weekday (0 = Sunday), hour, minute, second, milliseconds."""

    year: int
    month: int
    day: int
    weekday: int
    hour: int
    minute: int
    second: int
    milliseconds: int

    def to_datetime(self) -> datetime:
        """A naive meter-local datetime (weekday not checked: meters get it wrong)."""
        if self.milliseconds > 999:
            raise DecodeError(f"the meter sent date_time with {self.milliseconds} milliseconds")
        return _to_datetime("date_time", self.year, self.month, self.day, self.hour, self.minute,
                            self.second, self.milliseconds * 1000)

    def encode(self) -> bytes:
        """The 10 value bytes (no tag)."""
        return struct.pack(">HBBBBBBH", self.year, self.month, self.day, self.weekday, self.hour,
                           self.minute, self.second, self.milliseconds)


@dataclass(frozen=True, slots=True)
class Date:
    """date: year, month, day, weekday (0 = Sunday)."""

    year: int
    month: int
    day: int
    weekday: int

    def to_date(self) -> date:
        """A ``date``; :class:`DecodeError` when it does not exist."""
        return _to_datetime("date", self.year, self.month, self.day).date()

    def encode(self) -> bytes:
        """The 5 value bytes (no tag)."""
        return struct.pack(">HBBB", self.year, self.month, self.day, self.weekday)


@dataclass(frozen=True, slots=True)
class Time:
    """time: hour, minute, second."""

    hour: int
    minute: int
    second: int

    def to_time(self) -> time:
        """A ``time``; :class:`DecodeError` when it does not exist."""
        try:
            return time(self.hour, self.minute, self.second)
        except ValueError as exc:
            raise DecodeError(f"the meter sent time {self.hour}:{self.minute}:{self.second}") from exc

    def encode(self) -> bytes:
        """The 3 value bytes (no tag)."""
        return bytes([self.hour, self.minute, self.second])


class TiUnit(IntEnum):
    """TI interval unit."""

    SECOND = 0
    MINUTE = 1
    HOUR = 2
    DAY = 3
    MONTH = 4
    YEAR = 5


@dataclass(frozen=True, slots=True)
class Ti:
    """TI: a time interval (unit byte + long-unsigned count)."""

    unit: int
    interval: int

    def encode(self) -> bytes:
        """The 3 value bytes (no tag)."""
        return struct.pack(">BH", self.unit, self.interval)


@dataclass(frozen=True, slots=True)
class ScalerUnit:
    """Scaler_Unit: value × 10^scaler in ``unit`` (enum: 27 W, 33 kWh, 38 V, 47 Hz ...)."""

    scaler: int
    unit: int

    def encode(self) -> bytes:
        """The 2 value bytes (no tag)."""
        return struct.pack(">bB", self.scaler, self.unit)


@dataclass(frozen=True, slots=True)
class BitString:
    """bit-string: ``bits`` bits carried in ``data`` (most significant bit first)."""

    bits: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) != (self.bits + 7) // 8:
            raise ValueError(f"{self.bits} bits need {(self.bits + 7) // 8} bytes")


@dataclass(frozen=True, slots=True)
class Road:
    """ROAD: a record-type OAD and the OADs of the columns it relates."""

    oad: int
    columns: tuple[int, ...]


#: Units of Scaler_Unit (enum) the catalogue uses → their symbol.
UNITS: Final[dict[int, str]] = {
    27: "W", 28: "kW", 29: "VA", 30: "kVA", 31: "var", 32: "kvar", 33: "kWh", 34: "kVAh",
    35: "kvarh", 36: "A", 38: "V", 47: "Hz", 255: "",
}

DataValue: TypeAlias = (
    "bool | int | float | bytes | str | tuple[Data, ...] | DateTimeS | DateTime | Date | Time"
    " | Ti | ScalerUnit | BitString | Road | None"
)


@dataclass(frozen=True, slots=True)
class Data:
    """One A-XDR Data: its type and value (see the module table for value classes)."""

    type: DataType
    value: DataValue

    @property
    def items(self) -> tuple[Data, ...]:
        """The elements of an array or structure; :class:`DecodeError` for other types."""
        if self.type not in (DataType.ARRAY, DataType.STRUCTURE) or not isinstance(self.value, tuple):
            raise DecodeError(f"expected an array or structure, the meter sent {self.type.name}")
        return self.value

    def encode(self) -> bytes:
        """The Data's wire bytes, tag included."""
        return encode_data(self)


NULL: Final = Data(DataType.NULL, None)


def array(*items: Data) -> Data:
    """An array Data of ``items``."""
    return Data(DataType.ARRAY, tuple(items))


def structure(*items: Data) -> Data:
    """A structure Data of ``items``."""
    return Data(DataType.STRUCTURE, tuple(items))


def integer_data(kind: DataType, value: int) -> Data:
    """A fixed-size integer Data (double-long-unsigned, long, ...)."""
    if kind not in INTEGER_TYPES:
        raise ValueError(f"{kind.name} is not an integer type")
    return Data(kind, value)


def date_time_s(value: datetime) -> Data:
    """A date_time_s Data from a naive meter-local datetime."""
    return Data(DataType.DATE_TIME_S, DateTimeS.of(value))


# --- oad ------------------------------------------------------------------------------------


def oad_text(oad: int) -> str:
    """An OAD as written: 8 hex digits (``0x00100201`` → ``"00100201"``)."""
    return f"{oad:08X}"


def parse_oad(text: str) -> int:
    """``"00100201"`` → ``0x00100201``; ``ValueError`` unless 8 hex digits."""
    t = text.strip()
    if len(t) != 8:
        raise ValueError(f"an OAD is 8 hex digits (OI, attribute, index), got {text!r}")
    return int(t, 16)


def oad_of(oi: int, attribute: int, index: int = 0) -> int:
    """Compose an OAD from object identifier, attribute and element index."""
    return (oi << 16) | (attribute << 8) | index


# --- lengths --------------------------------------------------------------------------------


def encode_count(n: int) -> bytes:
    """A variable length or element count (one byte below 0x80, else 0x80|k + k bytes)."""
    if n < 0:
        raise ValueError("a length is not negative")
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


# --- encoder ----------------------------------------------------------------------------------


def _int_bytes(kind: DataType, value: object) -> bytes:
    size, signed = INTEGER_TYPES[kind]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{kind.name} needs an int, not {value!r}")
    try:
        return value.to_bytes(size, "big", signed=signed)
    except OverflowError as exc:
        raise ValueError(f"{value} does not fit {kind.name}") from exc


_Fixed: TypeAlias = type[DateTimeS] | type[DateTime] | type[Date] | type[Time] | type[Ti] | type[ScalerUnit]
_FIXED: Final[dict[DataType, _Fixed]] = {
    DataType.DATE_TIME_S: DateTimeS, DataType.DATE_TIME: DateTime, DataType.DATE: Date,
    DataType.TIME: Time, DataType.TI: Ti, DataType.SCALER_UNIT: ScalerUnit,
}


def encode_data(d: Data) -> bytes:
    """Encode one Data (tag + value); ``ValueError`` when the value does not fit its type."""
    kind, v = d.type, d.value
    head = bytes([int(kind)])
    if kind == DataType.NULL:
        return head
    if kind in (DataType.ARRAY, DataType.STRUCTURE):
        if not isinstance(v, tuple):
            raise ValueError(f"{kind.name} needs a tuple of Data")
        return head + encode_count(len(v)) + b"".join(encode_data(x) for x in v)
    if kind in INTEGER_TYPES:
        return head + _int_bytes(kind, v)
    if kind == DataType.BOOL and isinstance(v, bool):
        return head + bytes([1 if v else 0])
    if kind in (DataType.OCTET_STRING, DataType.TSA) and isinstance(v, bytes):
        return head + encode_count(len(v)) + v
    if kind == DataType.VISIBLE_STRING and isinstance(v, str):
        raw = v.encode("ascii")
        return head + encode_count(len(raw)) + raw
    if kind == DataType.UTF8_STRING and isinstance(v, str):
        raw = v.encode("utf-8")
        return head + encode_count(len(raw)) + raw
    if kind == DataType.BIT_STRING and isinstance(v, BitString):
        return head + encode_count(v.bits) + v.data
    if kind == DataType.FLOAT32 and isinstance(v, float):
        return head + struct.pack(">f", v)
    if kind == DataType.FLOAT64 and isinstance(v, float):
        return head + struct.pack(">d", v)
    if kind == DataType.ROAD and isinstance(v, Road):
        return (head + v.oad.to_bytes(4, "big") + encode_count(len(v.columns))
                + b"".join(c.to_bytes(4, "big") for c in v.columns))
    fixed = _FIXED.get(kind)
    if fixed is not None and isinstance(v, fixed):
        try:
            return head + v.encode()
        except (struct.error, ValueError) as exc:
            raise ValueError(f"{v!r} does not fit {kind.name}") from exc
    raise ValueError(f"cannot encode {v!r} as {kind.name}")


# --- decoder ----------------------------------------------------------------------------------


class Reader:
    """A cursor over APDU bytes; every read past the end raises :class:`FrameError`."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if n < 0 or self.pos + n > len(self.buf):
            raise FrameError(
                f"the APDU ends after {len(self.buf)} bytes but {n} more were needed at offset "
                f"{self.pos}: a truncated or malformed reply"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        """One unsigned byte."""
        return self.take(1)[0]

    def uint(self, n: int) -> int:
        """A big-endian unsigned integer of ``n`` bytes."""
        return int.from_bytes(self.take(n), "big")

    def count(self) -> int:
        """A variable length / element count (at most 4 length bytes)."""
        first = self.u8()
        if first < 0x80:
            return first
        k = first & 0x7F
        if not 1 <= k <= 4:
            raise FrameError(f"a length of {k} length bytes at offset {self.pos - 1} is not valid")
        return self.uint(k)

    def oad(self) -> int:
        """A 4-byte OAD (no tag)."""
        return self.uint(4)

    def end(self, what: str) -> None:
        """Require that nothing is left: trailing bytes are never ignored."""
        if self.remaining:
            raise FrameError(f"{self.remaining} unexpected bytes after {what}: the reply is malformed")

    def data(self, depth: int = 0) -> Data:
        """One tagged Data."""
        at = self.pos
        tag = self.u8()
        try:
            kind = DataType(tag)
        except ValueError:
            raise FrameError(f"unknown Data type {tag:02X} at offset {at}: the reply cannot be decoded") from None
        if kind == DataType.NULL:
            return NULL
        if kind in (DataType.ARRAY, DataType.STRUCTURE):
            if depth >= MAX_DEPTH:
                raise FrameError(f"Data nested deeper than {MAX_DEPTH} levels at offset {at}")
            n = self.count()
            if n > self.remaining:
                raise FrameError(f"{kind.name} of {n} elements cannot fit the {self.remaining} bytes left")
            return Data(kind, tuple(self.data(depth + 1) for _ in range(n)))
        if kind in INTEGER_TYPES:
            size, signed = INTEGER_TYPES[kind]
            return Data(kind, int.from_bytes(self.take(size), "big", signed=signed))
        if kind == DataType.BOOL:
            return Data(kind, self.u8() != 0)
        if kind in (DataType.OCTET_STRING, DataType.TSA):
            return Data(kind, self.take(self.count()))
        if kind == DataType.VISIBLE_STRING:
            return Data(kind, self.take(self.count()).decode("latin-1"))
        if kind == DataType.UTF8_STRING:
            return Data(kind, self.take(self.count()).decode("utf-8", errors="replace"))
        if kind == DataType.BIT_STRING:
            bits = self.count()
            return Data(kind, BitString(bits, self.take((bits + 7) // 8)))
        if kind == DataType.FLOAT32:
            return Data(kind, float(struct.unpack(">f", self.take(4))[0]))
        if kind == DataType.FLOAT64:
            return Data(kind, float(struct.unpack(">d", self.take(8))[0]))
        if kind == DataType.DATE_TIME_S:
            return Data(kind, DateTimeS(*struct.unpack(">HBBBBB", self.take(7))))
        if kind == DataType.DATE_TIME:
            return Data(kind, DateTime(*struct.unpack(">HBBBBBBH", self.take(10))))
        if kind == DataType.DATE:
            return Data(kind, Date(*struct.unpack(">HBBB", self.take(5))))
        if kind == DataType.TIME:
            return Data(kind, Time(*self.take(3)))
        if kind == DataType.TI:
            return Data(kind, Ti(*struct.unpack(">BH", self.take(3))))
        if kind == DataType.SCALER_UNIT:
            return Data(kind, ScalerUnit(*struct.unpack(">bB", self.take(2))))
        # ROAD
        oad = self.oad()
        n = self.count()
        if 4 * n > self.remaining:
            raise FrameError(f"a ROAD of {n} columns cannot fit the {self.remaining} bytes left")
        return Data(kind, Road(oad, tuple(self.oad() for _ in range(n))))


def decode_data(buf: bytes) -> Data:
    """Decode exactly one Data from ``buf``; :class:`FrameError` when malformed or longer."""
    r = Reader(buf)
    d = r.data()
    r.end("the Data")
    return d
