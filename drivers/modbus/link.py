"""Modbus transactions on the shared byte pipes: RTU framing and Modbus TCP (MBAP) framing.

The pipes (:mod:`drivers.transport`) do the I/O, the line timing and the drain rule;
this module brings what is Modbus about it:

* :class:`RtuMatcher` — where an RTU reply is in the received bytes: the read's function
  (or its exception), its byte count, a valid CRC; a complete frame from another unit id,
  or a complete reply to another request (another function or length: a late reply), is
  skipped (never taken as this reply) and the wait goes on; a timeout after only such
  frames is a WrongAddressError (another unit) or a FrameError (another request);
* :class:`RtuLink` — RTU requests (unit + PDU + CRC) over a serial pipe (t3.5 kept by the
  pipe) or a TCP stream to a serial server;
* :class:`MbapFraming` / :class:`TcpMatcher` / :class:`TcpLink` — Modbus TCP: the MBAP
  header gives each frame's length and transaction id, the pipe hands a frame only to the
  request with that id (a late reply is dropped and counted), and the matcher checks unit,
  function and byte count.

Why our own and not pymodbus's clients: pymodbus's async serial client sends the next
request 0.6–0.7 ms after a reply, breaking the RS-485 inter-frame silence (t3.5) on nearly
every request, and costs ≈ 0.12 ms CPU per received byte (bench/README.md). pymodbus stays
the independent peer the tests interoperate with.

Errors (from :mod:`gateway.errors`): no reply in time → ReadTimeout; bad CRC or noise →
FrameError (the pipe drains the line and keeps the port); only replies from another unit
id → WrongAddressError; an exception reply → DeviceException (0x0B "gateway target failed
to respond" → ReadTimeout); a port or socket failure → TransportError, and the next
transaction reopens. CancelledError is never swallowed.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol

from drivers.modbus.frames import (
    EXCEPTION_ADVICE,
    EXCEPTION_NAMES,
    MBAP_LEN,
    find_any_read_reply,
    mbap_frame,
    mbap_header,
    rtu_frame,
    scan_rtu_reply,
)
from drivers.modbus.plan import ReadRequest
from drivers.transport.pipe import GARBAGE, MORE, BytePipe, Cut
from drivers.transport.tcp import ReplyCallback, TaggedTcpPipe
from gateway.errors import DeviceException, FrameError, ReadTimeout, WrongAddressError

_FRAME_CACHE_MAX = 4096


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


class Link(Protocol):
    """What the driver asks of a Modbus transaction layer."""

    async def open(self) -> None:
        """Open the port/socket; safe when already open."""
        ...

    async def close(self) -> None:
        """Close; safe to repeat and after a failed open."""
        ...

    async def transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        """Send one read request and return its register bytes (2 × count)."""
        ...


# --- RTU ---------------------------------------------------------------------------------------


class RtuMatcher:
    """The RTU reply to one read request in a receive buffer (see module doc)."""

    __slots__ = ("count", "foreign", "function", "serial", "stale", "unit", "where")

    def __init__(self, unit: int, function: int, count: int, where: str, *, serial: bool = True) -> None:
        self.unit = unit
        self.function = function
        self.count = count
        self.where = where
        self.serial = serial
        self.foreign: int | None = None     # unit id of the last reply from another unit
        self.stale: str | None = None       # the last reply to another request, described

    def __call__(self, buf: bytearray) -> Cut:
        """Find the reply: a CRC-valid frame of this function and length from this unit."""
        status, reply = scan_rtu_reply(buf, self.unit, self.function, self.count)
        if status == "partial" or not buf:
            return MORE
        if reply is None:
            other = find_any_read_reply(buf)
            if other is None:
                return GARBAGE
            start, end, unit, fn = other
            self.stale = f"function {fn}, {end - start} bytes from unit {unit}"
            return Cut("skip", 0, end, f"a reply to another request ({self.stale}) while unit "
                                       f"{self.unit} was asked for function {self.function}")
        if reply.unit != self.unit:
            self.foreign = reply.unit
            return Cut("skip", 0, reply.end, f"a reply from unit {reply.unit} while unit {self.unit} was asked")
        return Cut("reply", reply.start, reply.end)

    def expired(self, pending: bytes, waited: float) -> Exception:
        """Silence, an incomplete reply, garbage, or only other units' replies."""
        unit = self.unit
        if not pending:
            if self.stale is not None and self.foreign is None:
                return FrameError(
                    f"only a reply to another request ({self.stale}) arrived while unit {unit} "
                    f"was asked on {self.where}: a late reply, or another master on the bus")
            if self.foreign is not None:
                return WrongAddressError(
                    f"a reply from unit {self.foreign} arrived while unit {unit} was asked on "
                    f"{self.where}; two meters may share an address, or the line echoes")
            return no_answer(unit, self.where, waited, serial=self.serial)
        status, _ = scan_rtu_reply(pending, unit, self.function, self.count)
        if status == "partial":
            return ReadTimeout(
                f"unit {unit} on {self.where} sent an incomplete reply ({len(pending)} of "
                f"{5 + 2 * self.count} bytes) within {waited:g} s")
        return FrameError(
            f"garbled reply from unit {unit} on {self.where}: {len(pending)} bytes with no "
            "valid frame (bad CRC or noise); check wiring, termination, the baud rate and "
            "parity, and that no other master is on the bus")


