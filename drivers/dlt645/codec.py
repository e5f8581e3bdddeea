"""DL/T 645-2007 (and -1997 read) frame codec: pure functions, bytes in, frames out.

Frame layout (``docs/protocols/dlt645-2007.md`` §2)::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68   C    L   DATA[L]   CS   16
     0..4 wake-up  |   address, LSB first  |  ctrl  len  each +33h  |   end
     (not summed)  +--------- CS = sum mod 256 of these bytes -------+

    offset in frame:  0   1 ........... 6   7   8    9   10..9+L  10+L 11+L
    frame length = 12 + L (without preamble); L <= 200 (read replies), 50 (writes)

    Address 123456789012 travels 12 90 78 56 34 12. AA AA AA AA AA AA is the wildcard
    (read address, C=13), 99 99 99 99 99 99 the broadcast (time sync, C=08: no reply).
    DATA of a read (C=11): DI0 DI1 DI2 DI3 (+33h each), then any parameters.
    DATA of a reply (C=91): the echoed DI, then the value bytes, least significant first.

    Control byte C:   D7 direction (1 = meter to master) | D6 abnormal reply |
                      D5 more frames follow | D4..D0 function
        11 read      -> 91 all data, B1 first part (more follows), D1 + error byte
        12 follow-up -> 92 last part, B2 another part; DATA = DI + part + SEQ
        13 read address (to AA..AA) -> 93, DATA = the 6 address bytes
        08 broadcast time sync (to 99..99), DATA = ss mm hh DD MM YY, no reply
        01 DL/T 645-1997 read (2-byte DI) -> 81, A1 (more), C1 + error byte

Streaming decoder and its recovery cases (:func:`decode`, :func:`scan`). The receiver
keeps a buffer, appends what the line delivered, calls ``decode(buffer)`` and drops the
``used`` bytes it returns; ``frame is None`` means "wait for more bytes"::

    buffer                                   result
    ------------------------------------     ------------------------------------------
    FE FE 3A 68 <complete valid frame>       used = everything through 16, the frame:
                                             FE and garbage before a 68 are skipped
    .. 68 <first 9 header bytes>             used = bytes before that 68, None (need more)
    68 xx xx xx xx xx xx 7F ...              second 68 not at offset 7: that 68 is noise,
                                             resynchronise on the next 68
    68 <header, L = 230>                     L > 200 cannot be a frame: resynchronise
    68 <header> <data> CS' 16                bad checksum: reported in ``rejected``,
                                             resynchronise on the next 68 after the first
    68 <header> <data> CS 5A                 bad end byte: same
    68 <header L = 180> ... 68 <valid frame> the first header claims more bytes than have
                                             arrived but a complete valid frame follows:
                                             the first 68 was noise, take the frame
    no 68 at all                             used = len(buffer), None (all garbage)

The decoder never raises; it returns what it rejected so the driver can report a bad
checksum (quality ``crc_error``) instead of a plain timeout. The validating layer
(:func:`check_reply`) then checks a decoded frame against the request it answers: the
direction bit, the function, the echoed address (any address is accepted when the request
went to the wildcard or broadcast address, and AA nibbles of an abbreviated address match
anything), the echoed DI and the follow-up SEQ, and turns an abnormal reply into a
:class:`~gateway.errors.DeviceException` carrying the decoded error name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from drivers import framing
from drivers.framing import END, PREAMBLE_BYTE, START, add33, sub33
from gateway.errors import ConfigError, DeviceException, FrameError, WrongAddressError

ProtocolName = Literal["dlt645", "dlt645-1997"]

MAX_DATA_LEN: Final = 200
HEADER_LEN: Final = 10          # 68 A0..A5 68 C L
OVERHEAD: Final = 12            # header + CS + 16

# Control codes (requests) and the bits of a reply's control byte.
C_TIME_SYNC: Final = 0x08
C_READ: Final = 0x11
C_READ_FOLLOWUP: Final = 0x12
C_READ_ADDRESS: Final = 0x13
C_READ_1997: Final = 0x01
DIR_REPLY: Final = 0x80
ABNORMAL: Final = 0x40
MORE_FOLLOWS: Final = 0x20
FUNCTION_MASK: Final = 0x1F

WILDCARD: Final = bytes([0xAA] * 6)
BROADCAST: Final = bytes([0x99] * 6)

#: Error byte of an abnormal reply (§3): bit → name.
ERROR_BITS: Final[dict[int, str]] = {
    0x01: "other error",
    0x02: "no requested data",
    0x04: "wrong password or not authorised",
    0x08: "baud rate cannot be changed",
    0x10: "too many year time zones",
    0x20: "too many daily time slots",
    0x40: "too many tariffs",
    0x80: "reserved error bit",
}
NO_REQUESTED_DATA: Final = 0x02


def error_name(code: int) -> str:
    """Name the bits of an abnormal reply's error byte (``0x02`` → ``no requested data``)."""
    names = [name for bit, name in ERROR_BITS.items() if code & bit]
    return " + ".join(names) if names else "unspecified error"


