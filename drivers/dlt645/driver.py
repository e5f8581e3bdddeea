"""The DL/T 645-2007 (and -1997) meter driver: read plans, transactions, fallback, freezes.

One :class:`Dlt645Driver` owns one bus: a serial port or one TCP endpoint (a serial device
server with one or more meters behind it). It implements :class:`drivers.base.MeterDriver`.

Read plans (:func:`compile_plan`, pure, computed once per profile and protocol): points
that share a block DI (``0001FF00`` = total and tariffs 1–4) and map to at least two
different DIs are read with one block request; every other point is read with its own DI,
and points on the same DI (``demand_max_kw`` and ``demand_max_kw_at`` on ``01010000``)
share one request. When a meter answers a block with "no requested data" (error 0x02), the
driver reads that block's points one by one and remembers it for that meter address, so
later polls go straight to the single DIs.

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

Per point: a value that is not a value (EE/FF fill, non-BCD) → quality ``invalid``; a DI
the meter refuses → ``exception``; a corrupted reply → ``crc_error``. A meter that does not
answer the first request → :class:`~gateway.errors.ReadTimeout` for the whole read; a meter
that stops answering mid-read → the remaining points are ``timeout``; when every request got
only corrupted or foreign replies the read raises that FrameError / WrongAddressError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from decimal import Decimal
from typing import Final

from drivers.dlt645 import catalogue
from drivers.dlt645.codec import (
    NO_REQUESTED_DATA,
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
from drivers.dlt645.points import DiPoint
from drivers.dlt645.values import (
    ValueFormat,
    decode_datetime,
    decode_ddhh,
    decode_number,
    decode_time,
    decode_value,
    parse_format,
)
from drivers.transport.pipe import BytePipe
from drivers.transport.serial import serial_pipe
from drivers.transport.tcp import tcp_pipe
from gateway.errors import (
    ConfigError,
    DecodeError,
    DeviceException,
    FrameError,
    ReadTimeout,
    WrongAddressError,
)
from gateway.model import PointResult
from gateway.settings import BusSettings

log = logging.getLogger(__name__)

TD_MAX: Final = 0.5          # longest response delay a meter may take (§1)
TB_MARGIN: Final = 0.05      # slack for inter-byte gaps and the OS
PREAMBLE: Final = 4          # FE bytes sent before each request
MAX_FOLLOWUPS: Final = 255   # SEQ is one byte
DEFAULT_SERIAL_GAP: Final = 0.0    # DL/T 645 frames end by their length: no t3.5-style pause is needed


# --- plans ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointSlot:
    """Where one point's value sits in a reply payload, and how to decode it."""

    name: str
    fmt: ValueFormat
    offset: int
    signed: bool


@dataclass(frozen=True, slots=True)
class ReadStep:
    """One read request (a DI) and the points it serves.

    ``fallback`` (block steps only) holds the single-DI steps used when the meter refuses
    the block; ``clock_time_di`` completes a date with a time (``meter_clock``).
    """

    di: int
    slots: tuple[PointSlot, ...]
    expect: int | None
    fallback: tuple[ReadStep, ...] = ()
    clock_time_di: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The point names this step yields."""
        return tuple(s.name for s in self.slots)


@dataclass(frozen=True, slots=True)
class Dlt645Plan:
    """A compiled read plan: the requests for a profile's points, in order."""

    protocol: ProtocolName
    steps: tuple[ReadStep, ...]

    @property
    def points(self) -> tuple[str, ...]:
        """Every point name the plan yields."""
        return tuple(n for s in self.steps for n in s.names)

    @property
    def requests(self) -> int:
        """Number of requests when every block is supported."""
        return len(self.steps)


def _di_text(di: int, protocol: ProtocolName) -> str:
    """A DI as written: 8 hex digits (2007) or 4 (1997)."""
    return f"{di:04X}" if protocol == "dlt645-1997" else f"{di:08X}"


