"""From a driver's raw point results to a :class:`~gateway.model.Reading`.

The multiplier is applied here, with the factors of :mod:`gateway.multiplier` (the one place
the CT×PT rule lives, shared with billing; terminal practice: docs/billing-rules.md §3):
voltage × PT, current × CT, power/energy/demand × CT × PT, power factor and frequency never —
and only for points the profile marks ``side: secondary``. ``raw`` always keeps what the
meter showed. Values outside a physical range are kept as raw but flagged ``invalid``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from fnmatch import fnmatchcase

from gateway.identity_memo import IdentityMemo
from gateway.model import PointResult, PointValue, Quality, Reading, Value
from gateway.multiplier import profile_factors
from gateway.settings import MeterSettings, Profile

_ONE = Decimal(1)


def select_points(names: list[str] | tuple[str, ...], patterns: tuple[str, ...]) -> list[str]:
    """The profile points a schedule asks for (glob patterns such as ``energy_*``)."""
    return [n for n in names if any(fnmatchcase(n, p) for p in patterns)]


_RANGES: dict[str, tuple[float, float]] = {
    "frequency_hz": (40.0, 70.0),
    "power_factor": (-1.0001, 1.0001),
}


_RangeRule = tuple[float, float, str] | None  # (lo, hi, what): what = "range", "cumulative", "voltage"
_RANGE_RULES: dict[str, _RangeRule] = {}


def _range_rule(name: str) -> _RangeRule:
    """The plausibility rule for a point name (worked out once per name)."""
    if name in _RANGE_RULES:
        return _RANGE_RULES[name]
    rule: _RangeRule = None
    rng = _RANGES.get(name)
    if rng is None and name.startswith("power_factor"):     # power_factor_l1 … as power_factor
        rng = _RANGES["power_factor"]
    if rng is not None:
        rule = (rng[0], rng[1], "range")
    elif name.startswith(("energy_import", "energy_export")):
        rule = (0.0, math.inf, "cumulative")
    elif name.startswith("voltage_"):
        rule = (0.0, math.inf, "voltage")
    if len(_RANGE_RULES) < 10_000:
        _RANGE_RULES[name] = rule
    return rule


def _out_of_range(rule: tuple[float, float, str], value: Decimal | float | int) -> str | None:
    """Why ``value`` breaks ``rule``, or None when it is plausible."""
    lo, hi, what = rule
    if lo <= float(value) <= hi:
        return None
    if what == "cumulative":
        return f"a cumulative register cannot be negative ({value})"
    if what == "voltage":
        return f"a voltage cannot be negative ({value})"
    return f"{value} is outside the physical range {lo:g}..{hi:g}"


_PointEntry = tuple[str, Decimal, _RangeRule]   # unit, multiplier, plausibility rule
_Bounds = tuple[Decimal, Decimal | None] | None
_FastEntry = tuple[str, Decimal | None, _Bounds]
"""unit, multiplier (None when it equals 1), and the rule's bounds as exact Decimals (the
upper one None when infinite; None without a rule): what ``build`` needs for a good
Decimal, the usual point."""
_TABLES: IdentityMemo[Profile, tuple[dict[str, _PointEntry], dict[str, _FastEntry]]] = IdentityMemo()
"""(profile, CT, PT) → the build tables of :func:`_tables`; bounded, so the profiles a reload
replaced are not kept alive."""


def _bounds(rule: _RangeRule) -> _Bounds:
    """A rule's bounds as exact Decimals: a Decimal within them is within the float bounds
    after ``float()`` too (rounding to float is monotonic and the bounds are floats)."""
    if rule is None:
        return None
    lo, hi, _what = rule
    return Decimal(lo), None if hi == math.inf else Decimal(hi)


def _tables(profile: Profile, ct: Decimal, pt: Decimal) -> tuple[dict[str, _PointEntry], dict[str, _FastEntry]]:
    """Unit, multiplier and range rule per point, worked out once and shared by every meter
    with the same profile and ratios (``build`` runs for every reading), and the same for
    ``build``'s path for a good Decimal (:data:`_FastEntry`)."""
    cached = _TABLES.get(profile, (ct, pt))
    if cached is not None:
        return cached
    factors = profile_factors(profile, ct, pt)
    table = {name: (point.unit, factors.get(name, _ONE), _range_rule(name)) for name, point in profile.points.items()}
    fast = {name: (unit, None if factor == _ONE else factor, _bounds(rule))
            for name, (unit, factor, rule) in table.items()}
    return _TABLES.put(profile, (table, fast), (ct, pt))


