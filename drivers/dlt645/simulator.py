"""Simulated DL/T 645-2007 (and -1997) meters on a pseudo-terminal and over TCP.

Each simulated meter takes its values from a :class:`~drivers.simulation.model.MeterModel`
(every register a pure function of simulated time), so a test can compute what the meter
must answer at any instant. Several meters can share one *line*: one pty (an RS-485 bus)
or one TCP port (a serial device server with meters behind it); each answers only its own
address, like on a real bus.

What a simulated meter does (``SimDlt645Spec`` switches the options):

* single DIs and block DIs (``xxxxFFxx``) for energy (import/export active per tariff,
  reactive totals), demand, voltages, currents, powers, power factor, frequency, date and
  time, settlement days, address, event counters; an abnormal reply D1 / 0x02 ("no
  requested data") for anything else, and for every block when ``refuse_blocks`` is set
  (to exercise the driver's fallback);
* ``reply_preamble`` FE bytes in front of each reply;
* follow-up frames: a reply whose DATA would exceed ``max_data_len`` goes out as B1, then
  B2 … 92 for each C = 12 follow-up request (SEQ 1, 2 …);
* daily freezes at local 00:00 of the simulated clock: the 62 most recent days that are not
  in ``freeze_gaps`` (050600nn time; 050601nn / 050602nn active energy blocks; 050603nn /
  050604nn combined reactive 1 / 2 and 050609nn forward active maximum demand + time, each a
  5-value block whose total is the model's register at the freeze instant and whose tariff
  values are "no data" fill, EE). ``freeze_kinds`` names the blocks (DI1) the meter
  freezes; any other is refused (D1 / 0x02), like a meter model without them;
  ``freeze_at`` (default 00:00) is the time each freeze record is *stamped* with (050600nn),
  to play a meter whose freeze is taken at another time of day (a 12:00 freeze offered for a
  00:00 boundary); the values stay those of local 00:00;
* settlement-day snapshots (xxxxFF0n, xxxx0n): registers at the n-th previous settlement
  instant of ``settlement_days`` (reported as 04000B01..03);
* a meter clock (04000101 / 04000102) with a fixed offset and a drift in ppm; a broadcast
  time sync (C = 08) sets it;
* the wildcard read-address (C = 13): the single online meter answers; when several do,
  their replies collide (the bytes are OR-ed, as on a real bus);
* :meth:`Dlt645Simulator.stop_meter` / :meth:`Dlt645Simulator.start_meter` take one meter
  off the line and back (it stays silent meanwhile; its registers keep running).

* forward active maximum demand with its time (01010000 current, 0101000n / 0101FF0n the
  n-th previous settlement period's record): the meter resets its demand at each settlement
  instant, so the current register is ``model.max_demand(last settlement, now)`` and the
  record n ``model.max_demand(settlement n+1, settlement n)``, the time being the end of the
  first 15-minute window that reached it (:meth:`_SimMeter.demand`); quadrant I … IV
  reactive energy totals (0005…0008 0000, at settlement days 0005000n…, daily freezes
  050605nn…050608nn).

Not modelled: per-phase reactive power, per-tariff reactive energy and demand (refused or
"no data" fill), byte timing (a pty passes bytes instantly; ``reply_delay_s`` delays whole
replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo

from drivers.dlt645 import catalogue
from drivers.dlt645.codec import (
    ABNORMAL,
    BROADCAST,
    C_READ,
    C_READ_1997,
    C_READ_ADDRESS,
    C_READ_FOLLOWUP,
    C_TIME_SYNC,
    DIR_REPLY,
    MORE_FOLLOWS,
    NO_REQUESTED_DATA,
    WILDCARD,
    Frame,
    ProtocolName,
    address_matches,
    address_to_wire,
    encode_frame,
    normalize_address,
    scan,
)
from drivers.dlt645.records import nth_previous_settlement
from drivers.dlt645.values import encode_value
from drivers.simulation.interface import SimulatedMeter
from drivers.simulation.meter_clock import SimulatedMeterClock, freeze_days
from drivers.simulation.model import MeterModel
from drivers.simulation.stream_serving import ConnectionHandler, close_connections, connection_handler
from gateway.clock import Clock, SystemClock

log = logging.getLogger(__name__)

_NO_DATA = b"\xee"          # fill byte of a value the meter does not have (docs/protocols/dlt645-2007.md §7)

#: Event-counter DI → the model's event stem (drivers.simulation.faults), added to the
#: spec's starting counts.
EVENT_COUNT_STEMS: dict[int, str] = {
    0x03300D00: "cover_open", 0x03300E00: "terminal_cover_open", 0x03300000: "programming",
    0x03300100: "meter_clear", 0x03300200: "demand_clear", 0x03300400: "time_set",
}

DEFAULT_EVENTS: dict[int, int] = {
    0x03300D00: 1,   # meter cover opened
    0x03300E00: 0,   # terminal cover opened
    0x03300000: 3,   # programming
    0x03300400: 0,   # time set
    0x03110000: 5,   # power down
    0xB212: 3,       # 1997 programming count
}


@dataclass(frozen=True, slots=True)
class SimDlt645Spec:
    """One simulated meter and its quirks.

    Meters with the same ``transport`` and ``line`` share one pty or TCP port (``line``
    defaults to the meter id: a line of its own).
    """

    id: str
    address: str
    transport: Literal["pty", "tcp"] = "tcp"
    line: str = ""
    protocol: ProtocolName = "dlt645"
    seed: int = 1
    base_kw: float = 40.0
    multiplier: Decimal = Decimal(1)
    refuse_blocks: bool = False
    refuse_dis: frozenset[int] = frozenset()
    reply_preamble: int = 0
    max_data_len: int = 200
    reply_delay_s: float = 0.0
    freeze_gaps: frozenset[date] = frozenset()
    freeze_kinds: frozenset[int] = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09})
    freeze_at: time = time(0, 0)
    settlement_days: tuple[tuple[int, int], ...] = ((1, 0),)
    clock_offset_s: float = 0.0
    clock_drift_ppm: float = 0.0
    events: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_EVENTS))
    epoch: float | None = None
    port: int = 0          # TCP port to listen on (0: any free port); the line's first meter decides

    @property
    def line_key(self) -> tuple[str, str]:
        """(transport, line name) that groups meters on one pty or port."""
        return self.transport, self.line or self.id


@dataclass(frozen=True, slots=True)
class SimEndpoint:
    """Where a simulated meter is reachable: a pty path, or a TCP host and port."""

    kind: Literal["pty", "tcp"]
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        return self.path or "" if self.kind == "pty" else f"{self.host}:{self.port}"


class _SimMeter:
    """One meter's state: its spec, model, clock offset, pending follow-up parts."""

    def __init__(self, spec: SimDlt645Spec, clock: Clock, zone: ZoneInfo, timezone: str) -> None:
        self.spec = spec
        self.wire = address_to_wire(spec.address)
        self.addr = normalize_address(spec.address)
        if spec.epoch is None:
            self.model = MeterModel(spec.seed, base_kw=spec.base_kw, multiplier=spec.multiplier,
                                    timezone=timezone)
        else:
            self.model = MeterModel(spec.seed, base_kw=spec.base_kw, multiplier=spec.multiplier,
                                    timezone=timezone, epoch=spec.epoch)
        self.online = True
        self.meter_clock = SimulatedMeterClock(clock, zone, spec.clock_offset_s, spec.clock_drift_ppm)
        self.pending: dict[int, tuple[int, list[bytes]]] = {}
        self.requests: list[tuple[int, int | None]] = []

    # --- clocks (drivers.simulation.meter_clock) --------------------------------------------

    def now(self) -> float:
        """True simulated time (epoch seconds)."""
        return self.meter_clock.now()

    def meter_time(self) -> datetime:
        """The meter's own local wall clock (offset, drift and a ``clock_drift`` fault applied), naive."""
        shown = self.meter_clock.meter_time()
        ahead = self.model.faults.clock_offset_s(self.now())
        return shown + timedelta(seconds=ahead) if ahead else shown

    def set_meter_time(self, local: datetime) -> None:
        """Broadcast time sync: make the meter clock show ``local`` now."""
        self.meter_clock.set_meter_time(local)

    def local_naive(self, t: float) -> datetime:
        """Local wall time of epoch ``t``, naive."""
        return self.meter_clock.local_naive(t)

    def epoch_of(self, local: datetime) -> float:
        """Epoch of a naive local wall time."""
        return self.meter_clock.epoch_of(local)

    # --- freezes ---------------------------------------------------------------------------

    def freeze_days(self) -> list[date]:
        """Days with a daily freeze record, newest first (last 62 days, minus gaps)."""
        today = self.local_naive(self.now()).date()
        return freeze_days(today, catalogue.DAILY_FREEZE_DEPTH, self.spec.freeze_gaps)

    def settlement_time(self, n: int) -> float:
        """Epoch of the n-th previous settlement instant (by the true simulated clock)."""
        now = self.local_naive(self.now())
        return self.epoch_of(nth_previous_settlement(now, self.spec.settlement_days, n))

    # --- values ----------------------------------------------------------------------------

    def payload(self, di: int) -> bytes | None:
        """Value bytes for ``di`` (after the echoed DI), or None: "no requested data"."""
        spec = self.spec
        if di in spec.refuse_dis:
            return None
        if spec.protocol == "dlt645-1997":
            return self._payload_1997(di)
        b1 = (di >> 8) & 0xFF
        if spec.refuse_blocks and b1 == 0xFF:
            return None
        di3, di2, di0 = di >> 24, (di >> 16) & 0xFF, di & 0xFF
        if di3 == 0x00:
            return self._energy(di2, b1, di0)
        if di3 == 0x01:
            return self._demand(di2, b1, di0)
        if di3 == 0x02:
            return self._instant(di)
        if di3 == 0x03:
            stem = EVENT_COUNT_STEMS.get(di)
            if di in spec.events or stem is not None:
                recorded = self.model.events_at(self.now()).get(f"event_{stem}_count", 0) if stem else 0
                return encode_value(spec.events.get(di, 0) + int(recorded), "XXXXXX", clip=True)
            return None
        if di3 == 0x04:
            return self._param(di)
        if di3 == 0x05 and di2 == 0x06:
            return self._freeze(b1, di0)
        return None

    def last_reset(self, t: float) -> float:
        """The meter's demand reset (settlement instant) at or before ``t`` (true simulated clock)."""
        return self.epoch_of(nth_previous_settlement(self.local_naive(t), self.spec.settlement_days, 1))

    def demand(self, period: int, t: float | None = None) -> tuple[Decimal, float | None]:
        """The forward active maximum demand (kW, secondary) and its time (window end, epoch).

        ``period`` 0: the current register at ``t`` (default now), the maximum since the last
        settlement instant (the meter resets its demand there); n ≥ 1: the record of the n-th
        previous settlement period, the maximum over [settlement n+1, settlement n).
        """
        if period == 0:
            now = self.now() if t is None else t
            return self.model.max_demand(self.last_reset(now), now)
        return self.model.max_demand(self.settlement_time(period + 1), self.settlement_time(period))

    def _demand_record(self, value: Decimal, at: float | None, di: int) -> bytes:
        """XX.XXXX + YYMMDDhhmm (the time all zeros while there is no maximum yet)."""
        when = bytes(5) if at is None else encode_value(self.local_naive(at), "YYMMDDhhmm")
        return self._enc(value, "XX.XXXX", di) + when

    def _demand(self, kind: int, tariff: int, period: int) -> bytes | None:
        """0101 xx nn: forward active maximum demand and time, current (nn = 0) or 上nn结算日."""
        if kind != 0x01 or period > 12 or tariff not in (0x00, 0xFF):
            return None
        di = 0x01000000 | (kind << 16) | (tariff << 8) | period
        value, at = self.demand(period)
        record = self._demand_record(value, at, di)
        return record if tariff == 0x00 else record + _NO_DATA * (len(record) * 4)

    def _enc(self, value: Decimal, fmt: str, di: int, *, wrap: bool = False) -> bytes:
        signed = catalogue.is_signed(di, self.spec.protocol)
        return encode_value(value, fmt, signed=signed, wrap=wrap, clip=not wrap)

    def _energy_values(self, t: float, kind: int) -> list[Decimal] | None:
        v = self.model.values_at(t)
        if kind in (0x01, 0x02):
            prefix = "energy_import_kwh" if kind == 0x01 else "energy_export_kwh"
            return [v[prefix + s] for s in catalogue.TARIFF_SUFFIXES]
        if kind == 0x00:
            imp = [v["energy_import_kwh" + s] for s in catalogue.TARIFF_SUFFIXES]
            exp = [v["energy_export_kwh" + s] for s in catalogue.TARIFF_SUFFIXES]
            return [a + b for a, b in zip(imp, exp, strict=True)]
        if kind == 0x03:
            return [v["energy_import_kvarh"]]
        if kind == 0x04:
            return [v["energy_export_kvarh"]]
        if 0x05 <= kind <= 0x08:
            return [v[f"energy_q{kind - 4}_kvarh"]]
        return None

    def _energy(self, kind: int, tariff: int, period: int) -> bytes | None:
        if period > 12:
            return None
        t = self.now() if period == 0 else self.settlement_time(period)
        regs = self._energy_values(t, kind)
        if regs is None:
            return None
        di = (kind << 16) | (tariff << 8) | period
        if tariff == 0xFF:
            if len(regs) < 5:
                return None
            return b"".join(self._enc(r, "XXXXXX.XX", di, wrap=True) for r in regs)
        if tariff >= len(regs):
            return None
        return self._enc(regs[tariff], "XXXXXX.XX", di, wrap=True)

    def _instant(self, di: int) -> bytes | None:
        v = self.model.values_at(self.now())
        table: dict[int, tuple[str, list[str]]] = {
            0x0201: ("XXX.X", ["voltage_v_l1", "voltage_v_l2", "voltage_v_l3"]),
            0x0202: ("XXX.XXX", ["current_a_l1", "current_a_l2", "current_a_l3"]),
            0x0203: ("XX.XXXX", ["power_kw", "power_kw_l1", "power_kw_l2", "power_kw_l3"]),
            0x0206: ("X.XXX", ["power_factor"] * 4),
        }
        if di == 0x02800002:
            return self._enc(v["frequency_hz"], "XX.XX", di)
        if di == 0x02040000:
            return self._enc(v["power_kvar"], "XX.XXXX", di)
        group = table.get(di >> 16)
        if group is None or di & 0xFF:
            return None
        fmt, names = group
        sub = (di >> 8) & 0xFF
        if sub == 0xFF:
            return b"".join(self._enc(v[n], fmt, di) for n in names)
        first = 1 if len(names) == 3 else 0
        if first <= sub < first + len(names):
            return self._enc(v[names[sub - first]], fmt, di)
        return None

    def _param(self, di: int) -> bytes | None:
        mt = self.meter_time()
        if di == 0x04000101:
            return encode_value(mt.date(), "YYMMDDWW")
        if di == 0x04000102:
            return encode_value(mt.time(), "hhmmss")
        if di in (0x04000401, 0x04000402):
            return encode_value(self.addr, "NNNNNNNNNNNN")
        if di in catalogue.SETTLEMENT_DAY_DIS:
            k = catalogue.SETTLEMENT_DAY_DIS.index(di)
            if k < len(self.spec.settlement_days):
                return encode_value(self.spec.settlement_days[k], "DDhh")
            return bytes.fromhex("9999")
        return None

    def _freeze(self, kind: int, n: int) -> bytes | None:
        days = self.freeze_days()
        if not 1 <= n <= len(days):
            return None
        day = days[n - 1]
        if kind == 0x00:
            return encode_value(datetime.combine(day, self.spec.freeze_at), "YYMMDDhhmm")
        if kind not in self.spec.freeze_kinds:
            return None
        frozen = self.model.frozen_daily(day)
        di = 0x05060000 | (kind << 8) | n
        if kind in catalogue.DAILY_FREEZE_BLOCKS:
            prefix = catalogue.DAILY_FREEZE_BLOCKS[kind]
            return b"".join(encode_value(frozen[prefix + s], "XXXXXX.XX", wrap=True)
                            for s in catalogue.TARIFF_SUFFIXES)
        if kind in catalogue.DAILY_FREEZE_REACTIVE:
            total = self._enc(frozen[catalogue.DAILY_FREEZE_REACTIVE[kind]], "XXXXXX.XX", di, wrap=True)
            return total + _NO_DATA * 16                       # the model keeps no per-tariff reactive
        if kind in catalogue.DAILY_FREEZE_DEMAND:
            value, at = self.demand(0, self.model.local_midnight(day))     # as 01010000 at the freeze
            record = self._demand_record(value, at, di)
            return record + _NO_DATA * (len(record) * 4)
        return None

    def _payload_1997(self, di: int) -> bytes | None:
        info = catalogue.describe(di, "dlt645-1997")
        if info is None:
            return None
        t = self.now()
        v = self.model.values_at(t)
        mt = self.meter_time()
        energy = {0x901: "energy_import_kwh", 0x902: "energy_export_kwh"}
        if di >> 4 in energy:
            regs = [v[energy[di >> 4] + s] for s in catalogue.TARIFF_SUFFIXES]
            k = di & 0xF
            if self.spec.refuse_blocks and k == 0xF:
                return None
            picked = regs if k == 0xF else [regs[k]]
            return b"".join(encode_value(r, "XXXXXX.XX", wrap=True) for r in picked)
        singles: dict[int, tuple[str, str]] = {
            0x9110: ("energy_import_kvarh", "XXXXXX.XX"), 0x9120: ("energy_export_kvarh", "XXXXXX.XX"),
            0xB611: ("voltage_v_l1", "XXX"), 0xB612: ("voltage_v_l2", "XXX"), 0xB613: ("voltage_v_l3", "XXX"),
            0xB621: ("current_a_l1", "XX.XX"), 0xB622: ("current_a_l2", "XX.XX"),
            0xB623: ("current_a_l3", "XX.XX"),
            0xB630: ("power_kw", "XX.XXXX"), 0xB631: ("power_kw_l1", "XX.XXXX"),
            0xB632: ("power_kw_l2", "XX.XXXX"), 0xB633: ("power_kw_l3", "XX.XXXX"),
            0xB640: ("power_kvar", "XX.XX"), 0xB650: ("power_factor", "X.XXX"),
            0xA010: ("demand_max_kw", "XX.XXXX"),
        }
        blocks = {0xB61F: (0xB611, 3), 0xB62F: (0xB621, 3), 0xB63F: (0xB630, 4)}
        if di in blocks:
            if self.spec.refuse_blocks:
                return None
            first, count = blocks[di]
            parts = [self._payload_1997(first + k) for k in range(count)]
            return None if any(p is None for p in parts) else b"".join(p for p in parts if p)
        if di in singles:
            name, fmt = singles[di]
            return encode_value(v[name], fmt, clip=True)
        if di == 0xB010:
            return encode_value(mt.replace(day=1, hour=0, minute=0), "MMDDhhmm")
        if di == 0xC010:
            return encode_value(mt.date(), "YYMMDDWW")
        if di == 0xC011:
            return encode_value(mt.time(), "hhmmss")
        if di == 0xC032:
            return encode_value(self.addr, "NNNNNNNNNNNN")
        if di in self.spec.events:
            return encode_value(self.spec.events[di], "NNNN", clip=True)
        return None

    # --- frames ----------------------------------------------------------------------------

    def reply(self, frame: Frame) -> bytes | None:
        """The wire reply of this meter to a request frame addressed to it (None: silent)."""
        spec = self.spec
        if self.model.faults.is_on("silent", self.now()):
            return None
        pre = spec.reply_preamble
        c = frame.control
        if spec.protocol == "dlt645-1997":
            if c != C_READ_1997 or len(frame.data) < 2:
                return None
            di = int.from_bytes(frame.data[:2], "little")
            self.requests.append((c, di))
            payload = self.payload(di)
            if payload is None:
                return self._refuse(c)
            return encode_frame(self.wire, 0x80 | c, frame.data[:2] + payload, preamble=pre)
        if c == C_READ and len(frame.data) >= 4:
            di = int.from_bytes(frame.data[:4], "little")
            self.requests.append((c, di))
            payload = self.payload(di)
            if payload is None:
                return self._refuse(c)
            di_b = frame.data[:4]
            room = spec.max_data_len - 4
            if len(payload) <= room:
                return encode_frame(self.wire, DIR_REPLY | c, di_b + payload, preamble=pre)
            first, rest = payload[:room], payload[room:]
            step = max(1, spec.max_data_len - 5)
            self.pending[di] = (1, [rest[i : i + step] for i in range(0, len(rest), step)])
            return encode_frame(self.wire, DIR_REPLY | MORE_FOLLOWS | c, di_b + first, preamble=pre)
        if c == C_READ_FOLLOWUP and len(frame.data) >= 5:
            di = int.from_bytes(frame.data[:4], "little")
            seq = frame.data[4]
            self.requests.append((c, di))
            expected, parts = self.pending.get(di, (0, []))
            if not parts or seq != expected:
                return self._refuse(c)
            part = parts.pop(0)
            more = bool(parts)
            if more:
                self.pending[di] = (expected + 1, parts)
            else:
                self.pending.pop(di, None)
            control = DIR_REPLY | c | (MORE_FOLLOWS if more else 0)
            return encode_frame(self.wire, control, frame.data[:4] + part + bytes([seq]), preamble=pre)
        if c == C_READ_ADDRESS:
            self.requests.append((c, None))
            return encode_frame(self.wire, DIR_REPLY | c, self.wire, preamble=pre)
        return None

    def _refuse(self, control: int) -> bytes:
        """Abnormal reply: error byte 0x02, no requested data."""
        return encode_frame(self.wire, DIR_REPLY | ABNORMAL | control, bytes([NO_REQUESTED_DATA]),
                            preamble=self.spec.reply_preamble)


