"""Simulated DL/T 698.45 meters on a pseudo-terminal and over TCP.

Each simulated meter takes its values from the shared load model
(:class:`~drivers.simulation.model.MeterModel`, every register a pure function of simulated
time) and its clock from :class:`~drivers.simulation.meter_clock.SimulatedMeterClock`
(offset and drift in ppm), and answers through the pure responder
(:mod:`drivers.dlt698.responder`): for each request it builds a
:class:`~drivers.dlt698.responder.MeterState` of the instant. Several meters can share one
*line* (one pty = an RS-485 bus, or one TCP port = a serial server); each answers only its
own address; a wildcard request that several meters answer collides (bytes OR-ed).

What a simulated meter holds (``docs/protocols/dlt698-45.md`` §5, scalers of the catalogue):

* energy arrays ``0010``/``0020`` (total + 4 tariffs), combined reactive ``0030``/``0040``
  and quadrants ``0050``–``0080`` (total only: the model's quadrant I … IV registers), max
  demand ``1010`` (total, stamped the start
  of the local month), voltages, currents, powers (total + phases for active), power
  factor, frequency (long-unsigned), clock ``4000``, address ``4001``, event counts
  (attribute 4);
* day freezes ``5004`` at local 00:00 for the last 62 days minus ``freeze_gaps``, and
  settlement-day freezes ``5005`` at 00:00 of day 1 of the last 12 months, columns
  :data:`~drivers.dlt698.catalogue.FREEZE_COLUMNS`;
* event tables (``events``: name → count): record k (1 = newest) started at 08:00 local k
  days ago and ended 5 minutes later;
* DAR ``unknown_dar`` for anything else, DAR 20 for the ``secured`` OIs read in plain text;
* :meth:`Dlt698Simulator.stop_meter` takes a meter off the air (silence).

Not modelled: time set (no SET/ACTION), phase reactive and apparent power, per-tariff reactive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from drivers.dlt698.axdr import Data, DataType, array, date_time_s, structure
from drivers.dlt698.catalogue import (
    EVENT_END_OAD,
    EVENT_NUMBER_OAD,
    EVENT_START_OAD,
    EVENTS,
    FREEZE_TIME_OAD,
    FREEZES,
    TARIFF_SUFFIXES,
)
from drivers.dlt698.frame import Frame, ServerAddress, scan
from drivers.dlt698.responder import ListMode, MeterState, Row, respond
from drivers.simulation.interface import SimulatedMeter
from drivers.simulation.meter_clock import SimulatedMeterClock, freeze_days
from drivers.simulation.model import MeterModel
from drivers.simulation.pty_pair import PtyPair, open_pty
from drivers.simulation.stream_serving import ConnectionHandler, close_connections, connection_handler
from gateway.clock import Clock, SystemClock

log = logging.getLogger(__name__)

DAY_FREEZE_DEPTH = 62
SETTLEMENT_DEPTH = 12
DEFAULT_EVENTS: dict[str, int] = {"cover_open": 1, "programming": 3, "meter_clear": 0, "clock_set": 1,
                                  "power_down": 2, "voltage_loss_a": 1}

DLU = DataType.DOUBLE_LONG_UNSIGNED
DL = DataType.DOUBLE_LONG
LU = DataType.LONG_UNSIGNED


@dataclass(frozen=True, slots=True)
class SimDlt698Spec:
    """One simulated meter and its quirks; meters with the same ``transport`` and ``line``
    share one pty or TCP port (``line`` defaults to the meter id)."""

    id: str
    address: str
    transport: Literal["pty", "tcp"] = "tcp"
    line: str = ""
    seed: int = 1
    base_kw: float = 40.0
    multiplier: Decimal = Decimal(1)
    reply_preamble: int = 0
    reply_delay_s: float = 0.0
    unknown_dar: int = 6
    secured: frozenset[int] = frozenset()
    #: how it takes a NormalList: answer, or refuse it with a DAR, an ERROR-Response or silence
    lists: ListMode = "answer"
    freeze_gaps: frozenset[date] = frozenset()
    clock_offset_s: float = 0.0
    clock_drift_ppm: float = 0.0
    events: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EVENTS))
    epoch: float | None = None
    port: int = 0

    @property
    def line_key(self) -> tuple[str, str]:
        """(transport, line name) that groups meters on one pty or port."""
        return self.transport, self.line or self.id


def _raw(value: Decimal, exponent: int) -> int:
    return int(value.scaleb(-exponent).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _ints(kind: DataType, values: Sequence[Decimal], exponent: int) -> Data:
    return array(*(Data(kind, _raw(v, exponent)) for v in values))


class _SimMeter:
    """One meter: spec, model, clock; builds the responder's state of an instant."""

    def __init__(self, spec: SimDlt698Spec, clock: Clock, zone: ZoneInfo, timezone: str) -> None:
        self.spec = spec
        self.address = ServerAddress.single(spec.address)
        if spec.epoch is None:
            self.model = MeterModel(spec.seed, base_kw=spec.base_kw, multiplier=spec.multiplier, timezone=timezone)
        else:
            self.model = MeterModel(spec.seed, base_kw=spec.base_kw, multiplier=spec.multiplier, timezone=timezone,
                                    epoch=spec.epoch)
        self.clock = SimulatedMeterClock(clock, zone, spec.clock_offset_s, spec.clock_drift_ppm)
        self.online = True
        self.requests: list[bytes] = []

    def _registers(self, v: dict[str, Decimal], month_start: datetime) -> dict[int, Data]:
        regs: dict[int, Data] = {
            0x00100200: _ints(DLU, [v["energy_import_kwh" + s] for s in TARIFF_SUFFIXES], -2),
            0x00200200: _ints(DLU, [v["energy_export_kwh" + s] for s in TARIFF_SUFFIXES], -2),
            0x00300200: _ints(DL, [v["energy_import_kvarh"]], -2),
            0x00400200: _ints(DL, [v["energy_export_kvarh"]], -2),
            0x00500200: _ints(DLU, [v["energy_q1_kvarh"]], -2),
            0x00600200: _ints(DLU, [v["energy_q2_kvarh"]], -2),
            0x00700200: _ints(DLU, [v["energy_q3_kvarh"]], -2),
            0x00800200: _ints(DLU, [v["energy_q4_kvarh"]], -2),
            0x10100200: array(structure(Data(DLU, _raw(v["demand_max_kw"], -4)), date_time_s(month_start))),
        }
        return regs

    def state(self, records: bool) -> MeterState:
        """The responder's view of this meter now (``records``: build the record tables too)."""
        now = self.clock.now()
        v = self.model.values_at(now)
        local = self.clock.local_naive(now)
        month = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        regs = self._registers(v, month)
        regs.update({
            0x20000200: _ints(LU, [v[f"voltage_v_l{k}"] for k in (1, 2, 3)], -1),
            0x20010200: _ints(DL, [v[f"current_a_l{k}"] for k in (1, 2, 3)], -3),
            0x20040200: _ints(DL, [v["power_kw"], v["power_kw_l1"], v["power_kw_l2"], v["power_kw_l3"]], -4),
            0x20050200: _ints(DL, [v["power_kvar"]], -4),
            0x200A0200: _ints(DataType.LONG, [v["power_factor"]] * 4, -3),
            0x200F0200: Data(LU, _raw(v["frequency_hz"], -2)),
        })
        for name, count in self.spec.events.items():
            table = EVENTS.get(name)
            if table is not None and table.oad >> 16 != 0x3000:
                regs[(table.oad & 0xFFFF0000) | 0x0400] = Data(LU, count)
        state = MeterState(self.address, self.clock.meter_time(), regs, unknown_dar=self.spec.unknown_dar,
                           secured=self.spec.secured, lists=self.spec.lists)
        if records:
            state.records = self._records(local)
        return state

    def _freeze_row(self, t: float, stamp: datetime) -> dict[int, Data]:
        v = self.model.values_at(t)
        month = stamp.replace(day=1) if stamp.day != 1 else (stamp - timedelta(days=1)).replace(day=1)
        row = self._registers(v, month)
        row[FREEZE_TIME_OAD] = date_time_s(stamp)
        return row

    def _records(self, local: datetime) -> dict[int, Sequence[Row]]:
        days = freeze_days(local.date(), DAY_FREEZE_DEPTH, self.spec.freeze_gaps)
        day_rows = [self._freeze_row(self.model.local_midnight(d), datetime(d.year, d.month, d.day))
                    for d in reversed(days)]
        months: list[date] = []
        m = local.date().replace(day=1)
        for _ in range(SETTLEMENT_DEPTH):
            months.append(m)
            m = (m - timedelta(days=1)).replace(day=1)
        settle_rows = [self._freeze_row(self.model.local_midnight(d), datetime(d.year, d.month, d.day))
                       for d in reversed(months)]
        out: dict[int, Sequence[Row]] = {FREEZES["day"]: day_rows, FREEZES["settlement"]: settle_rows}
        for name, count in self.spec.events.items():
            table = EVENTS.get(name)
            if table is None:
                continue
            rows = []
            for k in range(count, 0, -1):
                start = datetime.combine(local.date() - timedelta(days=k), datetime.min.time()).replace(hour=8)
                rows.append({EVENT_NUMBER_OAD: Data(DLU, count - k + 1), EVENT_START_OAD: date_time_s(start),
                             EVENT_END_OAD: date_time_s(start + timedelta(minutes=5))})
            out[table.oad] = rows
        return out

    def reply(self, frame: Frame) -> bytes | None:
        """This meter's reply to a request frame, or None."""
        if not frame.server.reaches(self.address):
            return None
        self.requests.append(frame.apdu)
        records = frame.apdu[:2] == b"\x05\x03" or frame.apdu[:1] == b"\x10"
        return respond(frame, self.state(records), preamble=self.spec.reply_preamble)


