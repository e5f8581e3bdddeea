"""Slot alignment in the gateway's timezone."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.slots import next_slot, parse_duration, slot_at_or_before, slots_between

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