class _Line:
    """One shared medium (a pty or a TCP port's connections): parses requests, answers."""

    def __init__(self, meters: list[_SimMeter]) -> None:
        self.meters = meters

    def handle(self, buffer: bytearray) -> list[tuple[float, bytes]]:
        """Consume complete request frames from ``buffer``; return (delay, reply bytes)."""
        out: list[tuple[float, bytes]] = []
        for _ in range(len(buffer) + 1):
            found = scan(buffer)
            del buffer[: found.used]
            frame = found.frame
            if frame is None:
                break
            if frame.is_reply:
                continue
            out.extend(self._answer(frame))
        return out

    def _answer(self, frame: Frame) -> list[tuple[float, bytes]]:
        online = [m for m in self.meters if m.online]
        if frame.control == C_TIME_SYNC and frame.address == BROADCAST and len(frame.data) == 6:
            d = frame.data.hex()
            try:
                local = datetime(2000 + int(d[10:12]), int(d[8:10]), int(d[6:8]),
                                 int(d[4:6]), int(d[2:4]), int(d[0:2]))
            except ValueError:
                return []
            for m in online:
                m.set_meter_time(local)
            return []
        if frame.address in (BROADCAST,):
            return []
        targets = [m for m in online if address_matches(frame.address, m.wire)]
        if frame.address == WILDCARD and frame.control != C_READ_ADDRESS and len(targets) > 1:
            targets = targets[:0]
        replies = [(m.spec.reply_delay_s, r) for m in targets if (r := m.reply(frame)) is not None]
        if len(replies) <= 1:
            return replies
        # Several meters answer at once: on a real bus their bytes collide.
        size = max(len(r) for _, r in replies)
        mixed = bytearray(size)
        for _, r in replies:
            for i, b in enumerate(r):
                mixed[i] |= b
        return [(max(d for d, _ in replies), bytes(mixed))]


