"""DL/T 698.45 link frames: pure functions, bytes in, frames out (``docs/protocols/dlt698-45.md`` §2).

Frame layout (n = server address length, 1..16 bytes)::

    [FE..]  68 | L0 L1 | C | AF | SA[n]  | CA | HCS0 HCS1 | user data ... | FCS0 FCS1 | 16
    wake-up    |<--------- HCS covers L..CA ------->|                      |
    (no CRC)   |<------------------ FCS covers L..last user-data byte --->|

    offset from 68:  1..2 L   3 C   4 AF   5..4+n SA   5+n CA   6+n..7+n HCS
                     8+n .. L-2 user data   L-1..L FCS   L+1 the end byte 16
    frame length = L + 2 (L counts everything but 68 and 16); smallest L = 9 + n

    L   (little-endian) bits 0-13 length, bit 14 unit (1 = kilobytes), bit 15 reserved
    C   bit 7 DIR (1 = server to client)  bit 6 PRM (1 = this side started the exchange)
        bit 5 SPLIT (link fragment)  bit 4 reserved  bit 3 SC (user data sent +33h)
        bits 2-0 function: 1 link management, 3 user data
    AF  bits 7-6 address type (0 single, 1 wildcard, 2 group, 3 broadcast)
        bits 5-4 logical address  bits 3-0 n - 1
    SA  least significant byte first: meter 000039200933 travels 33 09 20 39 00 00
    CA  client address; a meter echoes it
    HCS, FCS  CRC-16/X-25 (reflected 0x1021, init and xorout FFFF), low byte first

A SPLIT frame's user data starts with a 2-byte little-endian fragment header (bits 0-11
fragment number, bits 14-15 kind: 0 first, 1 last, 2 acknowledgement, 3 middle); the rest
is a piece of one APDU. :class:`Reassembly` joins the pieces and :func:`fragment_ack`
builds the acknowledgement a receiver sends for each piece.

Streaming decoder and its recovery cases (:func:`decode`, :func:`scan`). The receiver keeps
a buffer, appends what the line delivered, calls ``decode(buffer)`` and drops the ``used``
bytes it returns; ``frame is None`` means "wait for more bytes"::

    buffer                                     result
    --------------------------------------     ----------------------------------------------
    FE FE FE FE 68 <complete valid frame>      used = through the 16; FE and any garbage
                                               before a 68 are skipped
    .. 68 L L C AF SA..   (header not in)      used = bytes before that 68, None (need more)
    68 <header> HCS'                           bad HCS: rejected as soon as the header is in
                                               (no waiting for L bytes), resync at the next 68
    68 L with bit 15 set / L < 9 + n           not a frame: rejected, resync
    68 L with bit 14 (kilobyte unit) set       rejected with its own reason: this codec does
                                               not take frames counted in kilobytes
    68 <header HCS ok> <data> FCS' 16          bad FCS: rejected, resync at the next 68 after
                                               the first (a real frame may start inside)
    68 <header HCS ok> <data> FCS 5A           bad end byte: same
    68 <header L=900 HCS ok> .. 68 <valid>     the first header claims more than has arrived
                                               but a complete valid frame follows it: that
                                               frame is taken (the first was cut short)
    no 68 at all                               used = len(buffer), None (all garbage)

The decoder never raises; :func:`scan` also returns what it rejected so a driver can report
quality ``crc_error`` (a damaged reply) instead of a plain timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from drivers import framing
from drivers.crc import reflected_crc16, reflected_table
from drivers.framing import END, PREAMBLE_BYTE, START, add33, sub33
from gateway.errors import ConfigError, FrameError

LENGTH_MASK: Final = 0x3FFF
LENGTH_UNIT_KB: Final = 0x4000
LENGTH_RESERVED: Final = 0x8000
#: The largest L this codec accepts (bits 0-13 all set, bytes unit).
MAX_LENGTH: Final = LENGTH_MASK

DIR_SERVER: Final = 0x80
PRM: Final = 0x40
SPLIT: Final = 0x20
SC: Final = 0x08
FUNCTION_MASK: Final = 0x07
FUNC_LINK: Final = 1
FUNC_USER_DATA: Final = 3

#: Control byte of a master's request (PRM, user data) and of a meter's reply (DIR, PRM).
C_REQUEST: Final = PRM | FUNC_USER_DATA          # 43
C_RESPONSE: Final = DIR_SERVER | PRM | FUNC_USER_DATA  # C3


# --- CRC ------------------------------------------------------------------------------------


_CRC_TABLE: Final = reflected_table(0x8408)


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 (PPP FCS-16) used for HCS and FCS: ``crc16(b"123456789") == 0x906E``."""
    return reflected_crc16(data, _CRC_TABLE) ^ 0xFFFF


