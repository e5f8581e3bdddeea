"""Clocks: the wall clock, and an accelerated one for the demo and for tests.

Everything that needs the time takes a :class:`Clock`, so a test or
``amr-gateway demo --clock-rate 600`` can run a billing month in minutes. ``time()`` is
epoch seconds (UTC) of the *simulated* wall clock; ``sleep_until`` waits until the
simulated clock reaches a given epoch, scaled by the rate.
"""

from __future__ import annotations

import asyncio
import time as _time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What the scheduler, billing and simulator ask of a clock."""

    rate: float

    def time(self) -> float:
        """Current wall-clock time as UTC epoch seconds."""
        ...

    def now(self) -> datetime:
        """Current wall-clock time as an aware UTC datetime."""
        ...

    async def sleep_until(self, epoch: float) -> None:
        """Sleep until the wall clock reaches ``epoch`` (returns at once if it has)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real wall clock."""

    rate = 1.0

    def time(self) -> float:
        """Current UTC epoch seconds."""
        return _time.time()

    def now(self) -> datetime:
        """Current aware UTC datetime."""
        return datetime.now(UTC)

    async def sleep_until(self, epoch: float) -> None:
        """Sleep until ``epoch`` on the real clock."""
        delay = epoch - _time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def sleep(self, seconds: float) -> None:
        """Sleep real seconds."""
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """A clock that starts at ``start`` (epoch seconds) and runs ``rate`` times faster.

    Uses the monotonic clock underneath, so it never jumps when the host clock is set.
    """

    def __init__(self, start: float | None = None, rate: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("clock rate must be positive")
        self.rate = float(rate)
        self._start = _time.time() if start is None else float(start)
        self._mono0 = _time.monotonic()

    def time(self) -> float:
        """Current simulated UTC epoch seconds."""
        return self._start + (_time.monotonic() - self._mono0) * self.rate

    def now(self) -> datetime:
        """Current simulated aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    async def sleep_until(self, epoch: float) -> None:
        """Sleep until the simulated clock reaches ``epoch``."""
        delay = (epoch - self.time()) / self.rate
        if delay > 0:
            await asyncio.sleep(delay)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time."""
        await asyncio.sleep(max(0.0, seconds / self.rate))
