"""The byte pipe every protocol rides: one request out, the bytes of its reply back.

A protocol brings only its framing, as a :class:`ReplyMatcher` made for each request: it
looks at the bytes received so far and says where the reply is (:class:`Cut`). The pipe
does the rest, the same way for every protocol and channel (serial RS-485 port or TCP
stream, see :mod:`drivers.transport.serial` and :mod:`drivers.transport.tcp`):

* **timing** (:class:`LineTiming`): the line is kept silent for ``silence_s`` before every
  frame, counted from the last byte received and from the end of our own request on the
  wire (``char_s`` per byte); after a request that gets no reply (a broadcast) the next
  one waits ``turnaround_s``. The wait is a deadline met with a timerfd
  (:class:`~drivers.transport.precise.PreciseTimer`), not a sleep that rounds up to whole
  milliseconds;
* **the reply window**: ``timeout`` for the first byte (counted from the end of the
  request on the wire), then ``reply_s`` more once something has arrived (the time a long
  reply takes on a slow line);
* **matching**: bytes the matcher calls ``skip`` (noise, our own echo, a reply for another
  unit or address, a late reply for an earlier request) are dropped and counted, and the
  wait goes on — such a frame is never returned as this request's reply. The first one on
  a pipe is logged, later ones only counted (:attr:`ExchangePipe.stats`). When the window
  closes the matcher turns what it saw into the error (:meth:`ReplyMatcher.expired`);
* **one drain rule**: after a timeout, a garbled reply, a cancelled exchange, bytes beyond
  the reply, or bytes nobody asked for, the pipe is *dirty*; before its next request it
  waits until the line has been quiet for ``drain_quiet_s`` (at most 1 s) and drops
  everything received. A partial or late reply therefore never prefixes the next one;
* **errors** come from :mod:`gateway.errors` only: a channel failure is a TransportError
  and closes the pipe (the next exchange reopens); CancelledError is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol

from drivers.transport.precise import PreciseTimer
from gateway.errors import FrameError, ReadTimeout, TransportError

log = logging.getLogger("amr.transport")

MAX_BUFFER: Final = 4096
DRAIN_LIMIT_S: Final = 1.0
_SCAN_PASSES: Final = 256          # skips handled per received chunk (bounded)

CutStatus = Literal["reply", "skip", "more", "garbage"]


class Cut(NamedTuple):
    """A matcher's verdict on the receive buffer.

    * ``reply``: ``buf[start:end]`` is the reply to this request (bytes before ``start``
      are noise; bytes after ``end`` are stale and drained before the next request);
    * ``skip``: drop ``buf[:end]`` (noise, an echo, a frame for another unit or request)
      and look again; ``why`` says what it was (logged once per pipe);
    * ``more``: a valid beginning is arriving, wait for more bytes;
    * ``garbage``: nothing here can become the reply; once the line stays quiet for the
      silence time the exchange fails with :meth:`ReplyMatcher.expired`.
    """

    status: CutStatus
    start: int = 0
    end: int = 0
    why: str = ""


MORE: Final = Cut("more")
GARBAGE: Final = Cut("garbage")


class ReplyMatcher(Protocol):
    """A protocol's framing for one request: where its reply is, and what silence means."""

    def __call__(self, buf: bytearray) -> Cut:
        """Look at the bytes received so far (never modify ``buf``)."""
        ...

    def expired(self, pending: bytes, waited: float) -> Exception:
        """The error when no reply came within ``waited`` s; ``pending`` is what is left.

        A ReadTimeout when nothing (or an incomplete reply) came, a FrameError when only
        noise or corrupted frames did, a WrongAddressError when only foreign replies did.
        """
        ...


class BytePipe(Protocol):
    """What a protocol asks of a transport: open, close, exchange, send."""

    @property
    def describe(self) -> str:
        """The endpoint for messages (``/dev/ttyS1 9600 8E1``, ``10.0.0.5:502``)."""
        ...

    async def open(self) -> None:
        """Open the port or connect; safe when already open."""
        ...

    async def close(self) -> None:
        """Close; safe to repeat and after a failed open."""
        ...

    async def exchange(self, request: bytes, match: ReplyMatcher, timeout: float, *,
                       reply_s: float = 0.0) -> bytes:
        """Send ``request`` and return the bytes of its reply (see the module doc)."""
        ...

    async def send(self, request: bytes) -> None:
        """Send a request that gets no reply (a broadcast), keeping the line's timing."""
        ...


