"""Two-part tariff inputs of a stage or a cycle: maximum demand with its time, reactive
energy by quadrant and the period power factor (pure arithmetic and the field names).

Why a module of its own: a large customer's bill (两部制电价) needs, besides energy per
tariff, the maximum demand (基本电费 on demand) and the power factor of the period (力调电费).
The stage view (:mod:`gateway.billing.view`), the CSV exports and the customer sums read
these figures under the names below; keep them stable.

Fields added to every stage and to the cycle total (API ``stages[]`` / ``cycle_total``):

=========================== =================================================================
``max_demand_kw``           maximum demand of the period, kW after CT×PT (Decimal), or None
``max_demand_at``           when it occurred: the end of its demand window, ISO-8601 UTC
``demand_source``           ``meter`` (the meter's own demand register or settlement-day
                            record) or ``computed`` (from the gateway's interval readings),
                            None when neither gives a value
``demand_detail``           how it was obtained: ``record`` (meter: ``current`` register,
                            ``settlement_day`` record) or ``method`` / ``window_minutes`` /
                            ``slide_minutes`` / ``windows`` / ``gaps`` (computed), ``note``
``reactive_kvarh``          ``{"q1": …, "q2": …, "q3": …, "q4": …}`` reactive energy per
                            quadrant over the period, kvarh after CT×PT (None: not read)
``power_factor``            cos φ = ΔkWh ÷ √(ΔkWh² + Δkvarh²), 4 decimals, or None
``power_factor_registers``  the registers used, active first: ``energy_import_kwh`` with
                            ``energy_q1_kvarh`` + ``energy_q4_kvarh`` (every reactive energy
                            while importing, inductive and capacitive), or with
                            ``energy_import_kvarh`` when the meter has no quadrant registers
``power_factor_kwh``        ΔkWh used (after CT×PT)
``power_factor_kvarh``      Δkvarh used (the sum of the reactive registers named)
=========================== =================================================================

Demand from the meter (DL/T 645-2007 ``01010000`` current forward active maximum demand with
its time, ``0101000n`` the n-th previous settlement-day record; Modbus profiles' demand
registers): the meter's register holds the maximum since its last demand reset (its
settlement day), so it is the maximum of a stage only when its time falls inside the stage
and the register's period covers the stage (:func:`meter_demand`). At a boundary that *is*
the meter's settlement instant the current register was just reset (it reads 0); the
settlement-day record read with that settlement holds the closed period's maximum.
Otherwise the demand is computed from the interval readings (:func:`computed_demand`):
block (aligned windows of ``window_minutes``) or sliding (windows of ``window_minutes``
ending every ``slide_minutes``), each window's demand = ΔkWh × 60 ÷ window_minutes; a window
without both readings is a gap (counted, never filled). Ties keep the earliest window, as a
meter only replaces its maximum by a strictly greater one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from gateway.model import iso_utc

DemandSource = Literal["meter", "computed"]

#: Stage/cycle fields for demand (see the module docstring), in CSV column order.
DEMAND_FIELDS: Final = ("max_demand_kw", "max_demand_at", "demand_source", "demand_detail")
#: Stage/cycle fields for reactive energy and power factor, in CSV column order.
POWER_FACTOR_FIELDS: Final = ("reactive_kvarh", "power_factor", "power_factor_registers",
                              "power_factor_kwh", "power_factor_kvarh")
#: Every two-part tariff field of a stage or cycle document.
TWO_PART_FIELDS: Final = (*DEMAND_FIELDS, *POWER_FACTOR_FIELDS)

#: Quadrant key → canonical register (DL/T 645 00050000…00080000; OBIS 5.8.0…8.8.0).
QUADRANT_REGISTERS: Final[dict[str, str]] = {f"q{k}": f"energy_q{k}_kvarh" for k in range(1, 5)}
#: The active register the power factor is taken on (a consumer imports).
PF_ACTIVE: Final = "energy_import_kwh"
#: Reactive registers for an importing customer, preferred first: quadrants I + IV (every
#: reactive energy while active energy is imported, lagging and leading, so capacitive
#: over-compensation lowers the factor as 力调 counts it), else combined reactive 1.
PF_REACTIVE_CHOICES: Final[tuple[tuple[str, ...], ...]] = (
    ("energy_q1_kvarh", "energy_q4_kvarh"),
    ("energy_import_kvarh",),
)
#: Settlement register names of the meter's demand (value; its time is the register's ``at``).
DEMAND_REGISTER: Final = "demand_max_kw"
PF_QUANTUM: Final = Decimal("0.0001")
_CTX: Final = Context(prec=34)


@dataclass(frozen=True, slots=True)
class Demand:
    """A maximum demand: value (kW after CT×PT), when (epoch, window end), where from."""

    value: Decimal | None
    at: float | None
    source: DemandSource | None
    detail: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        """The :data:`DEMAND_FIELDS` of a stage document."""
        return {
            "max_demand_kw": self.value,
            "max_demand_at": None if self.at is None else iso_utc(self.at),
            "demand_source": self.source,
            "demand_detail": dict(self.detail),
        }


NO_DEMAND: Final = Demand(None, None, None, {"note": "no demand register and no interval readings"})


def power_factor(kwh: Decimal | None, kvarh: Decimal | None) -> Decimal | None:
    """cos φ = kWh ÷ √(kWh² + kvarh²), rounded half-even to 4 decimals; None without active energy.

    ``kvarh`` is taken as a magnitude (a reactive register difference is never negative; a
    negative one is a meter problem the stage flags, not a leading factor).
    """
    if kwh is None or kvarh is None or kwh <= 0:
        return None
    q = abs(kvarh)
    root = (kwh * kwh + q * q).sqrt(_CTX)
    return _CTX.divide(kwh, root).quantize(PF_QUANTUM, rounding=ROUND_HALF_EVEN)


def reactive_by_quadrant(consumption: Mapping[str, Decimal | None]) -> dict[str, Decimal | None]:
    """``{"q1": …, …, "q4": …}`` from a stage's consumption (None where not read)."""
    return {q: consumption.get(reg) for q, reg in QUADRANT_REGISTERS.items()}