class _Line:
    """One shared medium (a pty or a TCP port's connections): parses requests, answers."""

    def __init__(self, meters: list[_SimMeter]) -> None:
        self.meters = meters

    def handle(self, buffer: bytearray) -> list[tuple[float, bytes]]:
        """Consume complete request frames from ``buffer``; return (delay, reply bytes)."""
        out: list[tuple[float, bytes]] = []
        for _ in range(len(buffer) + 1):
            used, frame = scan_frame(buffer)
            del buffer[:used]
            if frame is None:
                break
            if frame.from_server:
                continue
            replies = [(m.spec.reply_delay_s, r) for m in self.meters
                       if m.online and (r := m.reply(frame)) is not None]
            if len(replies) <= 1:
                out += replies
                continue
            size = max(len(r) for _, r in replies)         # several answered: they collide
            mixed = bytearray(size)
            for _, r in replies:
                for i, b in enumerate(r):
                    mixed[i] |= b
            out.append((max(d for d, _ in replies), bytes(mixed)))
        return out


def scan_frame(buffer: bytearray) -> tuple[int, Frame | None]:
    """The streaming decoder (kept as one name for the line)."""
    found = scan(buffer)
    return found.used, found.frame


class Dlt698Simulator:
    """Serve simulated DL/T 698.45 meters on ptys and TCP ports on 127.0.0.1."""

    def __init__(self, meters: Sequence[SimDlt698Spec], clock: Clock | None = None,
                 timezone: str = "Asia/Shanghai") -> None:
        ids = [m.id for m in meters]
        if len(set(ids)) != len(ids):
            raise ValueError("simulated meter ids must be unique")
        self.clock: Clock = clock if clock is not None else SystemClock()
        zone = ZoneInfo(timezone)
        self._meters = {m.id: _SimMeter(m, self.clock, zone, timezone) for m in meters}
        self._lines: dict[tuple[str, str], _Line] = {}
        for m in self._meters.values():
            self._lines.setdefault(m.spec.line_key, _Line([])).meters.append(m)
        self._endpoints: dict[tuple[str, str], str | tuple[str, int]] = {}
        self._servers: list[asyncio.Server] = []
        self._ptys: list[PtyPair] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self._handles: set[asyncio.TimerHandle] = set()
        self._started = False

    async def __aenter__(self) -> Dlt698Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open every pty and TCP port (idempotent)."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        for key, line in self._lines.items():
            if key[0] == "pty":
                pty = open_pty()
                self._ptys.append(pty)
                loop.add_reader(pty.master, self._on_pty, pty.master, line, bytearray())
                self._endpoints[key] = pty.path
            else:
                server = await asyncio.start_server(self._connection_handler(line), host="127.0.0.1",
                                                    port=line.meters[0].spec.port)
                self._servers.append(server)
                self._endpoints[key] = ("127.0.0.1", int(server.sockets[0].getsockname()[1]))

    async def stop(self) -> None:
        """Close every pty and port (idempotent)."""
        loop = asyncio.get_running_loop()
        for h in self._handles:
            h.cancel()
        self._handles.clear()
        for pty in self._ptys:
            with contextlib.suppress(Exception):
                loop.remove_reader(pty.master)
            pty.close()
        self._ptys.clear()
        await close_connections(self._servers, self._writers, self._tasks)
        self._started = False

    def _meter(self, meter_id: str) -> _SimMeter:
        try:
            return self._meters[meter_id]
        except KeyError:
            raise KeyError(f"no simulated DL/T 698.45 meter {meter_id!r}") from None

    def serves_at(self, meter_id: str) -> str | tuple[str, int]:
        """Where ``meter_id`` answers: a pty path or (host, port)."""
        key = self._meter(meter_id).spec.line_key
        if key not in self._endpoints:
            raise RuntimeError("start the simulator first")
        return self._endpoints[key]

    def model(self, meter_id: str) -> MeterModel:
        """The value model behind ``meter_id``."""
        return self._meter(meter_id).model

    def state(self, meter_id: str, records: bool = True) -> MeterState:
        """What ``meter_id`` would answer from right now (for tests)."""
        return self._meter(meter_id).state(records)

    def requests(self, meter_id: str) -> list[bytes]:
        """The APDU of every request ``meter_id`` answered, in order."""
        return list(self._meter(meter_id).requests)

    async def stop_meter(self, meter_id: str) -> None:
        """Take one meter off the line: it stays silent until :meth:`start_meter`."""
        self._meter(meter_id).online = False

    async def start_meter(self, meter_id: str) -> None:
        """Bring a stopped meter back."""
        self._meter(meter_id).online = True

    # --- I/O ---------------------------------------------------------------------------------

    def _on_pty(self, master: int, line: _Line, buf: bytearray) -> None:
        try:
            data = os.read(master, 4096)
        except OSError:
            return
        buf += data
        try:
            replies = line.handle(buf)
        except Exception:  # a simulator bug must not kill the event loop's reader
            log.exception("DL/T 698.45 simulator failed to answer")
            return
        for delay, reply in replies:
            if delay <= 0:
                self._pty_write(master, reply)
            else:
                handle = asyncio.get_running_loop().call_later(delay, self._pty_write, master, reply)
                self._handles.add(handle)

    def _pty_write(self, master: int, data: bytes) -> None:
        view = memoryview(data)
        for _ in range(1000):
            if not view:
                return
            try:
                n = os.write(master, view)
            except BlockingIOError:
                n = 0
            except OSError:
                return
            view = view[n:]

    def _connection_handler(self, line: _Line) -> ConnectionHandler:
        return connection_handler(line.handle, self._tasks, self._writers)


def spec_for(meter: SimulatedMeter) -> SimDlt698Spec:
    """The simulator's spec for a configuration's meter (on a pty or a TCP port)."""
    return SimDlt698Spec(
        id=meter.id, address=meter.address, transport="tcp" if meter.link == "tcp" else "pty",
        line=meter.line, seed=meter.seed, base_kw=meter.base_kw, multiplier=meter.multiplier,
        port=(meter.port or 0) if meter.link == "tcp" else 0,
    )


async def serve(meters: Sequence[SimulatedMeter], clock: Clock, timezone: str) -> Dlt698Simulator:
    """Start serving ``meters`` over DL/T 698.45 and return the running simulator (the
    package's :data:`~drivers.simulation.interface.SimulatorFactory`)."""
    simulator = Dlt698Simulator([spec_for(m) for m in meters], clock, timezone)
    await simulator.start()
    return simulator
