"""Wall-clock aligned schedule slots, in the gateway's timezone.

``every: 15m`` fires at :00, :15, :30 and :45 local time — start + k × interval on
wall-clock boundaries, never ``now + interval`` (that drifts). Intervals must divide a
day when aligned (validated at load), so every local day starts a fresh run of slots and a
DST change or an odd timezone offset never shifts them.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

# A tolerance in seconds, well above an epoch's float resolution (~2.4e-7 s): a slot time
# computed from a fractional offset must count as reached, or the schedule repeats it.
_EPS = 1e-6


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for ``name`` (cached)."""
    return ZoneInfo(name)


def _midnight(t: float, tz: str) -> float:
    """00:00 of ``t``'s local day, read with ``fold=0`` (as the billing plan's boundaries are):
    where clocks go back at midnight (Havana) 00:00 happens twice and the day starts at the
    first; where they jump over it, the day starts at the jump. Keeping ``t``'s own fold made
    a time in the repeated hour start its day an hour late, unlike the rest of that day."""
    z = zone(tz)
    local = datetime.fromtimestamp(t, z)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
    return midnight.timestamp()


_DAYS: dict[str, tuple[float, float]] = {}
"""tz → the local day last asked for, as (its midnight, the next midnight): every schedule
asks at every slot (128 schedules × 1 slot a second in the TCP fleet bench), and a
``datetime`` in a ``ZoneInfo`` costs more than the rest of the slot arithmetic."""


def local_day(t: float, tz: str) -> tuple[float, float]:
    """Epoch seconds of 00:00 local time of the day containing ``t``, and of the day after
    (23, 24 or 25 hours later across a DST change)."""
    day = _DAYS.get(tz)
    if day is not None and day[0] <= t < day[1]:
        return day
    midnight = _midnight(t, tz)
    day = (midnight, _midnight(midnight + 86400 + 3600 * 3, tz))
    if len(_DAYS) >= 64:       # bounded like zone(): timezone names come from the configuration
        _DAYS.clear()
    _DAYS[tz] = day            # one tuple, replaced whole: safe to read from other threads
    return day


def local_midnight(t: float, tz: str) -> float:
    """Epoch seconds of 00:00 local time of the day containing ``t``."""
    return local_day(t, tz)[0]


def slot_at_or_before(t: float, every_s: float, tz: str, offset_s: float = 0.0) -> float:
    """The latest aligned slot not after ``t``."""
    day = local_midnight(t, tz)
    k = math.floor((t - day - offset_s + _EPS) / every_s)
    if k < 0:
        # before the first slot of the day: the last slot of the previous day
        prev_day = local_midnight(day - 1, tz)
        k_prev = math.floor((day - 1 - prev_day - offset_s + _EPS) / every_s)
        return prev_day + offset_s + k_prev * every_s
    return day + offset_s + k * every_s


def next_slot(t: float, every_s: float, tz: str, offset_s: float = 0.0) -> float:
    """The first aligned slot strictly after ``t``."""
    day, next_day = local_day(t, tz)
    k = math.floor((t - day - offset_s + _EPS) / every_s) + 1
    candidate = day + offset_s + k * every_s
    if candidate >= next_day:
        return next_day + offset_s
    return candidate


def slots_between(start: float, end: float, every_s: float, tz: str, offset_s: float = 0.0) -> list[float]:
    """Every aligned slot with ``start <= slot < end`` (bounded by the caller's range)."""
    out: list[float] = []
    s = slot_at_or_before(start, every_s, tz, offset_s)
    if s < start:
        s = next_slot(s, every_s, tz, offset_s)
    while s < end:
        out.append(s)
        s = next_slot(s, every_s, tz, offset_s)
    return out


def local_date(t: float, tz: str) -> datetime:
    """``t`` as an aware local datetime in ``tz``."""
    return datetime.fromtimestamp(t, zone(tz))


def parse_duration(text: str) -> float:
    """Parse ``30s``, ``15m``, ``1h``, ``1d`` (or a bare number of seconds) into seconds."""
    s = str(text).strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    for suffix in ("ms", "s", "m", "h", "d"):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * units[suffix]
    return float(s)


def format_duration(seconds: float) -> str:
    """Render seconds as the shortest of ``1d``/``1h``/``15m``/``30s``."""
    td = timedelta(seconds=seconds)
    secs = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs % size == 0 and secs >= size:
            return f"{secs // size}{unit}"
    return f"{seconds:g}s"
