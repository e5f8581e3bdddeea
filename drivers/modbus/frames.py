"""Modbus frames on the wire: RTU (unit + PDU + CRC) and TCP (MBAP header + PDU). Pure.

RTU reply layout and how the scanner recovers::

    normal     [unit][fc      ][n = 2·count][data … n bytes][crc lo][crc hi]   5 + n bytes
    exception  [unit][fc | 80h][code]                        [crc lo][crc hi]   5 bytes

    buffer:  ?? ?? [01][03][04][43 66 80 00][crc][crc]
             └───┘  garbage before the frame is skipped (counted in ``skipped``)

:func:`scan_rtu_reply` looks for the first offset where a complete frame with a valid CRC
starts whose function is the one asked (or its exception); it reports ``partial`` when the
buffer is a valid *prefix* of such a frame (wait for more bytes), and ``garbage`` when no
offset can become a valid frame yet (the caller decides after a line silence: a bad CRC
or noise is a FrameError, the port is kept and resynchronised).

The MBAP header is ``transaction id (2) · protocol 0 (2) · length (2) · unit (1)``; the
length counts the unit byte and the PDU.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

from drivers.crc import reflected_crc16, reflected_table

_MBAP: Final = struct.Struct(">HHHB")
MBAP_LEN: Final = 7

#: Modbus exception codes and their names (Modbus Application Protocol v1.1b3 §7).
EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: What a user can do about each exception, appended to the error message.
EXCEPTION_ADVICE: Final[dict[int, str]] = {
    1: "the meter does not support this function code; check `function` in the profile",
    2: "the meter has no register there; check the addresses (0-based) in the profile",
    3: "the meter refused the register count; lower max_registers_per_request",
    4: "the meter reported an internal failure; check the device",
    6: "the meter is busy; it will be retried",
    10: "the TCP gateway has no path to this unit id; check the gateway's configuration",
}


_TABLE: Final = reflected_table(0xA001)


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) of ``data``."""
    return reflected_crc16(data, _TABLE)


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit id, PDU, CRC (low byte first)."""
    body = bytes((unit,)) + pdu
    crc = crc16(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """A Modbus TCP ADU: MBAP header + PDU."""
    return _MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def mbap_header(data: bytes | bytearray, pos: int = 0) -> tuple[int, int, int, int]:
    """(transaction id, protocol id, length, unit) of the MBAP header at ``pos``."""
    return _MBAP.unpack_from(data, pos)


@dataclass(frozen=True, slots=True)
class RtuReply:
    """A complete, CRC-checked RTU reply found in a receive buffer."""

    unit: int
    function: int              # as received (with 0x80 set for an exception)
    payload: bytes             # register bytes, or the exception code as one byte
    start: int                 # offset of the frame in the buffer (bytes skipped before it)
    end: int                   # offset just past the frame

    @property
    def is_exception(self) -> bool:
        """True when the device answered with an exception."""
        return bool(self.function & 0x80)


ScanStatus = Literal["frame", "partial", "garbage"]


def scan_rtu_reply(buf: bytes | bytearray, unit: int, function: int,
                   count: int) -> tuple[ScanStatus, RtuReply | None]:
    """Find the reply to a read of ``count`` registers with ``function`` in ``buf``.

    A complete frame from any unit id is returned (the caller turns a foreign unit into a
    WrongAddressError); ``partial`` means an incomplete frame from ``unit`` is arriving.
    """
    n = len(buf)
    expected = 5 + 2 * count
    exc_fn = function | 0x80
    # Fast path (called once per received chunk): the expected reply is still arriving.
    if n and buf[0] == unit and (
        n < 2
        or (buf[1] == function and n < expected and (n < 3 or buf[2] == 2 * count))
        or (buf[1] == exc_fn and n < 5)
    ):
        return "partial", None
    partial = False
    for i in range(n):
        fn = buf[i + 1] if i + 1 < n else None
        if fn is None:
            partial = partial or buf[i] == unit
            break
        if fn == exc_fn:
            length = 5
        elif fn == function:
            if i + 2 < n and buf[i + 2] != 2 * count:
                continue
            length = expected
        else:
            continue
        if n - i < length:
            partial = partial or buf[i] == unit
            continue
        frame = bytes(buf[i:i + length])
        crc = crc16(frame[:-2])
        if frame[-2] == crc & 0xFF and frame[-1] == crc >> 8:
            payload = frame[2:3] if fn == exc_fn else frame[3:-2]
            return "frame", RtuReply(frame[0], fn, payload, i, i + length)
    return ("partial" if partial else "garbage"), None


def find_any_read_reply(buf: bytes | bytearray) -> tuple[int, int, int, int] | None:
    """The first complete, CRC-valid read reply of *any* unit, function 1–4 and length.

    Returns ``(start, end, unit, function)`` or None. Used when :func:`scan_rtu_reply`
    finds nothing for the request asked: a whole frame answering another request (a late
    reply) is then skipped, not mistaken for noise.
    """
    n = len(buf)
    for i in range(n - 4):
        fn = buf[i + 1]
        if fn & 0x80 and 1 <= fn & 0x7F <= 4:
            length = 5
        elif 1 <= fn <= 4:
            length = 5 + buf[i + 2]
        else:
            continue
        if n - i < length:
            continue
        crc = crc16(buf[i:i + length - 2])
        if buf[i + length - 2] == crc & 0xFF and buf[i + length - 1] == crc >> 8:
            return i, i + length, buf[i], fn
    return None
