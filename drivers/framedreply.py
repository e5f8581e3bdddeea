"""The reply matcher the DL/T 645 and DL/T 698.45 drivers share (one per exchange).

Both protocols send self-delimiting ``68 … 16`` frames (:mod:`drivers.framing`), so finding
*this* request's reply in the received bytes goes the same way: scan for the first valid
frame; drop FE preambles and noise before it (counting the noise), remember the damaged
frames the scanner rejected, skip our own request echoed by an RS-485 adapter, and skip
(but remember) a frame that answers someone else — a late reply or a foreign address —
so the wait goes on for the right one. When the window closes without the reply,
:meth:`FramedReplyMatcher.expired` turns what was seen into the error a user can act on:
only foreign replies → WrongAddressError (or the FrameError of a late reply); corrupted
frames or noise → FrameError; nothing or an incomplete frame → ReadTimeout.

A protocol supplies how to scan, whether a frame travels from a meter, and what makes a
frame this request's reply (:meth:`FramedReplyMatcher.accept`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from drivers.framing import PREAMBLE_BYTE, Scan
from drivers.transport.pipe import MORE, Cut
from gateway.errors import AmrError, FrameError, ReadTimeout, WrongAddressError

F = TypeVar("F")

#: The default advice of a plain timeout.
TIMEOUT_HINT = "check the meter address, wiring, baud rate and parity"


class FramedReplyMatcher(ABC, Generic[F]):
    """Where the reply to one request is in a receive buffer (see module doc).

    ``what`` names the request and ``where`` the line, for messages; ``timeout_hint`` is the
    advice a plain timeout ends with.
    """

    timeout_hint: str = TIMEOUT_HINT

    def __init__(self, what: str, where: str) -> None:
        self.what = what
        self.where = where
        self.rejected: list[str] = []
        self.skipped: list[AmrError] = []
        self.noise = 0

    @property
    @abstractmethod
    def asked(self) -> str:
        """The address of the meter asked, as written, for messages."""

    @abstractmethod
    def scan(self, buf: bytearray) -> Scan[F]:
        """The first valid frame in ``buf`` (the protocol's codec)."""

    @abstractmethod
    def from_meter(self, frame: F) -> bool:
        """True when ``frame`` travels from a meter to the master (not our own echo)."""

    @abstractmethod
    def accept(self, frame: F) -> None:
        """Take ``frame`` as the reply, or raise WrongAddressError/FrameError to skip it."""

    def __call__(self, buf: bytearray) -> Cut:
        """Skip what is not the reply; ``reply`` once its frame is whole."""
        found = self.scan(buf)
        frame = found.frame
        start = found.start
        self.noise += sum(1 for b in buf[:start] if b != PREAMBLE_BYTE)
        self.rejected += [r for r in found.rejected if r]
        if frame is None:
            return Cut("skip", 0, found.used) if found.used else MORE
        if not self.from_meter(frame):
            return Cut("skip", 0, found.used)          # our own request, echoed by the adapter
        try:
            self.accept(frame)
        except (WrongAddressError, FrameError) as exc:
            self.skipped.append(exc)                   # a late or foreign reply: keep waiting
            return Cut("skip", 0, found.used, str(exc))
        return Cut("reply", start, found.used)

    def expired(self, pending: bytes, waited: float) -> Exception:
        """What the silence means, given what was dropped while waiting."""
        wrong = [e for e in self.skipped if isinstance(e, WrongAddressError)]
        if wrong:
            return wrong[-1]
        if self.skipped:
            return self.skipped[-1]
        addr = self.asked
        if self.rejected:
            return FrameError(
                f"meter {addr} answered {self.what} but the reply was corrupted ({self.rejected[-1]}); "
                "check wiring, termination, baud rate and parity")
        if self.noise and not pending:
            return FrameError(
                f"{self.noise} bytes of noise but no valid reply from meter {addr} to {self.what}: several "
                "meters may have answered at once; otherwise check wiring, termination, baud rate and parity")
        partial = f" ({len(pending)} bytes of an incomplete reply arrived)" if pending else ""
        return ReadTimeout(
            f"meter {addr} did not answer {self.what} within {waited:.2f} s on {self.where}{partial}; "
            f"{self.timeout_hint}")
