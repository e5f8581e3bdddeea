"""Faults a simulated meter can be switched into, one per review rule, for tests and the demo.

A :class:`FaultSet` belongs to a :class:`~drivers.simulation.model.MeterModel`; while a fault
is on, :meth:`MeterModel.values_at` shows the healthy model's values changed as below from
the instant it was switched on (``since``, simulated time). Switching off ends the change
from then on (what the meter showed while the fault was on stays its history: a daily
freeze taken during a fault is read later as it was):
registers go on advancing with the healthy load from what they showed then (a stopped
register resumes where it stood, one that went back stays lower), and the meter's event
records stay, as a real meter's do.

=================== ================================================ =======================
fault               what the meter shows from ``since`` on           rule it trips
=================== ================================================ =======================
backwards           import total and the tariff in force fall by      register_decrease
                    ``amount`` kWh (default 10)
stop                every energy register stays at its ``since``      meter_stopped
                    value; power still flows
fast                import advances ``amount`` × (default 3) as fast  meter_fast
clock_drift         the meter clock runs ``amount`` s (default 900)   clock_deviation
                    ahead (served by the protocol simulator)
silent              the meter does not answer                         read_failure (all of a
                    (served by the protocol simulator)                bus: bus_failure)
phase_loss          phase ``amount`` (default 1) at 30 % of nominal;  phase_loss, voltage_loss
                    the meter records a voltage loss on it
zero_load           energies stand still and power, currents are 0    zero_consumption
reverse             import stands still, export advances as import    reverse_energy
                    did (a reversed CT); power negative
demand_over         maximum demand shows ``amount`` kW (secondary)     demand_over_contract
low_pf              reactive import grows ``amount`` (default 1.0)    low_power_factor
                    × the active energy more
tariff_mismatch     the total shows ``amount`` kWh (default 0.50)     tariff_sum_mismatch
                    more than the sum of its tariffs
cover_open,         the event counter goes up by one at ``since``;    the event of that name
terminal_cover_open the record starts then and (cover events) ends    (time_set → clock_set)
programming,        when switched off
meter_clear,
demand_clear,
time_set,
current_reversal
=================== ================================================ =======================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Final
from zoneinfo import ZoneInfo

#: Event-record stems a meter keeps (the ``event_<stem>_count`` points).
EVENT_STEMS: Final = (
    "cover_open", "terminal_cover_open", "programming", "meter_clear", "demand_clear", "time_set",
    "voltage_loss_l1", "voltage_loss_l2", "voltage_loss_l3",
    "current_reversal_l1", "current_reversal_l2", "current_reversal_l3",
)
#: Faults that only add an event record.
EVENT_FAULTS: Final = (
    "cover_open", "terminal_cover_open", "programming", "meter_clear", "demand_clear", "time_set",
    "current_reversal",
)
#: Event records that last while the fault is on (the others are instants).
_LASTING: Final = ("cover_open", "terminal_cover_open", "current_reversal")

DEFAULT_AMOUNT: Final[Mapping[str, Decimal]] = {
    "backwards": Decimal(10), "fast": Decimal(3), "clock_drift": Decimal(900), "phase_loss": Decimal(1),
    "demand_over": Decimal(100), "low_pf": Decimal(1), "tariff_mismatch": Decimal("0.50"),
    "current_reversal": Decimal(1),
}
FAULTS: Final = (
    "backwards", "stop", "fast", "clock_drift", "silent", "phase_loss", "zero_load", "reverse",
    "demand_over", "low_pf", "tariff_mismatch", *EVENT_FAULTS,
)
_CENT: Final = Decimal("0.01")
_IMP_T: Final = tuple(f"energy_import_kwh_t{k}" for k in range(1, 5))
_EXP_T: Final = tuple(f"energy_export_kwh_t{k}" for k in range(1, 5))
_ENERGY: Final = ("energy_import_kwh", *_IMP_T, "energy_export_kwh", *_EXP_T,
                  "energy_import_kvarh", "energy_export_kvarh")
_FLOWS: Final = ("power_kw", "power_kw_l1", "power_kw_l2", "power_kw_l3", "power_kvar",
                 "current_a_l1", "current_a_l2", "current_a_l3")


@dataclass(slots=True)
class Fault:
    """One fault that is on: since when, how much, and the healthy values at that instant."""

    name: str
    since: float
    amount: Decimal
    base: dict[str, Decimal]


@dataclass(slots=True)
class EventRecord:
    """One event the meter recorded (start; end once over)."""

    start: float
    end: float | None


def _floor(v: Decimal) -> Decimal:
    return v.quantize(_CENT, rounding=ROUND_FLOOR)


@dataclass(slots=True)
class FaultSet:
    """The faults a meter is in, and the event records they left."""

    on: dict[str, Fault] = field(default_factory=dict)
    records: dict[str, list[EventRecord]] = field(default_factory=dict)
    #: what a fault that ended left on the registers (a stopped register resumes from where it
    #: stood, one that went back stays lower): register → offset, added from ``since`` on
    offsets: list[tuple[float, dict[str, Decimal]]] = field(default_factory=list)
    #: faults switched off, with when: what the meter showed while they were on stays its
    #: history (a daily freeze or an event record taken then is read later as it was)
    past: list[tuple[Fault, float]] = field(default_factory=list)

    def set(self, name: str, t: float, healthy: Callable[[float], dict[str, Decimal]],
            amount: Decimal | float | None = None) -> None:
        """Switch ``name`` on at simulated time ``t`` (again: a new start)."""
        if name not in FAULTS:
            raise ValueError(f"unknown simulator fault {name!r}; known: {', '.join(FAULTS)}")
        amt = Decimal(str(amount)) if amount is not None else DEFAULT_AMOUNT.get(name, Decimal(0))
        self.on[name] = Fault(name, t, amt, self._offset(t, healthy(t)))
        stem = self._stem(name, amt)
        if stem is not None:
            self.records.setdefault(stem, []).append(EventRecord(t, None if stem.startswith(_LASTING) or
                                                                 stem.startswith("voltage_loss") else t))

    def clear(self, name: str, t: float, healthy: Callable[[float], dict[str, Decimal]]) -> None:
        """Switch ``name`` off at ``t`` (a lasting event record ends then).

        The registers go on from what the meter showed at ``t``: the difference the fault
        made stays as an offset, so no register jumps back (which would itself be an event).
        """
        fault = self.on.get(name)
        if fault is None:
            return
        shown = self.apply(t, healthy(t))
        del self.on[name]
        after = self.apply(t, healthy(t))
        delta = {n: shown[n] - after[n] for n in _ENERGY if shown[n] != after[n]}
        if name == "tariff_mismatch":   # the tariffs catch up with the total instead
            fullest = max(_IMP_T, key=lambda n: after[n])
            delta[fullest] = delta.get(fullest, Decimal(0)) + fault.amount
        if delta:
            self.offsets.append((t, delta))
        self.past.append((fault, t))
        stem = self._stem(name, fault.amount)
        if stem is not None:
            for rec in self.records.get(stem, []):
                if rec.end is None:
                    rec.end = t

    @staticmethod
    def _stem(name: str, amount: Decimal) -> str | None:
        if name == "current_reversal":
            return f"current_reversal_l{int(amount)}"
        if name in EVENT_FAULTS:
            return name
        if name == "phase_loss":
            return f"voltage_loss_l{int(amount)}"
        return None

    def is_on(self, name: str, t: float) -> bool:
        """Whether ``name`` is on at ``t``."""
        f = self.on.get(name)
        return f is not None and t >= f.since

    def clock_offset_s(self, t: float) -> float:
        """How far the meter clock is ahead at ``t`` (``clock_drift``)."""
        f = self.on.get("clock_drift")
        return float(f.amount) if f is not None and t >= f.since else 0.0

    def events_at(self, t: float, zone: ZoneInfo) -> dict[str, Decimal | str]:
        """``event_<stem>_count`` (+ ``_start`` / ``_end`` of the last record) at ``t``."""
        out: dict[str, Decimal | str] = {}
        for stem in EVENT_STEMS:
            recs = [r for r in self.records.get(stem, []) if r.start <= t]
            out[f"event_{stem}_count"] = Decimal(len(recs))
            if recs:
                last = recs[-1]
                out[f"event_{stem}_start"] = _local(last.start, zone)
                out[f"event_{stem}_end"] = "" if last.end is None or last.end > t else _local(last.end, zone)
        return out

    def _offset(self, t: float, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for since, delta in self.offsets:
            if t >= since:
                for n, d in delta.items():
                    v[n] += d
        return v

    def apply(self, t: float, v: dict[str, Decimal]) -> dict[str, Decimal]:
        """The healthy values ``v`` at ``t`` as the faulty meter shows them."""
        self._offset(t, v)
        for f, until in self.past:
            if f.since <= t < until:
                _APPLY[f.name](f, v)
        for f in self.on.values():
            if t >= f.since:
                _APPLY[f.name](f, v)
        return v


def _local(t: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, zone).replace(tzinfo=None).isoformat(timespec="seconds")


def _freeze(f: Fault, v: dict[str, Decimal], names: tuple[str, ...] = _ENERGY) -> None:
    for n in names:
        v[n] = f.base[n]


def _backwards(f: Fault, v: dict[str, Decimal]) -> None:
    # take it off the fullest tariff, so the register never shows a negative value
    fullest = max(_IMP_T, key=lambda n: v[n])
    v[fullest] -= f.amount
    v["energy_import_kwh"] -= f.amount


def _fast(f: Fault, v: dict[str, Decimal]) -> None:
    for n in _IMP_T:
        v[n] = _floor(v[n] + (f.amount - 1) * (v[n] - f.base[n]))
    v["energy_import_kwh"] = sum((v[n] for n in _IMP_T), Decimal(0))


def _zero_load(f: Fault, v: dict[str, Decimal]) -> None:
    _freeze(f, v)
    for n in _FLOWS:
        v[n] = Decimal(0)


def _reverse(f: Fault, v: dict[str, Decimal]) -> None:
    for imp, exp in zip(_IMP_T, _EXP_T, strict=True):
        v[exp] = v[exp] + (v[imp] - f.base[imp])
        v[imp] = f.base[imp]
    v["energy_import_kwh"] = f.base["energy_import_kwh"]
    v["energy_export_kwh"] = sum((v[n] for n in _EXP_T), Decimal(0))
    for n in ("power_kw", "power_kw_l1", "power_kw_l2", "power_kw_l3"):
        v[n] = -abs(v[n])


def _phase_loss(f: Fault, v: dict[str, Decimal]) -> None:
    ph = int(f.amount)
    name = f"voltage_v_l{ph}"
    v[name] = (v[name] * Decimal("0.3")).quantize(Decimal("0.1"))


def _demand_over(f: Fault, v: dict[str, Decimal]) -> None:
    v["demand_max_kw"] = max(v["demand_max_kw"], f.amount)


def _low_pf(f: Fault, v: dict[str, Decimal]) -> None:
    grown = v["energy_import_kwh"] - f.base["energy_import_kwh"]
    v["energy_import_kvarh"] = _floor(v["energy_import_kvarh"] + f.amount * grown)
    v["power_factor"] = Decimal("0.700")


def _tariff_mismatch(f: Fault, v: dict[str, Decimal]) -> None:
    v["energy_import_kwh"] += f.amount


def _nothing(f: Fault, v: dict[str, Decimal]) -> None:
    """Faults the protocol simulator plays (silent, clock_drift) or that only add a record."""


_APPLY: Final[dict[str, Callable[[Fault, dict[str, Decimal]], None]]] = {
    "backwards": _backwards, "stop": _freeze, "fast": _fast, "zero_load": _zero_load, "reverse": _reverse,
    "phase_loss": _phase_loss, "demand_over": _demand_over, "low_pf": _low_pf,
    "tariff_mismatch": _tariff_mismatch, "clock_drift": _nothing, "silent": _nothing,
    **{n: _nothing for n in EVENT_FAULTS},
}
