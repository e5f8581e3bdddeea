"""Simulated Modbus meters: Modbus TCP (a port per meter, or several unit ids on one port),
Modbus RTU framed over TCP, and Modbus RTU on a pty (several unit ids on one line).

A library (tests start it in-process) and the engine behind ``amr-gateway simulate`` and
``amr-gateway demo``. Register images are computed *at request time* from
:meth:`MeterModel.values_at(clock.time()) <drivers.simulation.model.MeterModel.values_at>`
through the meter's profile, so energy advances with the (optionally accelerated) clock
and a test can compute the exact register a read must have returned.

Profile points with ``side: secondary`` expose the model's secondary (displayed) value;
``side: primary`` points expose primary values: energy, power and demand × CT × PT,
voltage × PT, current × CT, power factor and frequency unchanged — the same factors the
gateway's pipeline applies to secondary points. Each value is encoded with
:func:`drivers.modbus.decode.encode_point` (÷ scale, truncated like a display).

Address space per meter and function code: from the lowest to the highest mapped
register; unmapped registers inside it read 0 (so gap-filled plans work); a read outside
it is exception 2, more than 125 registers exception 3, other function codes exception 1.

Why not pymodbus's server: the benchmark serves 1,000–10,000 TCP meters from one process.
A pymodbus server per port costs far more memory and CPU per request than the small
``asyncio.Protocol`` responder here; pymodbus's own server remains the independent peer
in the driver's interoperability tests.

Faults for tests (:meth:`ModbusSimulator.set_fault`): ``silent`` (no reply),
``garbage`` (noise instead of a reply), ``bad_crc``, ``wrong_unit`` (a valid reply from
unit + 1), ``exception`` (exception 4 to every read), ``None`` to heal.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal, cast

from drivers.modbus.decode import encode_point
from drivers.modbus.frames import crc16, rtu_frame
from drivers.modbus.points import RegisterPoint
from drivers.simulation.interface import PointMap, SimulatedMeter
from drivers.simulation.model import MeterModel
from drivers.simulation.pty_pair import PtyPair, open_pty
from gateway.clock import Clock

log = logging.getLogger(__name__)

SimProtocol = Literal["modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp"]
Fault = Literal["silent", "garbage", "bad_crc", "wrong_unit", "exception"]
HOST = "127.0.0.1"
_MBAP = struct.Struct(">HHHB")


@dataclass
class SimMeterSpec:
    """One simulated meter.

    TCP meters with ``port`` 0 get a free port of their own; meters naming the same
    non-zero port share it (several unit ids, as behind a Modbus TCP gateway). RTU meters
    with the same ``line`` share one pty.
    """

    id: str
    protocol: SimProtocol
    unit: int
    profile: PointMap
    seed: int = 0
    ct: Decimal = Decimal(1)
    pt: Decimal = Decimal(1)
    base_kw: float = 40.0
    port: int | None = 0
    line: str = "rtu-1"
    turnaround_s: float = 0.0


def _factor(name: str, ct: Decimal, pt: Decimal) -> Decimal:
    """Primary ÷ secondary for a canonical point (what the gateway multiplies by)."""
    if name.startswith("voltage_"):
        return pt
    if name.startswith("current_"):
        return ct
    if name.startswith(("power_factor", "frequency")) or name.endswith("_at"):
        return Decimal(1)           # ratios and times (demand_max_kw_at) are never multiplied
    return ct * pt


class SimMeter:
    """A meter's model, profile layout and run state."""

    def __init__(self, spec: SimMeterSpec, clock: Clock, timezone: str) -> None:
        self.spec = spec
        self.clock = clock
        self.model = MeterModel(spec.seed, base_kw=spec.base_kw, ct=spec.ct, pt=spec.pt,
                                timezone=timezone)
        self.running = True
        self.fault: Fault | None = None
        self.requests = 0
        self.warned = False
        by_fc: dict[int, list[tuple[RegisterPoint, Decimal]]] = {}
        for name, point in spec.profile.points.items():
            if isinstance(point, RegisterPoint):
                factor = Decimal(1) if point.side == "secondary" else _factor(name, spec.ct, spec.pt)
                by_fc.setdefault(point.function, []).append((point, factor))
        self._points = {fc: sorted(pts, key=lambda x: x[0].address) for fc, pts in by_fc.items()}
        self._space = {fc: (pts[0][0].address, max(p.address + p.width for p, _ in pts))
                       for fc, pts in self._points.items()}
        self._demand_time = "demand_max_kw_at" in spec.profile.points
        self._demand_slot: tuple[int, Decimal] | None = None

    def _demand_at(self, t: float) -> Decimal:
        """When ``demand_max_kw`` was reached, Unix seconds (0: none yet); cached per 15-minute slot."""
        slot = int(t // 900)
        if self._demand_slot is None or self._demand_slot[0] != slot:
            _kw, at = self.model.demand_at(t)
            self._demand_slot = (slot, Decimal(0 if at is None else int(at)))
        return self._demand_slot[1]

    def registers(self, function: int, address: int, count: int) -> list[int] | int:
        """The register image for a read, or a Modbus exception code."""
        if function not in (3, 4):
            return 1
        if not 1 <= count <= 125:
            return 3
        space = self._space.get(function)
        if space is None or address < space[0] or address + count > space[1]:
            return 2
        now = self.clock.time()
        values = self.model.values_at(now)
        if self._demand_time:
            values["demand_max_kw_at"] = self._demand_at(now)
        image = [0] * count
        end = address + count
        for point, factor in self._points[function]:
            if point.address >= end:
                break
            p_end = point.address + point.width
            if p_end <= address:
                continue
            value = values.get(point.name)
            if value is None:
                continue
            regs = encode_point(point, value * factor if factor != 1 else value)
            for i, r in enumerate(regs):
                j = point.address + i - address
                if 0 <= j < count:
                    image[j] = r
        return image

    def true_value(self, name: str, t: float) -> Decimal:
        """What the profile's point ``name`` shows at ``t`` before encoding (for tests)."""
        point = self.spec.profile.points[name]
        value = self.model.values_at(t)[name]
        if isinstance(point, RegisterPoint) and point.side == "primary":
            return value * _factor(name, self.spec.ct, self.spec.pt)
        return value


def _pdu_reply(meter: SimMeter, pdu: bytes) -> bytes:
    """The reply PDU for a request PDU."""
    function = pdu[0]
    if len(pdu) < 5:
        return bytes((function | 0x80, 3))
    address, count = struct.unpack_from(">HH", pdu, 1)
    if meter.fault == "exception":
        return bytes((function | 0x80, 4))
    try:
        result = meter.registers(function, address, count)
    except ValueError as exc:           # a value the profile's type cannot hold
        if not meter.warned:
            meter.warned = True
            log.warning("simulated meter %s: %s; answering exception 4 (server device failure)",
                        meter.spec.id, exc)
        return bytes((function | 0x80, 4))
    if isinstance(result, int):
        return bytes((function | 0x80, result))
    return bytes((function, 2 * count)) + struct.pack(f">{count}H", *result)


class _TcpResponder(asyncio.Protocol):
    """One accepted connection of a simulated Modbus TCP (or RTU-over-TCP) endpoint."""

    def __init__(self, endpoint: _TcpEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream connection's transport (uvloop's is not an asyncio.Transport subclass)
        self.transport = cast(asyncio.Transport, transport)
        self.endpoint.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.endpoint.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.endpoint.rtu:
            _serve_rtu_buffer(self.buf, self.endpoint.meters, self._send)
            return
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 7:
            tid, proto, length, unit = _MBAP.unpack_from(buf, pos)
            if proto != 0 or not 2 <= length <= 254:
                if self.transport is not None:
                    self.transport.abort()
                buf.clear()
                return
            end = pos + 6 + length
            if end > len(buf):
                break
            pdu = bytes(buf[pos + 7:end])
            pos = end
            self._answer(tid, unit, pdu)
        del buf[:pos]

    def _send(self, data: bytes, delay: float) -> None:
        if self.transport is None:
            return
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._write, data)
        else:
            self.transport.write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        meters = self.endpoint.meters
        meter = meters.get(unit)
        if meter is None or not meter.running:
            if len(meters) > 1 and pdu:       # a gateway: "target device failed to respond"
                self._send(_MBAP.pack(tid, 0, 3, unit) + bytes((pdu[0] | 0x80, 11)), 0)
            return
        meter.requests += 1
        fault = meter.fault
        if fault == "silent":
            return
        reply = _pdu_reply(meter, pdu)
        if fault == "wrong_unit":
            unit = (unit + 1) & 0xFF
        elif fault in ("garbage", "bad_crc"):
            self._send(b"\x00\x01\x00\x07\x00\x00\xff" + os.urandom(8), 0)
            return
        self._send(_MBAP.pack(tid, 0, len(reply) + 1, unit) + reply, meter.spec.turnaround_s)


