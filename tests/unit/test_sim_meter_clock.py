"""The simulated meter's own clock (offset, drift, time sync) and its freeze-log days.

Shared by every protocol's simulator (drivers/simulation/meter_clock.py); the clock under
it is a StillClock moved by hand, so every instant is exact.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from drivers.simulation.meter_clock import SimulatedMeterClock, freeze_days
from tests.servicefixtures import StillClock

TZ = "Asia/Shanghai"
T = datetime(2026, 3, 14, 12, 0, tzinfo=ZoneInfo(TZ)).timestamp()


def test_offset_and_drift_in_ppm_move_the_meter_clock_from_true_time() -> None:
    true = StillClock(T, TZ)
    mc = SimulatedMeterClock(true, ZoneInfo(TZ), offset_s=90, drift_ppm=100)
    assert mc.meter_time() == datetime(2026, 3, 14, 12, 1, 30)
    true.t += 1_000_000            # 100 ppm of a million seconds: 100 s more
    assert (mc.meter_time() - mc.local_naive(true.time())).total_seconds() == 190


def test_a_time_sync_sets_the_clock_and_restarts_the_drift() -> None:
    true = StillClock(T, TZ)
    mc = SimulatedMeterClock(true, ZoneInfo(TZ), offset_s=-300, drift_ppm=50)
    true.t += 10_000
    mc.set_meter_time(datetime(2026, 3, 14, 15, 0))
    assert mc.meter_time() == datetime(2026, 3, 14, 15, 0)
    true.t += 20_000               # 50 ppm of 20,000 s: one second
    assert mc.meter_time() == datetime(2026, 3, 14, 20, 33, 21)
    assert mc.epoch_of(mc.local_naive(true.time())) == true.time()


def test_freeze_days_are_the_last_days_minus_gaps_newest_first() -> None:
    today = date(2026, 3, 14)
    assert freeze_days(today, 3, ()) == [date(2026, 3, 14), date(2026, 3, 13), date(2026, 3, 12)]
    assert freeze_days(today, 3, {date(2026, 3, 13)}) == [
        date(2026, 3, 14), date(2026, 3, 12), date(2026, 3, 11)]