Feed = Callable[[bytes, float], None]
Lost = Callable[[Exception], None]


class Channel(Protocol):
    """A byte stream under an :class:`ExchangePipe`: a serial port or a TCP socket."""

    @property
    def describe(self) -> str:
        """The endpoint for messages."""
        ...

    async def open(self, feed: Feed, lost: Lost) -> None:
        """Open; then hand every received chunk to ``feed(data, monotonic arrival time)``
        and a failure of the stream to ``lost(TransportError)``."""
        ...

    def write(self, data: bytes) -> None:
        """Send a whole frame (raises TransportError)."""
        ...

    def close(self) -> None:
        """Close; safe to repeat."""
        ...


@dataclass(frozen=True, slots=True)
class LineTiming:
    """The timing a pipe keeps on its line (all in seconds).

    ``char_s``: one character on the wire (11 bits / baud at 8E1; 0 over TCP).
    ``silence_s``: quiet kept before every frame (Modbus RTU t3.5; 0 over TCP or when
    frames carry their own length, DL/T 645).
    ``turnaround_s``: after a request that gets no reply, before the next one.
    ``drain_quiet_s``: how long the line must be quiet before stale bytes are dropped.
    """

    char_s: float = 0.0
    silence_s: float = 0.0
    turnaround_s: float = 0.0
    drain_quiet_s: float = 0.002


