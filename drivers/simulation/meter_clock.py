"""A simulated meter's own clock, and the days it keeps freeze records for.

Every protocol's simulated meter shows a clock that is not quite the true (simulated) time:
a fixed offset plus a drift in ppm, both from the meter's spec, which a time sync resets.
Billing's clock checks and the review rules are exercised against these meters, so the
clock must behave the same whatever protocol reads it. Freeze logs likewise: a meter
keeps the most recent ``depth`` daily freezes except on the days listed as gaps.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.clock import Clock


class SimulatedMeterClock:
    """The meter's local wall clock: true simulated time + offset + drift (ppm), settable."""

    def __init__(self, clock: Clock, zone: ZoneInfo, offset_s: float = 0.0, drift_ppm: float = 0.0) -> None:
        self.clock = clock
        self.zone = zone
        self.offset = offset_s
        self.drift_ppm = drift_ppm
        self.drift_origin = clock.time()

    def now(self) -> float:
        """True simulated time (epoch seconds)."""
        return self.clock.time()

    def meter_time(self) -> datetime:
        """The meter's own local wall clock (offset and drift applied), naive."""
        t = self.now()
        t += self.offset + (t - self.drift_origin) * self.drift_ppm / 1e6
        return datetime.fromtimestamp(t, self.zone).replace(tzinfo=None)

    def set_meter_time(self, local: datetime) -> None:
        """A time sync: make the meter clock show ``local`` (naive, meter local) now."""
        target = local.replace(tzinfo=self.zone).timestamp()
        self.offset = target - self.now()
        self.drift_origin = self.now()

    def local_naive(self, t: float) -> datetime:
        """Local wall time of epoch ``t``, naive."""
        return datetime.fromtimestamp(t, self.zone).replace(tzinfo=None)

    def epoch_of(self, local: datetime) -> float:
        """Epoch of a naive local wall time."""
        return local.replace(tzinfo=self.zone).timestamp()


def freeze_days(today: date, depth: int, gaps: Collection[date]) -> list[date]:
    """Days with a daily freeze record, newest first: the last ``depth`` days not in ``gaps``."""
    days = [today - timedelta(days=k) for k in range(depth + len(gaps))]
    return [d for d in days if d not in gaps][:depth]