# --- length field ---------------------------------------------------------------------------


def encode_length(count: int) -> bytes:
    """The 2-byte L field for ``count`` bytes (bytes unit; bit 14 is never set when sending)."""
    if not 0 <= count <= MAX_LENGTH:
        raise ValueError(f"a frame length is 0..{MAX_LENGTH} bytes, got {count}")
    return count.to_bytes(2, "little")


def parse_length(raw: int) -> tuple[int, bool]:
    """Split an L field value into (count, kilobyte unit?) without judging it.

    Bit 14 set means the count is in kilobytes (``docs/protocols/dlt698-45.md`` §2, **medium**: one source).
    Bit 15 is reserved. :func:`scan` rejects both (design rule, see README).
    """
    return raw & LENGTH_MASK, bool(raw & LENGTH_UNIT_KB)


# --- addresses ------------------------------------------------------------------------------


class AddressType(IntEnum):
    """Server address type (AF bits 7-6)."""

    SINGLE = 0
    WILDCARD = 1
    GROUP = 2
    BROADCAST = 3


def normalize_address(address: str) -> str:
    """Normalise a written meter address (``"39200933"`` → ``"000039200933"``).

    12 digits is the usual meter address (6 bytes); an address written with more digits
    keeps its length (rounded up to whole bytes). ``A`` is the wildcard digit, valid only in
    a wildcard-type address.
    """
    text = address.strip().replace(" ", "").upper()
    if not text or len(text) > 32 or any(c not in "0123456789A" for c in text):
        raise ConfigError(
            f"DL/T 698.45 address {address!r} is not valid: write the meter's communication "
            "address as printed on its nameplate (12 digits), e.g. \"000039200933\""
        )
    width = max(12, len(text) + len(text) % 2)
    return text.rjust(width, "0")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A server (meter) address: its type, logical address and the bytes as sent (LS first)."""

    kind: AddressType
    wire: bytes
    logical: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.wire) <= 16:
            raise ValueError("a server address is 1..16 bytes")
        if not 0 <= self.logical <= 3:
            raise ValueError("the logical address is 0..3")

    @classmethod
    def single(cls, address: str, logical: int = 0, size: int | None = None) -> ServerAddress:
        """The address of one meter as written (``"000039200933"``).

        ``size`` is the address length in bytes when it is not the usual 6 (a meter with a
        4-byte address, ``"28417891"``, needs ``size=4``: the meter compares lengths too).
        """
        text = normalize_address(address)
        if "A" in text:
            raise ConfigError(
                f"DL/T 698.45 address {address!r} has the wildcard digit A: a single meter's "
                "address has digits 0-9 only"
            )
        if size is not None:
            if not 1 <= size <= 16 or len(text.lstrip("0")) > 2 * size:
                raise ConfigError(f"DL/T 698.45 address {address!r} does not fit {size} bytes")
            text = text[-2 * size :] if len(text) > 2 * size else text.rjust(2 * size, "0")
        return cls(AddressType.SINGLE, bytes(reversed(bytes.fromhex(text))), logical)

    @classmethod
    def wildcard(cls, address: str = "AAAAAAAAAAAA") -> ServerAddress:
        """A wildcard address: digit ``A`` matches any digit (all A: any meter, §6)."""
        text = normalize_address(address)
        return cls(AddressType.WILDCARD, bytes(reversed(bytes.fromhex(text))))

    @classmethod
    def broadcast(cls) -> ServerAddress:
        """The broadcast address: type 3 with the one byte ``AA`` (**unverified**, README)."""
        return cls(AddressType.BROADCAST, b"\xaa")

    @property
    def text(self) -> str:
        """The address as written (most significant digits first)."""
        return bytes(reversed(self.wire)).hex().upper()

    @property
    def af(self) -> int:
        """The AF byte: type, logical address and length."""
        return (int(self.kind) << 6) | (self.logical << 4) | (len(self.wire) - 1)

    def reaches(self, meter: ServerAddress) -> bool:
        """True when a frame sent to this address is for the single-address ``meter``.

        A single address must equal the meter's (with its logical address); a wildcard
        address of the same length matches digit by digit with ``A`` matching anything;
        broadcast reaches every meter. Group addresses reach no one here (the meter's group
        membership is a parameter this codec does not model).
        """
        if self.kind == AddressType.BROADCAST:
            return True
        if self.kind == AddressType.SINGLE:
            return self.wire == meter.wire and self.logical == meter.logical
        if self.kind == AddressType.WILDCARD:
            if len(self.wire) != len(meter.wire):
                return False
            mine, theirs = self.wire.hex(), meter.wire.hex()
            return all(a in ("a", b) for a, b in zip(mine, theirs, strict=True))
        return False


def parse_af(af: int) -> tuple[AddressType, int, int]:
    """AF byte → (address type, logical address, SA length)."""
    return AddressType(af >> 6), (af >> 4) & 0x03, (af & 0x0F) + 1


# --- fragments ------------------------------------------------------------------------------


class FragmentKind(IntEnum):
    """Kind of a link fragment (fragment header bits 14-15)."""

    FIRST = 0
    LAST = 1
    ACK = 2
    MIDDLE = 3


MAX_FRAGMENT_NUMBER: Final = 0x0FFF


@dataclass(frozen=True, slots=True)
class Fragment:
    """A SPLIT frame's fragment header: its number (0-4095) and kind."""

    number: int
    kind: FragmentKind

    def encode(self) -> bytes:
        """The 2-byte little-endian header."""
        if not 0 <= self.number <= MAX_FRAGMENT_NUMBER:
            raise ValueError("a fragment number is 0..4095")
        return (self.number | (int(self.kind) << 14)).to_bytes(2, "little")

    @classmethod
    def parse(cls, data: bytes) -> Fragment:
        """Read the header from the first two bytes of a SPLIT frame's user data."""
        raw = int.from_bytes(data[:2], "little")
        return cls(raw & MAX_FRAGMENT_NUMBER, FragmentKind(raw >> 14))


