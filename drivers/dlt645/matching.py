"""Where the reply to one DL/T 645 request is in the received bytes (a pipe's matcher).

DL/T 645 frames carry their own length (``68 A0..A5 68 C L DATA CS 16``), so the reply is
complete when :func:`~drivers.dlt645.codec.scan` finds a frame with a valid checksum. Of
the frames found, only the one that answers *this* request is the reply
(:func:`~drivers.dlt645.codec.check_reply`: a meter-to-master frame of the request's
function, from the address asked, echoing the DI and follow-up number). Everything else
is dropped and remembered, never taken as the reply:

* FE preambles and noise between frames;
* our own request echoed by an RS-485 adapter that hears itself;
* a reply from another address, or for another DI or function (a late reply to an earlier
  request) — the wait goes on for the right one;
* frames with a bad checksum or end byte.

When the window closes without the reply, :meth:`Dlt645Matcher.expired` says what was seen:
only foreign replies → WrongAddressError (or the FrameError of a late reply); corrupted
frames or noise → FrameError; nothing or an incomplete frame → ReadTimeout. An abnormal
reply (the meter refused) *is* the reply: it is kept as :attr:`Dlt645Matcher.refusal`.
"""

from __future__ import annotations

from drivers.dlt645.codec import Frame, Reply, Request, check_reply, scan
from drivers.framedreply import FramedReplyMatcher
from drivers.framing import Scan
from gateway.errors import DeviceException


class Dlt645Matcher(FramedReplyMatcher[Frame]):
    """The reply to ``request`` in a receive buffer (see module doc); one per exchange.

    The scanning, skipping and the errors of silence are
    :class:`~drivers.framedreply.FramedReplyMatcher`'s, shared with DL/T 698.45.
    """

    def __init__(self, request: Request, what: str, where: str) -> None:
        super().__init__(what, where)
        self.request = request
        self.reply: Reply | None = None
        self.refusal: DeviceException | None = None

    @property
    def asked(self) -> str:
        """The address of the meter asked, as written."""
        return self.request.addr

    def scan(self, buf: bytearray) -> Scan[Frame]:
        """The first valid DL/T 645 frame in ``buf``."""
        return scan(buf)

    def from_meter(self, frame: Frame) -> bool:
        """D7 of the control byte: a meter-to-master frame."""
        return frame.is_reply

    def accept(self, frame: Frame) -> None:
        """Check the reply against the request; an abnormal reply is kept as ``refusal``."""
        try:
            self.reply = check_reply(self.request, frame)
        except DeviceException as exc:
            self.refusal = exc
