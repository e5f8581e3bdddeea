"""The Modbus driver: one bus connection, read plans in, per-point results out.

:class:`ModbusDriver` implements :class:`drivers.base.MeterDriver` for the three Modbus
bus protocols:

==========================  =====================================================
``modbus-tcp``              :class:`~drivers.modbus.link.TcpLink` to host:port
``modbus-rtu``              :class:`~drivers.modbus.link.RtuLink` on a serial pipe,
                            keeping t3.5 (or ``inter_frame_s``) between frames
``modbus-rtu-over-tcp``     RtuLink over a TCP pipe to a serial server (no silence
                            kept by default: the serial server times its own line)
==========================  =====================================================

The pipes underneath are the shared transport layer (:mod:`drivers.transport`).

Result semantics of :meth:`ModbusDriver.read`: every request of the plan is executed in
order; a DeviceException on one request marks only that request's points ``exception``;
a point whose bytes are no value (NaN, non-BCD) is ``invalid``; the others stand.
ReadTimeout, FrameError/WrongAddressError and TransportError abort the read and are
raised (retries are the caller's); after a TransportError the next call reconnects.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from drivers.base import BusParams, ReadDone
from drivers.base import ReadPlan as AnyPlan
from drivers.modbus.decode import decode_bytes
from drivers.modbus.link import Link, RtuLink, TcpLink
from drivers.modbus.plan import DecodeLayout, DecodeStep, ReadPlan, ReadRequest, compile_plan
from drivers.modbus.points import ModbusLimits, RegisterPoint
from drivers.modbus.timing import t35
from drivers.modbus.units import unit_bounds
from drivers.transport.serial import serial_pipe
from drivers.transport.tcp import tcp_pipe
from gateway.errors import ConfigError, DecodeError, DeviceException
from gateway.model import PointResult

MODBUS_PROTOCOLS = ("modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp")

_PROBE = compile_plan([RegisterPoint(name="probe", function=3, address=0, type="u16")],
                      ModbusLimits()).requests[0]


def parse_unit(address: str, protocol: str) -> int:
    """The unit id in a meter's ``address`` (1–247 on serial lines, 0–255 over TCP)."""
    try:
        unit = int(address, 10)
    except (TypeError, ValueError):
        bottom, top = unit_bounds(protocol)
        raise ConfigError(f"Modbus address {address!r} is not a unit id; use a number "
                          f"{bottom}–{top}") from None
    bottom, top = unit_bounds(protocol)
    if not bottom <= unit <= top:
        raise ConfigError(f"Modbus unit id {unit} is out of range; use {bottom}–{top} on {protocol}")
    return unit


def _link_for(bus: BusParams) -> Link:
    if bus.protocol not in MODBUS_PROTOCOLS:
        raise ConfigError(f"bus {bus.id!r} speaks {bus.protocol}, not Modbus")
    connect_timeout = max(bus.timeout_s, 1.0)
    if bus.protocol == "modbus-rtu":
        if not bus.port:
            raise ConfigError(f"serial bus {bus.id!r} has no port; set `port: /dev/ttyS1` or similar")
        silence = bus.inter_frame_s
        if silence is None:
            silence = t35(bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)
        return RtuLink(serial_pipe(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize,
                                   silence_s=silence))
    if not bus.host or not bus.tcp_port:
        raise ConfigError(f"TCP bus {bus.id!r} needs host and port")
    if bus.protocol == "modbus-rtu-over-tcp":
        return RtuLink(tcp_pipe(bus.host, bus.tcp_port, connect_timeout, silence_s=bus.inter_frame_s or 0.0),
                       serial=False)
    return TcpLink(bus.host, bus.tcp_port, connect_timeout, bus.concurrency)