# --- frames -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    ``apdu`` is the user data with scrambling removed; for a SPLIT frame it is this
    fragment's piece of the APDU (the fragment header is in ``fragment``).
    """

    control: int
    server: ServerAddress
    client: int
    apdu: bytes
    fragment: Fragment | None = None

    @property
    def from_server(self) -> bool:
        """DIR: the frame travels from a meter to the master."""
        return bool(self.control & DIR_SERVER)

    @property
    def prm(self) -> bool:
        """PRM: the sender started this exchange."""
        return bool(self.control & PRM)

    @property
    def split(self) -> bool:
        """SPLIT: this frame carries one fragment of a longer APDU."""
        return bool(self.control & SPLIT)

    @property
    def scrambled(self) -> bool:
        """SC: the user data travelled +33h."""
        return bool(self.control & SC)

    @property
    def function(self) -> int:
        """Function code: 1 link management, 3 user data."""
        return self.control & FUNCTION_MASK

    def encode(self, preamble: int = 0) -> bytes:
        """The frame's wire bytes with ``preamble`` FE bytes in front."""
        return encode_frame(self.control, self.server, self.client, self.apdu,
                            preamble=preamble, fragment=self.fragment)


def encode_frame(
    control: int,
    server: ServerAddress,
    client: int,
    apdu: bytes,
    *,
    preamble: int = 0,
    fragment: Fragment | None = None,
) -> bytes:
    """Build a frame: ``preamble`` × FE, 68, L, C, AF, SA, CA, HCS, user data, FCS, 16.

    ``apdu`` is given unscrambled; when ``control`` has SC set it is sent +33h. With a
    ``fragment`` the SPLIT bit is set and the fragment header leads the user data.
    """
    if not 0 <= preamble <= 4:
        raise ValueError("the FE wake-up prefix is 0 to 4 bytes")
    if not 0 <= control <= 0xFF or not 0 <= client <= 0xFF:
        raise ValueError("the control byte and the client address are 0..255")
    if fragment is not None:
        control |= SPLIT
    elif control & SPLIT:
        raise ValueError("a SPLIT frame needs its fragment header")
    user = (fragment.encode() if fragment is not None else b"") + apdu
    if control & SC:
        user = add33(user)
    length = 2 + 1 + 1 + len(server.wire) + 1 + 2 + len(user) + 2
    head = encode_length(length) + bytes([control, server.af]) + server.wire + bytes([client])
    head += crc16(head).to_bytes(2, "little")
    body = head + user
    return bytes([PREAMBLE_BYTE] * preamble + [START]) + body + crc16(body).to_bytes(2, "little") + bytes([END])