# --- addresses ------------------------------------------------------------------------------


def normalize_address(address: str) -> str:
    """Normalise a meter address to its 12 written digits (``"1234"`` → ``"000000001234"``).

    Digits 0–9 and ``A`` (the wildcard nibble of abbreviated addressing) are accepted;
    shorter addresses are padded with zeros in front, as meters do.
    """
    text = address.strip().replace(" ", "").upper()
    if not text or len(text) > 12 or any(c not in "0123456789A" for c in text):
        raise ConfigError(
            f"DL/T 645 address {address!r} is not valid: write the meter's 12-digit "
            "communication address as printed on its nameplate, e.g. \"123456789012\""
        )
    return text.rjust(12, "0")


def address_to_wire(address: str) -> bytes:
    """12-digit address → the 6 wire bytes, least significant byte first (V2)."""
    return bytes(reversed(bytes.fromhex(normalize_address(address))))


def wire_to_address(wire: bytes) -> str:
    """6 wire bytes → the address as written (most significant digits first)."""
    return bytes(reversed(wire)).hex().upper()


def address_matches(requested: bytes, replied: bytes) -> bool:
    """True when a reply from ``replied`` can answer a request sent to ``requested``.

    A wildcard (AA…) or broadcast (99…) request accepts any reply address; an abbreviated
    address (high bytes AA) matches on the bytes that are not AA.
    """
    if requested in (WILDCARD, BROADCAST):
        return True
    return all(r in (0xAA, p) for r, p in zip(requested, replied, strict=True))


# --- frames -------------------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """Sum mod 256 (from the first 68 through the last DATA byte)."""
    return sum(data) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: wire address, control byte and DATA with 0x33 removed."""

    address: bytes
    control: int
    data: bytes

    @property
    def addr(self) -> str:
        """The address as written (``123456789012``)."""
        return wire_to_address(self.address)

    @property
    def is_reply(self) -> bool:
        """D7: the frame travels from a meter to the master."""
        return bool(self.control & DIR_REPLY)

    @property
    def is_abnormal(self) -> bool:
        """D6: an abnormal (refusal) reply; DATA holds the error byte."""
        return bool(self.control & ABNORMAL)

    @property
    def has_more(self) -> bool:
        """D5: more frames follow (read them with C = 12)."""
        return bool(self.control & MORE_FOLLOWS)

    @property
    def function(self) -> int:
        """D4..D0: the function code (0x11 read, 0x12 follow-up, 0x13 read address ...)."""
        return self.control & FUNCTION_MASK

    def encode(self, preamble: int = 0) -> bytes:
        """The frame's wire bytes with ``preamble`` FE bytes in front."""
        return encode_frame(self.address, self.control, self.data, preamble=preamble)