class ReadingBuilder:
    """Builds readings for one meter: multipliers and units resolved once, at load."""

    __slots__ = ("_fast", "_table", "bus", "ct", "customer", "meter", "pt")

    def __init__(self, meter: MeterSettings, profile: Profile) -> None:
        self.meter = meter.id
        self.customer = meter.customer
        self.bus = meter.bus
        self.ct = meter.ct_ratio.factor
        self.pt = meter.pt_ratio.factor
        self._table, self._fast = _tables(profile, self.ct, self.pt)

    def build(
        self, schedule: str, slot: float, ts: float, results: Mapping[str, PointResult]
    ) -> Reading:
        """A reading from a driver's results; overall quality is the first failure's, else good."""
        points: dict[str, PointValue] = {}
        overall: Quality = "good"
        error: str | None = None
        value: Value
        table = self._table
        fast = self._fast
        for name, res in results.items():
            raw = res.raw
            known = fast.get(name)
            if known is not None and type(raw) is Decimal and res.quality == "good":
                # the usual point: a good Decimal of a profile point, plausible at a glance
                unit, multiplier, bounds = known
                value = raw if multiplier is None else raw * multiplier
                if bounds is None:
                    points[name] = PointValue(raw, value, unit)
                    continue
                try:
                    plausible = bounds[0] <= raw and (bounds[1] is None or raw <= bounds[1])
                except ArithmeticError:     # NaN: the general test below says what it is
                    plausible = False
                if plausible:
                    points[name] = PointValue(raw, value, unit)
                    continue
            entry = table.get(name)
            unit, factor, rule = entry if entry is not None else ("", _ONE, _range_rule(name))
            if res.quality != "good" or raw is None:
                quality: Quality = res.quality if res.quality != "good" else "invalid"
                points[name] = PointValue(raw, None, unit, quality, res.reason or "no value")
                if overall == "good":
                    overall = points[name].quality
                    error = f"{name}: {res.reason}" if res.reason else name
                continue
            value = raw
            if isinstance(raw, str):
                points[name] = PointValue(raw, value, unit)
                continue
            if factor != _ONE:
                value = raw * factor if isinstance(raw, Decimal) else Decimal(repr(raw)) * factor
            problem = None if rule is None else _out_of_range(rule, raw)
            if problem is not None:
                points[name] = PointValue(raw, value, unit, "invalid", problem)
                if overall == "good":
                    overall, error = "invalid", f"{name}: {problem}"
                continue
            points[name] = PointValue(raw, value, unit)
        # by position: a dataclass's __init__ takes keywords at about twice the cost
        return Reading(self.meter, self.customer, self.bus, schedule, slot, ts, points, overall, error,
                       self.ct, self.pt)

    def failed(self, schedule: str, slot: float, ts: float, quality: Quality, reason: str,
               points: list[str]) -> Reading:
        """A failed read, recorded as a failed read: every point null with the reason."""
        table = self._table
        pts = {n: PointValue(None, None, table[n][0] if n in table else "", quality, None) for n in points}
        return Reading(
            meter=self.meter, customer=self.customer, bus=self.bus, schedule=schedule, slot=slot,
            ts=ts, points=pts, quality=quality, error=reason, ct=self.ct, pt=self.pt,
        )
