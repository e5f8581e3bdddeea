"""Review rules: pure functions from (per-meter state, one reading) to review events.

What a reviewer must be told, modelled on the Q/GDW 1376.1 ERC
records a special-transformer terminal raises (docs/billing-rules.md §5):

==================  ===========  ====================================================
event               ERC          raised when
==================  ===========  ====================================================
register_decrease   27           a cumulative register (per register, per tariff) went
                                 down — not a configured rollover, not a meter swap
meter_stopped       30           the energy register did not advance for N × 15 min
                                 while the measured power says ≥ 0.04 kWh should have
meter_fast          28 / 29      energy advanced faster than rated power allows
                                 (Un × Imax × √3 × CT × PT), or — without rated values —
                                 ΔE ÷ (P × Δt) above the 超差 / 飞走 ratio
consumption_jump    (§6 环比)     an interval's consumption > k × the median of the same
                                 local slot over the last N days
clock_deviation     12           |meter clock − gateway clock| > threshold (skipped
                                 around local midnight; an unreadable clock raises too)
read_failure        31           N consecutive failed polls; ``read_recovered`` clears it
phase_loss          失压/断相      one phase voltage collapsed while the others are normal
==================  ===========  ====================================================

Design constraints
------------------
* **No I/O.** Every function takes a :class:`MeterState` (mutated in place), an
  :class:`Observation` built from one reading, a :class:`MeterContext` (what configuration
  says about the meter) and :class:`ReviewThresholds`, and returns :class:`RuleEvent`\\ s.
  The engine (``gateway.review.engine``) owns storage, publication and restart recovery.
* **One event per condition.** A condition is identified by (type, key) — the key names
  the register, the phase, or is empty. While it persists nothing more is raised; it is
  cleared once, after ``clear_after_normal_cycles`` consecutive normal evaluations (the
  ERC28/29 practice of 2–3 normal cycles), except ``read_failure``, which clears on the
  first answer (ERC31 records the recovery at once) with an event named ``read_recovered``.
* **Exact numbers.** Registers and energies are ``Decimal``; evidence carries the values,
  times (ISO-8601 UTC), and the thresholds that decided.
* **A failed point is not a value.** Only points with quality ``good`` are judged; a
  failed poll only feeds the read-failure rule.
* **The ratio in force at each reading.** A reading's register values carry the CT × PT it
  was taken under (value ÷ raw). Values taken under different ratios (the configuration
  changed at a restart) are never differenced (a false ``meter_fast`` or ``reverse_energy``):
  the baselines start again from the first reading under the new ratio (:func:`rebase`), and
  an energy interval whose ends disagree is the raw difference × the later reading's ratio.
* **Recorded changes.** A meter exchange or a CT/PT change entered with its time
  (:func:`note_change`) is a barrier: a reading after it is not judged against the
  registers read at or before it — a reading at the change's instant shows the old state —
  so no ``register_decrease`` from the old meter's final to the new one's initial, no
  ``meter_fast`` across it; the baselines start again from that reading.
* **Rollover.** A register that falls is a rollover, not a decrease, when the register's
  capacity from the profile explains it (``MeterContext.capacities``: the wrapped difference
  below half the capacity, as billing counts it) or it fell from near a configured
  ``rollover_at`` maximum.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Final, Literal
from zoneinfo import ZoneInfo

from gateway.model import iso_utc, passed_over
from gateway.review_thresholds import ReviewThresholds

if TYPE_CHECKING:
    from gateway.model import Reading

EventState = Literal["raised", "cleared"]

EVENT_TYPES: Final = (
    "register_decrease",
    "meter_stopped",
    "meter_fast",
    "consumption_jump",
    "clock_deviation",
    "read_failure",
    "read_recovered",
    "phase_loss",
    "zero_consumption",
    "reverse_energy",
    "tariff_sum_mismatch",
    "demand_over_contract",
    "low_power_factor",
    "stage_change",
    "cycle_change",
    "cover_open",
    "terminal_cover_open",
    "programming",
    "meter_clear",
    "demand_clear",
    "clock_set",
    "voltage_loss",
    "current_reversal",
    "bus_failure",
)
#: The event type that clears each condition (all clear with their own type but one).
CLEAR_TYPE: Final[Mapping[str, str]] = {t: t for t in EVENT_TYPES} | {"read_failure": "read_recovered"}

FAILED_QUALITIES: Final = ("timeout", "crc_error")
PHASES: Final = ("l1", "l2", "l3")
QUARTER_S: Final = 900
_ZERO: Final = Decimal(0)
_HOUR: Final = Decimal(3600)
_NOT_YET: Final = Decimal("sNaN")
"""RegisterValue._factor not yet worked out (compared by identity only: no factor is a NaN)."""
_DAY_S: Final = 86400
POWER_SAMPLES_KEPT: Final = 256


# ----------------------------------------------------------------------------- inputs
# Not frozen: built for every reading (five registers, one observation, one interval at
# 1,000 readings/s), and a frozen dataclass's __init__ sets each field through
# object.__setattr__, about three times the cost. Rules only read them; never mutate one.
@dataclass(slots=True)
class RegisterValue:
    """One cumulative register as read: ``raw`` as displayed, ``value`` after CT × PT."""

    raw: Decimal
    value: Decimal
    #: value ÷ raw once worked out (:func:`factor_taken`; :data:`_NOT_YET` before): the judged
    #: register's is asked for at its reading and again at the next, where it is the baseline.
    #: Not part of the value (no repr, no comparison).
    _factor: Decimal | None = field(default=_NOT_YET, init=False, repr=False, compare=False)

    @property
    def step(self) -> Decimal:
        """One display step of the register in value units (0.01 kWh raw × CT × PT, say)."""
        return display_step(self.raw, factor_taken(self))


_UNITS: dict[int, Decimal] = {}
"""exponent → one unit in the last place (``Decimal(1).scaleb(exponent)``), made once per exponent."""


_LAST_UNIT: list[Decimal] = [Decimal("0.01")]
"""The unit display_step gave last: registers mostly show one number of decimals, and
``same_quantum`` tells a raw of that exponent without ``as_tuple`` copying its digits."""
_ONE: Final = Decimal(1)


def display_step(raw: Decimal, factor: Decimal | None) -> Decimal:
    """One display step of a register read as ``raw`` and taken under CT × PT ``factor``
    (``value / raw``, None for a raw zero: counted as 1), in value units."""
    unit = _LAST_UNIT[0]
    if not raw.same_quantum(unit):      # another exponent (or not finite: never the same)
        exponent = raw.as_tuple().exponent
        if isinstance(exponent, int):
            known = _UNITS.get(exponent)
            if known is None:
                known = Decimal(1).scaleb(exponent)
                if len(_UNITS) < 256:       # bounded: registers show a handful of decimals
                    _UNITS[exponent] = known
            unit = known
            if known.same_quantum(raw):     # (a unit the context had to clamp is not kept)
                _LAST_UNIT[0] = known
        else:
            unit = Decimal("0.01")
    if factor is None or factor is _ONE:
        return unit                     # unit × 1: the unit itself, exponent included
    return unit * factor


@dataclass(slots=True)      # not frozen: see RegisterValue
class Observation:
    """What the rules need from one reading (built by :func:`observe_reading`)."""

    meter: str
    ts: float
    slot: float
    schedule: str
    interval_s: float | None           # the schedule's period, for slot adjacency
    quality: str
    failed: bool                       # the meter did not answer at all
    error: str | None = None
    registers: Mapping[str, RegisterValue] = field(default_factory=dict)
    power_kw: Decimal | None = None
    voltages: Mapping[str, Decimal] = field(default_factory=dict)   # phase → V (value)
    meter_clock: str | None = None
    #: other numeric points the rules read (demand, power factor, event counters), by name
    values: Mapping[str, Decimal] = field(default_factory=dict)
    #: event-record points as read (``event_<kind>_start`` …), by name
    records: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeterContext:
    """What the configuration says about a meter, resolved once at start."""

    tz: str = "UTC"
    identity: str = ""                  # address|profile: a change is a meter swap
    rated_kw: Decimal | None = None     # primary-side rated power (already × CT × PT)
    nominal_v: Decimal | None = None    # primary-side nominal phase voltage (× PT)
    #: register → raw value at which it starts again at zero (10^digits, from the profile)
    capacities: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleEvent:
    """A raised or cleared condition, as a rule decided it (the engine stores and sends it)."""

    type: str
    state: EventState
    key: str
    ts: float
    message: str
    evidence: dict[str, object]
    raised_id: int | None = None        # cleared events: the engine's id of the raising event


# ----------------------------------------------------------------------------- state
@dataclass(slots=True)
class Condition:
    """A raised, not yet cleared condition."""

    type: str
    key: str
    raised_ts: float
    evidence: dict[str, object] = field(default_factory=dict)
    normal_cycles: int = 0
    event_id: int | None = None         # the engine's id of the raising event


@dataclass(slots=True)
class EnergyPoint:
    """The last good value of the judged energy register."""

    ts: float
    slot: float
    reg: RegisterValue


@dataclass(slots=True)
class MeterState:
    """Everything the rules remember about one meter between readings."""

    identity: str | None = None
    registers: dict[str, RegisterValue] = field(default_factory=dict)
    registers_ts: float | None = None
    energy: EnergyPoint | None = None
    #: When the judged register last changed value (slot, ts, value), and the expected
    #: energy (kWh) power says flowed since.
    stopped_ref: EnergyPoint | None = None
    stopped_expected: Decimal = _ZERO
    stopped_unknown_power: bool = False
    #: (ts, kW) samples since the last energy value, oldest first, at most POWER_SAMPLES_KEPT
    #: (a list: a deque costs 740 bytes even when empty, and most meters keep one or two)
    power: list[tuple[float, Decimal]] = field(default_factory=list)
    #: local second-of-day of an interval's start → [(interval start slot, kWh)], oldest first
    history: dict[int, list[tuple[float, Decimal]]] = field(default_factory=dict)
    #: new (slot, seconds, kWh) intervals the engine has not persisted yet
    new_intervals: list[tuple[float, float, Decimal]] = field(default_factory=list)
    failures: int = 0
    first_failure_ts: float | None = None
    last_error: str | None = None
    last_good_ts: float | None = None
    last_good_registers: dict[str, Decimal] = field(default_factory=dict)
    active: dict[tuple[str, str], Condition] = field(default_factory=dict)
    #: zero_consumption: (ts, judged register value) about once a day, oldest first
    day_marks: list[tuple[float, Decimal]] = field(default_factory=list)
    #: reverse_energy: start of the current window (ts, import value, export value)
    reverse_ref: tuple[float, Decimal, Decimal] | None = None
    #: low_power_factor: start of the current period (ts, kWh value, kvarh value)
    pf_ref: tuple[float, Decimal, Decimal] | None = None
    #: meter events: last counter value per event stem
    counters: dict[str, Decimal] = field(default_factory=dict)
    #: a bus's state: meters of a bus failure that ended, not heard from since (None: none;
    #: only a bus's state ever holds any, so a meter's state carries no empty set)
    grace: set[str] | None = None
    #: the latest recorded meter exchange or CT/PT change (:func:`note_change`)
    change_at: float | None = None
    dirty: bool = False                 # persisted state changed

    def to_doc(self) -> dict[str, object]:
        """The persisted part (registers, energy and stop references), as plain data."""

        def ep(p: EnergyPoint | None) -> object:
            return None if p is None else {"ts": p.ts, "slot": p.slot, "raw": p.reg.raw, "value": p.reg.value}

        return {
            "identity": self.identity,
            "registers_ts": self.registers_ts,
            "registers": {k: {"raw": v.raw, "value": v.value} for k, v in self.registers.items()},
            "energy": ep(self.energy),
            "stopped_ref": ep(self.stopped_ref),
            "stopped_expected": self.stopped_expected,
            "stopped_unknown_power": self.stopped_unknown_power,
            "last_good_ts": self.last_good_ts,
            "last_good_registers": dict(self.last_good_registers),
            "day_marks": [[t, v] for t, v in self.day_marks],
            "reverse_ref": None if self.reverse_ref is None else list(self.reverse_ref),
            "pf_ref": None if self.pf_ref is None else list(self.pf_ref),
            "counters": dict(self.counters),
            "change_at": self.change_at,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> MeterState:
        """Rebuild from :meth:`to_doc` output parsed with exact decimals."""

        def dec(v: object) -> Decimal:
            return v if isinstance(v, Decimal) else Decimal(str(v))

        def ep(v: object) -> EnergyPoint | None:
            if not isinstance(v, Mapping):
                return None
            reg = RegisterValue(dec(v["raw"]), dec(v["value"]))
            return EnergyPoint(float(dec(v["ts"])), float(dec(v["slot"])), reg)

        st = cls()
        ident = doc.get("identity")
        st.identity = None if ident is None else str(ident)
        rts = doc.get("registers_ts")
        st.registers_ts = None if rts is None else float(dec(rts))
        regs = doc.get("registers")
        if isinstance(regs, Mapping):
            for k, v in regs.items():
                if isinstance(v, Mapping):
                    st.registers[str(k)] = RegisterValue(dec(v["raw"]), dec(v["value"]))
        st.energy = ep(doc.get("energy"))
        st.stopped_ref = ep(doc.get("stopped_ref"))
        st.stopped_expected = dec(doc.get("stopped_expected", 0))
        st.stopped_unknown_power = bool(doc.get("stopped_unknown_power", False))
        lg = doc.get("last_good_ts")
        st.last_good_ts = None if lg is None else float(dec(lg))
        lgr = doc.get("last_good_registers")
        if isinstance(lgr, Mapping):
            st.last_good_registers = {str(k): dec(v) for k, v in lgr.items()}
        marks = doc.get("day_marks")
        if isinstance(marks, list):
            st.day_marks = [(float(dec(m[0])), dec(m[1])) for m in marks if isinstance(m, list) and len(m) == 2]

        def triple(v: object) -> tuple[float, Decimal, Decimal] | None:
            if isinstance(v, list) and len(v) == 3:
                return float(dec(v[0])), dec(v[1]), dec(v[2])
            return None

        st.reverse_ref = triple(doc.get("reverse_ref"))
        st.pf_ref = triple(doc.get("pf_ref"))
        counters = doc.get("counters")
        if isinstance(counters, Mapping):
            st.counters = {str(k): dec(v) for k, v in counters.items()}
        ca = doc.get("change_at")
        st.change_at = None if ca is None else float(dec(ca))
        return st


@dataclass(slots=True)      # not frozen: see RegisterValue
class EnergyInterval:
    """Two consecutive good values of the judged register, and what lies between."""

    start: EnergyPoint
    end: EnergyPoint
    delta: Decimal          # value units (kWh, primary)
    seconds: Decimal        # read time to read time
    adjacent: bool          # slots are one schedule period apart
    step: Decimal           # one display step, value units

    def evidence(self) -> dict[str, object]:
        """The interval as evidence."""
        return {
            "from": iso(self.start.ts),
            "to": iso(self.end.ts),
            "register_from": self.start.reg.value,
            "register_to": self.end.reg.value,
            "consumption_kwh": self.delta,
            "seconds": self.seconds,
        }


# ----------------------------------------------------------------------------- helpers
def iso(epoch: float) -> str:
    """Epoch seconds as ISO-8601 UTC with milliseconds."""
    return iso_utc(epoch)


def to_decimal(v: object) -> Decimal | None:
    """A reading value as an exact Decimal (floats by their shortest repr), else None."""
    if isinstance(v, Decimal):
        return v if v.is_finite() else None
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        d = Decimal(repr(v))
        return d if d.is_finite() else None
    if isinstance(v, str):
        try:
            d = Decimal(v)
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def is_cumulative_register(name: str) -> bool:
    """Energy registers only ever grow (demand resets monthly, so it is not one)."""
    return name.startswith(("energy_import_", "energy_export_"))


_REGISTER, _POWER, _VOLTAGE, _CLOCK, _EVENT_COUNT, _EVENT_RECORD, _VALUE, _OTHER = range(8)
_KINDS: dict[str, dict[str, tuple[int, str]]] = {}
"""power point → point name → (what the rules read it as, its key): worked out once per name
instead of a string test per point of every reading."""


def _kind_of(name: str, power_point: str) -> tuple[int, str]:
    """How :func:`observe_reading` takes a point of this name (and the key it files it under)."""
    table = _KINDS.setdefault(power_point, {})
    kind = table.get(name)
    if kind is None:
        if is_cumulative_register(name):
            kind = (_REGISTER, name)
        elif name == power_point:
            kind = (_POWER, name)
        elif name.startswith("voltage_v_l") and name[-2:] in PHASES:
            kind = (_VOLTAGE, name[-2:])
        elif name == "meter_clock":
            kind = (_CLOCK, name)
        elif name.startswith("event_"):
            kind = (_EVENT_COUNT if name.endswith("_count") else _EVENT_RECORD, name)
        elif name.startswith(("demand_", "power_factor")):
            kind = (_VALUE, name)
        else:
            kind = (_OTHER, name)
        if len(table) >= 4096:     # bounded: point names come from profiles, a few hundred at most
            table.clear()
        table[name] = kind
    return kind


def observe_reading(reading: Reading, interval_s: float | None = None, power_point: str = "power_kw") -> Observation:
    """The rules' view of a reading: good cumulative registers, power, voltages, clock.

    Each point name's role is looked up once (:func:`_kind_of`), and a finite Decimal value
    (what the drivers return) is taken as it is, without :func:`to_decimal`'s type tests."""
    registers: dict[str, RegisterValue] = {}
    voltages: dict[str, Decimal] = {}
    values: dict[str, Decimal] = {}
    records: dict[str, object] = {}
    power: Decimal | None = None
    clock: str | None = None
    any_good = False
    table = _KINDS.get(power_point) or {}
    dec = Decimal
    new = object.__new__
    for name, p in reading.points.items():
        raw = p.raw
        if raw is None or p.quality != "good":
            continue
        any_good = True
        kind, key = table.get(name) or _kind_of(name, power_point)
        if kind == _REGISTER:           # the most points of a reading: tested first
            v = p.value
            d = v if type(v) is dec and v.is_finite() else to_decimal(v)
            # a CT × PT of 1 keeps the raw itself as the value: judged once
            r = d if raw is v else raw if type(raw) is dec and raw.is_finite() else to_decimal(raw)
            if r is not None and d is not None:
                # RegisterValue(r, d) without the call of its Python __init__ (half the cost of a
                # register, five a reading): every field of it is set here (test_review_observe)
                rv = new(RegisterValue)
                rv.raw = r
                rv.value = d
                rv._factor = _NOT_YET
                registers[key] = rv
        elif kind == _OTHER:
            continue
        elif kind == _EVENT_RECORD:
            records[key] = p.value
        elif kind == _CLOCK:
            clock = str(raw)
        else:
            v = p.value
            d = v if type(v) is dec and v.is_finite() else to_decimal(v)
            if kind == _POWER:
                power = d
            elif d is not None:
                if kind == _VOLTAGE:
                    voltages[key] = d
                else:               # event counters, demand, power factor
                    values[key] = d
    failed = reading.quality in FAILED_QUALITIES and not any_good
    # positional: a keyword call of the 14 fields costs about twice as much, once per reading
    return Observation(
        reading.meter, reading.ts, reading.slot, reading.schedule, interval_s, reading.quality, failed,
        reading.error, registers, power, voltages, clock, values, records,
    )