def _fmt(point: DiPoint) -> ValueFormat:
    try:
        return parse_format(point.fmt)
    except ValueError as exc:
        raise ConfigError(f"point {point.name}: {exc}") from exc


def _slot(point: DiPoint, protocol: ProtocolName, *, in_block: bool) -> tuple[PointSlot, int]:
    """The point's slot in a reply to its own DI (or to its block); and the reply size."""
    fmt = _fmt(point)
    info = catalogue.describe(point.di, protocol)
    record: tuple[str, ...] = (fmt.name,)
    if info is not None and len(info.record) > 1:
        record = info.record
    names = [parse_format(f).name.lstrip("±") for f in record]
    if fmt.name.lstrip("±") not in names:
        raise ConfigError(
            f"point {point.name}: DI {point.di:08X} carries {' + '.join(record)}; "
            f"format {fmt.name} is not part of it"
        )
    k = names.index(fmt.name.lstrip("±"))
    sizes = [parse_format(f).size for f in record]
    offset = sum(sizes[:k])
    record_size = sum(sizes)
    if in_block:
        offset += point.index * record_size
    signed = fmt.signed or catalogue.is_signed(point.di, protocol)
    return PointSlot(point.name, fmt, offset, signed), record_size


def compile_plan(points: Sequence[DiPoint], *, protocol: ProtocolName = "dlt645") -> Dlt645Plan:
    """Compile a profile's points into the fewest DL/T 645 requests (pure; no I/O).

    ``protocol`` is the meter's: ``dlt645`` (2007, 4-byte DIs) or ``dlt645-1997`` (2-byte
    DIs). Raises :class:`ConfigError` for an unknown format, a DI too wide for the
    protocol, or a format that the DI's reply does not carry.
    """
    if protocol not in ("dlt645", "dlt645-1997"):
        raise ConfigError(f"protocol {protocol!r} is not DL/T 645; use dlt645 or dlt645-1997")
    width = 0xFFFF if protocol == "dlt645-1997" else 0xFFFFFFFF
    seen: set[str] = set()
    for p in points:
        if p.name in seen:
            raise ConfigError(f"point {p.name} is defined twice")
        seen.add(p.name)
        for di in (p.di, p.block):
            if di is not None and not 0 <= di <= width:
                raise ConfigError(
                    f"point {p.name}: DI {di:X} does not fit {protocol} "
                    f"({'2' if width == 0xFFFF else '4'}-byte identifiers)"
                )
        if p.index < 0:
            raise ConfigError(f"point {p.name}: block index must not be negative")
        _fmt(p)

    by_block: dict[int, list[DiPoint]] = {}
    for p in points:
        if p.block is not None:
            by_block.setdefault(p.block, []).append(p)
    blocks = {b for b, ps in by_block.items() if len({p.di for p in ps}) >= 2}

    def singles(group: Sequence[DiPoint]) -> tuple[ReadStep, ...]:
        by_di: dict[int, list[DiPoint]] = {}
        for p in group:
            by_di.setdefault(p.di, []).append(p)
        steps = []
        for di, ps in by_di.items():
            slots = []
            size = 0
            clock = None
            for p in ps:
                slot, size = _slot(p, protocol, in_block=False)
                slots.append(slot)
                if slot.fmt.kind == "date" and di in catalogue.CLOCK_TIME_DI:
                    clock = catalogue.CLOCK_TIME_DI[di]
            info = catalogue.describe(di, protocol)
            expect = info.size if info is not None else size
            steps.append(ReadStep(di, tuple(slots), expect, (), clock))
        return tuple(steps)

    # One step per block read (in the order of its first point), else per single DI.
    groups: dict[tuple[str, int], list[DiPoint]] = {}
    for p in points:
        key = ("block", p.block) if p.block is not None and p.block in blocks else ("di", p.di)
        groups.setdefault(key, []).append(p)
    steps: list[ReadStep] = []
    for (kind, di), members in groups.items():
        if kind == "di":
            steps.extend(singles(members))
            continue
        slots = []
        end = 0
        for m in members:
            slot, _ = _slot(m, protocol, in_block=True)
            slots.append(slot)
            end = max(end, slot.offset + slot.fmt.size)
        info = catalogue.describe(di, protocol)
        expect = max(info.size, end) if info is not None else None
        steps.append(ReadStep(di, tuple(slots), expect, singles(members)))
    return Dlt645Plan(protocol, tuple(steps))