class ExchangePipe:
    """One request at a time over a :class:`Channel` (see the module doc)."""

    def __init__(self, channel: Channel, timing: LineTiming) -> None:
        self.channel = channel
        self.timing = timing
        self._open = False
        self._timer: PreciseTimer | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._match: ReplyMatcher | None = None
        self._quiet_at = 0.0        # monotonic time from which the line counts as silent
        self._last_rx = 0.0         # arrival of the last received chunk
        self._dirty = False         # stale bytes may be on the line: drain first
        self._heard = False         # this exchange received a byte
        self._extend = 0.0          # reply_s still to grant once a byte arrived
        self._waited = 0.0
        self._garbage_handle: asyncio.TimerHandle | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._skip_logged = False
        self._turn = asyncio.Lock()   # one request on the line at a time, whoever calls
        #: counters for diagnostics and the benchmark
        self.stats = {"requests": 0, "timeouts": 0, "frame_errors": 0, "skipped_frames": 0,
                      "skipped_bytes": 0, "late_bytes": 0, "drains": 0}

    @property
    def describe(self) -> str:
        """The channel's endpoint."""
        return self.channel.describe

    @property
    def is_open(self) -> bool:
        """True while the channel is open and has not failed."""
        return self._open

    async def open(self) -> None:
        """Open the channel; safe when already open."""
        if self._open:
            return
        await self.channel.open(self._feed, self._lost)
        if self._timer is None:
            self._timer = PreciseTimer()
        self._open = True
        self._buf.clear()
        self._dirty = False
        self._quiet_at = time.monotonic() + self.timing.silence_s

    async def close(self) -> None:
        """Close the channel; safe to repeat."""
        self._open = False
        self.channel.close()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._fail(TransportError(f"{self.describe} was closed"))

    # --- receive path (event-loop callbacks) --------------------------------------------------

    def _lost(self, exc: Exception) -> None:
        self._open = False
        self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    def _feed(self, data: bytes, t: float) -> None:
        self._last_rx = t
        self._quiet_at = t + self.timing.silence_s
        w = self._waiter
        match = self._match
        if w is None or w.done() or match is None:
            self._dirty = True        # unsolicited or late bytes: drained before the next request
            self.stats["late_bytes"] += len(data)
            return
        buf = self._buf
        buf += data
        if len(buf) > MAX_BUFFER:
            self.stats["skipped_bytes"] += len(buf) - MAX_BUFFER
            del buf[:-MAX_BUFFER]
        self._heard = True
        for _ in range(_SCAN_PASSES):
            cut = match(buf)
            status = cut[0]
            if status == "reply":
                start, end = cut[1], cut[2]
                if start or end != len(buf):
                    self.stats["skipped_bytes"] += len(buf) - (end - start)
                    self._dirty = True
                w.set_result(bytes(buf[start:end]))
                return
            if status == "skip" and cut[2] > 0:
                self._skipped(cut)
                del buf[:cut[2]]
                if buf:
                    continue
                status = "more"             # nothing left to judge: wait for the reply
            break
        if self._garbage_handle is not None:
            self._garbage_handle.cancel()
            self._garbage_handle = None
        if status == "garbage":
            loop = asyncio.get_running_loop()
            self._garbage_handle = loop.call_later(self.timing.silence_s + 0.002, self._garbled)

    def _skipped(self, cut: Cut) -> None:
        if cut.why:
            self.stats["skipped_frames"] += 1
            if not self._skip_logged:
                self._skip_logged = True
                log.warning("%s: dropped a frame that is not the reply asked for (%s); further "
                            "ones are only counted", self.describe, cut.why)
        else:
            self.stats["skipped_bytes"] += cut.end

    def _garbled(self) -> None:
        self._garbage_handle = None
        self._expire()

    def _deadline(self) -> None:
        self._deadline_handle = None
        if self._heard and self._extend > 0:
            extend, self._extend = self._extend, 0.0
            self._waited += extend
            self._deadline_handle = asyncio.get_running_loop().call_later(extend, self._deadline)
            return
        self._expire()

    def _expire(self) -> None:
        w = self._waiter
        match = self._match
        if w is None or w.done() or match is None:
            return
        self._dirty = True
        w.set_exception(match.expired(bytes(self._buf), self._waited))

    # --- transmit path ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Wait until the line has been quiet for ``drain_quiet_s``, then drop what arrived."""
        timer = self._timer
        assert timer is not None
        self.stats["drains"] += 1
        quiet = max(self.timing.drain_quiet_s, self.timing.silence_s)
        limit = time.monotonic() + DRAIN_LIMIT_S
        for _ in range(1000):
            target = self._last_rx + quiet
            now = time.monotonic()
            if now >= target or now >= limit:
                break
            await timer.wait_until(min(target, limit))
        self._buf.clear()
        self._dirty = False

    async def _ready(self) -> None:
        """Open if needed, drain if dirty, and keep the silence before a frame."""
        if not self._open:
            await self.open()
        if self._dirty:
            await self._drain()
        if self._quiet_at > time.monotonic():
            timer = self._timer
            assert timer is not None
            await timer.wait_until(self._quiet_at)

    def _write(self, request: bytes) -> float:
        """Write ``request``; return its time on the wire."""
        try:
            self.channel.write(request)
        except TransportError:
            self._open = False
            self.channel.close()
            raise
        tx_s = len(request) * self.timing.char_s
        self._quiet_at = time.monotonic() + tx_s + self.timing.silence_s
        return tx_s

    async def send(self, request: bytes) -> None:
        """Send a request that gets no reply; the next one waits ``turnaround_s`` more."""
        async with self._turn:
            await self._ready()
            tx_s = self._write(request)
            self._quiet_at = time.monotonic() + tx_s + max(self.timing.silence_s, self.timing.turnaround_s)

    async def exchange(self, request: bytes, match: ReplyMatcher, timeout: float, *,
                       reply_s: float = 0.0) -> bytes:
        """Send ``request``; return the bytes ``match`` calls its reply (see the module doc).

        Concurrent callers are served one after the other.
        """
        async with self._turn:
            return await self._exchange(request, match, timeout, reply_s)

    async def _exchange(self, request: bytes, match: ReplyMatcher, timeout: float, reply_s: float) -> bytes:
        await self._ready()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes] = loop.create_future()
        self._buf.clear()
        self._waiter = waiter
        self._match = match
        self._heard = False
        self._extend = reply_s
        self.stats["requests"] += 1
        try:
            tx_s = self._write(request)
            self._waited = timeout
            self._deadline_handle = loop.call_later(tx_s + timeout, self._deadline)
            return await waiter
        except ReadTimeout:
            self.stats["timeouts"] += 1
            raise
        except TransportError:
            await self.close()
            raise
        except FrameError:
            self.stats["frame_errors"] += 1
            raise
        except asyncio.CancelledError:
            self._dirty = True
            raise
        finally:
            self._waiter = None
            self._match = None
            if self._deadline_handle is not None:
                self._deadline_handle.cancel()
                self._deadline_handle = None
            if self._garbage_handle is not None:
                self._garbage_handle.cancel()
                self._garbage_handle = None
