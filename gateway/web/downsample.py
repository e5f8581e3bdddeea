"""Server-side downsampling of a time series for a chart: min, max and mean per time bucket.

A year of 15-minute readings is 35,040 points; a chart 960 pixels wide cannot show more than
one value per pixel column, and sending them all costs the browser seconds. The range is cut
into at most ``buckets`` equal time buckets; each non-empty bucket keeps its minimum and
maximum (so a peak or a dip is never averaged away) with the times they occurred, its mean
and its count. An empty bucket is absent, so a gap stays a gap. When the range holds no more
points than buckets, every point is its own bucket (``min == max == avg``, ``count == 1``, at
the point's own time), so a short range is drawn exactly as read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAX_BUCKETS: Final = 2000
"""Upper bound of the ``buckets`` a caller may ask for (wider than any screen)."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One time bucket of a downsampled series (times are epoch seconds)."""

    start: float
    end: float
    count: int
    min: float
    min_ts: float | None      # when the minimum was read (None: not known, see gateway.web.data)
    max: float
    max_ts: float | None
    avg: float


def downsample(points: Sequence[tuple[float, float]], start: float, end: float, buckets: int) -> list[Bucket]:
    """``points`` (time, value), sorted by time, within ``[start, end)``, cut into at most ``buckets``.

    Points outside the range are ignored. Raw (one bucket per point) when they are few enough.
    """
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    inside = [(t, v) for t, v in points if start <= t < end]
    if len(inside) <= buckets:
        return [Bucket(t, t, 1, v, t, v, t, v) for t, v in inside]
    width = (end - start) / buckets
    out: list[Bucket] = []
    k_cur = -1
    n = 0
    total = lo = hi = 0.0
    lo_t = hi_t = 0.0

    def flush() -> None:
        b0 = start + k_cur * width
        out.append(Bucket(b0, b0 + width, n, lo, lo_t, hi, hi_t, total / n))

    for t, v in inside:
        k = min(buckets - 1, int((t - start) // width))
        if k != k_cur:
            if n:
                flush()
            k_cur, n, total, lo, hi, lo_t, hi_t = k, 0, 0.0, v, v, t, t
        n += 1
        total += v
        if v < lo:
            lo, lo_t = v, t
        if v > hi:
            hi, hi_t = v, t
    if n:
        flush()
    return out


__all__ = ["MAX_BUCKETS", "Bucket", "downsample"]