def raise_condition(
    state: MeterState, out: list[RuleEvent], etype: str, key: str, ts: float, message: str,
    evidence: dict[str, object],
) -> None:
    """Raise (type, key) unless it is already raised; a persisting condition resets its clear count."""
    cond = state.active.get((etype, key))
    if cond is not None:
        cond.normal_cycles = 0
        return
    state.active[(etype, key)] = Condition(etype, key, ts, evidence)
    out.append(RuleEvent(etype, "raised", key, ts, message, evidence))


def is_raised(state: MeterState, etype: str, key: str) -> bool:
    """Whether (type, key) is raised: a normal evaluation only matters then (evidence is built lazily)."""
    return (etype, key) in state.active


def normal_cycle(
    state: MeterState, out: list[RuleEvent], etype: str, key: str, ts: float, needed: int,
    message: str, evidence: dict[str, object],
) -> None:
    """Count one normal evaluation for (type, key); clear it after ``needed`` in a row."""
    cond = state.active.get((etype, key))
    if cond is None:
        return
    cond.normal_cycles += 1
    if cond.normal_cycles < needed:
        return
    del state.active[(etype, key)]
    ev = {**evidence, "raised_at": iso(cond.raised_ts), "normal_cycles": cond.normal_cycles}
    out.append(RuleEvent(CLEAR_TYPE.get(etype, etype), "cleared", key, ts, message, ev, cond.event_id))


