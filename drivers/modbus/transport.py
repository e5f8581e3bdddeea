"""Lean Modbus transaction layers: RTU over a serial port or a TCP stream, and Modbus TCP.

Why our own and not pymodbus's clients (pymodbus stays the reference engine in
:mod:`drivers.modbus.pymodbus_io`):

* pymodbus's async serial client sends the next request 0.6–0.7 ms after a reply, so it
  breaks the RS-485 inter-frame silence (t3.5) on nearly every request, and it costs
  ≈ 0.12 ms CPU per received byte. :class:`RtuLink` reads the port with
  ``loop.add_reader`` (one callback per chunk), knows the reply length from the request,
  completes on the exact byte, and starts the next request exactly t3.5 after the last
  reply byte *arrived* (a deadline waited with :class:`~drivers.modbus.precise.PreciseTimer`,
  not a plain sleep, which would oversleep by up to a millisecond).
* Modbus TCP for thousands of meters needs very little CPU per read: :class:`TcpLink`
  is one ``asyncio.Protocol`` per connection with MBAP transaction ids, several
  transactions in flight when the bus allows concurrency (pipelining to a gateway). Its
  timeouts share one timer per 10 ms across every connection (:class:`TimeoutBuckets`):
  a timer per transaction cost ≈ 9 % of the gateway's CPU at 1,000 meters, because the
  event loop's timer heap compares handles in Python.

Errors (from :mod:`gateway.errors`): no reply in time → ReadTimeout; bad CRC or noise →
FrameError, after which the line is resynchronised (wait for silence, drop the buffer) and
the port kept; a reply from another unit id → WrongAddressError; an exception reply →
DeviceException (0x0B "gateway target failed to respond" → ReadTimeout); a port or socket
failure → TransportError, and the next transaction reopens. CancelledError is never
swallowed: a cancelled transaction marks the line for resynchronisation and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import time
import weakref
from collections.abc import Callable
from typing import Protocol, cast

from drivers.modbus.frames import (
    EXCEPTION_ADVICE,
    EXCEPTION_NAMES,
    MBAP_LEN,
    RtuReply,
    mbap_frame,
    mbap_header,
    rtu_frame,
    scan_rtu_reply,
)
from drivers.modbus.plan import ReadRequest
from drivers.modbus.precise import PreciseTimer
from gateway.errors import (
    DeviceException,
    FrameError,
    ReadTimeout,
    TransportError,
    WrongAddressError,
)

_MAX_BUFFER = 1024
_RESYNC_LIMIT_S = 1.0


def device_exception(code: int, unit: int, where: str) -> Exception:
    """The error for an exception reply (0x0B from a gateway means the meter is silent)."""
    name = EXCEPTION_NAMES.get(code, "unknown exception")
    if code == 11:
        return ReadTimeout(f"unit {unit} behind {where} did not answer (the gateway reported "
                           "exception 0x0b); check the meter and its serial line")
    advice = EXCEPTION_ADVICE.get(code, "check the device's manual for this code")
    return DeviceException(code, name, f"unit {unit} on {where}: {advice}")


def no_answer(unit: int, where: str, timeout: float, *, serial: bool) -> ReadTimeout:
    """The timeout a unit that stays silent raises, saying what a site engineer checks first."""
    hint = ("check the unit id, the wiring (A/B), the baud rate and the parity" if serial
            else "check the unit id and that the device or Modbus gateway behind it is powered and wired")
    return ReadTimeout(f"unit {unit} on {where} did not answer within {timeout:g} s; {hint}")


class TimeoutBuckets:
    """Deadlines of many transactions, expired by one loop timer per ``tick`` seconds.

    A callback runs at the first bucket boundary at or after its deadline — never early,
    at most ``tick`` late — and is not cancelled: it must check that its transaction is
    still waiting (a completed one makes it a dictionary lookup).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.01) -> None:
        self._loop = loop
        self._tick = tick
        self._buckets: dict[int, list[tuple[Callable[..., None], tuple[object, ...]]]] = {}

    def call_later(self, delay: float, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` once ``delay`` seconds have passed (bucketed)."""
        key = math.ceil((self._loop.time() + delay) / self._tick)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            self._loop.call_at(key * self._tick, self._fire, key)
        bucket.append((callback, args))

    def _fire(self, key: int) -> None:
        for callback, args in self._buckets.pop(key, ()):
            callback(*args)


_BUCKETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TimeoutBuckets] = weakref.WeakKeyDictionary()


def timeout_buckets(loop: asyncio.AbstractEventLoop) -> TimeoutBuckets:
    """The loop's shared :class:`TimeoutBuckets` (created on first use)."""
    tb = _BUCKETS.get(loop)
    if tb is None:
        tb = _BUCKETS[loop] = TimeoutBuckets(loop)
    return tb


class Link(Protocol):
    """What the driver asks of a transaction layer."""

    async def open(self) -> None:
        """Open the port/socket; safe when already open."""
        ...

    async def close(self) -> None:
        """Close; safe to repeat and after a failed open."""
        ...

    async def transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        """Send one read request and return its register bytes (2 × count)."""
        ...


class Channel(Protocol):
    """A byte stream under an :class:`RtuLink`: a serial port or a TCP socket."""

    def write(self, data: bytes) -> None:
        """Queue bytes for transmission."""
        ...

    def close(self) -> None:
        """Close the stream."""
        ...


Feed = Callable[[bytes, float], None]
Lost = Callable[[Exception], None]


# --- channels --------------------------------------------------------------------------


def serial_open_error(port: str, exc: BaseException, baudrate: int, parity: str,
                      stopbits: int) -> TransportError:
    """Translate a failure to open or configure a serial port into a sentence to act on."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return TransportError(f"serial port {port} does not exist; check `port:` of the bus "
                              "(ls /dev/ttyS* /dev/ttyUSB*)")
    if code == errno.EACCES or "Permission denied" in text:
        return TransportError(f"permission denied opening {port}; add the gateway's user to "
                              "the dialout group")
    if code == errno.EBUSY or "busy" in text.lower():
        return TransportError(f"serial port {port} is busy; another program holds it")
    if code == errno.EINVAL or "Invalid argument" in text:
        return TransportError(
            f"cannot set {baudrate} baud, parity {parity}, {stopbits} stop bit(s) on {port}: "
            f"this port (a pty?) rejects it; use parity N on virtual ports, or a baud rate "
            "the adapter supports")
    return TransportError(f"cannot open serial port {port}: {text}")


class SerialChannel:
    """A serial port read through the event loop (``add_reader``), written non-blocking."""

    def __init__(self, port: str, baudrate: int, parity: str, stopbits: int, bytesize: int) -> None:
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize
        self._serial: object | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, feed: Feed, lost: Lost) -> None:
        """Open and configure the port, then start delivering received chunks to ``feed``."""
        import serial  # pyserial: only this channel needs it

        try:
            ser = serial.Serial(
                self.port, baudrate=self.baudrate, parity=self.parity, stopbits=self.stopbits,
                bytesize=self.bytesize, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise serial_open_error(self.port, exc, self.baudrate, self.parity,
                                    self.stopbits) from exc
        self._serial = ser
        self._fd = ser.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(Exception):
            ser.reset_input_buffer()
        loop = self._loop = asyncio.get_running_loop()
        fd = self._fd

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                self.close()
                lost(TransportError(f"serial port {self.port} failed: {exc.strerror}; "
                                    "it will be reopened"))
                return
            if data:
                feed(data, time.monotonic())

        loop.add_reader(fd, readable)

    def write(self, data: bytes) -> None:
        """Write a whole frame (frames are far smaller than the kernel's tty buffer)."""
        view = memoryview(data)
        deadline = time.monotonic() + 0.5
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TransportError(f"serial port {self.port} does not accept data; "
                                         "check the adapter") from None
                time.sleep(0.0005)
                continue
            except OSError as exc:
                raise TransportError(f"writing to {self.port} failed: {exc.strerror}") from exc
            view = view[n:]

    def close(self) -> None:
        """Stop reading and close the port; safe to repeat."""
        if self._fd >= 0 and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        self._fd = -1
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()  # type: ignore[attr-defined]


class _StreamProtocol(asyncio.Protocol):
    """Hands a TCP stream's bytes to an RtuLink."""

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
        raise TransportError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    return transport


class TcpChannel:
    """A TCP stream to a serial server carrying RTU frames."""

    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._proto: _StreamProtocol | None = None

    async def open(self, feed: Feed, lost: Lost) -> None:
        """Connect and deliver received bytes to ``feed``."""
        proto = _StreamProtocol(feed, lost, f"{self.host}:{self.port}")
        await tcp_connect(self.host, self.port, lambda: proto, self.connect_timeout)
        self._proto = proto

    def write(self, data: bytes) -> None:
        """Send bytes."""
        proto = self._proto
        if proto is None or proto.transport is None:
            raise TransportError(f"connection to {self.host}:{self.port} is closed; "
                                 "it will be reopened")
        proto.transport.write(data)

    def close(self) -> None:
        """Close the socket; safe to repeat."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.lost = lambda exc: None
            proto.transport.close()


# --- RTU -------------------------------------------------------------------------------


class RtuLink:
    """Modbus RTU transactions over a serial port or a TCP stream (see module doc).

    ``silence_s`` is the inter-frame silence kept before every request (t3.5 on a serial
    line, 0 on a serial server that times its own line), ``char_s`` the character time
    used to know when the request has left the wire (0 over TCP).
    """

    def __init__(self, where: str, channel: SerialChannel | TcpChannel, silence_s: float,
                 char_s: float) -> None:
        self.where = where
        self.channel = channel
        self.silence_s = silence_s
        self.char_s = char_s
        self._open = False
        self._timer: PreciseTimer | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[RtuReply] | None = None
        self._want: tuple[int, int, int] = (0, 0, 0)       # unit, function, count
        self._quiet_at = 0.0        # monotonic time from which the line counts as silent
        self._last_rx = 0.0         # arrival of the last received chunk
        self._dirty = False         # unsolicited/late bytes seen: resynchronise first
        self._silence_handle: asyncio.TimerHandle | None = None
        self._frames: dict[tuple[int, bytes], bytes] = {}
        #: counters for diagnostics and the benchmark
        self.stats = {"requests": 0, "timeouts": 0, "frame_errors": 0, "skipped_bytes": 0,
                      "resyncs": 0}

    async def open(self) -> None:
        """Open the channel; safe when already open."""
        if self._open:
            return
        if isinstance(self.channel, SerialChannel):
            self.channel.open(self._feed, self._lost)
        else:
            await self.channel.open(self._feed, self._lost)
        if self._timer is None:
            self._timer = PreciseTimer()
        self._open = True
        self._buf.clear()
        self._quiet_at = time.monotonic() + self.silence_s

    async def close(self) -> None:
        """Close the channel; safe to repeat."""
        self._open = False
        self.channel.close()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TransportError(f"{self.where} was closed"))

    def _lost(self, exc: Exception) -> None:
        self._open = False
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(exc)

    def _feed(self, data: bytes, t: float) -> None:
        self._last_rx = t
        self._quiet_at = t + self.silence_s
        w = self._waiter
        if w is None or w.done():
            self._dirty = True        # unsolicited or late bytes: drop them before the next request
            return
        buf = self._buf
        buf += data
        if len(buf) > _MAX_BUFFER:
            del buf[:-_MAX_BUFFER]
        unit, function, count = self._want
        status, reply = scan_rtu_reply(buf, unit, function, count)
        if status == "frame":
            assert reply is not None
            if reply.start or reply.end != len(buf):
                self.stats["skipped_bytes"] += len(buf) - (reply.end - reply.start)
                self._dirty = True
            w.set_result(reply)
            return
        if self._silence_handle is not None:
            self._silence_handle.cancel()
            self._silence_handle = None
        if status == "garbage":
            loop = asyncio.get_running_loop()
            self._silence_handle = loop.call_later(self.silence_s + 0.002, self._garbled)

    def _garbled(self) -> None:
        self._silence_handle = None
        w = self._waiter
        if w is None or w.done():
            return
        unit = self._want[0]
        self._dirty = True
        w.set_exception(FrameError(
            f"garbled reply from unit {unit} on {self.where}: {len(self._buf)} bytes with no "
            "valid frame (bad CRC or noise); check wiring, termination, the baud rate and "
            "parity, and that no other master is on the bus"))

    def _timed_out(self, timeout: float) -> None:
        w = self._waiter
        if w is None or w.done():
            return
        unit, function, count = self._want
        n = len(self._buf)
        self._dirty = n > 0
        if n == 0:
            w.set_exception(no_answer(unit, self.where, timeout, serial=True))
            return
        status, _ = scan_rtu_reply(self._buf, unit, function, count)
        if status == "partial":
            w.set_exception(ReadTimeout(
                f"unit {unit} on {self.where} sent an incomplete reply ({n} of "
                f"{5 + 2 * count} bytes) within {timeout:g} s"))
        else:
            self._garbled()

    async def _resync(self) -> None:
        """Wait until the line has been silent for t3.5 (≥ 2 ms), then drop what arrived."""
        assert self._timer is not None
        self.stats["resyncs"] += 1
        quiet = max(self.silence_s, 0.002)
        limit = time.monotonic() + _RESYNC_LIMIT_S
        for _ in range(1000):
            target = self._last_rx + quiet
            now = time.monotonic()
            if now >= target or now >= limit:
                break
            await self._timer.wait_until(min(target, limit))
        self._buf.clear()
        self._dirty = False

    async def transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        """One request/reply (see module doc for the errors)."""
        if not self._open:
            await self.open()
        if self._dirty:
            await self._resync()
        timer = self._timer
        assert timer is not None
        if self._quiet_at > time.monotonic():
            await timer.wait_until(self._quiet_at)
        key = (unit, request.pdu)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) > 4096:
                self._frames.clear()
            frame = self._frames[key] = rtu_frame(unit, request.pdu)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RtuReply] = loop.create_future()
        self._buf.clear()
        self._waiter = waiter
        self._want = (unit, request.function, request.count)
        self.stats["requests"] += 1
        tx_s = len(frame) * self.char_s
        handle: asyncio.TimerHandle | None = None
        try:
            self.channel.write(frame)
            self._quiet_at = time.monotonic() + tx_s + self.silence_s
            handle = loop.call_later(tx_s + timeout, self._timed_out, timeout)
            reply = await waiter
        except ReadTimeout:
            self.stats["timeouts"] += 1
            raise
        except FrameError:
            self.stats["frame_errors"] += 1
            raise
        except TransportError:
            await self.close()
            raise
        except asyncio.CancelledError:
            self._dirty = True
            raise
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()
            if self._silence_handle is not None:
                self._silence_handle.cancel()
                self._silence_handle = None
        if reply.unit != unit:
            raise WrongAddressError(
                f"a reply from unit {reply.unit} arrived while unit {unit} was asked on "
                f"{self.where}; two meters may share an address, or the line echoes")
        if reply.is_exception:
            raise device_exception(reply.payload[0], unit, self.where)
        return reply.payload


# --- Modbus TCP ------------------------------------------------------------------------


class TcpLink(asyncio.Protocol):
    """Modbus TCP transactions on one connection, up to ``concurrency`` in flight."""

    def __init__(self, host: str, port: int, connect_timeout: float, concurrency: int = 1) -> None:
        self.host = host
        self.port = port
        self.where = f"{host}:{port}"
        self.connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._tid = 0
        self._pending: dict[int, tuple[asyncio.Future[bytes], int, int, int]] = {}
        self._sem = asyncio.Semaphore(max(1, concurrency)) if concurrency > 1 else None
        self._connecting: asyncio.Lock | None = None
        self._timeouts: TimeoutBuckets | None = None
        self.stats = {"requests": 0, "timeouts": 0, "late_replies": 0}

    # asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (called by asyncio)."""
        # a stream connection's transport (uvloop's is not an asyncio.Transport subclass)
        self._transport = cast(asyncio.Transport, transport)
        self._buf.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail every pending transaction; the next one reconnects (called by asyncio)."""
        self._transport = None
        self._fail_all(TransportError(f"connection to {self.where} closed; it will be reopened"))

    def data_received(self, data: bytes) -> None:
        """Split the stream into ADUs and hand each to its transaction (called by asyncio)."""
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= MBAP_LEN:
            tid, proto, length, unit = mbap_header(buf, pos)
            if proto != 0 or length < 2 or length > 254:
                self._desync(f"a malformed Modbus TCP header (protocol {proto}, length {length})")
                return
            end = pos + 6 + length
            if end > n:
                break
            pdu = bytes(buf[pos + MBAP_LEN:end])
            pos = end
            self._dispatch(tid, unit, pdu)
        if pos:
            del buf[:pos]

    # internals --------------------------------------------------------------------------
    def _desync(self, what: str) -> None:
        self._fail_all(FrameError(f"{self.where} sent {what}; the connection is reset"))
        if self._transport is not None:
            self._transport.abort()
        self._transport = None
        self._buf.clear()

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut, *_ in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _dispatch(self, tid: int, unit: int, pdu: bytes) -> None:
        entry = self._pending.pop(tid, None)
        if entry is None:
            self.stats["late_replies"] += 1
            return
        fut, want_unit, function, count = entry
        if fut.done():
            return
        fn = pdu[0]
        if unit != want_unit:
            fut.set_exception(WrongAddressError(
                f"{self.where} answered for unit {unit} while unit {want_unit} was asked; "
                "check the unit id of the meter"))
        elif fn == function | 0x80 and len(pdu) >= 2:
            fut.set_exception(device_exception(pdu[1], want_unit, self.where))
        elif fn != function or len(pdu) != 2 + 2 * count or pdu[1] != 2 * count:
            fut.set_exception(FrameError(
                f"{self.where} sent a malformed reply for unit {want_unit} (function {fn}, "
                f"{len(pdu)} bytes, expected {2 + 2 * count})"))
        else:
            fut.set_result(pdu[2:])

    def _expire(self, tid: int, timeout: float, waiter: asyncio.Future[bytes]) -> None:
        entry = self._pending.get(tid)
        if entry is None or entry[0] is not waiter:   # answered (or the id was reused since)
            return
        fut, unit, _, _ = entry
        del self._pending[tid]      # a late reply for this tid is counted and dropped
        if not fut.done():
            self.stats["timeouts"] += 1
            fut.set_exception(no_answer(unit, self.where, timeout, serial=False))

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
        self._fail_all(TransportError(f"connection to {self.where} was closed"))

    async def transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        """One request/reply (see module doc for the errors)."""
        if self._sem is not None:
            async with self._sem:
                return await self._transact(unit, request, timeout)
        return await self._transact(unit, request, timeout)

    async def _transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        transport = self._transport
        if transport is None:
            await self.open()
            transport = self._transport
            if transport is None:
                raise TransportError(f"connection to {self.where} closed at once; it will be reopened")
        self._tid = tid = (self._tid + 1) & 0xFFFF
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._pending[tid] = (fut, unit, request.function, request.count)
        self.stats["requests"] += 1
        transport.write(mbap_frame(tid, unit, request.pdu))
        buckets = self._timeouts
        if buckets is None:
            buckets = self._timeouts = timeout_buckets(loop)
        buckets.call_later(timeout, self._expire, tid, timeout, fut)
        try:
            return await fut
        finally:
            entry = self._pending.get(tid)
            if entry is not None and entry[0] is fut:
                del self._pending[tid]