class ModbusDriver:
    """A Modbus driver bound to one bus (see module doc)."""

    def __init__(self, bus: BusParams) -> None:
        self.bus = bus
        self.link: Link = _link_for(bus)

    async def open(self) -> None:
        """Open the port/socket; safe to call again when already open."""
        await self.link.open()

    async def close(self) -> None:
        """Close the port/socket; safe to repeat and after a failed open."""
        await self.link.close()

    async def read_request(self, address: str, request: ReadRequest, timeout: float) -> bytes:
        """One raw request: its register bytes (for ``scan`` and diagnostics)."""
        return await self.link.transact(parse_unit(address, self.bus.protocol), request, timeout)

    async def read(self, address: str, plan: AnyPlan, timeout: float) -> dict[str, PointResult]:
        """Execute ``plan`` against unit ``address``; see the module doc for the semantics."""
        if not isinstance(plan, ReadPlan):
            raise ConfigError("the Modbus driver needs a plan from drivers.modbus.plan.compile_plan")
        unit = parse_unit(address, self.bus.protocol)
        results: dict[str, PointResult] = {}
        transact = self.link.transact
        pause = plan.pause_between_requests_s
        for i, request in enumerate(plan.requests):
            if pause and i:
                await asyncio.sleep(pause)
            try:
                data = await transact(unit, request, timeout)
            except DeviceException as exc:
                _refused(results, request, exc)
                continue
            _decode_into(results, request.layout, data)
        return results

    def start_read(self, address: str, plan: AnyPlan, timeout: float, done: ReadDone) -> bool:
        """Start :meth:`read` driven by the connection's callbacks (no task wakes up between
        requests); False when it cannot start at once: read the usual way then.

        Only Modbus TCP on an open, clean connection with one request in flight, and a plan
        without pauses between requests. ``done`` gets the results, or the error :meth:`read`
        would raise; or neither, when the connection could not take the next request without
        waiting (closed, or bytes to drain): then the whole read is the caller's to repeat.
        """
        link = self.link
        if not isinstance(link, TcpLink) or not isinstance(plan, ReadPlan) or plan.pause_between_requests_s \
                or not plan.requests:
            return False
        return _ChainedRead(link, parse_unit(address, self.bus.protocol), plan.requests, timeout, done).start()

    async def probe(self, address: str, timeout: float) -> bool:
        """True when something answers at ``address`` (an exception reply counts as an answer).

        A timeout or a garbled reply is False; a port failure is raised (TransportError).
        """
        from gateway.errors import FrameError, ReadTimeout

        try:
            await self.read_request(address, _PROBE, timeout)
        except DeviceException:
            return True
        except (ReadTimeout, FrameError):
            return False
        return True


class _ChainedRead:
    """One :meth:`ModbusDriver.start_read`: each reply decoded and the next request sent from
    the reply's callback, with :meth:`ModbusDriver.read`'s result semantics."""

    __slots__ = ("done", "index", "link", "requests", "results", "timeout", "unit")

    def __init__(self, link: TcpLink, unit: int, requests: tuple[ReadRequest, ...], timeout: float,
                 done: ReadDone) -> None:
        self.link = link
        self.unit = unit
        self.requests = requests
        self.timeout = timeout
        self.done = done
        self.index = 0
        self.results: dict[str, PointResult] = {}

    def start(self) -> bool:
        """Send the first request; False when the connection cannot take it now."""
        return self.link.send_now(self.unit, self.requests[0], self.timeout, self.reply)

    def reply(self, outcome: bytes | Exception) -> None:
        """One request's outcome: decode it, then send the next request or report the read."""
        if not isinstance(outcome, bytes | DeviceException):
            self.done(None, outcome)
            return
        try:
            request = self.requests[self.index]
            if isinstance(outcome, bytes):
                _decode_into(self.results, request.layout, outcome)
            else:
                _refused(self.results, request, outcome)
            self.index += 1
            sent = self.index < len(self.requests) and self.link.send_now(
                self.unit, self.requests[self.index], self.timeout, self.reply)
        except Exception as exc:        # a decoding bug must still end the read (the caller's to raise)
            self.done(None, exc)
            return
        if sent:
            return
        if self.index < len(self.requests):
            self.done(None, None)        # the connection cannot take the next request now
        else:
            self.done(self.results, None)


def _refused(results: dict[str, PointResult], request: ReadRequest, exc: DeviceException) -> None:
    """The meter refused ``request``: its points are ``exception``, the others stand."""
    reason = str(exc)
    for pp in request.points:
        results[pp.point.name] = PointResult(None, "exception", reason)


def _decode_into(results: dict[str, PointResult], layout: tuple[DecodeStep, ...], data: bytes) -> None:
    """Decode every point of a request's reply into ``results`` (plain integers inline; a
    layout of nothing but integers, :class:`~drivers.modbus.plan.DecodeLayout`, at once)."""
    size = len(data)
    if isinstance(layout, DecodeLayout):
        ints = layout.ints
        if ints is not None and ints.size <= size:
            # scale × n is Decimal(n) × scale exactly (an int operand is converted exactly)
            for (name, scale), n in zip(layout.int_steps, ints.unpack_from(data), strict=True):
                results[name] = PointResult(Decimal(n) if scale is None else scale * n)
            return
    for name, start, end, signed, scale, point in layout:
        if signed is not None and end <= size:
            value = Decimal(int.from_bytes(data[start:end], "big", signed=signed))
            results[name] = PointResult(value if scale is None else value * scale)
            continue
        try:
            results[name] = PointResult(decode_bytes(point, data[start:end]))
        except DecodeError as exc:
            results[name] = PointResult(None, "invalid", str(exc))


def create_driver(bus: BusParams) -> ModbusDriver:
    """The driver for a Modbus bus (the factory the gateway core calls)."""
    return ModbusDriver(bus)
