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

from drivers.dlt645.codec import OVERHEAD, Reply, Request, check_reply, scan
from drivers.transport.pipe import MORE, Cut
from gateway.errors import AmrError, DeviceException, FrameError, ReadTimeout, WrongAddressError

_PREAMBLE_BYTE = 0xFE


class Dlt645Matcher:
    """The reply to ``request`` in a receive buffer (see module doc); one per exchange."""

    def __init__(self, request: Request, what: str, where: str) -> None:
        self.request = request
        self.what = what
        self.where = where
        self.reply: Reply | None = None
        self.refusal: DeviceException | None = None
        self.rejected: list[str] = []
        self.skipped: list[AmrError] = []
        self.noise = 0

    def __call__(self, buf: bytearray) -> Cut:
        """Skip what is not the reply; ``reply`` once its frame is whole."""
        found = scan(buf)
        frame = found.frame
        start = found.used - (OVERHEAD + len(frame.data) if frame is not None else 0)
        self.noise += sum(1 for b in buf[:start] if b != _PREAMBLE_BYTE)
        self.rejected += [r for r in found.rejected if r]
        if frame is None:
            return Cut("skip", 0, found.used) if found.used else MORE
        if not frame.is_reply:
            return Cut("skip", 0, found.used)          # our own request, echoed by the adapter
        try:
            self.reply = check_reply(self.request, frame)
        except DeviceException as exc:
            self.refusal = exc
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
        addr = self.request.addr
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
            "check the meter address, wiring, baud rate and parity")
