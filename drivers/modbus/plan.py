"""Read-plan compilation: which Modbus requests read a set of points (pure, no I/O).

A plan is computed once per (meter, schedule) when the configuration is loaded, so the hot
path only walks a tuple of requests. :func:`compile_plan` groups points by function code,
sorts them by address and merges neighbours into the fewest requests that respect the
device's limits (the approach of Telegraf's ``plugins/inputs/modbus/request.go``):

* a request never spans more than ``limits.max_registers_per_request`` registers (≤ 125,
  the protocol limit for FC03/FC04);
* a gap of at most ``limits.gap_fill`` unused registers between two points is read
  through rather than costing a second request (a request costs ~13 characters of
  framing + 2 × t3.5 + the device's turnaround; a register costs 2 characters);
* overlapping points (two names on the same registers) share the read;
* ``limits.one_request_per_point`` (a named workaround for devices that refuse reads
  spanning several values) gives every point its own request;
* ``limits.pause_between_requests_ms`` is carried in the plan for the driver to honour.

Each planned point records its register offset inside its request's reply.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from drivers.modbus.points import ModbusLimits, RegisterPoint
from gateway.errors import ConfigError

#: Function codes a read plan may use: 3 (holding registers) and 4 (input registers).
READ_FUNCTIONS = (3, 4)
MAX_REGISTERS = 125
#: (name, first byte, end byte, signed or None, scale or None, point): see ``ReadRequest.layout``
DecodeStep = tuple[str, int, int, bool | None, Decimal | None, RegisterPoint]
_INT_CODES: dict[tuple[bool, int], str] = {(False, 2): "H", (True, 2): "h", (False, 4): "I", (True, 4): "i",
                                           (False, 8): "Q", (True, 8): "q"}


class DecodeLayout(tuple[DecodeStep, ...]):
    """A request's decode steps (still the tuple of :data:`DecodeStep` it always was) and,
    when every step is a plain big-endian integer and no two overlap, one :class:`struct.Struct`
    that unpacks them all from the reply at once (:attr:`ints`, with :attr:`int_steps`:
    (name, scale or None) per integer, in order).

    Why: the usual profile reads nothing but integers × scale, and one ``unpack_from`` per
    request costs less than a slice and an ``int.from_bytes`` per point.
    """

    ints: struct.Struct | None
    int_steps: tuple[tuple[str, Decimal | None], ...]

    def __new__(cls, steps: Iterable[DecodeStep]) -> DecodeLayout:
        """The layout of ``steps`` with its integer struct, when it can have one."""
        self = super().__new__(cls, steps)
        self.ints, self.int_steps = _int_struct(self)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its steps (a Struct does not pickle); the struct is made again."""
        return (DecodeLayout, (tuple(self),))


def _int_struct(steps: tuple[DecodeStep, ...]) -> tuple[struct.Struct | None, tuple[tuple[str, Decimal | None], ...]]:
    """The struct unpacking every step at once, and (name, scale) per field; (None, ()) when a
    step is no plain integer or overlaps the one before (then each step is decoded alone)."""
    fmt = [">"]
    at = 0
    for _name, start, end, signed, _scale, _point in steps:
        code = None if signed is None else _INT_CODES.get((signed, end - start))
        if code is None or start < at:
            return None, ()
        if start > at:
            fmt.append(f"{start - at}x")
        fmt.append(code)
        at = end
    if not steps:
        return None, ()
    return struct.Struct("".join(fmt)), tuple((name, scale) for name, _s, _e, _g, scale, _p in steps)


@dataclass(frozen=True, slots=True)
class PlannedPoint:
    """A point inside a request: its definition and its first register's offset."""

    point: RegisterPoint
    offset: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: function code, first register, register count, and its points.

    ``pdu`` is the request PDU (function, address, count) prebuilt once, so the driver
    only prepends the unit id / MBAP header and appends the CRC per transaction.
    """

    function: int
    address: int
    count: int
    points: tuple[PlannedPoint, ...]
    pdu: bytes
    #: per point: (name, first byte, end byte, signed for a plain big-endian integer else
    #: None, scale or None when 1, point) — the decoder's table, built once per plan (a
    #: :class:`DecodeLayout` when compiled here)
    layout: tuple[DecodeStep, ...] = ()

    @property
    def reply_bytes(self) -> int:
        """Length of a normal reply PDU: function, byte count, 2 bytes per register."""
        return 2 + 2 * self.count


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The compiled requests for one meter and schedule, in execution order."""

    requests: tuple[ReadRequest, ...]
    pause_between_requests_s: float = 0.0

    @property
    def point_names(self) -> tuple[str, ...]:
        """Every point name the plan reads, in request order."""
        return tuple(pp.point.name for r in self.requests for pp in r.points)

    @property
    def request_count(self) -> int:
        """Requests per execution (:class:`drivers.base.ReadPlan`)."""
        return len(self.requests)

    @property
    def register_count(self) -> int:
        """Total registers read per execution (what the wire pays for)."""
        return sum(r.count for r in self.requests)


