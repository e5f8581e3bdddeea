"""The DL/T 645-2007 (and -1997) meter driver: one bus, its transactions, its operations.

One :class:`Dlt645Driver` owns one bus: a serial port or one TCP endpoint (a serial device
server with one or more meters behind it). It implements :class:`drivers.base.MeterDriver`.
The driver owns the transport, the bus lock and the transactions; what to read lives in
modules with one job each, which read through the driver's
:data:`~drivers.dlt645.payload.ReadPayload` with the lock held:

* :mod:`drivers.dlt645.plan`: read plans (:func:`compile_plan`, pure, once per profile);
* :mod:`drivers.dlt645.point_reads`: a plan's points, block fallback, per-point quality;
* :mod:`drivers.dlt645.meter_clock`: the ``meter_clock`` point (date completed by time);
* :mod:`drivers.dlt645.records`: settlement-day snapshots and daily freeze records.

Transactions: one at a time per driver (an ``asyncio.Lock``, on top of the bus worker that
already serialises), on a shared byte pipe (:mod:`drivers.transport`: serial port or TCP
serial server, stale input drained by the pipe's one rule); the reply window is the
meter's maximum response delay Td (500 ms) plus the request and expected reply at the bus's
character time (11 bits per byte at 8E1), never less than the caller's ``timeout``. Frames
that are our own echo (an RS-485 adapter that hears itself) are ignored; a reply from
another address or for another DI (a late reply) is skipped and the driver keeps waiting
for the right one, raising :class:`~gateway.errors.WrongAddressError` /
:class:`~gateway.errors.FrameError` only if the right one never comes
(:mod:`drivers.dlt645.matching`). Long replies
(``B1``) are collected with follow-up requests (C = 12, SEQ 1, 2 …) until ``92``.

``compile_plan``, the plan types and ``nth_previous_settlement`` are re-exported here (the
package's entry points as older imports know them; the core reaches them through
:mod:`drivers.dlt645.descriptor`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Final

from drivers.base import BusParams, EventRecord
from drivers.base import ReadPlan as AnyPlan
from drivers.dlt645 import event_records, records
from drivers.dlt645.codec import (
    OVERHEAD,
    ProtocolName,
    Reply,
    Request,
    followup_request,
    normalize_address,
    read_address_request,
    read_request,
    time_sync_request,
    wire_to_address,
)
from drivers.dlt645.matching import Dlt645Matcher
from drivers.dlt645.plan import Dlt645Plan, PointSlot, ReadStep, compile_plan
from drivers.dlt645.point_reads import read_points
from drivers.dlt645.records import nth_previous_settlement
from drivers.transport.pipe import BytePipe
from drivers.transport.serial import char_time, serial_pipe
from drivers.transport.tcp import tcp_pipe
from gateway.errors import (
    ConfigError,
    DeviceException,
    FrameError,
    ReadTimeout,
    WrongAddressError,
)
from gateway.model import PointResult

log = logging.getLogger(__name__)

TD_MAX: Final = 0.5          # longest response delay a meter may take (§1)
TB_MARGIN: Final = 0.05      # slack for inter-byte gaps and the OS
PREAMBLE: Final = 4          # FE bytes sent before each request
MAX_FOLLOWUPS: Final = 255   # SEQ is one byte
DEFAULT_SERIAL_GAP: Final = 0.0    # DL/T 645 frames end by their length: no t3.5-style pause is needed


class Dlt645Driver:
    """A DL/T 645 driver bound to one bus (serial port or TCP serial server).

    ``transport`` may be given for tests; otherwise it is built from ``bus``.
    ``response_delay`` is the longest time a meter may take to start its reply (Td; the
    standard allows 500 ms); tests against fast peers may shorten it. The reply window of a
    request is the first-byte budget — the bus timeout, capped at ``response_delay`` on a
    serial line where the standard bounds Td — plus the expected frame's transmission time
    at the line's baud rate, so a long reply at 1200 baud is not cut off while a dead meter
    costs the bus only its timeout.
    """

    def __init__(
        self,
        bus: BusParams,
        *,
        transport: BytePipe | None = None,
        preamble: int = PREAMBLE,
        response_delay: float = TD_MAX,
    ) -> None:
        if bus.protocol not in ("dlt645", "dlt645-1997"):
            raise ConfigError(f"bus {bus.id}: protocol {bus.protocol!r} is not DL/T 645")
        self.bus = bus
        self.protocol: ProtocolName = "dlt645-1997" if bus.protocol == "dlt645-1997" else "dlt645"
        self.preamble = preamble
        self.response_delay = response_delay
        self._lock = asyncio.Lock()
        self._no_block: dict[str, set[int]] = {}
        self._char_time = char_time(bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)
        if bus.inter_frame_s is not None:
            self._gap = bus.inter_frame_s
        else:
            self._gap = DEFAULT_SERIAL_GAP if bus.type == "serial" else 0.0
        self._transport = transport if transport is not None else _make_transport(bus, self._gap, self._char_time)

    # --- MeterDriver -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the port or connection (idempotent)."""
        await self._transport.open()

    async def close(self) -> None:
        """Close the port or connection (idempotent, safe after a failed open)."""
        await self._transport.close()

    async def read(self, address: str, plan: AnyPlan, timeout: float) -> dict[str, PointResult]:
        """Read every point of ``plan`` from the meter at ``address`` (one pass, no retries)."""
        if not isinstance(plan, Dlt645Plan):
            raise ConfigError("the DL/T 645 driver needs a plan from drivers.dlt645.plan.compile_plan")
        addr = normalize_address(address)
        async with self._lock:
            return await read_points(self._read_payload, self._no_block, addr, plan, timeout)

    async def probe(self, address: str, timeout: float) -> bool:
        """True when a meter answers at ``address`` (any reply, even a refusal)."""
        addr = normalize_address(address)
        di = 0x9010 if self.protocol == "dlt645-1997" else 0x04000401
        async with self._lock:
            try:
                await self._read_payload(addr, di, self.protocol, timeout, 6)
            except DeviceException:
                return True
            except WrongAddressError:
                return False
            except FrameError:
                return True
            except ReadTimeout:
                return False
        return True

    # --- other public operations ---------------------------------------------------------------

    def unsupported_blocks(self, address: str) -> frozenset[int]:
        """Block DIs this driver has learnt the meter at ``address`` refuses."""
        return frozenset(self._no_block.get(normalize_address(address), ()))

    async def read_address(self, timeout: float = 1.0) -> str:
        """Ask the single meter on the line for its address (C = 13 to AA…AA).

        Raises ReadTimeout when nobody answers and FrameError when several meters answer
        at once (their replies collide).
        """
        req = read_address_request()
        async with self._lock:
            try:
                reply = await self._transact(req, timeout, 6, "its address")
            except FrameError as exc:
                raise FrameError(
                    f"the reply to the wildcard read-address request was corrupted ({exc}); several "
                    "meters on one line answer at once: probe a list of addresses instead"
                ) from exc
        if len(reply.payload) != 6:
            return reply.frame.addr
        return wire_to_address(reply.payload)

    async def broadcast_time_sync(self, local_time: datetime) -> None:
        """Broadcast the meters' local wall-clock time (C = 08); refused unless writes allowed."""
        if not self.bus.allow_writes:
            raise ConfigError(
                f"bus {self.bus.id} does not allow writes: set allow_writes: true on the bus to "
                "enable broadcast time sync"
            )
        req = time_sync_request(local_time)
        async with self._lock:
            await self._transport.send(req.encode(self.preamble))

    async def read_settlement(
        self, address: str, n: int = 1, timeout: float = 1.0, *, tz: tzinfo | None = None,
        stamps: dict[str, datetime] | None = None,
    ) -> tuple[datetime | None, dict[str, Decimal]]:
        """The registers frozen at the n-th previous settlement day (上n结算日, DI0 = n).

        Returns (settlement instant, {point: value}): see :func:`drivers.dlt645.records.read_settlement`
        (``stamps`` receives the settlement period's maximum-demand time and period start).
        """
        async with self._lock:
            return await records.read_settlement(self._read_payload, self._no_block, address, n, timeout, tz,
                                                 stamps)

    async def read_daily_freeze(
        self, address: str, day: date, timeout: float = 1.0, *, tz: tzinfo | None = None,
        points: Collection[str] | None = None, stamps: dict[str, datetime] | None = None,
    ) -> tuple[datetime, dict[str, Decimal]]:
        """The daily freeze the meter took at the start of ``day``, found by date.

        Returns (freeze time, {point: value}): see :func:`drivers.dlt645.records.read_daily_freeze`.
        """
        async with self._lock:
            return await records.read_daily_freeze(self._read_payload, address, day, timeout, tz, points, stamps)

    async def read_event_record(self, address: str, event: str, timeout: float) -> EventRecord | None:
        """The meter's last record of ``event`` (a stem of :data:`drivers.base.EVENT_STEMS`), or None
        when it keeps none (DL/T 645-1997, a stem without a layout, or the meter refuses the DI).

        See :mod:`drivers.dlt645.event_records` for the DIs and the fields read.
        """
        layout = event_records.LAYOUTS.get(event)
        if layout is None or self.protocol == "dlt645-1997":
            return None
        addr = normalize_address(address)
        async with self._lock:
            try:
                payload = await self._read_payload(addr, layout.di, self.protocol, timeout, None)
            except DeviceException:
                return None
        return event_records.decode_record(event, payload)

    # --- internals: transactions -------------------------------------------------------------

    async def _read_payload(
        self, addr: str, di: int, protocol: ProtocolName, timeout: float, expect: int | None
    ) -> bytes:
        req = read_request(addr, di, protocol=protocol)
        what = f"DI {req.di_text}"
        reply = await self._transact(req, timeout, expect, what)
        payload = bytearray(reply.payload)
        seq = 0
        while reply.more:
            if protocol == "dlt645-1997":
                raise FrameError(
                    f"meter {addr} sent a DL/T 645-1997 follow-up frame for {what}; amr-gateway "
                    "does not read 1997 follow-ups: map a shorter DI in the profile"
                )
            seq += 1
            if seq > MAX_FOLLOWUPS:
                raise FrameError(f"meter {addr} sent more than {MAX_FOLLOWUPS} follow-up frames for {what}")
            reply = await self._transact(followup_request(addr, di, seq), timeout, None, f"{what} part {seq}")
            payload += reply.payload
        return bytes(payload)

    def _first_byte(self, timeout: float) -> float:
        return timeout if self.bus.type == "tcp" else min(timeout, self.response_delay)

    async def _transact(self, req: Request, timeout: float, expect: int | None, what: str) -> Reply:
        """Send ``req`` and return its validated reply (the lock is held by the caller).

        A meter that is not there costs only the first-byte budget: the window grows by the
        expected reply's wire time only once a byte has arrived.
        """
        wire = req.encode(self.preamble)
        reply_len = 4 + OVERHEAD + 4 + (expect if expect is not None else 200)
        matcher = Dlt645Matcher(req, what, self._transport.describe)
        await self._transport.exchange(wire, matcher, self._first_byte(timeout) + TB_MARGIN,
                                       reply_s=reply_len * self._char_time)
        if matcher.refusal is not None:
            raise matcher.refusal
        assert matcher.reply is not None
        return matcher.reply


def _make_transport(bus: BusParams, gap: float, char_s: float) -> BytePipe:
    """The pipe for ``bus``: its serial port, or its TCP serial server (whose line has the
    bus's character time)."""
    if bus.type == "serial":
        if not bus.port:
            raise ConfigError(f"bus {bus.id}: a serial bus needs 'port'")
        return serial_pipe(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, silence_s=gap)
    if not bus.host or not bus.tcp_port:
        raise ConfigError(f"bus {bus.id}: a tcp bus needs 'host' and 'port'")
    return tcp_pipe(bus.host, bus.tcp_port, silence_s=gap, char_s=char_s)


def create_driver(bus: BusParams) -> Dlt645Driver:
    """The driver for a ``dlt645`` / ``dlt645-1997`` bus (serial port or TCP serial server)."""
    return Dlt645Driver(bus)


__all__ = [
    "Dlt645Driver",
    "Dlt645Plan",
    "PointSlot",
    "ReadStep",
    "compile_plan",
    "create_driver",
    "nth_previous_settlement",
]

