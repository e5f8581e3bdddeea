"""TCP byte pipes: a plain stream (RTU frames or DL/T 645 frames through a serial server)
and a tagged stream (Modbus TCP: replies matched by transaction id, several in flight).

* :func:`tcp_pipe` — an :class:`~drivers.transport.pipe.ExchangePipe` over a
  :class:`StreamChannel`: one request at a time, the same matching, timing and drain rule
  as a serial line (the serial server times its own line, so no silence by default). This
  is the RTU-over-TCP pipe, and DL/T 645's TCP pipe.
* :class:`TaggedTcpPipe` — one ``asyncio.Protocol`` per connection for protocols whose
  frames carry a transaction tag and their own length. The protocol's
  :class:`TaggedFraming` cuts the stream into frames and reads each one's tag; a frame is
  handed to the exchange waiting for that tag and to no other; a frame for a tag nobody
  waits for (a late reply) is dropped and counted. Up to ``concurrency`` exchanges are in
  flight (pipelining through a Modbus gateway). Timeouts share one loop timer per 10 ms
  across every connection (:mod:`drivers.transport.buckets`). Beside the awaitable
  :meth:`~TaggedTcpPipe.exchange`, :meth:`~TaggedTcpPipe.send_now` is its callback form, for
  a reader that sends a plan's requests back to back from the connection's own callbacks.

The drain rule on a tagged stream: when an exchange times out while an incomplete frame
sits in the receive buffer and no other exchange is in flight, the bytes are dropped and
the next exchange first waits until the stream has been quiet for ``drain_quiet_s``
(dropping what arrives meanwhile: the rest of a late reply). With others in flight the
bytes may be the start of their reply and stay; if they were not, the framing fails on
the next header and the connection is reset (everything in flight fails with the
FrameError, the next exchange reconnects). Bytes of a frame that nobody waits for make
the stream dirty in the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, cast

from drivers.transport.buckets import TimeoutBuckets, timeout_buckets
from drivers.transport.pipe import ExchangePipe, Feed, LineTiming, Lost
from drivers.transport.precise import PreciseTimer
from gateway.errors import FrameError, TransportError

log = logging.getLogger("amr.transport")

TCP_DRAIN_QUIET_S: Final = 0.02
_DRAIN_LIMIT_S: Final = 1.0


async def tcp_connect(host: str, port: int, factory: Callable[[], asyncio.Protocol],
                      timeout: float) -> asyncio.BaseTransport:
    """Connect with a timeout, translating failures into TransportError sentences."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(factory, host, port)
    except TimeoutError as exc:
        raise TransportError(f"connecting to {host}:{port} timed out after {timeout:g} s; "
                             "check the host, port and network") from exc
    except ConnectionRefusedError as exc:
        raise TransportError(f"nothing listens on {host}:{port} (connection refused); "
                             "check the port and that the device is up") from exc
    except OSError as exc:
        raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}; "
                             "check the address and port") from exc
    return transport