def power_factor_inputs(consumption: Mapping[str, Decimal | None]) -> dict[str, Any]:
    """The :data:`POWER_FACTOR_FIELDS` of a period from its consumption per register (pure).

    Uses the first reactive choice of :data:`PF_REACTIVE_CHOICES` whose registers all have a
    consumption; ``power_factor_registers`` names the active register and those.
    """
    out: dict[str, Any] = {"reactive_kvarh": reactive_by_quadrant(consumption), "power_factor": None,
                           "power_factor_registers": [], "power_factor_kwh": None, "power_factor_kvarh": None}
    kwh = consumption.get(PF_ACTIVE)
    if kwh is None:
        return out
    for regs in PF_REACTIVE_CHOICES:
        values = [consumption.get(r) for r in regs]
        if any(v is None for v in values):
            continue
        kvarh = sum((v for v in values if v is not None), Decimal(0))
        out.update(power_factor=power_factor(kwh, kvarh), power_factor_registers=[PF_ACTIVE, *regs],
                   power_factor_kwh=kwh, power_factor_kvarh=kvarh)
        break
    return out


def meter_time(text: str | None, tz: str) -> float | None:
    """A demand time as the meter gives it → epoch seconds (None when absent or unreadable).

    DL/T 645 gives meter-local ``YYYY-MM-DDThh:mm`` (naive: read in the gateway's zone
    ``tz``); a Modbus profile may give Unix seconds (digits only).
    """
    if text is None:
        return None
    s = str(text).strip()
    if not s:
        return None
    if s.replace(".", "", 1).isdigit():
        seconds = float(Decimal(s))
        return seconds if seconds > 0 else None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt.timestamp()


@dataclass(frozen=True, slots=True)
class MeterDemand:
    """One demand figure the meter gave: value (after CT×PT), time, and the period it covers.

    ``period_start`` / ``period_end``: the meter's demand period the maximum is over (None
    when unknown: a current register of a meter that does not tell its reset instants).
    """

    value: Decimal
    at: float | None
    record: str
    period_start: float | None = None
    period_end: float | None = None


