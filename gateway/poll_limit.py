"""How many TCP polls may run at once across every bus (the open connections' budget).

An ``asyncio.Semaphore`` would do, but the poll path runs thousands of times a second and a
semaphore costs a coroutine and a scan of its waiters on every acquire even when nobody
waits. This limit takes a permit with one comparison while permits are free and only
builds a future when a poll has to wait; waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
from collections import deque


class PollLimit:
    """At most ``size`` permits out at once; a permit given back goes to the oldest waiter."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a poll limit needs at least one permit, not {size}")
        self.size = size
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        """Take a permit if one is free and nobody waits for one (no await, no allocation)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a permit (after :meth:`try_take` said no); cancelling gives back one already handed over."""
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()          # the permit reached us as we were cancelled: pass it on
            elif fut in self._waiters:
                self._waiters.remove(fut)   # give() may already have dropped it (it skips cancelled futures)
            raise

    def give(self) -> None:
        """Give a permit back: to the oldest waiter still waiting, else to the free count."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

    def waiting(self) -> int:
        """Polls waiting for a permit."""
        return sum(1 for f in self._waiters if not f.done())