class _StreamProtocol(asyncio.Protocol):
    """Hands a TCP stream's bytes to a pipe."""

    def __init__(self, feed: Feed, lost: Lost, where: str) -> None:
        self.feed = feed
        self.lost = lost
        self.where = where
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection's transport (uvloop's is not an asyncio.Transport subclass)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.feed(data, time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost(TransportError(f"connection to {self.where} closed; it will be reopened"))


class StreamChannel:
    """A TCP stream as a :class:`~drivers.transport.pipe.Channel` (to a serial server)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._proto: _StreamProtocol | None = None

    @property
    def describe(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    async def open(self, feed: Feed, lost: Lost) -> None:
        """Connect and deliver received bytes to ``feed``."""
        proto = _StreamProtocol(feed, lost, self.describe)
        await tcp_connect(self.host, self.port, lambda: proto, self.connect_timeout)
        self._proto = proto

    def write(self, data: bytes) -> None:
        """Send bytes."""
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            raise TransportError(f"connection to {self.describe} is closed; it will be reopened")
        proto.transport.write(data)

    def close(self) -> None:
        """Close the socket; safe to repeat."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.lost = lambda exc: None
            proto.transport.close()


def tcp_pipe(host: str, port: int, connect_timeout: float = 5.0, *, silence_s: float = 0.0,
             char_s: float = 0.0) -> ExchangePipe:
    """A one-at-a-time pipe over TCP (RTU over TCP, DL/T 645 through a serial server).

    ``char_s`` is the character time of the serial line behind the server, when the
    request's time on that line should count in the reply window (0: not counted).
    """
    timing = LineTiming(char_s=char_s, silence_s=silence_s, drain_quiet_s=max(silence_s, TCP_DRAIN_QUIET_S))
    return ExchangePipe(StreamChannel(host, port, connect_timeout), timing)


# --- tagged streams (Modbus TCP) ---------------------------------------------------------------


class TaggedFraming(Protocol):
    """How a protocol cuts its TCP stream into frames and reads each frame's tag."""

    def frame_at(self, buf: bytearray, pos: int) -> tuple[int, int] | None:
        """``(tag, end)`` of the frame starting at ``pos``; None while it is incomplete.

        Raises FrameError when the bytes at ``pos`` cannot start a frame (the stream has
        lost its framing; the connection is reset).
        """
        ...


class TaggedMatcher(Protocol):
    """A protocol's check of the frame that carries its request's tag."""

    def check(self, frame: bytes) -> bytes:
        """The payload, or raise (FrameError, WrongAddressError, DeviceException, ReadTimeout)."""
        ...

    def expired(self, pending: bytes, waited: float) -> Exception:
        """The error when no frame with the tag came within ``waited`` s."""
        ...


#: what a callback exchange (:meth:`TaggedTcpPipe.send_now`) hands its caller: the checked
#: payload of the reply, or the error the exchange ended with
ReplyCallback = Callable[["bytes | Exception"], None]


def _ignore(outcome: bytes | Exception) -> None:
    """The callback of a waiter that has had its outcome."""


class _CallbackWaiter:
    """The pending entry of a :meth:`TaggedTcpPipe.send_now` exchange.

    It answers to what the pipe asks of an exchange's future (``done``, ``set_result``,
    ``set_exception``), so replies, timeouts and failures reach both kinds of exchange by one
    path; its outcome is handed to the callback only once the pipe has settled its state
    (:meth:`TaggedTcpPipe._settle`), so the callback may send the next request at once.
    """

    __slots__ = ("_done", "_pipe", "callback", "outcome")

    def __init__(self, pipe: TaggedTcpPipe, callback: ReplyCallback) -> None:
        self._pipe = pipe
        self._done = False
        self.callback = callback
        self.outcome: bytes | Exception = b""

    def done(self) -> bool:
        """True once the exchange has its outcome."""
        return self._done

    def set_result(self, payload: bytes) -> None:
        """The reply's checked payload."""
        self._done = True
        self.outcome = payload
        self._pipe._settled.append(self)

    def set_exception(self, exc: Exception) -> None:
        """The error the exchange ended with."""
        self._done = True
        self.outcome = exc
        self._pipe._settled.append(self)


_Pending = tuple["asyncio.Future[bytes] | _CallbackWaiter", TaggedMatcher]


class TaggedTcpPipe(asyncio.Protocol):
    """Tagged exchanges on one TCP connection, up to ``concurrency`` in flight (module doc)."""

    def __init__(self, host: str, port: int, framing: TaggedFraming, connect_timeout: float = 5.0,
                 concurrency: int = 1, drain_quiet_s: float = TCP_DRAIN_QUIET_S) -> None:
        self.host = host
        self.port = port
        self.framing = framing
        self.connect_timeout = connect_timeout
        self.drain_quiet_s = drain_quiet_s
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._pending: dict[int, _Pending] = {}
        self._sem = asyncio.Semaphore(max(1, concurrency)) if concurrency > 1 else None
        self._connecting: asyncio.Lock | None = None
        self._timeouts: TimeoutBuckets | None = None
        #: the loop the connection runs on, kept at connect: Python 3.11's
        #: ``asyncio.get_running_loop()`` makes a ``getpid`` system call each time, and an
        #: exchange runs thousands of times a second
        self._loop: asyncio.AbstractEventLoop | None = None
        #: callback exchanges whose outcome is known, handed over by :meth:`_settle`
        self._settled: list[_CallbackWaiter] = []
        self._dirty = False
        self._last_rx = 0.0
        self._late_logged = False
        #: counters for diagnostics and the benchmarks
        self.stats = {"requests": 0, "timeouts": 0, "late_replies": 0, "drains": 0, "resets": 0}

    @property
    def describe(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (called by asyncio)."""
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._buf.clear()
        self._dirty = False

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every pending exchange; the next one reconnects (called by asyncio)."""
        self._transport = None
        self._fail_all(TransportError(f"connection to {self.describe} closed; it will be reopened"))
        if self._settled:
            self._settle()

    def data_received(self, data: bytes) -> None:
        """Cut the stream into frames and hand each to its exchange (called by asyncio)."""
        self._last_rx = time.monotonic()
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        frame_at = self.framing.frame_at
        for _ in range(n):                       # bounded: each pass consumes a frame
            try:
                found = frame_at(buf, pos)
            except FrameError as exc:
                self._reset(exc)
                return
            if found is None:
                break
            tag, end = found
            self._dispatch(tag, bytes(buf[pos:end]))
            pos = end
        if pos:
            del buf[:pos]
        if buf and not self._pending:
            self._dirty = True                   # the start of a frame nobody waits for
        if self._settled:
            self._settle()

    # internals -----------------------------------------------------------------------------------
    def _reset(self, exc: Exception) -> None:
        """The stream cannot be framed any more: fail everything, drop the connection."""
        self.stats["resets"] += 1
        self._fail_all(exc)
        if self._transport is not None:
            self._transport.abort()
        self._transport = None
        self._buf.clear()
        self._dirty = False
        if self._settled:
            self._settle()

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _settle(self) -> None:
        """Hand callback exchanges their outcome, now that the pipe's state is consistent."""
        settled, self._settled = self._settled, []
        for waiter in settled:
            # the waiter stays referenced by its timeout until that fires: it lets go of the
            # callback (and whatever the caller keeps behind it) and the outcome now
            callback, outcome = waiter.callback, waiter.outcome
            waiter.callback, waiter.outcome = _ignore, b""
            try:
                callback(outcome)
            except Exception:                    # never into asyncio's protocol callbacks
                log.exception("%s: a reply callback failed", self.describe)

    def _dispatch(self, tag: int, frame: bytes) -> None:
        entry = self._pending.pop(tag, None)
        if entry is None:
            self.stats["late_replies"] += 1
            if not self._late_logged:
                self._late_logged = True
                log.warning("%s: dropped a reply with transaction id %d that no request is "
                            "waiting for (a late reply); further ones are only counted",
                            self.describe, tag)
            return
        fut, matcher = entry
        if fut.done():
            return
        try:
            fut.set_result(matcher.check(frame))
        except Exception as exc:                 # the matcher's verdict goes to its caller
            fut.set_exception(exc)

    def _expire(self, tag: int, timeout: float, waiter: asyncio.Future[bytes] | _CallbackWaiter) -> None:
        entry = self._pending.get(tag)
        if entry is None or entry[0] is not waiter:   # answered (or the tag was reused since)
            return
        fut, matcher = entry
        del self._pending[tag]      # a late reply for this tag is counted and dropped
        if fut.done():
            return
        self.stats["timeouts"] += 1
        pending = bytes(self._buf)
        if pending and not self._pending:
            self._buf.clear()           # the start of a reply that never ended: drop it,
            self._dirty = True          # and drain its late rest before the next request
        fut.set_exception(matcher.expired(pending, timeout))
        if self._settled:
            self._settle()

    async def _drain(self) -> None:
        """Wait until the stream has been quiet for ``drain_quiet_s``, then drop what arrived."""
        self.stats["drains"] += 1
        limit = time.monotonic() + _DRAIN_LIMIT_S
        timer = PreciseTimer()
        try:
            for _ in range(1000):
                target = self._last_rx + self.drain_quiet_s
                now = time.monotonic()
                if now >= target or now >= limit:
                    break
                await timer.wait_until(min(target, limit))
        finally:
            timer.close()
        if not self._pending:
            self._buf.clear()
        self._dirty = False

    async def open(self) -> None:
        """Connect; safe when already connected."""
        if self._transport is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._transport is None:
                await tcp_connect(self.host, self.port, lambda: self, self.connect_timeout)

    async def close(self) -> None:
        """Close the connection; safe to repeat."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        self._fail_all(TransportError(f"connection to {self.describe} was closed"))
        if self._settled:
            self._settle()

    def exchange(self, tag: int, request: bytes, matcher: TaggedMatcher,
                 timeout: float) -> Coroutine[Any, Any, bytes]:
        """Send ``request`` (which carries ``tag``); await the checked payload of its reply.

        A plain function returning a coroutine (one frame less per exchange at thousands
        of meters); with ``concurrency`` > 1 the exchange first waits for a slot.
        """
        if self._sem is not None:
            return self._exchange_in_slot(tag, request, matcher, timeout)
        return self._exchange(tag, request, matcher, timeout)

    def send_now(self, tag: int, request: bytes, matcher: TaggedMatcher, timeout: float,
                 on_reply: ReplyCallback) -> bool:
        """Send ``request`` at once and hand its outcome to ``on_reply``; False (nothing sent)
        unless the connection is up, clean and idle.

        The callback form of :meth:`exchange`, for a reader that runs its requests back to back
        from the connection's own callbacks: no task wakes up between a reply and the next
        request. ``on_reply`` gets the checked payload or the error (the same ones
        :meth:`exchange` raises), once, from the protocol's callbacks or a timer, after the
        pipe has settled its state, so it may call ``send_now`` again. Whatever needs waiting
        (connecting, draining a dirty stream, a slot of a pipelined connection) is left to
        :meth:`exchange`: then this returns False.
        """
        transport = self._transport
        loop = self._loop
        if transport is None or loop is None or self._dirty or self._pending or self._sem is not None:
            return False
        self._send(transport, loop, tag, request, matcher, timeout, _CallbackWaiter(self, on_reply))
        return True

    def _send(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, tag: int, request: bytes,
              matcher: TaggedMatcher, timeout: float, waiter: asyncio.Future[bytes] | _CallbackWaiter) -> None:
        """Put ``waiter`` in for ``tag``, write the request, start its timeout."""
        self._pending[tag] = (waiter, matcher)
        self.stats["requests"] += 1
        transport.write(request)
        buckets = self._timeouts
        if buckets is None:
            buckets = self._timeouts = timeout_buckets(loop)
        buckets.call_later(timeout, self._expire, tag, timeout, waiter)

    async def _exchange_in_slot(self, tag: int, request: bytes, matcher: TaggedMatcher, timeout: float) -> bytes:
        assert self._sem is not None
        async with self._sem:
            return await self._exchange(tag, request, matcher, timeout)

    async def _exchange(self, tag: int, request: bytes, matcher: TaggedMatcher, timeout: float) -> bytes:
        if self._dirty and not self._pending:
            await self._drain()
        transport = self._transport
        if transport is None:
            await self.open()
            transport = self._transport
            if transport is None:
                raise TransportError(f"connection to {self.describe} closed at once; it will be reopened")
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._send(transport, loop, tag, request, matcher, timeout, fut)
        try:
            return await fut
        finally:
            entry = self._pending.get(tag)
            if entry is not None and entry[0] is fut:
                del self._pending[tag]
