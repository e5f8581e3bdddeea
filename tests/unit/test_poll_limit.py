"""PollLimit: the TCP buses' shared budget of polls in flight."""

from __future__ import annotations

import asyncio

import pytest

from gateway.poll_limit import PollLimit


async def _hold(limit: PollLimit, log: list[int], live: list[int], n: int, hold: asyncio.Event) -> None:
    if not limit.try_take():
        await limit.take()
    try:
        live[0] += 1
        live[1] = max(live[1], live[0])
        log.append(n)
        await hold.wait()
    finally:
        live[0] -= 1
        limit.give()


async def test_no_more_than_size_run_at_once_and_waiters_go_in_arrival_order() -> None:
    limit = PollLimit(3)
    log: list[int] = []
    live = [0, 0]
    hold = asyncio.Event()
    tasks = [asyncio.create_task(_hold(limit, log, live, n, hold)) for n in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert log == [0, 1, 2] and limit.waiting() == 7 and limit.free == 0
    hold.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert log == list(range(10))
    assert live[1] == 3
    assert limit.free == 3 and limit.waiting() == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_a_handed_over_permit_is_not_lost() -> None:
    limit = PollLimit(1)
    assert limit.try_take()
    first = asyncio.create_task(limit.take())
    second = asyncio.create_task(limit.take())
    await asyncio.sleep(0)
    assert limit.waiting() == 2
    first.cancel()                      # still waiting: it just leaves
    await asyncio.gather(first, return_exceptions=True)
    assert limit.waiting() == 1
    limit.give()                        # handed to `second` ...
    second.cancel()                     # ... which is cancelled before it runs: the permit goes back
    await asyncio.gather(second, return_exceptions=True)
    assert limit.free == 1 and limit.try_take()


async def test_a_waiter_cancelled_just_before_a_give_ends_cancelled_and_the_permit_stays() -> None:
    # A stop cancels every bus at once: a waiter's future is cancelled at once, and a permit
    # given back before its task runs skips (and drops) it. The task must still end cancelled
    # (it once raised ValueError from its own clean-up: a failed task, logged for every bus).
    limit = PollLimit(1)
    assert limit.try_take()
    waiter = asyncio.create_task(limit.take())
    await asyncio.sleep(0)
    assert limit.waiting() == 1
    waiter.cancel()
    limit.give()
    done = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert limit.free == 1 and limit.waiting() == 0 and limit.try_take()


def test_a_limit_needs_a_permit() -> None:
    with pytest.raises(ValueError, match="at least one permit"):
        PollLimit(0)