class Dlt645Simulator:
    """Serve simulated DL/T 645 meters on ptys and TCP ports on 127.0.0.1.

    ``clock`` drives the meters' registers (a ScaledClock for accelerated time);
    ``timezone`` is the meters' local zone (daily freezes at local 00:00).
    """

    def __init__(
        self,
        meters: Sequence[SimDlt645Spec],
        clock: Clock | None = None,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        ids = [m.id for m in meters]
        if len(set(ids)) != len(ids):
            raise ValueError("simulated meter ids must be unique")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timezone = timezone
        zone = ZoneInfo(timezone)
        self._meters = {m.id: _SimMeter(m, self.clock, zone, timezone) for m in meters}
        self._lines: dict[tuple[str, str], _Line] = {}
        for m in self._meters.values():
            line = self._lines.setdefault(m.spec.line_key, _Line([]))
            line.meters.append(m)
        self._endpoints: dict[tuple[str, str], SimEndpoint] = {}
        self._servers: list[asyncio.Server] = []
        self._ptys: list[tuple[int, int]] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self._handles: set[asyncio.TimerHandle] = set()
        self._pty_out: dict[int, bytearray] = {}
        self._started = False

    async def __aenter__(self) -> Dlt645Simulator:
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
            kind = key[0]
            if kind == "pty":
                master, slave = os.openpty()
                tty.setraw(slave)
                os.set_blocking(master, False)
                self._ptys.append((master, slave))
                buf = bytearray()
                loop.add_reader(master, self._on_pty, master, line, buf)
                self._endpoints[key] = SimEndpoint("pty", path=os.ttyname(slave))
            else:
                server = await asyncio.start_server(
                    self._connection_handler(line), host="127.0.0.1", port=line.meters[0].spec.port)
                self._servers.append(server)
                port = server.sockets[0].getsockname()[1]
                self._endpoints[key] = SimEndpoint("tcp", host="127.0.0.1", port=port)

    async def stop(self) -> None:
        """Close every pty and port (idempotent)."""
        loop = asyncio.get_running_loop()
        for h in self._handles:
            h.cancel()
        self._handles.clear()
        for master, slave in self._ptys:
            with contextlib.suppress(Exception):
                loop.remove_reader(master)
            with contextlib.suppress(Exception):
                loop.remove_writer(master)
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._ptys.clear()
        await close_connections(self._servers, self._writers, self._tasks)
        self._started = False

    # --- lookup and control ----------------------------------------------------------------

    def _meter(self, meter_id: str) -> _SimMeter:
        try:
            return self._meters[meter_id]
        except KeyError:
            raise KeyError(f"no simulated DL/T 645 meter {meter_id!r}") from None

    def endpoint(self, meter_id: str) -> SimEndpoint:
        """Where ``meter_id`` is served (after :meth:`start`)."""
        key = self._meter(meter_id).spec.line_key
        if key not in self._endpoints:
            raise RuntimeError("start the simulator first")
        return self._endpoints[key]

    def serves_at(self, meter_id: str) -> str | tuple[str, int]:
        """Where ``meter_id`` answers (:class:`~drivers.simulation.interface.MeterSimulator`)."""
        ep = self.endpoint(meter_id)
        if ep.kind == "pty":
            return str(ep.path)
        return (str(ep.host), int(ep.port or 0))

    def model(self, meter_id: str) -> MeterModel:
        """The value model behind ``meter_id``."""
        return self._meter(meter_id).model

    def spec(self, meter_id: str) -> SimDlt645Spec:
        """The spec of ``meter_id``."""
        return self._meter(meter_id).spec

    def meter_time(self, meter_id: str) -> datetime:
        """The meter's own clock (local, naive) right now."""
        return self._meter(meter_id).meter_time()

    def demand(self, meter_id: str, period: int = 0, t: float | None = None) -> tuple[Decimal, float | None]:
        """The TRUE maximum demand of ``meter_id`` (kW secondary, unrounded) and its time (epoch).

        ``period`` 0: the current register at ``t`` (default now); n: the n-th previous
        settlement period's record (see ``_SimMeter.demand``).
        """
        return self._meter(meter_id).demand(period, t)

    def freeze_days(self, meter_id: str) -> list[date]:
        """Days that have a daily freeze record on ``meter_id``, newest first."""
        return self._meter(meter_id).freeze_days()

    def requests(self, meter_id: str) -> list[tuple[int, int | None]]:
        """(control, DI) of every request ``meter_id`` answered or refused, in order."""
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
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        buf += data
        try:
            replies = line.handle(buf)
        except Exception:  # a simulator bug must not kill the event loop's reader
            log.exception("DL/T 645 simulator failed to answer")
            return
        for delay, reply in replies:
            self._later(delay, self._pty_write, master, reply)

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        loop = asyncio.get_running_loop()
        if delay <= 0:
            fn(*args)
            return
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            if handle is not None:
                self._handles.discard(handle)
            fn(*args)

        handle = loop.call_later(delay, run)
        self._handles.add(handle)

    def _pty_write(self, master: int, data: bytes) -> None:
        pending = self._pty_out.setdefault(master, bytearray())
        pending += data
        self._pty_flush(master)

    def _pty_flush(self, master: int) -> None:
        pending = self._pty_out.get(master)
        loop = asyncio.get_running_loop()
        if not pending:
            with contextlib.suppress(Exception):
                loop.remove_writer(master)
            return
        try:
            n = os.write(master, pending)
        except BlockingIOError:
            n = 0
        except OSError:
            pending.clear()
            return
        del pending[:n]
        if pending:
            loop.add_writer(master, self._pty_flush, master)
        else:
            with contextlib.suppress(Exception):
                loop.remove_writer(master)

    def _connection_handler(self, line: _Line) -> ConnectionHandler:
        return connection_handler(line.handle, self._tasks, self._writers)


def spec_for(meter: SimulatedMeter) -> SimDlt645Spec:
    """The DL/T 645 simulator's spec for a configuration's meter (on a pty or a TCP port)."""
    return SimDlt645Spec(
        id=meter.id, address=meter.address, transport="tcp" if meter.link == "tcp" else "pty",
        line=meter.line, protocol="dlt645-1997" if meter.protocol == "dlt645-1997" else "dlt645",
        seed=meter.seed, base_kw=meter.base_kw, multiplier=meter.multiplier,
        port=meter.port or 0 if meter.link == "tcp" else 0,
    )


async def serve(meters: Sequence[SimulatedMeter], clock: Clock, timezone: str) -> Dlt645Simulator:
    """Start serving ``meters`` over DL/T 645 and return the running simulator.

    The package's :data:`~drivers.simulation.interface.SimulatorFactory`: the one shape
    every protocol's simulator offers the fleet behind ``amr-gateway simulate`` and the demo.
    """
    simulator = Dlt645Simulator([spec_for(m) for m in meters], clock, timezone)
    await simulator.start()
    return simulator
