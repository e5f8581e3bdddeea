"""Slot alignment in the gateway's timezone."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.slots import (
    _midnight,
    local_day,
    local_midnight,
    next_slot,
    parse_duration,
    slot_at_or_before,
    slots_between,
)

SH = "Asia/Shanghai"


def ts(text: str, tz: str = SH) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_quarter_hours_align_to_local_wall_clock() -> None:
    assert next_slot(ts("2026-11-28 10:07:13"), 900, SH) == ts("2026-11-28 10:15:00")
    assert slot_at_or_before(ts("2026-11-28 10:07:13"), 900, SH) == ts("2026-11-28 10:00:00")
    assert next_slot(ts("2026-11-28 10:15:00"), 900, SH) == ts("2026-11-28 10:30:00")


def test_daily_slot_is_local_midnight_not_utc() -> None:
    assert next_slot(ts("2026-11-28 10:00:00"), 86400, SH) == ts("2026-11-29 00:00:00")


def test_day_rollover_and_offset() -> None:
    assert next_slot(ts("2026-11-28 23:50:00"), 900, SH) == ts("2026-11-29 00:00:00")
    assert next_slot(ts("2026-11-28 10:07:00"), 900, SH, offset_s=300) == ts("2026-11-28 10:20:00")


def test_dst_day_keeps_wall_clock_slots() -> None:
    berlin = "Europe/Berlin"
    after = next_slot(ts("2026-03-29 01:50:00", berlin), 3600, berlin)
    assert after == ts("2026-03-29 03:00:00", berlin)


def test_slots_between_counts() -> None:
    start = ts("2026-11-01 00:00:00")
    end = ts("2026-12-01 00:00:00")
    assert len(slots_between(start, end, 900, SH)) == 30 * 96


def test_parse_duration() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("1h") == 3600
    assert parse_duration("30s") == 30
    assert parse_duration("1d") == 86400
    assert parse_duration("250ms") == 0.25


def test_fractional_offset_never_repeats_a_slot() -> None:
    t = ts("2026-11-28 10:07:13")
    seen = []
    for _ in range(200):
        t = next_slot(t, 1.0, SH, offset_s=0.01)
        seen.append(t)
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert abs(seen[-1] - seen[0] - 199.0) < 1e-6


ZONES_WITH_ODD_DAYS = ("Asia/Shanghai", "Europe/Berlin", "America/Santiago", "America/Havana", "Asia/Beirut",
                       "Australia/Lord_Howe", "Pacific/Apia", "UTC")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ZONES_WITH_ODD_DAYS),
                          st.floats(min_value=1.0e9, max_value=2.2e9, allow_nan=False)), min_size=1, max_size=40))
def test_the_remembered_day_is_the_day_computed_afresh(queries: list[tuple[str, float]]) -> None:
    """local_day remembers the last day per zone (every schedule asks at every slot); in any
    order of questions, across DST days (23/25 h, Lord Howe's half hour, Santiago's and
    Havana's changes at midnight, Apia's skipped day), it answers what the computation does."""
    for tz, t in queries:
        for probe in (t, t + 3600.0, t - 86400.0, t + 86400.0):
            fresh = (_midnight(probe, tz), _midnight(_midnight(probe, tz) + 86400 + 3 * 3600, tz))
            assert local_day(probe, tz) == fresh
            assert local_midnight(probe, tz) == fresh[0]


HAVANA = "America/Havana"


def test_a_day_whose_midnight_repeats_starts_at_the_first_midnight() -> None:
    """Cuba's clocks went back from 01:00 to 00:00 on 2018-11-04, so that day's 00:00–00:59
    happened twice (04:00 and 05:00 UTC). Every instant of the day, the repeated hour
    included, belongs to one day that starts at the first 00:00 (found by hypothesis above:
    04:00 UTC, then 05:00 UTC for a time in the repeated hour, asked with a cold memo)."""
    first = datetime(2018, 11, 4, 4, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    next_day = datetime(2018, 11, 5, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp()   # 25 h later
    for probe in (first, first + 1800, first + 3600, first + 5400, first + 12 * 3600, next_day - 1):
        assert _midnight(probe, HAVANA) == first
        local_day(0.0, HAVANA)                 # a cold memo for this zone: another day
        assert local_day(probe, HAVANA) == (first, next_day)
    # the repeated hour's slots run on from the first midnight: 25 hourly slots that day
    assert len(slots_between(first, next_day, 3600, HAVANA)) == 25
    assert next_slot(first + 3600 + 60, 900, HAVANA) == first + 3600 + 900


def test_a_day_whose_midnight_is_skipped_starts_at_the_jump() -> None:
    """Cuba's clocks jumped from 00:00 to 01:00 on 2018-03-11: that day has no 00:00 and
    starts at the jump (05:00 UTC), 23 hours before the next day."""
    jump = datetime(2018, 3, 11, 5, 0, tzinfo=ZoneInfo("UTC")).timestamp()
    for probe in (jump, jump + 60, jump + 20 * 3600):
        local_day(0.0, HAVANA)
        assert local_day(probe, HAVANA) == (jump, jump + 23 * 3600)
    assert local_midnight(jump - 1, HAVANA) == jump - 24 * 3600   # 23:59:59 the day before
