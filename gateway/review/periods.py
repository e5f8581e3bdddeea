"""``stage_change`` / ``cycle_change``: a period's consumption against the previous period
(环比, month-on-month) and the same period a year earlier (同比, year-on-year).

Pure. The periods are the billing settlement records' stages and cycles (consumption =
register difference × CT × PT between two settlement readings, see the billing feature),
handed over as :class:`PeriodUse` by whatever the composition root connects (the review
feature does not import billing). Consumption is compared **per day** (stages and months
differ in length) as a ratio ``current ÷ reference``:

* 环比: outside ``[1 ÷ period_mom_factor, period_mom_factor]`` (default 2.0: holidays and
  seasons move a month by far less than half or double) raises with key ``mom``;
* 同比: outside ``[1 ÷ period_yoy_factor, period_yoy_factor]`` (default 1.6: the same season
  a year earlier) raises with key ``yoy``;
* periods where both sides used less than ``period_min_kwh`` are not judged (a closed site
  flips between 0 and a few kWh); a reference of zero with a current above the floor is out
  of band.

Each judgement of a newer period either raises (once per condition) or clears it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from gateway.review.rules import MeterState, RuleEvent, iso, normal_cycle, raise_condition
from gateway.review_thresholds import ReviewThresholds

PeriodKind = Literal["stage", "cycle"]
_DAY: Final = Decimal(86400)
_YEAR_S: Final = 365 * 86400.0


@dataclass(frozen=True, slots=True)
class PeriodUse:
    """One completed stage or cycle of a meter: when, which, and its consumption (kWh, primary)."""

    kind: PeriodKind
    cycle: str           # the cycle label, e.g. "2026-11"
    index: int           # the stage number within its cycle (0 for a whole cycle)
    start: float
    end: float
    kwh: Decimal

    @property
    def name(self) -> str:
        """``2026-11`` or ``2026-11 stage 2``."""
        return self.cycle if self.kind == "cycle" else f"{self.cycle} stage {self.index}"

    def per_day(self) -> Decimal:
        """Consumption per day of the period."""
        return self.kwh * _DAY / Decimal(repr(self.end - self.start))

    def doc(self) -> dict[str, object]:
        """The period as evidence."""
        return {"period": self.name, "from": iso(self.start), "to": iso(self.end), "kwh": self.kwh,
                "kwh_per_day": self.per_day().quantize(Decimal("0.001"))}


def year_before(periods: Sequence[PeriodUse], cur: PeriodUse) -> PeriodUse | None:
    """The period of the same kind and index that started about a year before ``cur``."""
    best: PeriodUse | None = None
    for p in periods:
        if p.kind == cur.kind and p.index == cur.index and abs(cur.start - p.start - _YEAR_S) <= 3 * 86400:
            best = p
    return best


def judge_periods(state: MeterState, meter: str, periods: Sequence[PeriodUse], ts: float,
                  th: ReviewThresholds) -> list[RuleEvent]:
    """Judge the newest period of each kind in ``periods`` (oldest first) against 环比 and 同比."""
    out: list[RuleEvent] = []
    for kind in ("stage", "cycle"):
        mine = [p for p in periods if p.kind == kind]
        if len(mine) < 2:
            continue
        cur = mine[-1]
        etype = f"{kind}_change"
        for key, ref, factor, label in (
            ("mom", mine[-2], th.period_mom_factor, "the previous period (环比)"),
            ("yoy", year_before(mine, cur), th.period_yoy_factor, "the same period a year earlier (同比)"),
        ):
            if ref is None:
                continue
            if cur.kwh < th.period_min_kwh and ref.kwh < th.period_min_kwh:
                continue
            ref_day, cur_day = ref.per_day(), cur.per_day()
            ratio = None if ref_day == 0 else (cur_day / ref_day).quantize(Decimal("0.0001"))
            out_of_band = ratio is None or ratio > factor or ratio < 1 / factor
            ev: dict[str, object] = {
                "comparison": key, "current": cur.doc(), "reference": ref.doc(), "ratio": ratio,
                "band": [(1 / factor).quantize(Decimal("0.0001")), factor], "min_kwh": th.period_min_kwh,
                "arithmetic": "ratio = current kwh_per_day ÷ reference kwh_per_day; band = [1 ÷ factor, factor]",
            }
            if out_of_band:
                raise_condition(state, out, etype, key, ts,
                                f"meter {meter} used {cur.kwh} kWh in {cur.name}, {ratio if ratio else 'n/a'} × "
                                f"the daily use of {label} {ref.name}", ev)
            else:
                normal_cycle(state, out, etype, key, ts, 1,
                             f"meter {meter}'s {cur.name} consumption is within the band of {label}", ev)
    return out