def mean_power(state: MeterState, start: float, end: float, max_age_s: float) -> tuple[Decimal, int] | None:
    """Mean of the power samples in [start, end], else the latest within ``max_age_s``."""
    inside: list[Decimal] = []
    latest: Decimal | None = None
    for t, p in reversed(state.power):   # newest first; samples are appended in time order
        if t >= end and t > start:
            # read with the interval's end register: it shows the power of the slot that
            # begins there, not of this interval (a holiday's first slot after a workday's last)
            continue
        if t < start:
            if latest is None and end - t <= max_age_s:
                latest = p
            break
        inside.append(p)
    if inside:
        return sum(inside, _ZERO) / len(inside), len(inside)
    return None if latest is None else (latest, 1)


def factor_taken(reg: RegisterValue) -> Decimal | None:
    """The CT × PT a register value was taken under (value ÷ raw); None for a raw zero.

    Worked out once per register value: the judged register's factor is needed for the
    ratio check and the interval at its reading and again as the next reading's baseline."""
    f = reg._factor
    if f is _NOT_YET:
        raw = reg.raw
        if raw == 0:
            f = None
        elif reg.value is raw and raw.is_finite():
            f = _ONE                    # x ÷ x: exactly 1, exponent 0 (a CT × PT of 1 keeps the raw)
        else:
            f = reg.value / raw
        reg._factor = f
    return f