def _serve_rtu_buffer(buf: bytearray, meters: dict[int, SimMeter],
                      send: object) -> None:
    """Answer every complete 8-byte read request in ``buf`` (resynchronising on bad CRCs)."""
    assert callable(send)
    for _ in range(len(buf) + 1):
        if len(buf) < 8:
            return
        frame = bytes(buf[:8])
        crc = crc16(frame[:6])
        if frame[6] != crc & 0xFF or frame[7] != crc >> 8:
            del buf[:1]                 # not a frame start: slide by one byte
            continue
        del buf[:8]
        unit = frame[0]
        meter = meters.get(unit)
        if meter is None or not meter.running or unit == 0:
            continue                    # unknown unit or broadcast: the line stays silent
        meter.requests += 1
        fault = meter.fault
        if fault == "silent":
            continue
        reply_pdu = _pdu_reply(meter, frame[1:6])
        out_unit = (unit + 1) & 0xFF if fault == "wrong_unit" else unit
        out = rtu_frame(out_unit, reply_pdu)
        if fault == "bad_crc":
            out = out[:-1] + bytes(((out[-1] + 1) & 0xFF,))
        elif fault == "garbage":
            out = bytes((0xFF, 0x00, 0xAA, 0x55)) * 3
        send(out, meter.spec.turnaround_s)


