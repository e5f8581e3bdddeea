"""``wait_event`` never swallows a cancellation (``asyncio.wait_for`` on 3.11 can)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from gateway.aio import wait_event

Waiter = Callable[[asyncio.Event, float], Awaitable[bool]]


async def _wait_with_wait_for(event: asyncio.Event, timeout: float) -> bool:
    """The unsafe way ``wait_event`` replaces (the subject of the race test, not a test helper)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()


async def survives_cancel(wait: Waiter) -> bool:
    """Cancel a busy waiting loop in the very iteration its event is set: does it survive?"""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while rounds < 1000:                    # bounded
            event.clear()
            await wait(event, 10.0)
            rounds += 1

    task = asyncio.create_task(loop())
    for _ in range(3):
        await asyncio.sleep(0)
    for _ in range(3):
        await asyncio.sleep(0)                  # let the wait_for inner task start
    event.set()
    await asyncio.sleep(0)                      # the inner wait completes ...
    task.cancel()                               # ... and the cancel arrives at the same time
    try:
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    except asyncio.CancelledError:
        return False
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True
    return True


async def test_wait_event_propagates_a_cancel_that_races_the_event() -> None:
    assert await survives_cancel(wait_event) is False


async def test_the_race_is_real_with_wait_for_on_this_python() -> None:
    # what the helper protects against: on 3.11 the wait_for loop survives its cancel
    assert await survives_cancel(_wait_with_wait_for) is (sys.version_info < (3, 12))


async def test_wait_event_times_out_and_reports_a_set_event() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
