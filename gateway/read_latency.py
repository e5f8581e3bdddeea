"""A fixed-bucket latency histogram for bus transactions (``amr_bus_read_seconds``).

Each bus worker records every transaction's duration, measured with the monotonic clock,
into one :class:`LatencyHistogram`. Recording is a bisect into a fixed tuple of bounds and
two additions: no allocation per read, so a TCP fleet doing a thousand reads a second pays
next to nothing. The bounds suit both RS-485 (tens to hundreds of milliseconds per request
at 9600 baud, seconds on a timeout) and TCP (milliseconds).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

READ_SECONDS_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Upper bounds (seconds, inclusive) of the histogram's finite buckets; ``+Inf`` follows."""


class LatencyHistogram:
    """Counts of observed durations per bucket, their sum and their number.

    ``counts[i]`` is the number of observations in bucket ``i`` alone (not cumulative; the
    exposition adds them up); the last slot is the ``+Inf`` overflow.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = READ_SECONDS_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one duration (``le`` semantics: a value equal to a bound falls in its bucket)."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, ending with ``+Inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