@dataclass
class _TcpEndpoint:
    """A listening port and the meters (by unit id) behind it."""

    port: int
    rtu: bool
    meters: dict[int, SimMeter] = field(default_factory=dict)
    server: asyncio.Server | None = None
    connections: set[_TcpResponder] = field(default_factory=set)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _TcpResponder(self), HOST, self.port,
                                               backlog=256)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.connections.clear()
        if server is not None:
            await server.wait_closed()


@dataclass
class _RtuLine:
    """A pty playing an RS-485 line with several slaves."""

    name: str
    meters: dict[int, SimMeter] = field(default_factory=dict)
    pty: PtyPair | None = None
    buf: bytearray = field(default_factory=bytearray)

    def start(self) -> None:
        self.pty = open_pty()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pty.master, self._readable)

    def _readable(self) -> None:
        assert self.pty is not None
        try:
            data = os.read(self.pty.master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:     # no one has the slave open right now
                return
            raise
        self.buf += data
        if len(self.buf) > 4096:
            del self.buf[:-4096]
        _serve_rtu_buffer(self.buf, self.meters, self._send)

    def _send(self, data: bytes, delay: float) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._write, data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.pty is not None and self.pty.master >= 0:
            with contextlib.suppress(BlockingIOError):
                os.write(self.pty.master, data)

    def stop(self) -> None:
        if self.pty is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.pty.master)
            self.pty.close()
            self.pty = None


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class ModbusSimulator:
    """Serves simulated Modbus meters on loopback TCP ports and ptys (see module doc)."""

    def __init__(self, specs: Sequence[SimMeterSpec], clock: Clock, timezone: str = "Asia/Shanghai") -> None:
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise ValueError("simulated meter ids must be unique")
        self.clock = clock
        self.timezone = timezone
        self.meters: dict[str, SimMeter] = {}
        self._tcp: list[_TcpEndpoint] = []
        self._by_port: dict[int, _TcpEndpoint] = {}
        self._own: dict[str, _TcpEndpoint] = {}
        self._lines: dict[str, _RtuLine] = {}
        self._meter_line: dict[str, _RtuLine] = {}
        for spec in specs:
            meter = SimMeter(spec, clock, timezone)
            self.meters[spec.id] = meter
            if spec.protocol == "modbus-rtu":
                line = self._lines.setdefault(spec.line, _RtuLine(spec.line))
                if spec.unit in line.meters:
                    raise ValueError(f"unit {spec.unit} used twice on simulated line {spec.line}")
                line.meters[spec.unit] = meter
                self._meter_line[spec.id] = line
                continue
            rtu = spec.protocol == "modbus-rtu-over-tcp"
            if spec.port:
                ep = self._by_port.get(spec.port)
                if ep is None:
                    ep = self._by_port[spec.port] = _TcpEndpoint(spec.port, rtu)
                    self._tcp.append(ep)
            else:
                ep = _TcpEndpoint(0, rtu)
                self._tcp.append(ep)
            if spec.unit in ep.meters:
                raise ValueError(f"unit {spec.unit} used twice on simulated port {spec.port}")
            ep.meters[spec.unit] = meter
            self._own[spec.id] = ep
        self.started = False

    async def start(self) -> None:
        """Open every port and pty (models are warmed up so the first reads are cheap)."""
        raise_open_file_limit(4 * len(self._tcp) + 1024)
        now = self.clock.time()
        for meter in self.meters.values():
            meter.model.values_at(now)
        try:
            for ep in self._tcp:
                await ep.start()
            for line in self._lines.values():
                line.start()
        except BaseException:
            await self.stop()
            raise
        self.started = True

    async def stop(self) -> None:
        """Close every port and pty; safe to repeat."""
        for ep in self._tcp:
            await ep.stop()
        for line in self._lines.values():
            line.stop()
        self.started = False

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def serves_at(self, meter_id: str) -> tuple[str, int] | str:
        """Where ``meter_id`` answers (:class:`~drivers.simulation.interface.MeterSimulator`)."""
        return self.endpoint(meter_id)

    def endpoint(self, meter_id: str) -> tuple[str, int] | str:
        """``(host, port)`` of a TCP meter, or the pty path of an RTU meter's line."""
        line = self._meter_line.get(meter_id)
        if line is not None:
            if line.pty is None:
                raise RuntimeError("the simulator is not started")
            return line.pty.path
        ep = self._own[meter_id]
        return (HOST, ep.port)

    def model(self, meter_id: str) -> MeterModel:
        """The meter's model (compute the true register at any instant)."""
        return self.meters[meter_id].model

    def set_fault(self, meter_id: str, fault: Fault | None) -> None:
        """Make a meter misbehave (see module doc), or heal it with ``None``."""
        self.meters[meter_id].fault = fault

    async def stop_meter(self, meter_id: str) -> None:
        """Take one meter off the air: its own TCP port closes; shared ports/lines go silent."""
        meter = self.meters[meter_id]
        meter.running = False
        ep = self._own.get(meter_id)
        if ep is not None and all(not m.running for m in ep.meters.values()):
            await ep.stop()

    async def start_meter(self, meter_id: str) -> None:
        """Bring a stopped meter back (on the same port)."""
        meter = self.meters[meter_id]
        meter.running = True
        ep = self._own.get(meter_id)
        if ep is not None and ep.server is None and self.started:
            for attempt in range(50):
                try:
                    await ep.start()
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.05)

    def describe(self) -> list[tuple[str, str, int, str]]:
        """(meter id, protocol, unit, endpoint text) per meter, for printing."""
        rows: list[tuple[str, str, int, str]] = []
        for mid, meter in self.meters.items():
            ep = self.endpoint(mid) if self.started else ("-", 0)
            where = ep if isinstance(ep, str) else f"{ep[0]}:{ep[1]}"
            rows.append((mid, meter.spec.protocol, meter.spec.unit, where))
        return rows


def spec_for(meter: SimulatedMeter) -> SimMeterSpec:
    """The Modbus simulator's spec for a configuration's meter (TCP, RTU over TCP, or RTU)."""
    sim_protocol: SimProtocol = "modbus-rtu"
    if meter.link == "tcp":
        sim_protocol = "modbus-rtu-over-tcp" if meter.protocol == "modbus-rtu-over-tcp" else "modbus-tcp"
    return SimMeterSpec(
        id=meter.id, protocol=sim_protocol, unit=int(meter.address), profile=meter.profile,
        seed=meter.seed, ct=meter.ct, pt=meter.pt, base_kw=meter.base_kw,
        port=meter.port if meter.link == "tcp" else None, line=meter.line,
    )


async def serve(meters: Sequence[SimulatedMeter], clock: Clock, timezone: str) -> ModbusSimulator:
    """Start serving ``meters`` over Modbus and return the running simulator.

    The package's :data:`~drivers.simulation.interface.SimulatorFactory`: the one shape
    every protocol's simulator offers the fleet behind ``amr-gateway simulate`` and the demo.
    """
    simulator = ModbusSimulator([spec_for(m) for m in meters], clock, timezone)
    await simulator.start()
    return simulator