def encode_frame(address: bytes, control: int, data: bytes, *, preamble: int = 4) -> bytes:
    """Build a frame: ``preamble`` × FE, 68, address, 68, C, L, DATA + 33h, CS, 16.

    ``data`` is given without the 0x33 offset; ``address`` in wire order (use
    :func:`address_to_wire`).
    """
    if len(address) != 6:
        raise ValueError("a DL/T 645 address is 6 bytes")
    if not 0 <= preamble <= 4:
        raise ValueError("the FE preamble is 0 to 4 bytes")
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"DATA is at most {MAX_DATA_LEN} bytes, got {len(data)}")
    if not 0 <= control <= 0xFF:
        raise ValueError("the control byte is 0..255")
    body = bytes([START, *address, START, control, len(data)]) + add33(data)
    return bytes([PREAMBLE_BYTE] * preamble) + body + bytes([checksum(body), END])


#: What :func:`scan` found: bytes to drop, a frame (or None: need more), rejections.
Scan = framing.Scan


def _examine(buf: bytes, s: int) -> framing.Candidate[Frame]:
    """Examine a candidate frame at ``s`` (the cases are in the module docstring)."""
    n = len(buf)
    if n < s + HEADER_LEN:
        return framing.Candidate(None)
    if buf[s + 7] != START:
        return framing.Candidate(None, "")  # not a header: silent resync (a 68 inside garbage)
    length = buf[s + 9]
    if length > MAX_DATA_LEN:
        return framing.Candidate(None, f"frame header claims L={length} (> {MAX_DATA_LEN})")
    end = s + OVERHEAD + length
    if n < end:
        return framing.Candidate(None)
    if checksum(buf[s : end - 2]) != buf[end - 2]:
        return framing.Candidate(None, (
            f"bad checksum {buf[end - 2]:02X} (expected {checksum(buf[s:end - 2]):02X}) "
            f"in a frame from {wire_to_address(bytes(buf[s + 1 : s + 7]))}"
        ))
    if buf[end - 1] != END:
        return framing.Candidate(None, f"bad end byte {buf[end - 1]:02X} (expected 16)")
    frame = Frame(bytes(buf[s + 1 : s + 7]), buf[s + 8], sub33(bytes(buf[s + 10 : end - 2])))
    return framing.Candidate(frame, None, end)


def scan(buffer: bytes | bytearray) -> Scan[Frame]:
    """Find the first valid frame in ``buffer`` (see the module docstring for the cases)."""
    return framing.scan_buffer(buffer, _examine, skipped="incomplete frame header")


def decode(buffer: bytes | bytearray) -> tuple[int, Frame | None]:
    """Streaming decode: ``(bytes used, frame or None = need more bytes)``; never raises."""
    result = scan(buffer)
    return result.used, result.frame


# --- requests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A request frame before encoding, kept so its reply can be checked against it."""

    address: bytes
    control: int
    data: bytes
    di: bytes = b""           # the DI bytes as sent (DI0 first), echoed in the reply
    seq: int | None = None    # follow-up frame number (C = 12)

    @property
    def addr(self) -> str:
        """The address as written."""
        return wire_to_address(self.address)

    @property
    def di_text(self) -> str:
        """The DI as written (DI3..DI0), for messages."""
        return bytes(reversed(self.di)).hex().upper()

    @property
    def expects_reply(self) -> bool:
        """False for broadcast frames (time sync): meters never answer them."""
        return self.address != BROADCAST

    def encode(self, preamble: int = 4) -> bytes:
        """The request's wire bytes."""
        return encode_frame(self.address, self.control, self.data, preamble=preamble)


def di_bytes(di: int, protocol: ProtocolName = "dlt645") -> bytes:
    """A DI as written (``0x00010000``) → wire order, DI0 first (4 bytes; 2 for 1997)."""
    width = 2 if protocol == "dlt645-1997" else 4
    if not 0 <= di < 1 << (8 * width):
        raise ValueError(f"DI {di:#x} does not fit {width} bytes ({protocol})")
    return di.to_bytes(width, "little")