def energy_interval(state: MeterState, obs: Observation, th: ReviewThresholds) -> EnergyInterval | None:
    """The interval from the last judged-register value to this reading's, if both exist.

    Under the ratio in force at each reading: when the two ends were taken under different
    CT × PT, ΔE is the raw difference × the later reading's factor.
    """
    return _interval(state.energy, obs.registers.get(th.energy_register), obs)


def _interval(prev: EnergyPoint | None, reg: RegisterValue | None, obs: Observation) -> EnergyInterval | None:
    """:func:`energy_interval` from the baseline ``prev`` to the judged register ``reg`` of ``obs``."""
    if reg is None or prev is None or obs.ts <= prev.ts:
        return None
    adjacent = obs.interval_s is not None and abs(obs.slot - prev.slot - obs.interval_s) < 1e-6
    delta = reg.value - prev.reg.value
    f_prev = prev.reg._factor           # factor_taken, its cache read here first
    if f_prev is _NOT_YET:
        f_prev = factor_taken(prev.reg)
    f_now = reg._factor
    if f_now is _NOT_YET:
        f_now = factor_taken(reg)
    if f_now is not None and f_prev is not None and f_prev != f_now:
        delta = (reg.raw - prev.reg.raw) * f_now
    # positional (start, end, delta, seconds, adjacent, step): made for every reading
    return EnergyInterval(prev, EnergyPoint(obs.ts, obs.slot, reg), delta, seconds_between(prev.ts, obs.ts),
                          adjacent, display_step(reg.raw, f_now))


_SECONDS: dict[float, Decimal] = {}
"""seconds, as subtracted and as rounded to the millisecond → that length as a Decimal: a meter
polled every period gives a handful of lengths (and read times a fixed delay after their
slots give one difference, whose round() is then not needed either)."""


def seconds_between(start: float, end: float) -> Decimal:
    """``end − start`` to the millisecond as an exact Decimal (``Decimal(repr(round(…, 3)))``),
    made once per length: every energy interval has one, and round and repr are the costly part."""
    x = end - start
    d = _SECONDS.get(x)
    if d is not None:
        return d
    s = round(x, 3)
    d = _SECONDS.get(s)
    if d is None:
        d = Decimal(repr(s))
        if s > 0:                       # not -0.0, which a dict would take for 0.0
            _keep_seconds(s, d)
    if x > 0:
        _keep_seconds(x, d)
    return d


def _keep_seconds(key: float, d: Decimal) -> None:
    if len(_SECONDS) >= 4096:           # bounded: jittered read times give many differences
        _SECONDS.clear()
    _SECONDS[key] = d


