"""The DL/T 698.45 objects amr-gateway reads: canonical point → OAD, scaler, unit.

Sources: ``docs/protocols/dlt698-45.md`` §5 (lib catalog, concentrator OAD tables, captures).
An OAD's index byte picks one element of an array attribute (1-based): energy and demand
arrays are [total, tariff 1 … k] (``00100201`` = total, ``00100202`` = tariff 1), power and
power-factor arrays [total, A, B, C], voltage and current [A, B, C].

The scalers are what meters use (attribute 3); the design rule is to read attribute 3 once
per meter and compare (:func:`scaler_oad`). Powers travel in W/var/VA with scaler −1; the
canonical points are in kW/kvar/kVA, so those entries carry ``shift = −3`` (exact, Decimal).

Not profile points but used by the driver and the simulator:

* :data:`CLOCK_OAD` meter clock (date_time_s), :data:`ADDRESS_OAD` communication address
  (octet-string, most significant digit first);
* :data:`FREEZES`: freeze record tables (class 9, attribute 2), read with GET-Record by freeze
  time (RSD 1 on ``20210200``) or the n-th last (RSD 9); :data:`FREEZE_COLUMNS` are the
  columns asked and :func:`freeze_points` maps a row to canonical points;
* :data:`EVENTS`: event record tables for the review rules (class 7 attribute 2; voltage
  loss is class 24 with one table per phase, attributes 7/8/9 = A/B/C per the wisdom
  firmware, **medium**) and :data:`EVENT_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from drivers.dlt698.axdr import Data, DataType, oad_of
from drivers.dlt698.values import element, reading_value

Side = Literal["secondary", "primary"]

DLU: Final = DataType.DOUBLE_LONG_UNSIGNED
DL: Final = DataType.DOUBLE_LONG
LU: Final = DataType.LONG_UNSIGNED
LONG: Final = DataType.LONG
DTS: Final = DataType.DATE_TIME_S


@dataclass(frozen=True, slots=True)
class OadPoint:
    """One canonical point read from an OAD.

    ``field`` picks a member of a structure value (max demand is {value, time}: 0 and 1).
    ``scaler`` is the meter's (attribute 3); ``shift`` converts the meter's unit to ``unit``
    by a power of ten; ``scaler`` None means the value is not a scaled number (a time).
    ``types`` are the Data types accepted for the value.
    """

    name: str
    oad: int
    scaler: int | None
    unit: str
    types: tuple[DataType, ...]
    side: Side = "secondary"
    field: int | None = None
    shift: int = 0
    meter_unit: str = ""

    @property
    def exponent(self) -> int | None:
        """Power of ten applied to the raw integer (scaler + shift), None for non-numbers."""
        return None if self.scaler is None else self.scaler + self.shift

    def value(self, d: Data) -> Decimal | int | str:
        """This point's reading value from the Data read at :attr:`oad`."""
        if self.field is not None:
            d = element(d, self.field + 1)
        return reading_value(d, self.exponent, self.types)


def scaler_oad(oad: int) -> int:
    """The OAD of the Scaler_Unit that belongs to ``oad`` (attribute 3, whole; §4)."""
    return (oad & 0xFFFF0000) | 0x0300


TARIFF_SUFFIXES: Final = ("", "_t1", "_t2", "_t3", "_t4")
PHASES: Final = ("_l1", "_l2", "_l3")

CLOCK_OAD: Final = 0x40000200
ADDRESS_OAD: Final = 0x40010200
FREEZE_TIME_OAD: Final = 0x20210200
FREEZE_NUMBER_OAD: Final = 0x20230200


def _canonical() -> tuple[OadPoint, ...]:
    pts: list[OadPoint] = []
    for prefix, oi in (("energy_import_kwh", 0x0010), ("energy_export_kwh", 0x0020)):
        for k, suffix in enumerate(TARIFF_SUFFIXES):
            pts.append(OadPoint(prefix + suffix, oad_of(oi, 2, k + 1), -2, "kWh", (DLU,), meter_unit="kWh"))
    # Combined reactive 1 / 2 are signed (double-long).
    pts.append(OadPoint("energy_import_kvarh", 0x00300201, -2, "kvarh", (DL,), meter_unit="kvarh"))
    pts.append(OadPoint("energy_export_kvarh", 0x00400201, -2, "kvarh", (DL,), meter_unit="kvarh"))
    for q, oi in enumerate((0x0050, 0x0060, 0x0070, 0x0080), start=1):
        pts.append(OadPoint(f"energy_q{q}_kvarh", oad_of(oi, 2, 1), -2, "kvarh", (DLU,), meter_unit="kvarh"))
    pts.append(OadPoint("demand_max_kw", 0x10100201, -4, "kW", (DLU,), field=0, meter_unit="kW"))
    pts.append(OadPoint("demand_max_kw_at", 0x10100201, None, "", (DTS,), "primary", field=1))
    for name, oi, unit in (("power_kw", 0x2004, "kW"), ("power_kvar", 0x2005, "kvar"), ("power_kva", 0x2006, "kVA")):
        pts.append(OadPoint(name, oad_of(oi, 2, 1), -1, unit, (DL,), shift=-3, meter_unit=unit[1:]))
        if name == "power_kw":
            for k, ph in enumerate(PHASES, start=2):
                pts.append(OadPoint(name + ph, oad_of(oi, 2, k), -1, unit, (DL,), shift=-3, meter_unit="W"))
    pts.append(OadPoint("power_factor", 0x200A0201, -3, "", (LONG,), "primary"))
    for k, ph in enumerate(PHASES, start=1):
        pts.append(OadPoint("voltage_v" + ph, oad_of(0x2000, 2, k), -1, "V", (LU,), meter_unit="V"))
    for k, ph in enumerate(PHASES, start=1):
        pts.append(OadPoint("current_a" + ph, oad_of(0x2001, 2, k), -3, "A", (DL,), meter_unit="A"))
    # 200F's type is medium: long-unsigned (lib, xl OOPMap.c) or double-long-unsigned (one table).
    pts.append(OadPoint("frequency_hz", 0x200F0200, -2, "Hz", (LU, DLU), "primary", meter_unit="Hz"))
    pts.append(OadPoint("meter_clock", CLOCK_OAD, None, "", (DTS,), "primary"))
    # Event counts: class 7 attribute 4 (current record count), medium.
    for name, oi in (("event_cover_open_count", 0x301B), ("event_terminal_cover_open_count", 0x301C),
                     ("event_programming_count", 0x3012), ("event_time_set_count", 0x3016),
                     ("event_power_down_count", 0x3011)):
        pts.append(OadPoint(name, oad_of(oi, 4), None, "", (LU, DLU), "primary"))
    return tuple(pts)


