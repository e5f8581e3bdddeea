"""DL/T 645 read plans: a profile's points compiled into the fewest requests (pure, no I/O).

:func:`compile_plan` runs once per profile and protocol, at configuration load. Points
that share a block DI (``0001FF00`` = total and tariffs 1–4) and map to at least two
different DIs are read with one block request, each with its fallback of single-DI steps
for a meter that refuses the block; every other point is read with its own DI, and points
on the same DI (``demand_max_kw`` and ``demand_max_kw_at`` on ``01010000``) share one
request. A date point on the meter-clock DI carries the time DI that completes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.dlt645 import catalogue
from drivers.dlt645.codec import ProtocolName
from drivers.dlt645.points import DiPoint
from drivers.dlt645.values import ValueFormat, parse_format
from gateway.errors import ConfigError


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

    @property
    def request_count(self) -> int:
        """Number of requests when every block is supported (:class:`drivers.base.ReadPlan`)."""
        return len(self.steps)


def di_text(di: int, protocol: ProtocolName) -> str:
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