def _is_rollover(prev: Decimal, new: Decimal, th: ReviewThresholds, modulus: Decimal | None = None) -> Decimal | None:
    """The maximum a fall wrapped at, when it is a rollover: within the register's capacity
    (``modulus`` = 10^digits; new + modulus − prev below half of it, billing's rule), or from
    near a configured ``rollover_at`` maximum to near zero."""
    if modulus is not None and _ZERO <= new + modulus - prev < modulus / 2:
        return modulus
    for top in th.rollover_at:
        margin = top * th.rollover_window
        if prev <= top and prev >= top - margin and _ZERO <= new <= margin:
            return top
    return None


# ----------------------------------------------------------------------------- rules
Rule = Callable[[MeterState, Observation, EnergyInterval | None, MeterContext, ReviewThresholds], list[RuleEvent]]


def read_failure(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """ERC31: raise after N consecutive failed polls; ``read_recovered`` at the first answer.

    A slot the gateway passed over itself (its scheduler fell behind, or an overrun on a late
    bus: :func:`gateway.model.passed_over`) is no poll of the meter: it neither counts nor
    answers (after a suspension or a clock step forward every meter would fail at once).
    """
    out: list[RuleEvent] = []
    if obs.failed and passed_over(obs.error):
        return out
    if obs.failed:
        state.failures += 1
        state.last_error = obs.error
        if state.first_failure_ts is None:
            state.first_failure_ts = obs.ts
        if state.failures >= th.read_failure_after:
            first = state.first_failure_ts
            raise_condition(
                state, out, "read_failure", "", obs.ts,
                f"meter {obs.meter} failed {state.failures} polls in a row since {iso(first)}",
                {
                    "failed_polls": state.failures,
                    "threshold_polls": th.read_failure_after,
                    "first_failure": iso(first),
                    "last_error": obs.error,
                    "quality": obs.quality,
                    "last_good": None if state.last_good_ts is None else iso(state.last_good_ts),
                    "last_good_registers": dict(state.last_good_registers),
                },
            )
        return out
    cond = state.active.get(("read_failure", ""))
    if cond is not None:
        first = state.first_failure_ts if state.first_failure_ts is not None else cond.raised_ts
        normal_cycle(
            state, out, "read_failure", "", obs.ts, 1,
            f"meter {obs.meter} answers again after {state.failures} failed polls",
            {
                "failed_polls": state.failures,
                "first_failure": iso(first),
                "recovered_at": iso(obs.ts),
                "outage_s": Decimal(repr(round(obs.ts - first, 3))),
                "last_good_before": None if state.last_good_ts is None else iso(state.last_good_ts),
            },
        )
    state.failures = 0
    state.first_failure_ts = None
    if obs.registers:
        state.last_good_ts = obs.ts
        last: dict[str, Decimal] = {}
        for k, v in obs.registers.items():     # (a loop: a comprehension is a call more, every reading)
            last[k] = v.value
        state.last_good_registers = last
        state.dirty = True
    elif obs.quality == "good":
        state.last_good_ts = obs.ts
        state.dirty = True
    return out


def register_decrease(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """ERC27, per register and tariff: raw fell below the last value (beyond the tolerance).

    A fall from near a configured maximum to near zero is a rollover, not an event. The
    condition clears once the register is back at or above where it fell from, or after
    ``clear_after_normal_cycles`` readings in a row that do not fall again. Baselines move to
    the new value either way, so a register running on from a new base is not re-flagged.
    """
    out: list[RuleEvent] = []
    if state.registers_ts is not None and obs.ts < state.registers_ts:
        return out  # an older reading arriving late: no judgement, no baseline change
    before_regs = state.registers
    active = state.active
    tolerance = th.decrease_tolerance
    # A register at or above its last value has fallen by ≤ 0 (the rounded difference keeps
    # that sign), which no tolerance ≥ 0 exceeds: one comparison instead of a subtraction.
    compare_only = tolerance >= 0
    for name, reg in obs.registers.items():
        prev = before_regs.get(name)
        if prev is None:
            continue
        key_cond = active.get(("register_decrease", name)) if active else None
        if compare_only and reg.raw >= prev.raw:
            if key_cond is None:
                continue
        elif (fall := prev.raw - reg.raw) > tolerance:
            top = _is_rollover(prev.raw, reg.raw, th, ctx.capacities.get(name))
            if top is not None:
                continue
            raise_condition(
                state, out, "register_decrease", name, obs.ts,
                f"{name} of meter {obs.meter} went down from {prev.raw} to {reg.raw}",
                {
                    "register": name,
                    "before_raw": prev.raw,
                    "after_raw": reg.raw,
                    "before_value": prev.value,
                    "after_value": reg.value,
                    "decrease_raw": fall,
                    "before_time": None if state.registers_ts is None else iso(state.registers_ts),
                    "after_time": iso(obs.ts),
                    "tolerance": th.decrease_tolerance,
                    "rollover_at": list(th.rollover_at),
                },
            )
            continue
        if key_cond is not None:
            before = key_cond.evidence.get("before_raw")
            back = isinstance(before, Decimal) and reg.raw >= before
            needed = 1 if back else th.clear_after_normal_cycles
            normal_cycle(
                state, out, "register_decrease", name, obs.ts, needed,
                f"{name} of meter {obs.meter} advances normally again ({reg.raw})",
                {"register": name, "current_raw": reg.raw, "back_above_previous": back},
            )
    return out


def meter_stopped(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """ERC30: register unchanged for N × 15 min while power × time ≥ the threshold."""
    out: list[RuleEvent] = []
    if iv is None or iv.delta < 0:
        return out
    name = th.energy_register
    if iv.delta > 0:
        state.stopped_ref = iv.end
        state.stopped_expected = _ZERO
        state.stopped_unknown_power = False
        state.dirty = True
        if ("meter_stopped", name) in state.active:     # is_raised, inline (hot)
            normal_cycle(
                state, out, "meter_stopped", name, obs.ts, th.clear_after_normal_cycles,
                f"{name} of meter {obs.meter} advances again ({iv.end.reg.value})",
                {"register": name, **iv.evidence()},
            )
        return out
    ref = state.stopped_ref or iv.start
    state.stopped_ref = ref
    mp = mean_power(state, float(iv.start.ts), float(iv.end.ts), th.power_sample_max_age_s)
    if mp is None:
        state.stopped_unknown_power = True
        state.dirty = True
        return out
    power, samples = mp
    state.stopped_expected += max(power, _ZERO) * iv.seconds / _HOUR
    state.dirty = True
    window_s = th.stopped_window_quarters * QUARTER_S
    unchanged_s = obs.slot - ref.slot
    if unchanged_s + 1e-6 < window_s:
        return out              # not unchanged for the window yet (the threshold is not needed)
    min_kwh = max(th.stopped_min_expected_kwh, iv.step * th.stopped_min_display_steps)
    if state.stopped_expected >= min_kwh:
        evidence: dict[str, object] = {
            "register": name,
            "register_value": iv.end.reg.value,
            "unchanged_since": iso(ref.ts),
            "unchanged_s": Decimal(repr(round(obs.ts - ref.ts, 3))),
            "window_s": window_s,
            "window_quarters": th.stopped_window_quarters,
            "expected_kwh": state.stopped_expected,
            "threshold_kwh": min_kwh,
            "mean_power_kw": power,
            "power_samples": samples,
        }
        raise_condition(
            state, out, "meter_stopped", name, obs.ts,
            f"{name} of meter {obs.meter} stayed at {iv.end.reg.value} for "
            f"{round((obs.ts - ref.ts) / 60)} min while power says {state.stopped_expected:.4f} kWh flowed",
            evidence,
        )
    return out


def meter_fast(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """ERC28/29: energy advanced faster than rated power, or than measured power × tolerance.

    One display step is taken off ΔE first, so register quantisation never makes a correct
    meter look fast.
    """
    out: list[RuleEvent] = []
    if iv is None or iv.delta < 0 or iv.seconds <= 0:
        return out
    name = th.energy_register
    raised = ("meter_fast", name) in state.active        # is_raised, inline: every reading
    if not raised and ctx.rated_kw is None and iv.delta <= iv.step and th.fast_min_expected_kwh > 0:
        # Nothing left once the display step is taken off (adj = 0), so the ratio below is 0
        # (expected ≥ the positive minimum, never 0): not fast, nothing raised to count. At
        # a poll a second the register moves a step at most, so this is most readings.
        return out
    adj = max(iv.delta - iv.step, _ZERO)
    if ctx.rated_kw is not None:
        limit = ctx.rated_kw * th.fast_rated_margin * iv.seconds / _HOUR
        fast = adj > limit
        if not fast and not raised:
            return out
        ev: dict[str, object] = {
            "register": name, **iv.evidence(), "register_step": iv.step, "mode": "rated",
            "rated_power_kw": ctx.rated_kw, "margin": th.fast_rated_margin, "limit_kwh": limit,
        }
        if fast:
            raise_condition(
                state, out, "meter_fast", name, obs.ts,
                f"{name} of meter {obs.meter} advanced {iv.delta} kWh in {iv.seconds} s; rated power "
                f"allows at most {limit:.4f} kWh",
                ev,
            )
        else:
            normal_cycle(state, out, "meter_fast", name, obs.ts, th.clear_after_normal_cycles,
                         f"{name} of meter {obs.meter} advances within rated power again", ev)
        return out
    mp = mean_power(state, iv.start.ts, iv.end.ts, th.power_sample_max_age_s)
    if mp is None:
        return out
    power, samples = mp
    expected = max(power, _ZERO) * iv.seconds / _HOUR
    if expected < th.fast_min_expected_kwh:
        return out
    ratio = adj / expected
    fast = ratio > th.fast_over_tolerance_ratio
    if not fast and not raised:
        return out
    ev = {"register": name, **iv.evidence(), "register_step": iv.step, "mode": "measured_power",
          "mean_power_kw": power, "power_samples": samples,
          "expected_kwh": expected, "ratio": ratio.quantize(Decimal("0.001")),
          "over_tolerance_ratio": th.fast_over_tolerance_ratio, "runaway_ratio": th.fast_runaway_ratio}
    if fast:
        runaway = ratio > th.fast_runaway_ratio
        ev["erc"] = 29 if runaway else 28
        ev["level"] = "runs_too_fast" if runaway else "over_tolerance"
        raise_condition(
            state, out, "meter_fast", name, obs.ts,
            f"{name} of meter {obs.meter} advanced {iv.delta} kWh where power says {expected:.4f} kWh "
            f"(ratio {ratio:.2f})",
            ev,
        )
    else:
        normal_cycle(state, out, "meter_fast", name, obs.ts, th.clear_after_normal_cycles,
                     f"{name} of meter {obs.meter} agrees with measured power again", ev)
    return out


def local_second_of_day(t: float, tz: str) -> int:
    """Seconds since local midnight of ``t`` (the slot key of the jump rule)."""
    lt = datetime.fromtimestamp(t, ZoneInfo(tz))
    return lt.hour * 3600 + lt.minute * 60 + lt.second


JUMP_READ_TOLERANCE: Final = 0.25
"""How far from its slot, as a share of the schedule period, each read of an interval judged
by :func:`consumption_jump` may have been taken (a quarter: under four minutes on a 15-minute
schedule, where a healthy bus reads within seconds). Two such reads span 0.5–1.5 periods,
shifted by at most a quarter, which the jump factor (3 by default) absorbs; a later read is
not judged and not kept as the slot's history."""


def consumption_jump(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """An interval's consumption > k × the median of the same local slot over N days.

    Only whole, adjacent intervals (one schedule period between slots) are judged and kept
    as history, so a gap never looks like a jump; and only those whose two reads were taken
    close to their slots (:data:`JUMP_READ_TOLERANCE`): a read taken late, on a bus that fell
    behind, carries the consumption up to when it was taken, not up to its slot, so its
    interval is neither that slot's length nor that time of day's consumption.
    """
    out: list[RuleEvent] = []
    if iv is None or not iv.adjacent or iv.delta < 0 or obs.interval_s is None:
        return out
    if obs.interval_s < th.jump_min_interval_s:
        return out
    near = JUMP_READ_TOLERANCE * obs.interval_s
    if abs(iv.start.ts - iv.start.slot) > near or abs(iv.end.ts - iv.end.slot) > near:
        return out
    name = th.energy_register
    start_slot = iv.start.slot
    key = local_second_of_day(start_slot, ctx.tz)
    hist = state.history.setdefault(key, [])
    horizon = start_slot - th.jump_history_days * _DAY_S - 1
    hist[:] = [(s, e) for s, e in hist if s >= horizon]
    past = [(s, e) for s, e in hist if s <= start_slot - _DAY_S / 2]
    days = len({round((start_slot - s) / _DAY_S) for s, _ in past})
    if days >= th.jump_min_history_days:
        median = statistics.median([e for _, e in past])
        limit = th.jump_factor * median
        jumped = iv.delta > limit and iv.delta >= th.jump_min_kwh and iv.delta > th.jump_min_display_steps * iv.step
        if jumped:
            raise_condition(
                state, out, "consumption_jump", name, obs.ts,
                f"meter {obs.meter} used {iv.delta} kWh in the interval from {iso(start_slot)}, more than "
                f"{th.jump_factor} × the median {median} kWh of that slot over {days} days",
                _jump_evidence(obs, iv, th, median, limit, days, past),
            )
        elif ("consumption_jump", name) in state.active:   # else no clear to count: no evidence to build
            normal_cycle(state, out, "consumption_jump", name, obs.ts, th.clear_after_normal_cycles,
                         f"meter {obs.meter}'s consumption is back within its history",
                         _jump_evidence(obs, iv, th, median, limit, days, past))
    if not any(s == start_slot for s, _ in hist):
        hist.append((start_slot, iv.delta))
        state.new_intervals.append((start_slot, float(obs.interval_s), iv.delta))
    return out


def _jump_evidence(obs: Observation, iv: EnergyInterval, th: ReviewThresholds, median: Decimal, limit: Decimal,
                   days: int, past: list[tuple[float, Decimal]]) -> dict[str, object]:
    """What a consumption_jump event shows: the interval, the median of the slot's history, the limit."""
    return {
        "register": th.energy_register, **iv.evidence(), "slot": iso(iv.start.slot), "interval_s": obs.interval_s,
        "median_kwh": median, "factor": th.jump_factor, "limit_kwh": limit, "history_days": days,
        "min_kwh": th.jump_min_kwh, "register_step": iv.step, "min_display_steps": th.jump_min_display_steps,
        "history": [{"slot": iso(s), "kwh": e} for s, e in past],
    }


def parse_meter_clock(text: str, tz: str) -> float | None:
    """A meter's clock text (ISO-8601; naive means the gateway's zone) as epoch seconds."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.timestamp()


def _near_midnight(t: float, tz: str, guard_s: float) -> bool:
    sod = local_second_of_day(t, tz)
    return sod < guard_s or sod >= _DAY_S - guard_s


def clock_deviation(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """ERC12: |meter clock − read time| above the threshold; an unreadable clock raises too.

    Skipped while either clock is within the midnight guard (23:59–00:00 local by default)
    and disabled by a threshold of 0, as 1376.1 terminals do.
    """
    out: list[RuleEvent] = []
    if obs.meter_clock is None or th.clock_threshold_s == 0:
        return out
    meter_t = parse_meter_clock(obs.meter_clock, ctx.tz)
    base: dict[str, object] = {"meter_clock": obs.meter_clock, "gateway_time": iso(obs.ts),
                               "threshold_s": Decimal(repr(th.clock_threshold_s)), "timezone": ctx.tz}
    if meter_t is None:
        raise_condition(state, out, "clock_deviation", "", obs.ts,
                        f"meter {obs.meter}'s clock {obs.meter_clock!r} is not a valid time",
                        {**base, "problem": "invalid meter clock"})
        return out
    if _near_midnight(obs.ts, ctx.tz, th.clock_midnight_guard_s) or _near_midnight(
        meter_t, ctx.tz, th.clock_midnight_guard_s
    ):
        return out
    deviation = round(meter_t - obs.ts, 3)
    ev = {**base, "deviation_s": Decimal(repr(deviation))}
    if abs(deviation) > th.clock_threshold_s:
        direction = "ahead of" if deviation > 0 else "behind"
        raise_condition(state, out, "clock_deviation", "", obs.ts,
                        f"meter {obs.meter}'s clock is {abs(deviation):.0f} s {direction} the gateway's", ev)
    else:
        normal_cycle(state, out, "clock_deviation", "", obs.ts, th.clear_after_normal_cycles,
                     f"meter {obs.meter}'s clock is within {th.clock_threshold_s:g} s again", ev)
    return out


def phase_loss(
    state: MeterState, obs: Observation, iv: EnergyInterval | None, ctx: MeterContext, th: ReviewThresholds
) -> list[RuleEvent]:
    """One phase below ``phase_loss_fraction`` of the reference while the other two are normal.

    The reference is the nominal phase voltage when rated voltage is configured, else the
    mean of the other two phases (which must then agree within ``phase_normal_fraction``).
    All three low is an outage, not a phase loss: no judgement either way.
    """
    out: list[RuleEvent] = []
    v = obs.voltages
    if len(v) != len(PHASES):
        return out
    active = state.active
    if not active or (("phase_loss", "l1") not in active and ("phase_loss", "l2") not in active
                      and ("phase_loss", "l3") not in active):
        # The common case, decided once instead of per phase: every reference (the nominal,
        # or the mean of two phases) is at most the highest phase, so when the lowest phase
        # clears the loss fraction of that bound no phase is lost, and with nothing raised
        # there is no normal cycle to count either.
        volts = v.values()
        bound = ctx.nominal_v if ctx.nominal_v is not None else max(volts)
        if min(volts) >= th.phase_loss_fraction * bound:
            return out
    for ph in PHASES:
        others = [v[o] for o in PHASES if o != ph]
        if ctx.nominal_v is not None:
            ref = ctx.nominal_v
            others_normal = all(o >= th.phase_normal_fraction * ref for o in others)
        else:
            ref = sum(others, _ZERO) / len(others)
            hi, lo = max(others), min(others)
            others_normal = lo > 0 and lo >= th.phase_normal_fraction * hi
        if ref <= 0:
            continue
        lost = v[ph] < th.phase_loss_fraction * ref and others_normal
        if not lost and not is_raised(state, "phase_loss", ph):
            continue
        ratio = (v[ph] / ref).quantize(Decimal("0.0001"))
        ev: dict[str, object] = {
            "phase": ph, "voltage_v": v[ph], "voltages_v": {p: v[p] for p in PHASES},
            "reference_v": ref, "reference": "nominal" if ctx.nominal_v is not None else "other_phases",
            "ratio": ratio, "loss_fraction": th.phase_loss_fraction, "normal_fraction": th.phase_normal_fraction,
        }
        if lost:
            raise_condition(state, out, "phase_loss", ph, obs.ts,
                            f"meter {obs.meter} lost phase {ph.upper()}: {v[ph]} V against {ref:.1f} V", ev)
        elif v[ph] >= th.phase_normal_fraction * ref and others_normal:
            normal_cycle(state, out, "phase_loss", ph, obs.ts, th.clear_after_normal_cycles,
                         f"meter {obs.meter}'s phase {ph.upper()} is back ({v[ph]} V)", ev)
    return out


#: Every rule but read_failure, in evaluation order (read_failure runs first, apart).
RULES: Final[tuple[tuple[str, Rule], ...]] = (
    ("register_decrease", register_decrease),
    ("meter_stopped", meter_stopped),
    ("meter_fast", meter_fast),
    ("consumption_jump", consumption_jump),
    ("clock_deviation", clock_deviation),
    ("phase_loss", phase_loss),
)


def evaluate(
    state: MeterState, obs: Observation, ctx: MeterContext, th: ReviewThresholds,
    rules: Sequence[tuple[str, Rule]] | None = None,
) -> tuple[list[RuleEvent], list[tuple[str, Exception]]]:
    """Run ``rules`` (default: the ones here) on one observation; the events and failed rules.

    :mod:`gateway.review.ruleset` passes every rule, including those of the other rule
    modules (they are built on the helpers here, so this module cannot import them).

    A failing rule is reported, never fatal: the others still run and the state still
    advances, so one bug never blinds the rest of the review (nor touches the reading).
    """
    events: list[RuleEvent] = []
    errors: list[tuple[str, Exception]] = []
    if not th.enabled:
        return events, errors
    try:
        events += read_failure(state, obs, None, ctx, th)
    except Exception as exc:
        errors.append(("read_failure", exc))
    if obs.failed:
        return events, errors
    if state.identity is not None and ctx.identity and state.identity != ctx.identity:
        # A meter swap (another address or profile under the same id): new baselines, no
        # register judged against the old meter's.
        state.registers.clear()
        state.registers_ts = None
        state.energy = None
        state.stopped_ref = None
        state.stopped_expected = _ZERO
        state.dirty = True
    if ctx.identity and state.identity != ctx.identity:
        state.identity = ctx.identity
        state.dirty = True
    reg = obs.registers.get(th.energy_register)     # the judged register (rules never change obs)
    if (state.change_at is not None and obs.ts > state.change_at and (
            (state.registers_ts is not None and state.registers_ts <= state.change_at)
            or (state.energy is not None and state.energy.ts <= state.change_at))) \
            or _ratio_changed(state.energy, reg, obs.ts):
        # a recorded exchange or CT/PT change lies between the baselines and this reading, or
        # the reading was taken under another CT × PT (a restart under a new configured ratio)
        rebase(state)
    power = state.power
    if obs.power_kw is not None and (not power or power[-1][0] <= obs.ts):
        power.append((obs.ts, obs.power_kw))
        if len(power) > POWER_SAMPLES_KEPT:
            del power[0]
    iv = _interval(state.energy, reg, obs)
    for name, rule in RULES if rules is None else rules:
        try:
            events += rule(state, obs, iv, ctx, th)
        except Exception as exc:
            errors.append((name, exc))
    # move the baselines (only forward in time)
    if obs.registers and (state.registers_ts is None or obs.ts >= state.registers_ts):
        state.registers.update(obs.registers)
        state.registers_ts = obs.ts
        state.dirty = True
    if reg is not None and (state.energy is None or obs.ts > state.energy.ts):
        # the interval's end is this very point (no rule changes an EnergyPoint): not made twice
        state.energy = iv.end if iv is not None and iv.end.reg is reg else EnergyPoint(obs.ts, obs.slot, reg)
        if state.stopped_ref is None:
            state.stopped_ref = state.energy
        state.dirty = True
    prune_power(state)
    return events, errors


def _ratio_changed(energy: EnergyPoint | None, reg: RegisterValue | None, ts: float) -> bool:
    """Whether the judged register ``reg``, read at ``ts``, was taken under another CT × PT
    than its baseline ``energy`` was."""
    if reg is None or energy is None or ts <= energy.ts:
        return False
    # factor_taken, its cache read here first: twice a reading
    f_prev = energy.reg._factor
    if f_prev is _NOT_YET:
        f_prev = factor_taken(energy.reg)
    f_now = reg._factor
    if f_now is _NOT_YET:
        f_now = factor_taken(reg)
    return f_prev is not None and f_now is not None and f_prev != f_now


def rebase(state: MeterState) -> None:
    """Forget every baseline a rule differences against (registers, energy, the reverse-energy,
    power-factor and zero-consumption windows): they start again from the next reading."""
    state.registers.clear()
    state.registers_ts = None
    state.energy = None
    state.stopped_ref = None
    state.stopped_expected = _ZERO
    state.reverse_ref = None
    state.pf_ref = None
    state.day_marks.clear()
    state.dirty = True


def note_change(state: MeterState, at: float) -> None:
    """Record a meter exchange or CT/PT change at ``at``: no register is judged across it.

    The baselines are dropped at the first reading after ``at`` (see :func:`evaluate`); a
    reading at ``at`` shows the meter before the change (the old meter's final registers).
    Only the latest change is kept.
    """
    if state.change_at is None or at > state.change_at:
        state.change_at = at
        state.dirty = True


def prune_power(state: MeterState) -> None:
    """Forget power samples no future energy interval can use.

    The next interval starts at the last energy value, so only samples from then on count,
    plus the latest one before it (the fallback when none falls inside). Without this every
    meter polled each second carried 256 samples (≈ 40 MB at 1,000 meters).
    """
    if state.energy is None:
        return
    since = state.energy.ts
    power = state.power
    drop = 0
    while drop + 1 < len(power) and power[drop + 1][0] <= since:
        drop += 1
    if drop:
        del power[:drop]


def rated_power_kw(
    rated_voltage_v: Decimal | None, rated_current_a: Decimal | None, multiplier: Decimal,
    voltage_is: Literal["phase", "line"] = "phase",
) -> Decimal | None:
    """Primary-side rated power in kW: √3 × U_line × Imax × CT × PT (= 3 × U_phase × Imax × …)."""
    if rated_voltage_v is None or rated_current_a is None:
        return None
    factor = Decimal(3) if voltage_is == "phase" else Decimal(3).sqrt()
    return factor * rated_voltage_v * rated_current_a * multiplier / 1000