class RtuLink:
    """Modbus RTU transactions over a serial pipe or a TCP stream to a serial server."""

    def __init__(self, pipe: BytePipe, *, serial: bool = True) -> None:
        self.pipe = pipe
        self.where = pipe.describe
        self.serial = serial
        self._frames: dict[tuple[int, bytes], bytes] = {}

    async def open(self) -> None:
        """Open the pipe; safe when already open."""
        await self.pipe.open()

    async def close(self) -> None:
        """Close the pipe; safe to repeat."""
        await self.pipe.close()

    async def transact(self, unit: int, request: ReadRequest, timeout: float) -> bytes:
        """One request/reply (see module doc for the errors)."""
        key = (unit, request.pdu)
        frame = self._frames.get(key)
        if frame is None:
            if len(self._frames) > _FRAME_CACHE_MAX:
                self._frames.clear()
            frame = self._frames[key] = rtu_frame(unit, request.pdu)
        matcher = RtuMatcher(unit, request.function, request.count, self.where, serial=self.serial)
        reply = await self.pipe.exchange(frame, matcher, timeout)
        if reply[1] & 0x80:
            raise device_exception(reply[2], unit, self.where)
        return reply[3:-2]


# --- Modbus TCP --------------------------------------------------------------------------------


class MbapFraming:
    """Cuts a Modbus TCP stream into ADUs by their MBAP header; the tag is the transaction id."""

    def __init__(self, where: str) -> None:
        self.where = where

    def frame_at(self, buf: bytearray, pos: int) -> tuple[int, int] | None:
        """``(transaction id, end)`` of the ADU at ``pos``; None while incomplete."""
        if len(buf) - pos < MBAP_LEN:
            return None
        tid, proto, length, _unit = mbap_header(buf, pos)
        if proto != 0 or length < 2 or length > 254:
            raise FrameError(f"{self.where} sent a malformed Modbus TCP header (protocol {proto}, "
                             f"length {length}); the connection is reset")
        end = pos + 6 + length
        if end > len(buf):
            return None
        return tid, end


class TcpMatcher:
    """Checks the ADU that carries a request's transaction id (unit, function, byte count)."""

    __slots__ = ("count", "function", "unit", "where")

    def __init__(self, unit: int, function: int, count: int, where: str) -> None:
        self.unit = unit
        self.function = function
        self.count = count
        self.where = where

    def check(self, frame: bytes) -> bytes:
        """The register bytes, or the error this ADU means."""
        unit = frame[6]
        fn = frame[7]
        n = len(frame) - MBAP_LEN
        if unit != self.unit:
            raise WrongAddressError(
                f"{self.where} answered for unit {unit} while unit {self.unit} was asked; "
                "check the unit id of the meter")
        if fn == self.function | 0x80 and n >= 2:
            raise device_exception(frame[8], self.unit, self.where)
        if fn != self.function or n != 2 + 2 * self.count or frame[8] != 2 * self.count:
            raise FrameError(
                f"{self.where} sent a malformed reply for unit {self.unit} (function {fn}, "
                f"{n} bytes, expected {2 + 2 * self.count})")
        return frame[9:]

    def expired(self, pending: bytes, waited: float) -> Exception:
        """Silence (or an incomplete ADU) until the timeout."""
        if pending:
            return ReadTimeout(f"unit {self.unit} on {self.where} sent an incomplete reply "
                               f"({len(pending)} bytes) within {waited:g} s")
        return no_answer(self.unit, self.where, waited, serial=False)


class TcpLink:
    """Modbus TCP transactions on one connection, up to ``concurrency`` in flight."""

    def __init__(self, host: str, port: int, connect_timeout: float, concurrency: int = 1) -> None:
        self.where = f"{host}:{port}"
        self.pipe = TaggedTcpPipe(host, port, MbapFraming(self.where), connect_timeout, concurrency)
        self._tid = 0
        self._matchers: dict[tuple[int, bytes], TcpMatcher] = {}

    async def open(self) -> None:
        """Connect; safe when already connected."""
        await self.pipe.open()

    async def close(self) -> None:
        """Close the connection; safe to repeat."""
        await self.pipe.close()

    def transact(self, unit: int, request: ReadRequest, timeout: float) -> Coroutine[Any, Any, bytes]:
        """One request/reply (see module doc for the errors); await the result.

        A plain function returning the pipe's coroutine: one coroutine frame less per read,
        which counts at thousands of meters. Matchers hold no state and are reused.
        """
        self._tid = tid = (self._tid + 1) & 0xFFFF
        return self.pipe.exchange(tid, mbap_frame(tid, unit, request.pdu), self._matcher(unit, request), timeout)

    def send_now(self, unit: int, request: ReadRequest, timeout: float, on_reply: ReplyCallback) -> bool:
        """Send one request at once, its outcome to ``on_reply`` (the register bytes or the
        error :meth:`transact` would raise); False when the connection cannot take it without
        waiting (see :meth:`~drivers.transport.tcp.TaggedTcpPipe.send_now`)."""
        tid = (self._tid + 1) & 0xFFFF
        if not self.pipe.send_now(tid, mbap_frame(tid, unit, request.pdu), self._matcher(unit, request), timeout,
                                  on_reply):
            return False
        self._tid = tid
        return True

    def _matcher(self, unit: int, request: ReadRequest) -> TcpMatcher:
        """The (stateless, reused) check of ``request``'s reply from ``unit``."""
        key = (unit, request.pdu)
        matcher = self._matchers.get(key)
        if matcher is None:
            if len(self._matchers) > _FRAME_CACHE_MAX:
                self._matchers.clear()
            matcher = self._matchers[key] = TcpMatcher(unit, request.function, request.count, self.where)
        return matcher
