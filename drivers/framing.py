"""Streaming frame scanning shared by the DL/T 645 and DL/T 698.45 codecs.

Both protocols frame their messages between a ``68`` start byte and a ``16`` end byte, may
send ``FE`` wake-up bytes first, and may carry the user data shifted by +33h. A receiver
keeps a buffer, appends what the line delivered and asks the codec for the first valid
frame; the codec must skip garbage, reject damaged frames with a reason (so the driver can
report quality ``crc_error`` instead of a plain timeout) and wait when a frame is still
arriving. The resynchronisation rules are the same for both protocols, so they live here
once and each codec supplies only how to examine one candidate at a given offset
(``docs/protocols/dlt645-2007.md`` §2, ``docs/protocols/dlt698-45.md`` §2):

* no start byte at all: every byte is garbage (``used = len(buffer)``, no frame);
* a candidate that is not a frame: record its reason (an empty reason resynchronises
  silently) and look for the next start byte after it — a real frame may start inside;
* a candidate still arriving: wait (``used`` = the bytes before it), unless a complete valid
  frame follows it in the buffer; then the first candidate was noise or was cut short, and
  the later frame is taken.

The scanner never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

F = TypeVar("F")

#: The start byte of both protocols' frames.
START: Final = 0x68
#: The end byte of both protocols' frames.
END: Final = 0x16
#: The wake-up byte a sender may put in front of a frame.
PREAMBLE_BYTE: Final = 0xFE


def add33(data: bytes) -> bytes:
    """Shift every byte by +33h (mod 256), as both protocols send scrambled user data."""
    return bytes((b + 0x33) & 0xFF for b in data)


def sub33(data: bytes) -> bytes:
    """Undo :func:`add33`: every byte −33h (mod 256)."""
    return bytes((b - 0x33) & 0xFF for b in data)


@dataclass(frozen=True, slots=True)
class Candidate(Generic[F]):
    """What a codec found at one start byte: a frame, a reason it is none, or neither (wait).

    ``reason`` is set (possibly ``""`` for a silent resync) when the bytes there are known
    not to be a frame; ``end`` is one past the frame's end byte when ``frame`` is set.
    ``Candidate(None)`` means the candidate is still arriving: wait for more bytes.
    """

    frame: F | None
    reason: str | None = None
    end: int = 0


@dataclass(frozen=True, slots=True)
class Scan(Generic[F]):
    """What :func:`scan_buffer` found: bytes to drop, a frame (or None: need more), rejections.

    ``start`` is where the frame's start byte is (bytes before it are preamble, noise or
    rejected frames); without a frame it equals ``used``.
    """

    used: int
    frame: F | None
    rejected: tuple[str, ...] = ()
    start: int = 0


def scan_buffer(
    buffer: bytes | bytearray,
    examine: Callable[[bytes, int], Candidate[F]],
    *,
    skipped: str = "incomplete frame",
) -> Scan[F]:
    """Find the first valid frame in ``buffer`` with the codec's ``examine(buf, offset)``.

    ``skipped`` names what is reported when an incomplete candidate is passed over for a
    complete frame after it (``"<skipped> at offset N skipped"``).
    """
    buf = bytes(buffer)
    rejected: list[str] = []
    pos = 0
    while True:
        s = buf.find(START, pos)
        if s < 0:
            return Scan(len(buf), None, tuple(rejected), len(buf))
        cand = examine(buf, s)
        if cand.frame is not None:
            return Scan(cand.end, cand.frame, tuple(rejected), s)
        if cand.reason is not None:
            if cand.reason:
                rejected.append(cand.reason)
            pos = s + 1
            continue
        # Incomplete at s: wait for more, unless a complete valid frame follows (then the
        # candidate at s was cut short or was noise that looked like a header).
        t = buf.find(START, s + 1)
        while t >= 0:
            later = examine(buf, t)
            if later.frame is not None:
                rejected.append(f"{skipped} at offset {s} skipped")
                return Scan(later.end, later.frame, tuple(rejected), t)
            t = buf.find(START, t + 1)
        return Scan(s, None, tuple(rejected), s)