def read_request(
    address: str, di: int, *, protocol: ProtocolName = "dlt645", extra: bytes = b""
) -> Request:
    """A read request: C = 11 with a 4-byte DI (2007) or C = 01 with a 2-byte DI (1997).

    ``extra`` follows the DI (e.g. a load-profile start time, D17).
    """
    d = di_bytes(di, protocol)
    control = C_READ_1997 if protocol == "dlt645-1997" else C_READ
    return Request(address_to_wire(address), control, d + extra, di=d)


def followup_request(address: str, di: int, seq: int) -> Request:
    """A read follow-up request: C = 12, DATA = DI + SEQ (1..255), vector D19."""
    if not 1 <= seq <= 0xFF:
        raise ValueError("follow-up SEQ is 1..255")
    d = di_bytes(di)
    return Request(address_to_wire(address), C_READ_FOLLOWUP, d + bytes([seq]), di=d, seq=seq)


def read_address_request() -> Request:
    """Read the communication address of the single meter on a line (C = 13 to AA…AA)."""
    return Request(WILDCARD, C_READ_ADDRESS, b"")


def time_sync_request(local_time: datetime) -> Request:
    """Broadcast time sync (C = 08 to 99…99), DATA = ss mm hh DD MM YY (vector D18).

    ``local_time`` is the meters' own wall-clock time (naive, or aware and already in the
    meters' zone). Meters do not answer.
    """
    t = local_time
    digits = f"{t:%S}{t:%M}{t:%H}{t:%d}{t:%m}{t:%y}"
    return Request(BROADCAST, C_TIME_SYNC, bytes.fromhex(digits))


def encode_read(
    address: str, di: int, *, preamble: int = 4, protocol: ProtocolName = "dlt645", extra: bytes = b""
) -> bytes:
    """Wire bytes of a read request (convenience over :func:`read_request`)."""
    return read_request(address, di, protocol=protocol, extra=extra).encode(preamble)


# --- reply validation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A validated reply: the value bytes after the echoed DI (and without SEQ)."""

    frame: Frame
    payload: bytes
    more: bool


def check_reply(request: Request, frame: Frame) -> Reply:
    """Check ``frame`` answers ``request``; return its payload or raise.

    Raises :class:`FrameError` (not a reply, wrong function, DI or SEQ not echoed, too
    short), :class:`WrongAddressError` (another meter answered) or
    :class:`DeviceException` (abnormal reply, with the decoded error byte).
    """
    who = request.addr
    if not frame.is_reply:
        raise FrameError(
            f"received a master-to-meter frame (C={frame.control:02X}) instead of the reply of "
            f"meter {who}: another master or an echoing RS-485 adapter is on the line"
        )
    if frame.function != request.control & FUNCTION_MASK:
        raise FrameError(
            f"meter {frame.addr} answered function {frame.function:02X} to request "
            f"{request.control:02X}; a late reply to an earlier request is on the line"
        )
    if not address_matches(request.address, frame.address):
        raise WrongAddressError(
            f"a reply came from meter {frame.addr} but meter {who} was asked: a late reply, or "
            "two meters share an address on this bus"
        )
    if frame.is_abnormal:
        code = frame.data[0] if frame.data else 0
        name = error_name(code)
        what = f" for DI {request.di_text}" if request.di else ""
        hint = (
            "the meter does not support this data identifier; check the profile"
            if code & NO_REQUESTED_DATA
            else "the meter refused the request"
        )
        raise DeviceException(code, name, f"meter {frame.addr} answered {name}{what}: {hint}")
    data = frame.data
    if request.di:
        n = len(request.di)
        if data[:n] != request.di:
            raise FrameError(
                f"meter {frame.addr} echoed DI {bytes(reversed(data[:n])).hex().upper()} but DI "
                f"{request.di_text} was asked: a late reply to an earlier request"
            )
        data = data[n:]
    if request.seq is not None:
        if not data or data[-1] != request.seq:
            got = f"{data[-1]}" if data else "nothing"
            raise FrameError(
                f"meter {frame.addr} answered follow-up frame {got} but frame {request.seq} was "
                f"asked for DI {request.di_text}"
            )
        data = data[:-1]
    return Reply(frame, data, frame.has_more)