def meter_demand(start: float, end: float, current: MeterDemand | None,
                 closed: MeterDemand | None) -> Demand | None:
    """The stage ``[start, end)``'s maximum demand from the meter's figures read at ``end``, or None.

    ``current``: the demand register at the end boundary (maximum since the meter's last
    reset, ``closed.period_end`` when known). ``closed``: the settlement-day record of the
    last closed demand period (``[period_start, period_end)``), read with the same settlement.

    * When the meter reset inside the stage or at its end (``start < closed.period_end <=
      end``) the stage is covered by the closed period's tail and the current register; the
      closed record counts only when its time is in the stage and its period began at or
      before ``start`` (else the maximum of ``[start, reset)`` is unknown → None). The larger
      of the two counts (on a tie the earlier, the closed record).
    * Otherwise the current register alone covers the stage (it was not reset inside it):
      its maximum is the stage's when its time falls inside the stage; a maximum from
      before the stage says nothing of the stage → None.

    None tells the caller to compute the demand from interval readings instead.
    """
    reset = closed.period_end if closed is not None else None
    if closed is not None and reset is not None and start < reset <= end:
        if closed.at is None or not start <= closed.at < end:
            return None
        if closed.period_start is None or closed.period_start > start:
            return None
        best = closed
        if reset < end and current is not None and current.value > closed.value and current.at is not None \
                and reset <= current.at < end:
            best = current
        return Demand(best.value, best.at, "meter", {"record": best.record})
    if current is None or current.at is None:
        return None
    if current.period_start is not None and current.period_start > start:
        return None
    if not start <= current.at < end:
        return None
    detail: dict[str, Any] = {"record": current.record}
    if current.period_start is None:
        detail["note"] = ("the meter does not tell its demand resets: taken as not reset inside the period "
                          "(a maximum before a reset inside it would be missed)")
    return Demand(current.value, current.at, "meter", detail)


def computed_demand(samples: Mapping[float, Decimal], start: float, end: float, window_s: float,
                    slide_s: float, method: str, ratios: Mapping[float, object] | None = None) -> Demand:
    """The maximum demand over ``[start, end)`` from cumulative energy readings (pure, exact).

    ``samples``: slot epoch → energy register after CT×PT (kWh) at that slot. Windows of
    ``window_s`` end every ``slide_s`` (block: ``slide_s == window_s``) at ``start + window_s``,
    ``start + window_s + slide_s``, … ≤ ``end``; a window's demand is (E(t) − E(t − window)) ×
    3600 ÷ window_s kW. A window lacking either reading, or whose difference is negative, is a
    gap; so is one whose ends were read under different CT/PT (``ratios``: slot → the ratio in
    force, when given), whose difference is not consumption. The first window with the largest
    demand wins; its time is the window's end.
    """
    if window_s <= 0 or slide_s <= 0:
        raise ValueError("window and slide must be positive")
    per_hour = _CTX.divide(Decimal(3600), Decimal(repr(window_s)))
    best: Decimal | None = None
    best_at: float | None = None
    windows = gaps = 0
    t = start + window_s
    limit = 100_000
    while t <= end + 1e-6 and limit > 0:
        limit -= 1
        windows += 1
        a, b = samples.get(t - window_s), samples.get(t)
        if a is None or b is None or b < a or (ratios is not None and ratios.get(t - window_s) != ratios.get(t)):
            gaps += 1
        else:
            d = _CTX.multiply(b - a, per_hour)
            if best is None or d > best:
                best, best_at = d, t
        t += slide_s
    detail: dict[str, Any] = {"method": method, "window_minutes": _minutes(window_s),
                              "slide_minutes": _minutes(slide_s), "windows": windows, "gaps": gaps}
    if gaps:
        detail["note"] = (f"{gaps} of {windows} windows lack a reading: the maximum is over the windows "
                          "that have both ends and may be understated")
    if best is None:
        return Demand(None, None, None, detail)
    return Demand(best, best_at, "computed", detail)


def sample_slots(start: float, end: float, window_s: float, slide_s: float) -> list[float]:
    """Every slot :func:`computed_demand` reads for ``[start, end)`` (both ends of each window)."""
    out: set[float] = set()
    t = start + window_s
    limit = 100_000
    while t <= end + 1e-6 and limit > 0:
        limit -= 1
        out.add(t)
        out.add(t - window_s)
        t += slide_s
    return sorted(out)


def _minutes(seconds: float) -> int | float:
    m = seconds / 60
    return int(m) if m == int(m) else m


def _decimal(v: object) -> Decimal | None:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int | str):
        try:
            return Decimal(v)
        except ArithmeticError:
            return None
    return None