# --- the driver -----------------------------------------------------------------------------


def nth_previous_settlement(now: datetime, days: Sequence[tuple[int, int]], n: int) -> datetime:
    """The n-th most recent settlement instant at or before ``now`` (n = 1: the last one).

    ``days`` are the meter's settlement days (DD, hh) (04000B01–03). Days that a month does
    not have (e.g. 30 in February) are skipped for that month. Raises ValueError if none.
    """
    if n < 1 or not days:
        raise ValueError("need n >= 1 and at least one settlement day")
    found: list[datetime] = []
    y, m = now.year, now.month
    for _ in range(n + 2 + n // max(1, len(days)) + 12):
        for day, hour in days:
            try:
                t = datetime(y, m, day, hour)
            except ValueError:
                continue
            if t <= now.replace(tzinfo=None):
                found.append(t)
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    found = sorted(set(found), reverse=True)
    if len(found) < n:
        raise ValueError("not enough settlement instants")
    return found[n - 1]


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
        bus: BusSettings,
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
        self._frame_errors: list[FrameError] = []
        bits = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
        self._char_time = bits / max(1, bus.baudrate)
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

    async def read(self, address: str, plan: Dlt645Plan, timeout: float) -> dict[str, PointResult]:
        """Read every point of ``plan`` from the meter at ``address`` (one pass, no retries)."""
        if not isinstance(plan, Dlt645Plan):
            raise ConfigError("the DL/T 645 driver needs a plan from drivers.dlt645.driver.compile_plan")
        addr = normalize_address(address)
        out: dict[str, PointResult] = {}
        async with self._lock:
            self._frame_errors = []
            steps = plan.steps
            for i, step in enumerate(steps):
                try:
                    await self._run_step(addr, step, plan.protocol, timeout, out)
                except ReadTimeout as exc:
                    if not out:
                        raise
                    for rest in steps[i:]:
                        for name in rest.names:
                            out.setdefault(name, PointResult(None, "timeout", str(exc)))
                    break
            errors, self._frame_errors = self._frame_errors, []
        if errors and out and all(r.quality == "crc_error" for r in out.values()):
            # Nothing but corrupted or foreign replies: the whole read failed.
            raise errors[-1]
        return out

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

    async def read_di(
        self, address: str, di: int, timeout: float = 1.0, *, protocol: ProtocolName | None = None
    ) -> bytes:
        """Read one DI and return its value bytes (after the echoed DI; follow-ups joined)."""
        addr = normalize_address(address)
        async with self._lock:
            return await self._read_payload(addr, di, protocol or self.protocol, timeout, None)

    async def read_settlement(
        self, address: str, n: int = 1, timeout: float = 1.0, *, tz: tzinfo | None = None
    ) -> tuple[datetime | None, dict[str, Decimal]]:
        """The registers frozen at the n-th previous settlement day (上n结算日, DI0 = n).

        Returns (settlement instant, {point: value}); the instant is computed from the
        meter's clock and its settlement days (04000B01–03) and is None when the meter does
        not tell them. Points: ``energy_import_kwh`` (+ ``_t1``..``_t4``), ``energy_export_kwh``
        (+ tariffs) and, when supported, ``energy_import_kvarh``/``energy_export_kvarh``.
        """
        if not 1 <= n <= 12:
            raise ValueError("settlement snapshots go back 1..12")
        addr = normalize_address(address)
        values: dict[str, Decimal] = {}
        refusal: DeviceException | None = None
        async with self._lock:
            for block, prefix in catalogue.SETTLEMENT_BLOCKS.items():
                try:
                    values.update(await self._energy_block(addr, block | n, prefix, timeout))
                except DeviceException as exc:
                    refusal = exc
            for di, name in catalogue.SETTLEMENT_SINGLES.items():
                try:
                    payload = await self._read_payload(addr, di | n, "dlt645", timeout, 4)
                    values[name] = decode_number(payload[:4], "XXXXXX.XX", signed=True)
                except (DeviceException, DecodeError):
                    continue
            if not values:
                raise refusal or DeviceException(
                    NO_REQUESTED_DATA, "no requested data", f"meter {addr} has no settlement-day data"
                )
            when = await self._settlement_instant(addr, n, timeout)
        if when is not None and tz is not None:
            when = when.replace(tzinfo=tz)
        return when, values

    async def read_daily_freeze(
        self, address: str, day: date, timeout: float = 1.0, *, tz: tzinfo | None = None,
        points: Collection[str] | None = None, stamps: dict[str, datetime] | None = None,
    ) -> tuple[datetime, dict[str, Decimal]]:
        """The daily freeze the meter took at the start of ``day``, found by date.

        Walks the meter's freeze log (050600nn = time of the nn-th previous freeze) to the
        record whose date is ``day`` — the log may have gaps, so the index is never assumed
        — then reads, with the same nn, the blocks that carry ``points`` (None: all of them;
        see :mod:`drivers.dlt645.catalogue`): 050601nn forward and 050602nn reverse active
        (total + tariffs), 050603nn / 050604nn combined reactive 1 / 2 (the totals →
        ``energy_import_kvarh`` / ``energy_export_kvarh``) and 050609nn forward active
        maximum demand (the total → ``demand_max_kw``; its time, meter local, goes into
        ``stamps["demand_max_kw"]`` when a dict is given, and ``stamps["demand_max_kw_at"]``).

        A meter that answers "no requested data" for a block other than 050601nn simply
        does not freeze that quantity: its points are left out (the caller decides what to
        do instead). Fill bytes (EE/FF, non-BCD) in a value mean "no data" and leave that
        point out too. Returns (freeze time in meter local time, or aware in ``tz``;
        {point: value}). Raises DeviceException (no requested data) when the log has no
        record for ``day`` or the meter refuses the forward active block.
        """
        addr = normalize_address(address)
        async with self._lock:
            n, when = await self._find_freeze(addr, day, timeout)
            values: dict[str, Decimal] = {}
            for kind in catalogue.daily_freeze_kinds(points):
                di = catalogue.daily_freeze_energy_di(n, kind)
                demand = kind in catalogue.DAILY_FREEZE_DEMAND_KINDS
                try:
                    payload = await self._read_payload(addr, di, "dlt645", timeout, 40 if demand else 20)
                except DeviceException:
                    if kind == 1:
                        raise
                    continue
                if kind in catalogue.DAILY_FREEZE_BLOCKS:
                    _decode_tariff_block(payload, catalogue.DAILY_FREEZE_BLOCKS[kind], values)
                elif kind in catalogue.DAILY_FREEZE_REACTIVE:
                    with contextlib.suppress(DecodeError):
                        if len(payload) >= 4:
                            values[catalogue.DAILY_FREEZE_REACTIVE[kind]] = decode_number(
                                payload[:4], "XXXXXX.XX", signed=catalogue.is_signed(di))
                elif kind in catalogue.DAILY_FREEZE_DEMAND and len(payload) >= 8:
                    name, at_name = catalogue.DAILY_FREEZE_DEMAND[kind]
                    try:
                        kw = decode_number(payload[:3], "XX.XXXX")
                    except DecodeError:
                        continue
                    values[name] = kw
                    if stamps is not None:
                        with contextlib.suppress(DecodeError):
                            stamps[name] = stamps[at_name] = decode_datetime(payload[3:8], "YYMMDDhhmm")
        if tz is not None:
            when = when.replace(tzinfo=tz)
        return when, values

    # --- internals: plan execution -----------------------------------------------------------

    async def _run_step(
        self, addr: str, step: ReadStep, protocol: ProtocolName, timeout: float, out: dict[str, PointResult]
    ) -> None:
        if step.fallback and step.di in self._no_block.get(addr, ()):
            for single in step.fallback:
                await self._run_step(addr, single, protocol, timeout, out)
            return
        try:
            payload = await self._read_payload(addr, step.di, protocol, timeout, step.expect)
        except DeviceException as exc:
            if step.fallback and (exc.code & NO_REQUESTED_DATA or protocol == "dlt645-1997"):
                self._no_block.setdefault(addr, set()).add(step.di)
                log.info(
                    "meter %s does not support block DI %s (%s); reading its points one by one from now on",
                    addr, _di_text(step.di, protocol), exc.name,
                )
                for single in step.fallback:
                    await self._run_step(addr, single, protocol, timeout, out)
                return
            for s in step.slots:
                out[s.name] = PointResult(None, "exception", str(exc))
            return
        except FrameError as exc:
            self._frame_errors.append(exc)
            for s in step.slots:
                out[s.name] = PointResult(None, "crc_error", str(exc))
            return
        clock_time: time | None = None
        clock_error: PointResult | None = None
        if step.clock_time_di is not None:
            try:
                tpay = await self._read_payload(addr, step.clock_time_di, protocol, timeout, 3)
                clock_time = decode_time(tpay[:3])
                if clock_time < time(0, 0, 10):
                    # The date may have been read just before midnight: read it again.
                    payload = await self._read_payload(addr, step.di, protocol, timeout, step.expect)
            except DeviceException as exc:
                clock_error = PointResult(None, "exception", f"meter time: {exc}")
            except FrameError as exc:
                clock_error = PointResult(None, "crc_error", f"meter time: {exc}")
            except DecodeError as exc:
                clock_error = PointResult(None, "invalid", f"meter time: {exc}")
        for s in step.slots:
            if clock_error is not None and s.fmt.kind == "date":
                out[s.name] = clock_error
            else:
                out[s.name] = self._extract(step.di, s, payload, clock_time)

    @staticmethod
    def _extract(di: int, slot: PointSlot, payload: bytes, clock_time: time | None) -> PointResult:
        chunk = payload[slot.offset : slot.offset + slot.fmt.size]
        if len(chunk) < slot.fmt.size:
            return PointResult(
                None, "invalid",
                f"the reply to DI {di:08X} has {len(payload)} value bytes; {slot.name} needs bytes "
                f"{slot.offset}..{slot.offset + slot.fmt.size - 1} (the meter has fewer values)",
            )
        try:
            if slot.fmt.kind == "date" and clock_time is not None:
                dt = datetime.combine(decode_datetime(chunk, slot.fmt).date(), clock_time)
                return PointResult(dt.isoformat(timespec="seconds"))
            return PointResult(decode_value(chunk, slot.fmt, signed=slot.signed))
        except DecodeError as exc:
            return PointResult(None, "invalid", str(exc))

    async def _energy_block(self, addr: str, block: int, prefix: str, timeout: float) -> dict[str, Decimal]:
        """Read an energy block (total + 4 tariffs), falling back to single DIs."""
        out: dict[str, Decimal] = {}
        if block & ~0xFF not in self._no_block.get(addr, ()):
            try:
                payload = await self._read_payload(addr, block, "dlt645", timeout, 20)
            except DeviceException as exc:
                if not exc.code & NO_REQUESTED_DATA:
                    raise
                self._no_block.setdefault(addr, set()).add(block & ~0xFF)
            else:
                _decode_tariff_block(payload, prefix, out)
                return out
        refusal: DeviceException | None = None
        for k, suffix in enumerate(catalogue.TARIFF_SUFFIXES):
            di = (block & 0xFFFF00FF) | (k << 8)
            try:
                payload = await self._read_payload(addr, di, "dlt645", timeout, 4)
                out[prefix + suffix] = decode_number(payload[:4], "XXXXXX.XX")
            except DeviceException as exc:
                refusal = exc
            except DecodeError:
                continue
        if not out and refusal is not None:
            raise refusal
        return out

    async def _settlement_instant(self, addr: str, n: int, timeout: float) -> datetime | None:
        days: list[tuple[int, int]] = []
        for di in catalogue.SETTLEMENT_DAY_DIS:
            try:
                days.append(decode_ddhh((await self._read_payload(addr, di, "dlt645", timeout, 2))[:2]))
            except (DeviceException, DecodeError):
                continue
        if not days:
            return None
        try:
            dpay = await self._read_payload(addr, 0x04000101, "dlt645", timeout, 4)
            tpay = await self._read_payload(addr, 0x04000102, "dlt645", timeout, 3)
            d = decode_datetime(dpay[:4], "YYMMDDWW")
            t = decode_time(tpay[:3])
        except (DeviceException, DecodeError):
            return None
        return nth_previous_settlement(datetime.combine(d.date(), t), days, n)

    async def _freeze_time(self, addr: str, n: int, timeout: float) -> datetime | None:
        try:
            payload = await self._read_payload(addr, catalogue.daily_freeze_time_di(n), "dlt645", timeout, 5)
            return decode_datetime(payload[:5], "YYMMDDhhmm")
        except DecodeError:
            return None
        except DeviceException as exc:
            if exc.code & NO_REQUESTED_DATA:
                return None
            raise

    async def _find_freeze(self, addr: str, day: date, timeout: float) -> tuple[int, datetime]:
        def missing(detail: str) -> DeviceException:
            return DeviceException(NO_REQUESTED_DATA, "no requested data", f"meter {addr}: {detail}")

        latest = await self._freeze_time(addr, 1, timeout)
        if latest is None:
            raise missing("the meter holds no daily freeze records (05060001 is empty)")
        if day > latest.date():
            raise missing(f"its latest daily freeze is from {latest:%Y-%m-%d %H:%M}; {day} is not frozen yet")
        depth = catalogue.DAILY_FREEZE_DEPTH
        n = min(depth, 1 + (latest.date() - day).days)
        visited: dict[int, datetime | None] = {1: latest}
        for _ in range(depth):
            if n in visited:
                when = visited[n]
            else:
                when = visited[n] = await self._freeze_time(addr, n, timeout)
            if when is not None and when.date() == day:
                return n, when
            nxt = n - 1 if when is None or when.date() < day else n + 1
            if not 1 <= nxt <= depth or nxt in visited:
                break
            n = nxt
        oldest = min((w for w in visited.values() if w is not None), default=latest)
        if oldest.date() > day:
            raise missing(f"it keeps {depth} daily freezes, back to {oldest:%Y-%m-%d}; {day} is too old")
        raise missing(f"its daily freeze log has no record for {day} (a gap in the log)")

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


def _decode_tariff_block(payload: bytes, prefix: str, out: dict[str, Decimal]) -> None:
    """Total + tariffs 1–4 of an energy data block (XXXXXX.XX each) into ``out``.

    A missing or non-BCD field (a meter with fewer tariffs pads with 0xFF) is left out.
    """
    for k, suffix in enumerate(catalogue.TARIFF_SUFFIXES):
        chunk = payload[4 * k : 4 * k + 4]
        if len(chunk) == 4:
            with contextlib.suppress(DecodeError):
                out[prefix + suffix] = decode_number(chunk, "XXXXXX.XX")


def _make_transport(bus: BusSettings, gap: float, char_time: float) -> BytePipe:
    """The pipe for ``bus``: its serial port, or its TCP serial server (whose line has the
    bus's character time)."""
    if bus.type == "serial":
        if not bus.port:
            raise ConfigError(f"bus {bus.id}: a serial bus needs 'port'")
        return serial_pipe(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, silence_s=gap)
    if not bus.host or not bus.tcp_port:
        raise ConfigError(f"bus {bus.id}: a tcp bus needs 'host' and 'port'")
    return tcp_pipe(bus.host, bus.tcp_port, silence_s=gap, char_s=char_time)


def create_driver(bus: BusSettings) -> Dlt645Driver:
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