#: What :func:`scan` found: bytes to drop, a frame (or None: need more), rejections.
Scan = framing.Scan
_Candidate = framing.Candidate
_WAIT: Final[framing.Candidate[Frame]] = framing.Candidate(None)


def _examine(buf: bytes, s: int) -> framing.Candidate[Frame]:
    """Examine a candidate frame whose 68 is at ``s``."""
    have = len(buf) - s
    if have < 5:
        return _WAIT
    raw_len = buf[s + 1] | (buf[s + 2] << 8)
    if raw_len & LENGTH_RESERVED:
        return _Candidate(None, f"length field {raw_len:04X} has reserved bit 15 set")
    if raw_len & LENGTH_UNIT_KB:
        return _Candidate(None, (
            f"length field {raw_len:04X} counts in kilobytes (bit 14); this gateway takes "
            "frames counted in bytes only"
        ))
    n = (buf[s + 4] & 0x0F) + 1
    if raw_len < 9 + n:
        return _Candidate(None, f"length {raw_len} is shorter than a header with a {n}-byte address")
    if have < 8 + n:
        return _WAIT
    hcs = buf[s + 6 + n] | (buf[s + 7 + n] << 8)
    want = crc16(buf[s + 1 : s + 6 + n])
    if hcs != want:
        return _Candidate(None, f"bad HCS {hcs:04X} (expected {want:04X})")
    if have < raw_len + 2:
        return _WAIT
    fcs = buf[s + raw_len - 1] | (buf[s + raw_len] << 8)
    want = crc16(buf[s + 1 : s + raw_len - 1])
    if fcs != want:
        return _Candidate(None, f"bad FCS {fcs:04X} (expected {want:04X})")
    if buf[s + raw_len + 1] != END:
        return _Candidate(None, f"bad end byte {buf[s + raw_len + 1]:02X} (expected 16)")
    control = buf[s + 3]
    kind, logical, _ = parse_af(buf[s + 4])
    server = ServerAddress(kind, bytes(buf[s + 5 : s + 5 + n]), logical)
    user = bytes(buf[s + 8 + n : s + raw_len - 1])
    if control & SC:
        user = sub33(user)
    fragment = None
    if control & SPLIT:
        if len(user) < 2:
            return _Candidate(None, "a SPLIT frame without its fragment header")
        fragment = Fragment.parse(user)
        user = user[2:]
    return _Candidate(Frame(control, server, buf[s + 5 + n], user, fragment), None, s + raw_len + 2)