#: Every canonical point of a DL/T 698.45 three-phase meter.
CANONICAL: Final[tuple[OadPoint, ...]] = _canonical()
BY_NAME: Final[Mapping[str, OadPoint]] = {p.name: p for p in CANONICAL}

#: Freeze record tables (class 9, attribute 2).
FREEZES: Final[dict[str, int]] = {
    "instant": 0x50000200, "minute": 0x50020200, "hour": 0x50030200, "day": 0x50040200,
    "settlement": 0x50050200, "month": 0x50060200,
}
#: Columns read from a freeze record: freeze time, then the energy/demand arrays.
FREEZE_COLUMNS: Final[tuple[int, ...]] = (
    FREEZE_TIME_OAD, 0x00100200, 0x00200200, 0x00300200, 0x00400200,
    # quadrant I … IV reactive (the period power factor's registers); a meter whose freeze
    # does not carry them answers null and they are read live at the boundary
    0x00500200, 0x00600200, 0x00700200, 0x00800200,
    0x10100200,
)


def freeze_points(row: Mapping[int, Data]) -> dict[str, Decimal | int | str]:
    """Canonical points of one freeze row (column OAD → Data, index 0 columns).

    Energy arrays give the total and tariffs; a null or missing column gives no points (the
    meter does not freeze that object); the demand array's total gives ``demand_max_kw`` and
    ``_at``. The freeze time itself is ``freeze_time``.
    """
    out: dict[str, Decimal | int | str] = {}
    ft = row.get(FREEZE_TIME_OAD)
    if ft is not None and ft.type != DataType.NULL:
        out["freeze_time"] = reading_value(ft, None, (DTS,))
    for p in CANONICAL:
        column = p.oad & 0xFFFFFF00
        if column not in FREEZE_COLUMNS or column == FREEZE_TIME_OAD:
            continue
        d = row.get(column)
        if d is None or d.type == DataType.NULL:
            continue
        if len(d.items) < (p.oad & 0xFF):
            continue
        out[p.name] = p.value(element(d, p.oad & 0xFF))
    return out


@dataclass(frozen=True, slots=True)
class EventTable:
    """An event record table and what it means for the review rules."""

    name: str
    oad: int
    meaning: str


#: Event tables the review rules use (class 7 attribute 2; voltage loss class 24, per phase).
EVENTS: Final[dict[str, EventTable]] = {e.name: e for e in (
    EventTable("cover_open", 0x301B0200, "meter cover opened (开表盖)"),
    EventTable("terminal_cover_open", 0x301C0200, "terminal cover opened (开端钮盒)"),
    EventTable("programming", 0x30120200, "meter programmed (编程)"),
    EventTable("meter_clear", 0x30130200, "meter cleared (电能表清零)"),
    EventTable("clock_set", 0x30160200, "clock set (校时)"),
    EventTable("power_down", 0x30110200, "power down (掉电)"),
    EventTable("voltage_loss_a", 0x30000700, "phase A voltage loss (失压), medium"),
    EventTable("voltage_loss_b", 0x30000800, "phase B voltage loss (失压), medium"),
    EventTable("voltage_loss_c", 0x30000900, "phase C voltage loss (失压), medium"),
)}
EVENT_NUMBER_OAD: Final = 0x20220200
EVENT_START_OAD: Final = 0x201E0200
EVENT_END_OAD: Final = 0x20200200
EVENT_SOURCE_OAD: Final = 0x20240200
#: Columns read from an event record: record number, start, end (null while open).
EVENT_COLUMNS: Final[tuple[int, ...]] = (EVENT_NUMBER_OAD, EVENT_START_OAD, EVENT_END_OAD)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event: its number, when it started and ended (None while still open)."""

    number: int | None
    start: str | None
    end: str | None


def event_record(row: Mapping[int, Data]) -> EventRecord:
    """An :class:`EventRecord` from one row read with :data:`EVENT_COLUMNS`."""
    def text(oad: int) -> str | None:
        d = row.get(oad)
        if d is None or d.type == DataType.NULL:
            return None
        v = reading_value(d, None, (DTS,))
        return str(v)

    num = row.get(EVENT_NUMBER_OAD)
    number = num.value if num is not None and isinstance(num.value, int) else None
    return EventRecord(number, text(EVENT_START_OAD), text(EVENT_END_OAD))
