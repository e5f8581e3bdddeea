"""False alarms: a healthy simulated fleet raises no review event.

50 meters on 10 buses, the simulator's load model with its daily two-shift shape, weekends,
noise, power factor, reactive energy and Chinese public holidays (CN_HOLIDAYS), various
CT × PT and sizes; contract capacity and power-factor reference set per meter as a
utility would (contract 1.5 × the meter's rated load, reference 0.85). Readings every
simulated 15 minutes are judged by the rules and the bus fold exactly as the engine does,
without sockets (tests/reviewkit.py says why: 144,000 readings).

* 30 days over National Day (2026-09-20 … 10-20): zero events (marked slow, ~25 s; a
  3-day span across the holiday's start runs in the quick suite);
* 400 days of billing cycles (calendar months, stages from the 11th and the 21st) judged by
  the 环比/同比 rule from the model's registers at the boundaries: zero ``cycle_change``.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal as D

import pytest

from drivers.simulation.model import CN_HOLIDAYS, MeterModel
from gateway.review.periods import PeriodUse, judge_periods
from gateway.review.rules import MeterState, RuleEvent
from gateway.review_thresholds import ReviewThresholds
from tests.reviewkit import ZONE, Fleet

START = datetime(2026, 9, 20, tzinfo=ZONE).timestamp()
RATIOS = ((D(1), D(1)), (D(20), D(1)), (D(40), D(100)), (D(60), D(350)), (D(5), D(1)))


def healthy_fleet() -> Fleet:
    models: dict[str, MeterModel] = {}
    customers: dict[str, str] = {}
    overrides: dict[str, dict[str, object]] = {}
    for i in range(50):
        ct, pt = RATIOS[i % len(RATIOS)]
        base = 20.0 + 37.0 * (i % 13)               # 20 … 464 kW
        meter, customer = f"m{i:02d}", f"C{i // 2:03d}"
        models[meter] = MeterModel(1000 + i, base_kw=base, ct=ct, pt=pt, timezone="Asia/Shanghai",
                                   epoch=datetime(2026, 1, 1, tzinfo=ZONE).timestamp(), holidays=CN_HOLIDAYS)
        customers[meter] = customer
        overrides[meter] = {"contract_kw": D(repr(round(base * 1.5 * 1.3, 1))),
                               "power_factor_reference": D("0.85")}
    buses = {f"rs{b}": [f"m{i:02d}" for i in range(b * 5, b * 5 + 5)] for b in range(10)}
    return Fleet(models, buses, ReviewThresholds(meter_overrides=overrides), customers)


def describe(events: list[tuple[str, RuleEvent]]) -> list[str]:
    return [f"{m} {e.type} {e.state} {e.key}: {e.message}" for m, e in events[:10]]


def test_three_healthy_days_across_a_holiday_raise_nothing() -> None:
    f = healthy_fleet()
    start = datetime(2026, 9, 29, tzinfo=ZONE).timestamp()     # Tue; National Day from Thu 10-01
    got = f.run(start, start + 3 * 86400)
    assert got == [], describe(got)


@pytest.mark.slow
def test_thirty_healthy_days_of_fifty_meters_raise_no_event() -> None:
    f = healthy_fleet()
    got = f.run(START, START + 30 * 86400)
    assert got == [], describe(got)


def _boundaries(first: date, last: date) -> list[tuple[str, int, float]]:
    """(cycle label, stage index of the period that starts here, epoch) from ``first`` to ``last``."""
    out: list[tuple[str, int, float]] = []
    y, m = first.year, first.month
    while date(y, m, 1) <= last:
        for idx, day in ((1, 1), (2, 11), (3, 21)):
            out.append((f"{y:04d}-{m:02d}", idx, datetime(y, m, day, tzinfo=ZONE).timestamp()))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    out.append((f"{y:04d}-{m:02d}", 1, datetime(y, m, 1, tzinfo=ZONE).timestamp()))
    return out


def test_four_hundred_days_of_cycles_raise_no_cycle_change() -> None:
    f = healthy_fleet()
    th = ReviewThresholds()
    bounds = _boundaries(date(2026, 1, 1), date(2027, 2, 4))      # 13 months + (≈ 400 days)
    assert (bounds[-1][2] - bounds[0][2]) / 86400 >= 396
    raised: list[RuleEvent] = []
    for meter, model in f.models.items():
        mult = model.ct * model.pt
        reg = [model.values_at(t)["energy_import_kwh"] * mult for _, _, t in bounds]
        st = MeterState()
        periods: list[PeriodUse] = []
        for k in range(1, len(bounds)):
            label, idx, start = bounds[k - 1]
            end = bounds[k][2]
            periods.append(PeriodUse("stage", label, idx, start, end, reg[k] - reg[k - 1]))
            if bounds[k][1] == 1:                                   # a cycle ended
                first = max(j for j in range(k) if bounds[j][1] == 1)
                periods.append(PeriodUse("cycle", label, 0, bounds[first][2], end, reg[k] - reg[first]))
                raised += [e for e in judge_periods(st, meter, periods, end, th) if e.type == "cycle_change"]
    assert raised == [], [e.message for e in raised[:10]]