def scan(buffer: bytes | bytearray) -> Scan[Frame]:
    """Find the first valid frame in ``buffer`` (see the module docstring for the cases)."""
    return framing.scan_buffer(buffer, _examine, skipped="incomplete frame")


def decode(buffer: bytes | bytearray) -> tuple[int, Frame | None]:
    """Streaming decode: ``(bytes used, frame or None = need more bytes)``; never raises."""
    result = scan(buffer)
    return result.used, result.frame


# --- fragmentation --------------------------------------------------------------------------


def split_apdu(apdu: bytes, size: int) -> list[tuple[Fragment, bytes]]:
    """Cut ``apdu`` into link fragments of at most ``size`` bytes (numbered from 0).

    An APDU that fits needs no SPLIT frame: this returns ``[]`` and the caller sends it
    whole. Otherwise pieces are FIRST, MIDDLE..., LAST.
    """
    if size < 1:
        raise ValueError("a fragment carries at least one byte")
    if len(apdu) <= size:
        return []
    pieces = [apdu[i : i + size] for i in range(0, len(apdu), size)]
    if len(pieces) > MAX_FRAGMENT_NUMBER + 1:
        raise ValueError("too many fragments (at most 4096)")
    out = []
    for i, piece in enumerate(pieces):
        kind = FragmentKind.FIRST if i == 0 else FragmentKind.LAST if i == len(pieces) - 1 else FragmentKind.MIDDLE
        out.append((Fragment(i, kind), piece))
    return out


def fragment_ack(frame: Frame) -> bytes:
    """The acknowledgement a receiver sends for a fragment: same addresses, direction
    reversed, SPLIT with kind ACK and the fragment's number, no APDU bytes."""
    if frame.fragment is None:
        raise ValueError("only a SPLIT frame is acknowledged")
    control = (frame.control ^ DIR_SERVER) & ~(PRM | SC) & 0xFF
    if not frame.from_server:
        control |= PRM
    return encode_frame(control, frame.server, frame.client, b"",
                        fragment=Fragment(frame.fragment.number, FragmentKind.ACK))


@dataclass(slots=True)
class Reassembly:
    """Joins the fragments of one split APDU (link layer, §2).

    Feed every SPLIT frame to :meth:`add`; it returns the whole APDU when the LAST piece
    arrives, else None. A piece out of order (wrong number, a FIRST in the middle, a piece
    before any FIRST) raises :class:`FrameError`; the receiver should drop the exchange.
    """

    pieces: list[bytes] = field(default_factory=list)
    started: bool = False
    max_bytes: int = 1 << 16

    def add(self, frame: Frame) -> bytes | None:
        """Add one fragment; the APDU when complete."""
        frag = frame.fragment
        if frag is None:
            raise FrameError("a frame without a fragment header was fed to the reassembly")
        if frag.kind == FragmentKind.ACK:
            raise FrameError("a fragment acknowledgement carries no data to reassemble")
        if frag.kind == FragmentKind.FIRST:
            self.pieces, self.started = [], True
        elif not self.started:
            raise FrameError(f"fragment {frag.number} arrived before the first fragment")
        if frag.number != len(self.pieces):
            self.started = False
            raise FrameError(f"fragment {frag.number} arrived but {len(self.pieces)} was expected")
        self.pieces.append(frame.apdu)
        if sum(len(p) for p in self.pieces) > self.max_bytes:
            self.started = False
            raise FrameError(f"a split APDU grew beyond {self.max_bytes} bytes")
        if frag.kind == FragmentKind.LAST:
            self.started = False
            whole, self.pieces = b"".join(self.pieces), []
            return whole
        return None