def meter_figures(body: Mapping[str, Any] | None, tz: str) -> tuple[MeterDemand | None, MeterDemand | None]:
    """(current register, closed settlement-day record) from a stored settlement body.

    The current register is ``registers.demand_max_kw`` (value after CT×PT, ``at`` meter
    local); the closed record is ``demand_period`` (:meth:`gateway.billing.capture.BillingCapture`
    keeps it), whose ``period_end`` is where the current register's period began.
    """
    if not body or body.get("quality") == "missing":
        return None, None
    closed: MeterDemand | None = None
    dp = body.get("demand_period")
    reset: float | None = None
    if isinstance(dp, Mapping):
        value = _decimal(dp.get("value"))
        end = _iso(dp.get("period_end"))
        if value is not None and end is not None:
            closed = MeterDemand(value, meter_time(_text(dp.get("at")), tz), "settlement_day",
                                 _iso(dp.get("period_start")), end)
            reset = end
    current: MeterDemand | None = None
    reg = (body.get("registers") or {}).get(DEMAND_REGISTER)
    if isinstance(reg, Mapping):
        value = _decimal(reg.get("value"))
        if value is not None:
            current = MeterDemand(value, meter_time(_text(reg.get("at")), tz), "current", reset)
    return current, closed


def _text(v: object) -> str | None:
    return None if v is None else str(v)


def _iso(v: object) -> float | None:
    if v is None:
        return None
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def two_part_inputs(start: float, end: float, end_body: Mapping[str, Any] | None,
                    consumption: Mapping[str, Decimal | None], tz: str,
                    computed: Callable[[], Demand] | None) -> dict[str, Any]:
    """Every :data:`TWO_PART_FIELDS` of the period ``[start, end)`` (stage or cycle).

    Demand: the meter's figures read at ``end`` (``end_body``, the end settlement) when they
    determine the period's maximum (:func:`meter_demand`), else ``computed()`` (from interval
    readings; None: not available), labelled ``computed``. Power factor: from ``consumption``
    (:func:`power_factor_inputs`).
    """
    current, closed = meter_figures(end_body, tz)
    demand = meter_demand(start, end, current, closed)
    if demand is None:
        demand = computed() if computed is not None else None
        if demand is not None and demand.value is None and current is not None:
            demand = Demand(None, None, None, {**demand.detail, "note": "the meter's demand register does not "
                                               "determine this period's maximum and "
                                               + str(demand.detail.get("note") or "no window has both readings")})
    return {**(demand or NO_DEMAND).doc(), **power_factor_inputs(consumption)}


def cycle_from_stages(cycle: dict[str, Any], stages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cycle's two-part fields, its demand taken from its stages when the meter's cycle figure is absent.

    A meter that resets its demand at every stage boundary (three settlement days a month
    for staged settlement, 分次结算) has a record per stage but none for the whole cycle; the
    cycle's maximum is then the largest stage maximum (the earliest on a tie), ``meter`` when
    every stage's is. Used only when every stage has a maximum and the cycle's own figure is
    not the meter's.
    """
    if cycle.get("demand_source") == "meter" or not stages:
        return cycle
    if any(st.get("max_demand_kw") is None for st in stages):
        return cycle
    best = stages[0]
    for st in stages[1:]:
        if st["max_demand_kw"] > best["max_demand_kw"]:
            best = st
    source = "meter" if all(st.get("demand_source") == "meter" for st in stages) else "computed"
    return {**cycle, "max_demand_kw": best["max_demand_kw"], "max_demand_at": best["max_demand_at"],
            "demand_source": source,
            "demand_detail": {"record": "stages", "stage": best.get("stage"),
                              "note": "the largest of the stages' maxima (the meter resets its demand at the "
                                      "stage boundaries)" if source == "meter" else
                                      "the largest of the stages' maxima"}}


def better_of(candidates: Sequence[Demand | None]) -> Demand | None:
    """The first candidate that has a value (meter before computed, as the caller orders them)."""
    for c in candidates:
        if c is not None and c.value is not None:
            return c
    return None


__all__ = [
    "DEMAND_FIELDS",
    "DEMAND_REGISTER",
    "NO_DEMAND",
    "PF_ACTIVE",
    "PF_QUANTUM",
    "PF_REACTIVE_CHOICES",
    "POWER_FACTOR_FIELDS",
    "QUADRANT_REGISTERS",
    "TWO_PART_FIELDS",
    "Demand",
    "DemandSource",
    "MeterDemand",
    "better_of",
    "computed_demand",
    "cycle_from_stages",
    "meter_demand",
    "meter_figures",
    "meter_time",
    "power_factor",
    "power_factor_inputs",
    "reactive_by_quadrant",
    "sample_slots",
    "two_part_inputs",
]
