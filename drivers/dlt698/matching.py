"""Where the reply to one DL/T 698.45 request is in the received bytes (a pipe's matcher).

698.45 frames carry their own length and two CRCs, so a reply is complete when
:func:`~drivers.dlt698.frame.scan` finds a frame whose HCS and FCS are right. Of the frames
found, only the one that answers *this* request is the reply: a server-to-client user-data
frame from the meter asked (any single address when the request went to a wildcard), with
our client address, whose APDU is a GET response (or ERROR-Response) echoing the request's
PIID. Everything else is dropped and remembered, never taken as the reply:

* FE wake-up bytes and noise between frames;
* our own request echoed by an RS-485 adapter that hears itself (DIR = 0);
* a reply from another meter, or with another PIID (a late reply to an earlier request) —
  the wait goes on for the right one;
* frames with a bad HCS, FCS or end byte.

When the window closes without the reply, :meth:`Dlt698Matcher.expired` says what was seen:
only foreign replies → WrongAddressError (or the FrameError of a late reply); corrupted
frames or noise → FrameError; nothing or an incomplete frame → ReadTimeout.
"""

from __future__ import annotations

from drivers.dlt698.apdu import ERROR_RESPONSE, GET_RESPONSE, SECURITY_RESPONSE
from drivers.dlt698.frame import FUNC_USER_DATA, AddressType, Frame, ServerAddress, scan
from drivers.framing import PREAMBLE_BYTE
from drivers.transport.pipe import MORE, Cut
from gateway.errors import AmrError, FrameError, ReadTimeout, WrongAddressError


class Dlt698Matcher:
    """The reply to one request in a receive buffer (see module doc); one per exchange."""

    def __init__(self, server: ServerAddress, client: int, piid: int, what: str, where: str) -> None:
        self.server = server
        self.client = client
        self.piid = piid & 0x3F
        self.what = what
        self.where = where
        self.frame: Frame | None = None
        self.rejected: list[str] = []
        self.skipped: list[AmrError] = []
        self.noise = 0

    def check(self, frame: Frame) -> None:
        """Raise unless ``frame`` answers this request (WrongAddressError or FrameError)."""
        asked = self.server.text
        if frame.function != FUNC_USER_DATA or frame.split:
            raise FrameError(f"meter {frame.server.text} sent a link frame (C={frame.control:02X}) "
                             f"instead of the reply to {self.what}")
        wildcard = self.server.kind == AddressType.WILDCARD
        if (wildcard and not self.server.reaches(frame.server)) or (not wildcard and frame.server != self.server):
            raise WrongAddressError(
                f"a reply came from meter {frame.server.text} but meter {asked} was asked: a late "
                "reply, or two meters share an address on this bus")
        if frame.client != self.client:
            raise FrameError(f"meter {frame.server.text} answered client {frame.client:02X}, not "
                             f"{self.client:02X}: another master is on the line")
        apdu = frame.apdu
        if not apdu or apdu[0] not in (GET_RESPONSE, ERROR_RESPONSE, SECURITY_RESPONSE):
            raise FrameError(f"meter {frame.server.text} answered service "
                             f"{apdu[0] if apdu else 0:02X} to {self.what}")
        piid_at = {GET_RESPONSE: 2, ERROR_RESPONSE: 1}.get(apdu[0])
        if piid_at is not None and len(apdu) > piid_at and apdu[piid_at] & 0x3F != self.piid:
            raise FrameError(f"meter {frame.server.text} answered request number "
                             f"{apdu[piid_at] & 0x3F} but {self.piid} was sent: a late reply")

    def __call__(self, buf: bytearray) -> Cut:
        """Skip what is not the reply; ``reply`` once its frame is whole."""
        found = scan(buf)
        frame = found.frame
        start = found.used - (len(frame.encode()) if frame is not None else 0)
        self.noise += sum(1 for b in buf[:start] if b != PREAMBLE_BYTE)
        self.rejected += [r for r in found.rejected if r]
        if frame is None:
            return Cut("skip", 0, found.used) if found.used else MORE
        if not frame.from_server:
            return Cut("skip", 0, found.used)          # our own request, echoed by the adapter
        try:
            self.check(frame)
        except (WrongAddressError, FrameError) as exc:
            self.skipped.append(exc)                   # a late or foreign reply: keep waiting
            return Cut("skip", 0, found.used, str(exc))
        self.frame = frame
        return Cut("reply", start, found.used)

    def expired(self, pending: bytes, waited: float) -> Exception:
        """What the silence means, given what was dropped while waiting."""
        wrong = [e for e in self.skipped if isinstance(e, WrongAddressError)]
        if wrong:
            return wrong[-1]
        if self.skipped:
            return self.skipped[-1]
        addr = self.server.text
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
            "check the meter address, wiring, baud rate (698.45 meters: usually 9600 8E1) and parity")