_SIGNED: dict[str, bool] = {"u16": False, "i16": True, "u32": False, "i32": True, "u64": False, "i64": True}
_ONE = Decimal(1)


def decode_step(pp: PlannedPoint) -> DecodeStep:
    """The decoder's table row for a planned point (integers in ABCD order get a fast path)."""
    p = pp.point
    start = 2 * pp.offset
    plain = p.word_order == "big" and p.byte_order == "big"
    signed = _SIGNED.get(p.type) if plain else None
    return (p.name, start, start + 2 * p.width, signed, None if p.scale == _ONE else p.scale, p)


def _request(function: int, address: int, count: int, points: list[RegisterPoint]) -> ReadRequest:
    planned = tuple(PlannedPoint(p, p.address - address) for p in points)
    pdu = bytes((function, address >> 8, address & 0xFF, count >> 8, count & 0xFF))
    return ReadRequest(function, address, count, planned, pdu, DecodeLayout(decode_step(pp) for pp in planned))


def _check(points: Sequence[RegisterPoint], limits: ModbusLimits) -> None:
    """Reject what no request could read, with a sentence saying what to change."""
    if not 1 <= limits.max_registers_per_request <= MAX_REGISTERS:
        raise ConfigError(
            f"max_registers_per_request is {limits.max_registers_per_request}; "
            f"set it between 1 and {MAX_REGISTERS} (the Modbus limit for one read)")
    if limits.gap_fill < 0:
        raise ConfigError(f"gap_fill is {limits.gap_fill}; set it to 0 or more registers")
    if limits.pause_between_requests_ms < 0:
        raise ConfigError("pause_between_requests_ms must not be negative")
    for p in points:
        if p.function not in READ_FUNCTIONS:
            raise ConfigError(
                f"point {p.name!r} uses function code {p.function}; use 3 (holding registers) "
                "or 4 (input registers)")
        if p.address < 0 or p.address + p.width > 0x10000:
            raise ConfigError(
                f"point {p.name!r} at address {p.address} ({p.type}) runs past register 65535; "
                "check the address (0-based PDU address, not 4xxxx)")
        if p.width > limits.max_registers_per_request:
            raise ConfigError(
                f"point {p.name!r} ({p.type}, {p.width} registers) does not fit in "
                f"max_registers_per_request = {limits.max_registers_per_request}; raise the limit")


def compile_plan(points: Sequence[RegisterPoint], limits: ModbusLimits) -> ReadPlan:
    """Merge ``points`` into the fewest requests within ``limits`` (see module doc).

    Raises ConfigError for a point no request can read (bad function code, address past
    65535, wider than the request limit) or impossible limits.
    """
    _check(points, limits)
    pause = limits.pause_between_requests_ms / 1000.0
    if limits.one_request_per_point:
        ordered = sorted(points, key=lambda p: (p.function, p.address, p.name))
        return ReadPlan(tuple(_request(p.function, p.address, p.width, [p]) for p in ordered), pause)

    maximum = limits.max_registers_per_request
    requests: list[ReadRequest] = []
    for function in READ_FUNCTIONS:
        group = sorted((p for p in points if p.function == function),
                       key=lambda p: (p.address, -p.width, p.name))
        if not group:
            continue
        start = group[0].address
        end = start + group[0].width          # exclusive
        members = [group[0]]
        for p in group[1:]:
            p_end = p.address + p.width
            new_end = max(end, p_end)
            gap = p.address - end
            if gap <= limits.gap_fill and new_end - start <= maximum:
                end = new_end
                members.append(p)
                continue
            requests.append(_request(function, start, end - start, members))
            start, end, members = p.address, p_end, [p]
        requests.append(_request(function, start, end - start, members))
    return ReadPlan(tuple(requests), pause)
