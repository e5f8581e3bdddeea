"""Shared timeout buckets: every callback runs once, never before its deadline."""

from __future__ import annotations

import asyncio

from drivers.transport.buckets import TimeoutBuckets, timeout_buckets
from tests.servicefixtures import await_until


async def test_callbacks_run_once_in_deadline_order_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    tb = TimeoutBuckets(loop, tick=0.01)
    fired: list[tuple[str, float, float]] = []
    delays = {"a": 0.0, "b": 0.013, "c": 0.013, "d": 0.031, "e": 0.002}
    for name, delay in delays.items():
        deadline = loop.time() + delay
        tb.call_later(delay, lambda n, d: fired.append((n, d, loop.time())), name, deadline)
    await await_until(lambda: len(fired) == len(delays), 1.0, "every callback fired", step=0.01,
                      detail=lambda: fired)
    assert sorted(n for n, _, _ in fired) == sorted(delays)
    assert all(at >= deadline for _, deadline, at in fired)
    order = [n for n, _, _ in fired]
    assert order.index("d") > max(order.index("b"), order.index("c"))
    assert tb._buckets == {}                   # nothing left behind


async def test_one_instance_per_loop() -> None:
    loop = asyncio.get_running_loop()
    assert timeout_buckets(loop) is timeout_buckets(loop)
