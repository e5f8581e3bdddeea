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
from drivers.framedreply import FramedReplyMatcher
from drivers.framing import Scan
from gateway.errors import FrameError, WrongAddressError


class Dlt698Matcher(FramedReplyMatcher[Frame]):
    """The reply to one request in a receive buffer (see module doc); one per exchange.

    The scanning, skipping and the errors of silence are
    :class:`~drivers.framedreply.FramedReplyMatcher`'s, shared with DL/T 645.
    """

    timeout_hint = "check the meter address, wiring, baud rate (698.45 meters: usually 9600 8E1) and parity"

    def __init__(self, server: ServerAddress, client: int, piid: int, what: str, where: str) -> None:
        super().__init__(what, where)
        self.server = server
        self.client = client
        self.piid = piid & 0x3F
        self.frame: Frame | None = None

    @property
    def asked(self) -> str:
        """The address of the meter asked, as written."""
        return self.server.text

    def scan(self, buf: bytearray) -> Scan[Frame]:
        """The first valid DL/T 698.45 frame in ``buf``."""
        return scan(buf)

    def from_meter(self, frame: Frame) -> bool:
        """DIR of the control byte: a server-to-client frame."""
        return frame.from_server

    def accept(self, frame: Frame) -> None:
        """Check the frame answers this request (:meth:`check`) and keep it as the reply."""
        self.check(frame)
        self.frame = frame

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
