"""Settlement readings and stage consumption: the data model and its pure arithmetic.

A **settlement** is the cumulative registers of one meter at one boundary, with how they
were obtained (``quality``) and the CT/PT in force. Qualities, best first
(:data:`QUALITY_RANK`):

============== ===============================================================
meter_frozen   the meter's own daily freeze (matched by date) or settlement-day
               block; ``frozen_at`` is the meter's freeze time
actual         a live read within the plan's tolerance after the boundary
manual         entered by an operator from an on-site reading (补抄): who (``entered_by``),
               when read (``read_at``) and a ``note``; never shown as ``actual``
late           a live read after the tolerance; ``read_at`` is the real read time
estimated      only when the plan allows it: linear between the two nearest good
               readings around the boundary, both named in ``estimated_from``
missing        nothing yet; the gateway keeps trying
============== ===============================================================

A better settlement supersedes a worse one; both stay in the history (never rewritten).
An operator's correction (a manual reading for a boundary that already has a value, or a
confirmation of a ``clock_unverified`` or ``estimated`` value, ``confirmed``) is a new
version too, naming the one it ``supersedes`` (:mod:`gateway.billing.corrections`).

**Stage consumption** per register = value(end) − value(start), where value = register ×
CT × PT (for registers the meter shows on the secondary side), so it is exactly
(end − start) × CT × PT in Decimal arithmetic. Both ends' qualities travel with it. When
the ratio changed inside the stage, the audited change record (with the registers read at
the change) splits it: (at change − start) × old + (end − at change) × new; without such a
record or reading the consumption is withheld and flagged. A **meter exchange** (换表,
:mod:`gateway.billing.exchanges`) is the same kind of record (``kind: exchange``): the old
meter's final registers under the old ratio and the new meter's initial registers under the new
one, so a stage spanning it is (old final − start) × old + (end − new initial) × new; each such
record inside a stage adds its code (``exchange`` or ``ratio_change``) to the stage.
A decrease of a register is a **rollover** when the register's capacity (``capacity`` in
the settlement, from the profile: 10^digits) explains it — end + 10^digits − start below half
the capacity — and is then counted exactly and flagged ``rollover``; any other decrease is
flagged ``negative`` and the stage is never ``complete``. A stage one of whose ends is
``clock_unverified`` (the gateway clock unsynchronized, or the meter clock off by more than the
plan's ``max_meter_offset``, at that read) is flagged so and not ``complete`` until an operator
confirms it (the confirmed version then counts; its flag sentence names who and why); so is a
stage one of whose ends is an unconfirmed ``estimated`` value. ``codes`` lists such flags
(:data:`FLAG_CODES`) for programs; ``flags`` explains each in a sentence.
**Reconciliation**: Σ stage consumption = cycle consumption (end − start of the cycle) per
register, flagged when a stage is incomplete or the sums disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

SettlementQuality = Literal["meter_frozen", "actual", "manual", "late", "estimated", "missing"]
#: A ``manual`` reading ranks above ``late``: a late live read does not replace what an operator
#: read on site for the boundary, while the meter's own freeze (``meter_frozen``) still does.
QUALITY_RANK: Final[dict[str, int]] = {
    "meter_frozen": 6, "actual": 5, "manual": 4, "late": 3, "estimated": 2, "missing": 1,
}
SETTLEMENT_SCHEMA: Final = "amr.settlement.v1"

#: Machine-readable stage flags (``StageConsumption.codes``).
FLAG_CODES: Final = ("rollover", "negative", "clock_unverified", "exchange", "ratio_change")

#: Registers that are not cumulative: kept in a settlement, never differenced.
NOT_CUMULATIVE: Final = frozenset({"demand_max_kw", "demand_max_kw_at"})


def rank(quality: str) -> int:
    """Order of a settlement quality (higher is better); 0 for an unknown one."""
    return QUALITY_RANK.get(quality, 0)


@dataclass(frozen=True, slots=True)
class RegisterValue:
    """One settled register: what the meter showed (``raw``) and ``value`` after CT×PT.

    ``at``: when the meter says the value occurred (maximum demand's time, meter local).
    ``quality`` / ``read_at``: set only when this register was obtained differently from
    the settlement as a whole — a ``meter_frozen`` settlement whose meter does not freeze
    reactive energy or demand carries those registers from a live read at the boundary
    (``actual``), so billing can see which value is the meter's freeze and which is not.
    """

    raw: Decimal
    value: Decimal
    unit: str
    at: str | None = None
    quality: str | None = None
    read_at: str | None = None

    def doc(self) -> dict[str, object]:
        """JSON-ready form (the optional fields only when set)."""
        out: dict[str, object] = {"raw": self.raw, "value": self.value, "unit": self.unit}
        if self.at is not None:
            out["at"] = self.at
        if self.quality is not None:
            out["quality"] = self.quality
            out["read_at"] = self.read_at
        return out


@dataclass(frozen=True, slots=True)
class Draft:
    """A settlement about to be stored (no id or seq yet)."""

    quality: SettlementQuality
    source: str                          # daily_freeze | settlement_day | live_read | interpolated | none
    registers: dict[str, RegisterValue]
    read_at: float | None = None          # when the gateway obtained it
    frozen_at: float | None = None        # meter's freeze time (meter_frozen)
    reason: str | None = None             # missing: why; others: notes
    estimated_from: tuple[dict[str, object], ...] = ()
    meter_clock: str | None = None        # the meter's clock as read with the settlement (meter local)
    meter_offset_s: Decimal | None = None  # meter clock − gateway clock at that read
    gateway_clock: dict[str, object] | None = None   # the gateway clock's state (clockstate.GatewayClockState)
    flags: tuple[str, ...] = ()           # clock_unverified
    #: the meter's last closed demand period (settlement-day record: value, at, period_start/end),
    #: read with the settlement for the two-part tariff (gateway.billing.demand)
    demand_period: dict[str, object] | None = None


@dataclass(slots=True)
class Settlement:
    """A stored settlement row (current or superseded)."""

    id: int
    meter: str
    plan: str
    cycle: str
    index: int
    boundary: float
    quality: str
    created: float
    body: dict[str, Any]
    seq: int | None = None
    superseded_by: int | None = None
    history: list[Settlement] = field(default_factory=list)

    @property
    def stage(self) -> int:
        """The stage that begins at this boundary."""
        return self.index + 1

    def registers(self) -> dict[str, Decimal]:
        """Register → value (after CT×PT), exact."""
        regs = self.body.get("registers") or {}
        out: dict[str, Decimal] = {}
        for name, r in regs.items():
            v = r.get("value") if isinstance(r, dict) else None
            if v is not None:
                out[name] = Decimal(v)
        return out

    def raw_registers(self) -> dict[str, Decimal]:
        """Register → what the meter showed (before CT×PT), exact."""
        regs = self.body.get("registers") or {}
        out: dict[str, Decimal] = {}
        for name, r in regs.items():
            v = r.get("raw") if isinstance(r, dict) else None
            if v is not None:
                out[name] = Decimal(v)
        return out

    def capacities(self) -> dict[str, int]:
        """Register → integer digits it shows before rolling over (recorded from the profile at capture)."""
        caps = self.body.get("capacity") or {}
        return {n: int(c["digits"]) for n, c in caps.items() if isinstance(c, dict) and c.get("digits") is not None}

    def register_qualities(self) -> dict[str, str]:
        """Registers that carry a quality of their own (see :class:`RegisterValue`)."""
        regs = self.body.get("registers") or {}
        return {n: str(r["quality"]) for n, r in regs.items() if isinstance(r, dict) and r.get("quality")}

    @property
    def flags(self) -> tuple[str, ...]:
        """The settlement's own flags (``clock_unverified``)."""
        return tuple(str(f) for f in self.body.get("flags") or ())

    @property
    def confirmed(self) -> dict[str, Any] | None:
        """The operator confirmation of this version (by, at, reason), or None."""
        c = self.body.get("confirmed")
        return c if isinstance(c, dict) else None

    def needs_confirmation(self) -> bool:
        """An unconfirmed ``clock_unverified`` or ``estimated`` value (what an operator may confirm)."""
        return self.confirmed is None and (self.quality == "estimated" or "clock_unverified" in self.flags)

    @property
    def multiplier(self) -> Decimal | None:
        """CT × PT recorded with the settlement."""
        m = self.body.get("multiplier")
        return None if m is None else Decimal(m)


@dataclass(frozen=True, slots=True)
class StageConsumption:
    """Consumption of one stage per register, with both ends' qualities and any flags."""

    stage: int
    start: float
    end: float
    start_quality: str | None
    end_quality: str | None
    consumption: dict[str, Decimal | None]
    complete: bool
    flags: tuple[str, ...] = ()
    #: Machine-readable flags (:data:`FLAG_CODES`), each also explained by a sentence in ``flags``
    #: that starts with the code.
    codes: tuple[str, ...] = ()


def _mult(doc: Any) -> Decimal | None:
    m = doc.get("multiplier") if isinstance(doc, dict) else None
    return None if m is None else Decimal(m)


def _split(name: str, a: Decimal, b: Decimal, changes: Sequence[dict[str, Any]]) -> Decimal | None:
    """Σ over the ratio segments of (value at segment end − value at segment start), each under its ratio.

    ``a`` is the start register under the first ratio, ``b`` the end register under the last;
    each change holds the register read at the change under the old ratio (``value_old``)
    and the new one (``value_new``). None when a change has no reading of ``name``.
    """
    total = Decimal(0)
    prev = a
    for c in changes:
        reg = (c.get("registers") or {}).get(name)
        if not isinstance(reg, dict) or reg.get("value_old") is None or reg.get("value_new") is None:
            return None
        total += Decimal(reg["value_old"]) - prev
        prev = Decimal(reg["value_new"])
    return total + (b - prev)


def stage_consumption(
    stage: int, start: float, end: float, first: Settlement | None, last: Settlement | None,
    registers: tuple[str, ...] | list[str], changes: Sequence[dict[str, Any]] = (),
) -> StageConsumption:
    """Consumption of one stage from its two boundary settlements (pure, exact).

    ``changes``: the audited CT/PT changes of the meter (``billing_ratio_change`` bodies,
    oldest first); those strictly inside the stage split it. For each register, when every
    change carries the register read at the change, consumption = Σ per segment of
    (register at the segment's end − at its start) × the segment's CT × PT, i.e. with one
    change (reading at change − start) × old + (end − reading at change) × new, exactly. A
    change without that reading (the meter did not answer then) leaves the register's
    consumption withheld and flagged, as does a CT/PT difference between the ends that no
    recorded change explains.
    """
    flags: list[str] = []
    cons: dict[str, Decimal | None] = {}
    names = [r for r in registers if r not in NOT_CUMULATIVE]
    inside = [c for c in changes if _inside(c, start, end)]
    usable = (first is not None and last is not None and first.quality != "missing"
              and last.quality != "missing")
    if first is None or first.quality == "missing":
        flags.append("start settlement missing")
    if last is None or last.quality == "missing":
        flags.append("end settlement missing")
    if usable:
        assert first is not None and last is not None
        chain = [first.multiplier, *(m for c in inside for m in (_mult(c.get("old")), _mult(c.get("new")))),
                 last.multiplier]
        consistent = all(chain[i] == chain[i + 1] for i in range(0, len(chain), 2))
        if not consistent:
            flags.append(f"CT/PT changed within the stage (multiplier {first.multiplier} → {last.multiplier}) "
                         "and no recorded ratio change explains it; the register difference cannot be priced "
                         "with one ratio (a change entered through the API needs the meter's ct_ratio/pt_ratio "
                         "changed in the configuration before the stage's end boundary too)")
            usable = False
        for c in inside:
            if c.get("kind") == "exchange":
                flags.append(f"exchange: meter exchanged at {c.get('at')} (new serial {c.get('new_serial')}, "
                             f"multiplier {_mult(c.get('old'))} → {_mult(c.get('new'))}): consumption = (old final "
                             "− start) × old multiplier + (end − new initial) × new multiplier")
            else:
                flags.append(f"ratio_change: CT/PT changed at {c.get('at')} (multiplier {_mult(c.get('old'))} → "
                             f"{_mult(c.get('new'))}): consumption split at the reading taken at the change")
    a = first.registers() if first is not None else {}
    b = last.registers() if last is not None else {}
    codes: list[str] = [str(c.get("kind") or "ratio_change") for c in inside]
    negative = False
    for name in names:
        if usable and name in a and name in b:
            assert first is not None and last is not None
            d = _split(name, a[name], b[name], inside) if inside else b[name] - a[name]
            if d is not None and d < 0 and not inside:
                wrapped = _rollover(name, first, last, d)
                if wrapped is not None:
                    d = wrapped
                    codes.append("rollover")
                    flags.append(f"rollover: {name} rolled over past its capacity "
                                 f"({first.raw_registers()[name]} → {last.raw_registers()[name]} on the meter); "
                                 f"counted as {wrapped}")
            cons[name] = d
            if d is None:
                flags.append(f"{name}: no reading at the CT/PT change, consumption withheld")
                continue
            if d < 0:
                negative = True
                codes.append("negative")
                flags.append(f"negative: {name} went down across the stage ({a[name]} → {b[name]}) and "
                             "nothing explains it (not a rollover within the register's capacity)")
        elif name in a or name in b:
            cons[name] = None
    one_end = [n for n, v in cons.items() if v is None and usable and not (n in a and n in b)]
    if one_end:
        flags.append("only one end has " + ", ".join(one_end) + " (the other end's source does not carry it)")
    unverified = False
    for s, end_name in ((first, "start"), (last, "end")):
        if s is not None and s.quality != "missing" and "clock_unverified" in s.flags:
            if s.confirmed is not None:
                flags.append(f"clock_unverified confirmed: the {end_name} settlement was accepted by "
                             f"{s.confirmed.get('by')} at {s.confirmed.get('at')} ({s.confirmed.get('reason')})")
                continue
            unverified = True
            codes.append("clock_unverified")
            flags.append(f"clock_unverified: the {end_name} settlement was read while the gateway clock was "
                         "unsynchronized or the meter clock was off by more than the plan allows "
                         f"({s.body.get('reason') or 'see the settlement'}); not complete until an operator "
                         "confirms it")
    complete = usable and not negative and not unverified and any(v is not None for v in cons.values()) and not any(
        v is None and n in a and n in b for n, v in cons.items())
    estimated_open = False
    for s, end_name in ((first, "start"), (last, "end")):
        if s is None:
            continue
        if s.quality == "estimated":
            if s.confirmed is None:
                estimated_open = True
                flags.append(f"the {end_name} settlement is estimated; not complete until an operator confirms it")
            else:
                flags.append(f"the {end_name} settlement is estimated, confirmed by {s.confirmed.get('by')} at "
                             f"{s.confirmed.get('at')} ({s.confirmed.get('reason')})")
        for name, q in s.register_qualities().items():
            if name in cons and q != s.quality:
                flags.append(f"{name} at the {end_name} is a live read ({q}); the meter did not freeze it")
    return StageConsumption(stage, start, end, first.quality if first else None,
                            last.quality if last else None, cons, complete and not estimated_open, tuple(flags),
                            tuple(dict.fromkeys(codes)))


def _inside(change: dict[str, Any], start: float, end: float) -> bool:
    """Whether a change splits the stage ``start`` → ``end``.

    Strictly inside it; an operator's record (an exchange or an entered CT/PT change) dated at
    the stage's start too: a reading at the change's instant shows the old state (the old
    meter's final registers), so the settlement at that boundary is the old one's.
    """
    at = float(change.get("at_epoch", 0))
    if change.get("entered_by") is not None:
        return start <= at < end
    return start < at < end


def _rollover(name: str, first: Settlement, last: Settlement, d: Decimal) -> Decimal | None:
    """The stage consumption of ``name`` when its decrease is a rollover, else None.

    A register of ``digits`` integer digits wraps at 10^digits: end + 10^digits − start is
    the consumption when that is less than half the capacity (a real decrease, a meter reset
    or a swapped meter, gives a wrapped difference near the capacity and stays ``negative``).
    Computed on the values after CT×PT: ``d`` + 10^digits × the register's factor (value ÷
    raw, the same at both ends when the ratios agree), exactly.
    """
    digits = last.capacities().get(name, first.capacities().get(name))
    if digits is None:
        return None
    ra, rb = first.raw_registers().get(name), last.raw_registers().get(name)
    if ra is None or rb is None:
        return None
    modulus = Decimal(10) ** digits
    raw_wrapped = rb - ra + modulus
    if not 0 <= raw_wrapped < modulus / 2:
        return None
    va, vb = first.registers()[name], last.registers()[name]
    factor = va / ra if ra != 0 else (vb / rb if rb != 0 else None)
    if factor is None:
        return None
    return d + modulus * factor


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Σ stages vs the cycle's own difference, per register."""

    cycle_consumption: dict[str, Decimal | None]
    stage_sum: dict[str, Decimal | None]
    reconciled: bool
    flags: tuple[str, ...]


def reconcile(stages: list[StageConsumption], total: StageConsumption) -> Reconciliation:
    """Check that the stages sum to the cycle total for every register (pure)."""
    flags: list[str] = []
    sums: dict[str, Decimal | None] = {}
    names = list(total.consumption)
    for st in stages:
        for n in st.consumption:
            if n not in names:
                names.append(n)
    for n in names:
        acc: Decimal | None = Decimal(0)
        for st in stages:
            v = st.consumption.get(n)
            if v is None or acc is None:
                acc = None
            else:
                acc += v
        sums[n] = acc
    incomplete = [st.stage for st in stages if not st.complete]
    if incomplete:
        flags.append("stage(s) " + ", ".join(map(str, incomplete)) + " incomplete: the cycle cannot be "
                     "reconciled until their settlements exist")
    if not total.complete:
        flags.append("the cycle's start or end settlement is missing")
    for n in names:
        t = total.consumption.get(n)
        s = sums.get(n)
        if t is not None and s is not None and t != s:
            flags.append(f"{n}: stages sum to {s}, the cycle difference is {t}")
    reconciled = not flags
    return Reconciliation(dict(total.consumption), sums, reconciled, tuple(flags))


__all__ = [
    "FLAG_CODES",
    "NOT_CUMULATIVE",
    "QUALITY_RANK",
    "SETTLEMENT_SCHEMA",
    "Draft",
    "Reconciliation",
    "RegisterValue",
    "Settlement",
    "SettlementQuality",
    "StageConsumption",
    "rank",
    "reconcile",
    "stage_consumption",
]
