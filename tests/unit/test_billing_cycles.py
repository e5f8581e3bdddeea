"""Billing-cycle boundaries: pure functions of the plan, the time zone and the calendar."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from gateway.billing.cycles import (
    CycleError,
    boundaries_between,
    cycle,
    cycle_at,
    day_in_month,
    last_boundary_at_or_before,
    next_boundary_after,
    next_label,
    parse_label,
    prev_label,
)
from gateway.settings import BillingPlan

SH = "Asia/Shanghai"
THREE = BillingPlan("three-stage", cycle_day=1, stages=(11, 21))


def ts(text: str, tz: str = SH) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_three_stage_month_has_four_boundaries_at_local_midnight() -> None:
    c = cycle(THREE, "2026-11", SH)
    assert c.boundaries == (ts("2026-11-01 00:00"), ts("2026-11-11 00:00"), ts("2026-11-21 00:00"),
                            ts("2026-12-01 00:00"))
    assert c.stages == 3
    assert c.boundary(3).cycle == "2026-12" and c.boundary(3).index == 0   # the end opens the next cycle
    assert c.boundary(1).stage == 2


def test_cycle_that_crosses_a_month_and_a_year() -> None:
    plan = BillingPlan("late", cycle_day=25, stages=(5, 15), at=time(8, 30))
    c = cycle(plan, "2026-12", SH)
    assert c.boundaries == (ts("2026-12-25 08:30"), ts("2027-01-05 08:30"), ts("2027-01-15 08:30"),
                            ts("2027-01-25 08:30"))
    assert cycle_at(plan, ts("2027-01-25 08:29:59"), SH).label == "2026-12"
    assert cycle_at(plan, ts("2027-01-25 08:30"), SH).label == "2027-01"
    assert cycle_at(plan, ts("2026-12-25 08:29"), SH).label == "2026-11"


def test_short_months_and_month_end_days_clamp_to_the_last_day() -> None:
    assert day_in_month(2027, 2, 31) == datetime(2027, 2, 28).date()
    assert day_in_month(2028, 2, 30) == datetime(2028, 2, 29).date()
    plan = BillingPlan("eom", cycle_day=1, stages=(15, 30))      # 30 does not exist in February
    c = cycle(plan, "2027-02", SH)
    assert c.boundaries == (ts("2027-02-01 00:00"), ts("2027-02-15 00:00"), ts("2027-02-28 00:00"),
                            ts("2027-03-01 00:00"))
    c = cycle(plan, "2027-04", SH)
    assert c.boundaries[2] == ts("2027-04-30 00:00")


def test_stage_at_and_neighbouring_boundaries() -> None:
    t = ts("2026-11-15 12:00")
    c = cycle_at(THREE, t, SH)
    assert c.stage_at(t) == 2
    assert c.stage_at(ts("2026-11-11 00:00")) == 2            # a boundary opens the next stage
    assert c.stage_at(ts("2026-11-10 23:59:59")) == 1
    assert last_boundary_at_or_before(THREE, SH, t).ts == ts("2026-11-11 00:00")
    nb = next_boundary_after(THREE, SH, ts("2026-11-21 00:00"))
    assert (nb.cycle, nb.index, nb.ts) == ("2026-12", 0, ts("2026-12-01 00:00"))


def test_boundaries_between_is_exclusive_then_inclusive_and_spans_cycles() -> None:
    got = boundaries_between(THREE, SH, ts("2026-11-11 00:00"), ts("2026-12-11 00:00"))
    assert [(b.cycle, b.index) for b in got] == [("2026-11", 2), ("2026-12", 0), ("2026-12", 1)]
    assert boundaries_between(THREE, SH, ts("2026-11-12"), ts("2026-11-12")) == []


def test_boundaries_follow_local_wall_clock_across_daylight_saving() -> None:
    ny = "America/New_York"
    plan = BillingPlan("us", cycle_day=1, stages=(10,), at=time(1, 0))
    c = cycle(plan, "2026-03", ny)        # DST starts 2026-03-08 in New York
    assert c.boundaries[1] - c.boundaries[0] == 9 * 86400 - 3600
    assert datetime.fromtimestamp(c.boundaries[1], ZoneInfo(ny)).hour == 1


def test_labels() -> None:
    assert parse_label("2026-11") == (2026, 11)
    assert next_label("2026-12") == "2027-01"
    assert prev_label("2027-01") == "2026-12"
    for bad in ("2026-13", "2026-1", "26-11", "2026/11", ""):
        with pytest.raises(CycleError):
            parse_label(bad)


@pytest.mark.parametrize(("label", "message"), [
    ("2026-13", "'2026-13' is not a month: write YYYY-MM with a month from 01 to 12"),
    ("2026-00", "'2026-00' is not a month: write YYYY-MM with a month from 01 to 12"),
    ("0001-01", "'0001-01' is not a billing cycle: the year must be between 1900 and 9998, such as 2026-11"),
    ("9999-12", "'9999-12' is not a billing cycle: the year must be between 1900 and 9998, such as 2026-11"),
])
def test_a_bad_label_names_what_is_wrong_the_month_or_the_year(label: str, message: str) -> None:
    with pytest.raises(CycleError) as err:
        parse_label(label)
    assert str(err.value) == message
