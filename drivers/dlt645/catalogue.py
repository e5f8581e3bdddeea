"""The DL/T 645 data identifiers amr-gateway knows: value layouts, signs, canonical points.

Why a catalogue of our own: the DI tables of public implementations miss the block DIs,
the daily-freeze DIs and the settlement-day blocks (``docs/protocols/dlt645-2007.md`` §11 #4).
This module answers three questions for the driver and the simulator:

* what a reply to a DI carries (:func:`describe`): one or more *records*, each a fixed
  sequence of value formats. ``00010000`` carries one ``XXXXXX.XX``; ``01010000`` one
  record ``XX.XXXX`` + ``YYMMDDhhmm`` (demand and when); block ``0001FF00`` five records
  (total, 尖, 峰, 平, 谷 — more when a meter has more tariffs);
* whether a quantity is signed (:func:`is_signed`, bit 7 of the most significant byte);
* which DI serves each canonical point (:data:`CANONICAL_2007`, :data:`CANONICAL_1997`),
  the same mapping as ``drivers/dlt645/profiles/dlt645-2007.yaml`` / ``dlt645-1997.yaml`` (a test
  keeps them equal).

``meter_clock`` (design rule): the profile maps it to the date DI (``04000101``, format
``YYMMDDWW``; 1997 ``C010``); the driver completes it with the time DI that
:data:`CLOCK_TIME_DI` names (``04000102`` hhmmss; 1997 ``C011``), re-reading the date if the
time rolled over midnight in between, and reports ``YYYY-MM-DDThh:mm:ss`` in the meter's
own local time.

Settlement-day and daily-freeze identifiers (Python API, not profile points):
``xxxxFF0n`` = block at the n-th previous settlement day (上n结算日); ``050600nn`` = time of
the nn-th previous daily freeze, nn = 01..3E, and with the same nn (DI1 = kind):

========== ============================================ ===================================
DI         daily freeze block (total + 4 tariffs)       canonical point (total only)
========== ============================================ ===================================
050601nn   forward active energy, 5 × XXXXXX.XX         ``energy_import_kwh`` (+ ``_t1``..``_t4``)
050602nn   reverse active energy                        ``energy_export_kwh`` (+ tariffs)
050603nn   combined reactive 1, signed                  ``energy_import_kvarh``
050604nn   combined reactive 2, signed                  ``energy_export_kvarh``
050605nn … quadrant I … IV reactive                     ``energy_q1_kvarh`` … ``energy_q4_kvarh``
050608nn
050609nn   forward active max demand + time,            ``demand_max_kw`` + ``demand_max_kw_at``
           5 × (XX.XXXX + YYMMDDhhmm)
05060Ann   reverse active max demand + time             (none)
========== ============================================ ===================================

Sources: ``docs/protocols/dlt645-2007.md`` §6.5 lists 0506 01…05/08; the demand blocks 0506 09 /
0A (40 bytes each, "日冻结正向/反向有功需量及发生时间总及费率") come from a public terminal
firmware table (repository not identified) and DL/T 645-2007 Annex A.6's freeze layout
(kind 09/0A = max demand, as in the timed freeze 0500xxxx). unverified on real meters:
support varies by model, so the driver treats a refusal of any block but 01 as "this meter
does not freeze that" and the capture falls back (:mod:`gateway.billing.capture`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from drivers.dlt645.codec import ProtocolName
from drivers.dlt645.points import DiPoint
from drivers.dlt645.values import parse_format


@dataclass(frozen=True, slots=True)
class DiInfo:
    """What a reply to one DI carries: ``records`` × ``record`` (a tuple of formats)."""

    di: int
    name: str
    record: tuple[str, ...]
    records: int = 1
    unit: str = ""

    @property
    def record_size(self) -> int:
        """Bytes of one record."""
        return sum(parse_format(f).size for f in self.record)

    @property
    def size(self) -> int:
        """Bytes of the whole reply payload (after the echoed DI), as the standard gives."""
        return self.record_size * self.records


def _b(di: int, n: int) -> int:
    """Byte ``n`` of a DI (0 = DI0)."""
    return (di >> (8 * n)) & 0xFF


_ENERGY_TYPES: Final[dict[int, tuple[str, str]]] = {
    0x00: ("combined active energy", "kWh"),
    0x01: ("forward active energy", "kWh"),
    0x02: ("reverse active energy", "kWh"),
    0x03: ("combined reactive energy 1", "kvarh"),
    0x04: ("combined reactive energy 2", "kvarh"),
    0x05: ("quadrant I reactive energy", "kvarh"),
    0x06: ("quadrant II reactive energy", "kvarh"),
    0x07: ("quadrant III reactive energy", "kvarh"),
    0x08: ("quadrant IV reactive energy", "kvarh"),
    0x09: ("forward apparent energy", "kVAh"),
    0x0A: ("reverse apparent energy", "kVAh"),
}

_TARIFF_NAMES: Final = (
    "total", "tariff 1 (sharp)", "tariff 2 (peak)", "tariff 3 (flat)", "tariff 4 (valley)",
)

#: Instantaneous values (DI3 = 02): DI2 → (name, format, unit, members of the FF block).
_INSTANT: Final[dict[int, tuple[str, str, str, int]]] = {
    0x01: ("voltage", "XXX.X", "V", 3),
    0x02: ("current", "XXX.XXX", "A", 3),
    0x03: ("active power", "XX.XXXX", "kW", 4),
    0x04: ("reactive power", "XX.XXXX", "kvar", 4),
    0x05: ("apparent power", "XX.XXXX", "kVA", 4),
    0x06: ("power factor", "X.XXX", "", 4),
    0x07: ("phase angle", "XXX.X", "°", 3),
}

_MISC_02: Final[dict[int, tuple[str, str, str]]] = {
    0x02800001: ("neutral current", "XXX.XXX", "A"),
    0x02800002: ("grid frequency", "XX.XX", "Hz"),
    0x02800003: ("one-minute average active power", "XX.XXXX", "kW"),
    0x02800004: ("current active demand", "XX.XXXX", "kW"),
    0x02800005: ("current reactive demand", "XX.XXXX", "kvar"),
    0x02800006: ("current apparent demand", "XX.XXXX", "kVA"),
    0x02800007: ("meter temperature", "XXX.X", "°C"),
}

_PARAMS: Final[dict[int, tuple[str, str, str]]] = {
    0x04000101: ("date and weekday", "YYMMDDWW", ""),
    0x04000102: ("time", "hhmmss", ""),
    0x04000103: ("demand period", "NN", "min"),
    0x04000104: ("demand sliding window", "NN", "min"),
    0x04000401: ("communication address", "NNNNNNNNNNNN", ""),
    0x04000402: ("meter number", "NNNNNNNNNNNN", ""),
    0x04000B01: ("settlement day 1", "DDhh", ""),
    0x04000B02: ("settlement day 2", "DDhh", ""),
    0x04000B03: ("settlement day 3", "DDhh", ""),
}

_EVENT_COUNTS: Final[dict[int, str]] = {
    0x03110000: "power-down count",
    0x03300000: "programming count",
    0x03300100: "meter cleared count",
    0x03300200: "demand cleared count",
    0x03300300: "events cleared count",
    0x03300400: "time set count",
    0x03300500: "daily-slot table programming count",
    0x03300600: "time-zone table programming count",
    0x03300C00: "settlement-day programming count",
    0x03300D00: "meter cover opened count",
    0x03300E00: "terminal cover opened count",
}

#: DL/T 645-1997 identifiers (2 bytes). unverified: formats of B640/B650/A010/B010 come
#: from 1997 meter manuals, not from a published frame.
_CAT_1997: Final[dict[int, DiInfo]] = {}


def _add97(di: int, name: str, fmt: tuple[str, ...], unit: str, records: int = 1) -> None:
    _CAT_1997[di] = DiInfo(di, name, fmt, records, unit)


for _base, _name, _unit in ((0x9010, "forward active energy", "kWh"),
                            (0x9020, "reverse active energy", "kWh"),
                            (0x9110, "forward reactive energy", "kvarh"),
                            (0x9120, "reverse reactive energy", "kvarh"),
                            (0x9410, "forward active energy, last month", "kWh"),
                            (0x9420, "reverse active energy, last month", "kWh")):
    for _k in range(5):
        _add97(_base + _k, f"{_name} {_TARIFF_NAMES[_k]}", ("XXXXXX.XX",), _unit)
    _add97(_base + 0xF, f"{_name} block", ("XXXXXX.XX",), _unit, 5)
for _k, _p in enumerate(("A", "B", "C"), start=1):
    _add97(0xB610 + _k, f"voltage {_p}", ("XXX",), "V")
    _add97(0xB620 + _k, f"current {_p}", ("XX.XX",), "A")
    _add97(0xB630 + _k, f"active power {_p}", ("XX.XXXX",), "kW")
_add97(0xB61F, "voltage block", ("XXX",), "V", 3)
_add97(0xB62F, "current block", ("XX.XX",), "A", 3)
_add97(0xB630, "active power total", ("XX.XXXX",), "kW")
_add97(0xB63F, "active power block", ("XX.XXXX",), "kW", 4)
_add97(0xB640, "reactive power total", ("XX.XX",), "kvar")
_add97(0xB650, "power factor total", ("X.XXX",), "")
_add97(0xA010, "forward active maximum demand", ("XX.XXXX",), "kW")
_add97(0xB010, "forward active maximum demand time", ("MMDDhhmm",), "")
_add97(0xC010, "date and weekday", ("YYMMDDWW",), "")
_add97(0xC011, "time", ("hhmmss",), "")
_add97(0xC032, "meter number", ("NNNNNNNNNNNN",), "")
_add97(0xB212, "programming count", ("NNNN",), "")


def describe(di: int, protocol: ProtocolName = "dlt645") -> DiInfo | None:
    """What a reply to ``di`` carries, or None when the catalogue does not know the DI."""
    if protocol == "dlt645-1997":
        return _CAT_1997.get(di)
    di3, di2, di1, di0 = _b(di, 3), _b(di, 2), _b(di, 1), _b(di, 0)
    if di3 == 0x00 and di2 in _ENERGY_TYPES and di0 <= 0x0C:
        name, unit = _ENERGY_TYPES[di2]
        when = "" if di0 == 0 else f" at settlement day -{di0}"
        if di1 == 0xFF:
            return DiInfo(di, f"{name} block{when}", ("XXXXXX.XX",), 5, unit)
        if di1 <= 0x3F:
            tariff = _TARIFF_NAMES[di1] if di1 < 5 else f"tariff {di1}"
            return DiInfo(di, f"{name} {tariff}{when}", ("XXXXXX.XX",), 1, unit)
    if di3 == 0x01 and 0x01 <= di2 <= 0x0A and di0 <= 0x0C:
        record = ("XX.XXXX", "YYMMDDhhmm")
        when = "" if di0 == 0 else f" at settlement day -{di0}"
        if di1 == 0xFF:
            return DiInfo(di, f"maximum demand block, type {di2:02X}{when}", record, 5, "kW")
        if di1 <= 0x3F:
            return DiInfo(di, f"maximum demand and time, type {di2:02X}{when}", record, 1, "kW")
    if di3 == 0x02:
        if di in _MISC_02:
            name, fmt, unit = _MISC_02[di]
            return DiInfo(di, name, (fmt,), 1, unit)
        if di2 in _INSTANT and di0 == 0:
            name, fmt, unit, members = _INSTANT[di2]
            if di1 == 0xFF:
                return DiInfo(di, f"{name} block", (fmt,), members, unit)
            first = 1 if members == 3 else 0      # phases A..C, or total then A..C
            if first <= di1 < first + members:
                return DiInfo(di, f"{name} {('total', 'A', 'B', 'C')[di1]}", (fmt,), 1, unit)
    if di3 == 0x03 and di in _EVENT_COUNTS:
        return DiInfo(di, _EVENT_COUNTS[di], ("XXXXXX",), 1, "")
    if di in _PARAMS:
        name, fmt, unit = _PARAMS[di]
        return DiInfo(di, name, (fmt,), 1, unit)
    if di3 == 0x05 and di2 == 0x06 and 0x01 <= di0 <= 0x3E:
        if di1 == 0x00:
            return DiInfo(di, f"daily freeze -{di0} time", ("YYMMDDhhmm",), 1, "")
        if di1 in DAILY_FREEZE_DEMAND_KINDS:
            return DiInfo(di, f"daily freeze -{di0} {DAILY_FREEZE_DEMAND_KINDS[di1]} block",
                          ("XX.XXXX", "YYMMDDhhmm"), 5, "kW")
        if di1 in _ENERGY_TYPES and 1 <= di1 <= 0x08:
            name, unit = _ENERGY_TYPES[di1]
            return DiInfo(di, f"daily freeze -{di0} {name} block", ("XXXXXX.XX",), 5, unit)
    return None


def is_signed(di: int, protocol: ProtocolName = "dlt645") -> bool:
    """True when the standard makes the quantity behind ``di`` signed (bit 7 of the MSB).

    Combined active energy (0000xxxx), combined reactive (0003/0004xxxx and their demands),
    currents, powers and power factors (0202…0206xxxx, 0280xxxx except frequency).
    DL/T 645-1997 values are taken as unsigned (unverified).
    """
    if protocol == "dlt645-1997":
        return False
    di3, di2 = _b(di, 3), _b(di, 2)
    if di3 == 0x00:
        return di2 in (0x00, 0x03, 0x04)
    if di3 == 0x01:
        return di2 in (0x03, 0x04)
    if di3 == 0x02:
        if di in _MISC_02:
            return di != 0x02800002
        return 0x02 <= di2 <= 0x06
    if di3 == 0x05 and di2 == 0x06:
        return _b(di, 1) in (0x03, 0x04)
    return False


#: Date DI → time DI that completes ``meter_clock`` (see the module docstring).
CLOCK_TIME_DI: Final[dict[int, int]] = {0x04000101: 0x04000102, 0xC010: 0xC011}

#: Settlement day parameters (每月第1/2/3结算日, DDhh).
SETTLEMENT_DAY_DIS: Final = (0x04000B01, 0x04000B02, 0x04000B03)

#: Energy blocks read for a settlement-day snapshot: block DI (DI0 = 0) → point prefix.
SETTLEMENT_BLOCKS: Final[dict[int, str]] = {
    0x0001FF00: "energy_import_kwh",
    0x0002FF00: "energy_export_kwh",
}
#: Single reactive registers read for a settlement-day snapshot: DI (DI0 = 0) → point
#: (combined reactive 1 / 2, signed; quadrant I … IV reactive totals, 0005…0008).
SETTLEMENT_SINGLES: Final[dict[int, str]] = {
    0x00030000: "energy_import_kvarh",
    0x00040000: "energy_export_kvarh",
    0x00050000: "energy_q1_kvarh",
    0x00060000: "energy_q2_kvarh",
    0x00070000: "energy_q3_kvarh",
    0x00080000: "energy_q4_kvarh",
}
#: Maximum demand read for a settlement-day snapshot: DI (DI0 = 0; 0101000n = the n-th previous
#: settlement period's forward active maximum demand, XX.XXXX kW + YYMMDDhhmm) → (value point,
#: time point). The current register (0101 0000) is reset at each settlement instant, so the
#: closed period's maximum is only in this record.
SETTLEMENT_DEMAND: Final[dict[int, tuple[str, str]]] = {0x01010000: ("demand_max_kw", "demand_max_kw_at")}

TARIFF_SUFFIXES: Final = ("", "_t1", "_t2", "_t3", "_t4")

DAILY_FREEZE_DEPTH: Final = 62


def daily_freeze_time_di(n: int) -> int:
    """DI of the time of the n-th previous daily freeze (``050600nn``, n = 1..62)."""
    if not 1 <= n <= DAILY_FREEZE_DEPTH:
        raise ValueError("daily freezes go back 1..62")
    return 0x05060000 | n


def daily_freeze_energy_di(n: int, kind: int = 1) -> int:
    """DI of the n-th previous daily freeze energy block (kind 1 forward, 2 reverse active)."""
    if not 1 <= n <= DAILY_FREEZE_DEPTH:
        raise ValueError("daily freezes go back 1..62")
    return 0x05060000 | (kind << 8) | n


#: Daily-freeze energy blocks: kind (DI1) → point prefix.
DAILY_FREEZE_BLOCKS: Final[dict[int, str]] = {1: "energy_import_kwh", 2: "energy_export_kwh"}
#: Daily-freeze reactive blocks (combined reactive 1 / 2, signed; quadrant I … IV): kind → point
#: (the total).
DAILY_FREEZE_REACTIVE: Final[dict[int, str]] = {
    3: "energy_import_kvarh", 4: "energy_export_kvarh",
    5: "energy_q1_kvarh", 6: "energy_q2_kvarh", 7: "energy_q3_kvarh", 8: "energy_q4_kvarh",
}
#: Daily-freeze maximum-demand blocks: kind → what it holds.
DAILY_FREEZE_DEMAND_KINDS: Final[dict[int, str]] = {
    0x09: "forward active maximum demand and time", 0x0A: "reverse active maximum demand and time",
}
#: The forward active demand block's first record (total) → these points (value, time).
DAILY_FREEZE_DEMAND: Final[dict[int, tuple[str, str]]] = {0x09: ("demand_max_kw", "demand_max_kw_at")}


def daily_freeze_kinds(points: Iterable[str] | None) -> tuple[int, ...]:
    """The daily-freeze blocks (DI1 kinds) that carry ``points`` (None: every supported one).

    Kind 1 (forward active) is always read: it is the freeze's reason to exist, and a meter
    that refuses it has no usable daily freeze.
    """
    wanted = None if points is None else set(points)
    kinds = [1]
    for kind, prefix in DAILY_FREEZE_BLOCKS.items():
        if kind != 1 and (wanted is None or any(p.startswith(prefix) for p in wanted)):
            kinds.append(kind)
    for kind, name in DAILY_FREEZE_REACTIVE.items():
        if wanted is None or name in wanted:
            kinds.append(kind)
    for kind, names in DAILY_FREEZE_DEMAND.items():
        if wanted is None or wanted & set(names):
            kinds.append(kind)
    return tuple(kinds)


def _pt(name: str, di: int, fmt: str, unit: str, side: str = "secondary",
       block: int | None = None, index: int = 0) -> DiPoint:
    return DiPoint(name, di, fmt, unit, "primary" if side == "primary" else "secondary", block, index)


def _canonical_2007() -> tuple[DiPoint, ...]:
    pts: list[DiPoint] = []
    for prefix, kind in (("energy_import_kwh", 0x01), ("energy_export_kwh", 0x02)):
        block = 0x0000FF00 | (kind << 16)
        for k, suffix in enumerate(TARIFF_SUFFIXES):
            di = (kind << 16) | (k << 8)
            pts.append(_pt(prefix + suffix, di, "XXXXXX.XX", "kWh", block=block, index=k))
    pts += [
        _pt("energy_import_kvarh", 0x00030000, "XXXXXX.XX", "kvarh", block=0x0003FF00, index=0),
        _pt("energy_export_kvarh", 0x00040000, "XXXXXX.XX", "kvarh", block=0x0004FF00, index=0),
        *(_pt(f"energy_q{q}_kvarh", (4 + q) << 16, "XXXXXX.XX", "kvarh", block=((4 + q) << 16) | 0xFF00, index=0)
          for q in range(1, 5)),
        _pt("demand_max_kw", 0x01010000, "XX.XXXX", "kW"),
        _pt("demand_max_kw_at", 0x01010000, "YYMMDDhhmm", "", "primary"),
        _pt("power_kw", 0x02030000, "XX.XXXX", "kW", block=0x0203FF00, index=0),
        _pt("power_kw_l1", 0x02030100, "XX.XXXX", "kW", block=0x0203FF00, index=1),
        _pt("power_kw_l2", 0x02030200, "XX.XXXX", "kW", block=0x0203FF00, index=2),
        _pt("power_kw_l3", 0x02030300, "XX.XXXX", "kW", block=0x0203FF00, index=3),
        _pt("power_kvar", 0x02040000, "XX.XXXX", "kvar", block=0x0204FF00, index=0),
        _pt("power_factor", 0x02060000, "X.XXX", "", "primary", block=0x0206FF00, index=0),
    ]
    for k in range(3):
        pts.append(_pt(f"voltage_v_l{k + 1}", 0x02010100 + (k << 8), "XXX.X", "V", block=0x0201FF00, index=k))
    for k in range(3):
        pts.append(_pt(f"current_a_l{k + 1}", 0x02020100 + (k << 8), "XXX.XXX", "A",
                      block=0x0202FF00, index=k))
    pts += [
        _pt("frequency_hz", 0x02800002, "XX.XX", "Hz", "primary"),
        _pt("meter_clock", 0x04000101, "YYMMDDWW", "", "primary"),
        _pt("event_cover_open_count", 0x03300D00, "XXXXXX", "", "primary"),
        _pt("event_terminal_cover_open_count", 0x03300E00, "XXXXXX", "", "primary"),
        _pt("event_programming_count", 0x03300000, "XXXXXX", "", "primary"),
        _pt("event_time_set_count", 0x03300400, "XXXXXX", "", "primary"),
        _pt("event_power_down_count", 0x03110000, "XXXXXX", "", "primary"),
        _pt("event_meter_clear_count", 0x03300100, "XXXXXX", "", "primary"),
        _pt("event_demand_clear_count", 0x03300200, "XXXXXX", "", "primary"),
    ]
    return tuple(pts)


def _canonical_1997() -> tuple[DiPoint, ...]:
    pts: list[DiPoint] = []
    for prefix, base in (("energy_import_kwh", 0x9010), ("energy_export_kwh", 0x9020)):
        for k, suffix in enumerate(TARIFF_SUFFIXES):
            pts.append(_pt(prefix + suffix, base + k, "XXXXXX.XX", "kWh", block=base + 0xF, index=k))
    pts += [
        _pt("energy_import_kvarh", 0x9110, "XXXXXX.XX", "kvarh"),
        _pt("energy_export_kvarh", 0x9120, "XXXXXX.XX", "kvarh"),
        _pt("demand_max_kw", 0xA010, "XX.XXXX", "kW"),
        _pt("demand_max_kw_at", 0xB010, "MMDDhhmm", "", "primary"),
        _pt("power_kw", 0xB630, "XX.XXXX", "kW", block=0xB63F, index=0),
        _pt("power_kw_l1", 0xB631, "XX.XXXX", "kW", block=0xB63F, index=1),
        _pt("power_kw_l2", 0xB632, "XX.XXXX", "kW", block=0xB63F, index=2),
        _pt("power_kw_l3", 0xB633, "XX.XXXX", "kW", block=0xB63F, index=3),
        _pt("power_kvar", 0xB640, "XX.XX", "kvar"),
        _pt("power_factor", 0xB650, "X.XXX", "", "primary"),
    ]
    for k in range(3):
        pts.append(_pt(f"voltage_v_l{k + 1}", 0xB611 + k, "XXX", "V", block=0xB61F, index=k))
    for k in range(3):
        pts.append(_pt(f"current_a_l{k + 1}", 0xB621 + k, "XX.XX", "A", block=0xB62F, index=k))
    pts += [
        _pt("meter_clock", 0xC010, "YYMMDDWW", "", "primary"),
        _pt("event_programming_count", 0xB212, "NNNN", "", "primary"),
    ]
    return tuple(pts)


#: The generic DL/T 645-2007 meter: the points of ``drivers/dlt645/profiles/dlt645-2007.yaml``.
CANONICAL_2007: Final[tuple[DiPoint, ...]] = _canonical_2007()
#: The generic DL/T 645-1997 meter: the points of ``drivers/dlt645/profiles/dlt645-1997.yaml``.
CANONICAL_1997: Final[tuple[DiPoint, ...]] = _canonical_1997()
