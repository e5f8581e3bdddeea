"""DL/T 645 value formats: BCD bytes (least significant byte first) to values and back.

A DL/T 645 reply carries values as packed BCD, **least significant byte first**; the data
identifier's format names the digits and where the decimal point goes (``XXXXXX.XX`` =
4 bytes, two decimals). Decoding is exact: numbers come back as :class:`~decimal.Decimal`
(never ``float``), so an energy register is stored with exactly the digits the meter shows.

Rules (``docs/protocols/dlt645-2007.md`` §7):

* bytes are reversed, then read as BCD digits: ``78 56 34 12`` → ``12345678`` →
  ``XXXXXX.XX`` → ``123456.78``;
* signed quantities (combined energy, current, power, power factor) carry the sign in bit 7
  of the most significant byte (the last byte on the wire): clear it, decode, negate;
* all-``EE`` or all-``FF`` bytes mean "no data" and any non-BCD nibble (A–F) means the value
  is missing: both raise :class:`~gateway.errors.DecodeError`, never a number;
* date and time formats decode to ISO-8601 text (``2024-05-01T00:00``) in the meter's own
  local time (the meter knows no time zone) because a reading's ``raw`` is a
  ``Decimal | float | int | str``; :func:`decode_datetime` gives a ``datetime`` instead.

Encoders (:func:`encode_value`) exist for the simulator and for requests that carry data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Final, Literal

from gateway.errors import DecodeError

FormatKind = Literal["number", "integer", "datetime", "date", "time", "ddhh", "mmddhhmm", "digits"]


@dataclass(frozen=True, slots=True)
class ValueFormat:
    """One DL/T 645 value format: its wire size, what it decodes to, and the decimal point.

    ``signed`` is set for a format written with a leading ``±`` (e.g. ``±XX.XXXX``): the
    standard's signed quantities are recognised by their data identifier instead
    (:func:`drivers.dlt645.catalogue.is_signed`), so profiles may use the plain names.
    """

    name: str
    size: int
    kind: FormatKind
    decimals: int = 0
    signed: bool = False

    @property
    def digits(self) -> int:
        """Number of BCD digits on the wire (two per byte)."""
        return self.size * 2


_BASE_FORMATS: Final[dict[str, ValueFormat]] = {
    f.name: f
    for f in (
        ValueFormat("XXXXXX.XX", 4, "number", 2),
        ValueFormat("XX.XXXX", 3, "number", 4),
        ValueFormat("XXX.X", 2, "number", 1),
        ValueFormat("XXX.XXX", 3, "number", 3),
        ValueFormat("X.XXX", 2, "number", 3),
        ValueFormat("XX.XX", 2, "number", 2),
        ValueFormat("XXX", 2, "number", 0),          # DL/T 645-1997 voltage (B611: 100 V)
        ValueFormat("NN", 1, "integer"),
        ValueFormat("NNNN", 2, "integer"),
        ValueFormat("NNNNNN", 3, "integer"),
        ValueFormat("XXXXXX", 3, "integer"),         # event counters (03300D00 ...)
        ValueFormat("NNNNNNNNNNNN", 6, "digits"),    # communication address / meter number
        ValueFormat("YYMMDDhhmmss", 6, "datetime"),
        ValueFormat("YYMMDDhhmm", 5, "datetime"),
        ValueFormat("YYMMDDWW", 4, "date"),
        ValueFormat("hhmmss", 3, "time"),
        ValueFormat("DDhh", 2, "ddhh"),
        ValueFormat("MMDDhhmm", 4, "mmddhhmm"),
    )
}

#: Every format name a profile may use (a leading ``±`` forces a signed number format).
FORMAT_NAMES: Final[tuple[str, ...]] = tuple(_BASE_FORMATS)


def parse_format(name: str) -> ValueFormat:
    """Look up a format by name (``XXXXXX.XX``, ``±XX.XXXX``, ``YYMMDDhhmm`` ...).

    Raises ``ValueError`` naming every accepted format, so a profile loader can show the
    user what to write instead.
    """
    signed = name.startswith(("±", "+-"))
    base = name.lstrip("±+-")
    fmt = _BASE_FORMATS.get(base)
    if fmt is None or (signed and fmt.kind != "number"):
        raise ValueError(
            f"unknown DL/T 645 value format {name!r}; use one of {', '.join(FORMAT_NAMES)} "
            "(a number format may start with ± to make it signed)"
        )
    if signed:
        return ValueFormat(name, fmt.size, fmt.kind, fmt.decimals, True)
    return fmt


def _missing(data: bytes, fmt: ValueFormat) -> DecodeError:
    return DecodeError(
        f"value missing: the meter sent {data.hex(' ').upper()} for format {fmt.name} "
        "(no data or not BCD); the meter has no value for this item"
    )


def _bcd_digits(data: bytes, fmt: ValueFormat, *, signed: bool) -> tuple[bool, str]:
    """Reverse the wire bytes and return (negative, digit string); raise DecodeError."""
    if len(data) != fmt.size:
        raise DecodeError(
            f"format {fmt.name} needs {fmt.size} bytes but the meter sent {len(data)}; "
            "check the profile's format for this data identifier"
        )
    if all(b == 0xEE for b in data) or all(b == 0xFF for b in data):
        raise _missing(data, fmt)
    msb_first = bytearray(reversed(data))
    negative = False
    if signed and msb_first[0] & 0x80:
        negative = True
        msb_first[0] &= 0x7F
    text = msb_first.hex()
    if not text.isdigit():
        raise _missing(data, fmt)
    return negative, text


def decode_number(data: bytes, fmt: ValueFormat | str, *, signed: bool = False) -> Decimal:
    """Decode a number format exactly (``78 56 34 12`` as ``XXXXXX.XX`` → ``123456.78``)."""
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    if f.kind not in ("number", "integer"):
        raise DecodeError(f"format {f.name} is not a number format")
    negative, digits = _bcd_digits(data, f, signed=signed or f.signed)
    value = Decimal(int(digits)).scaleb(-f.decimals)
    return -value if negative else value


def _two(digits: str, i: int) -> int:
    return int(digits[i : i + 2])


def decode_datetime(data: bytes, fmt: ValueFormat | str) -> datetime:
    """Decode ``YYMMDDhhmm``/``YYMMDDhhmmss``/``YYMMDDWW`` to a naive meter-local datetime.

    Years are 20YY. ``YYMMDDWW`` gives midnight of that date (WW, the weekday with
    0 = Sunday, is checked to be 0–6 but not against the date: meters get it wrong).
    """
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    _, d = _bcd_digits(data, f, signed=False)
    try:
        if f.kind == "datetime":
            sec = _two(d, 10) if f.size == 6 else 0
            return datetime(2000 + _two(d, 0), _two(d, 2), _two(d, 4), _two(d, 6), _two(d, 8), sec)
        if f.kind == "date":
            if _two(d, 6) > 6:
                raise ValueError("weekday out of range")
            return datetime(2000 + _two(d, 0), _two(d, 2), _two(d, 4))
    except ValueError as exc:
        raise DecodeError(
            f"the meter sent {data.hex(' ').upper()}, which is not a valid {f.name} ({exc})"
        ) from exc
    raise DecodeError(f"format {f.name} is not a date format")


def decode_time(data: bytes, fmt: ValueFormat | str = "hhmmss") -> time:
    """Decode ``hhmmss`` to a ``time``."""
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    _, d = _bcd_digits(data, f, signed=False)
    try:
        return time(_two(d, 0), _two(d, 2), _two(d, 4))
    except ValueError as exc:
        raise DecodeError(f"the meter sent {data.hex(' ').upper()}, which is not a valid hhmmss") from exc


def decode_ddhh(data: bytes) -> tuple[int, int]:
    """Decode a settlement day ``DDhh`` to (day, hour); ``99`` fields mean "not set"."""
    f = _BASE_FORMATS["DDhh"]
    _, d = _bcd_digits(data, f, signed=False)
    day, hour = _two(d, 0), _two(d, 2)
    if day == 99 or hour == 99:
        raise DecodeError("settlement day is not set on the meter (DDhh = 99)")
    if not (1 <= day <= 31 and 0 <= hour <= 23):
        raise DecodeError(f"the meter sent settlement day {d}, which is not a valid DDhh")
    return day, hour


def decode_value(data: bytes, fmt: ValueFormat | str, *, signed: bool = False) -> Decimal | int | str:
    """Decode any format to a reading value: Decimal, int (counters) or ISO text (times).

    ``YYMMDDhhmm`` → ``2024-05-01T00:00``, ``YYMMDDhhmmss`` → ``2024-05-01T00:00:30``,
    ``YYMMDDWW`` → ``2024-05-01``, ``hhmmss`` → ``13:45:00``, ``DDhh`` → ``01T00``,
    ``MMDDhhmm`` → ``05-01T00:00``, address digits → the 12 digits as written.
    """
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    if f.kind == "number":
        return decode_number(data, f, signed=signed)
    if f.kind == "integer":
        return int(decode_number(data, f))
    if f.kind == "datetime":
        dt = decode_datetime(data, f)
        return dt.isoformat(timespec="seconds" if f.size == 6 else "minutes")
    if f.kind == "date":
        return decode_datetime(data, f).date().isoformat()
    if f.kind == "time":
        return decode_time(data, f).isoformat()
    if f.kind == "ddhh":
        day, hour = decode_ddhh(data)
        return f"{day:02d}T{hour:02d}"
    _, d = _bcd_digits(data, f, signed=False)
    if f.kind == "mmddhhmm":
        if not (1 <= _two(d, 0) <= 12 and 1 <= _two(d, 2) <= 31 and _two(d, 4) < 24 and _two(d, 6) < 60):
            raise DecodeError(f"the meter sent {data.hex(' ').upper()}, which is not a valid MMDDhhmm")
        return f"{d[0:2]}-{d[2:4]}T{d[4:6]}:{d[6:8]}"
    return d


# --- encoders -------------------------------------------------------------------------------


def _pack(digits: str) -> bytes:
    """Digit string (most significant first) → BCD bytes least significant byte first."""
    return bytes(reversed(bytes.fromhex(digits)))


def encode_number(
    value: Decimal | int | float | str,
    fmt: ValueFormat | str,
    *,
    signed: bool = False,
    wrap: bool = False,
    clip: bool = False,
) -> bytes:
    """Encode a number in a format (rounded half-up to the format's decimals).

    ``wrap`` rolls an over-range value over like a meter register (modulo 10^digits);
    ``clip`` saturates it at the largest value the format holds. Without either, a value
    out of range raises ``ValueError``.
    """
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    signed = signed or f.signed
    try:
        d = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        scaled = int(d.scaleb(f.decimals).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    negative = scaled < 0
    if negative and not signed:
        if clip:
            scaled, negative = 0, False
        else:
            raise ValueError(f"{value} is negative but format {f.name} is unsigned here")
    mag = abs(scaled)
    limit = 10 ** f.digits if not signed else 8 * 10 ** (f.digits - 1)
    if mag >= limit:
        if wrap:
            mag %= limit
        elif clip:
            mag = limit - 1
        else:
            raise ValueError(f"{value} does not fit format {f.name}")
    data = bytearray(_pack(f"{mag:0{f.digits}d}"))
    if negative and mag:
        data[-1] |= 0x80
    return bytes(data)


def encode_value(
    value: Decimal | int | float | str | datetime | date | time | tuple[int, int],
    fmt: ValueFormat | str,
    *,
    signed: bool = False,
    wrap: bool = False,
    clip: bool = False,
) -> bytes:
    """Encode a value in any format (the inverse of :func:`decode_value`).

    Date formats take a ``datetime``/``date`` (``YYMMDDWW`` computes WW, 0 = Sunday),
    ``hhmmss`` a ``time`` or ``datetime``, ``DDhh`` a (day, hour) tuple, digit formats a
    digit string.
    """
    f = parse_format(fmt) if isinstance(fmt, str) else fmt
    if f.kind in ("number", "integer"):
        if isinstance(value, datetime | date | time | tuple):
            raise ValueError(f"format {f.name} needs a number, not {value!r}")
        return encode_number(value, f, signed=signed, wrap=wrap, clip=clip)
    if f.kind == "datetime":
        if not isinstance(value, datetime):
            raise ValueError(f"format {f.name} needs a datetime")
        text = value.strftime("%y%m%d%H%M%S" if f.size == 6 else "%y%m%d%H%M")
        return _pack(text)
    if f.kind == "date":
        if not isinstance(value, date):
            raise ValueError("format YYMMDDWW needs a date")
        weekday = (value.weekday() + 1) % 7
        return _pack(f"{value:%y%m%d}{weekday:02d}")
    if f.kind == "time":
        if not isinstance(value, time | datetime):
            raise ValueError("format hhmmss needs a time")
        return _pack(f"{value:%H%M%S}")
    if f.kind == "ddhh":
        if not isinstance(value, tuple):
            raise ValueError("format DDhh needs a (day, hour) tuple")
        return _pack(f"{value[0]:02d}{value[1]:02d}")
    if f.kind == "mmddhhmm":
        if not isinstance(value, datetime):
            raise ValueError("format MMDDhhmm needs a datetime")
        return _pack(f"{value:%m%d%H%M}")
    text = str(value)
    if not text.isdigit() or len(text) > f.digits:
        raise ValueError(f"format {f.name} needs up to {f.digits} digits")
    return _pack(text.rjust(f.digits, "0"))
