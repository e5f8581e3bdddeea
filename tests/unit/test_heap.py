"""The heap policy: frozen once polling is warm, kept frozen, cycles still reclaimed hourly."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from gateway.heap import YOUNG_THRESHOLD, keep_heap_frozen, spare_young_collections
from tests.servicefixtures import await_until


class Node:
    """A weak-referenceable object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the collector is process-wide)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def frozen(obj: object) -> bool:
    """Whether ``obj`` sits in the permanent generation (out of every collection)."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())  # every generation


@contextlib.asynccontextmanager
async def policy(is_warm: Callable[[], bool], warm_within_s: float, **kw: float) -> AsyncIterator[None]:
    """``keep_heap_frozen`` running as a task for the block, cancelled (and seen to end) after."""
    task = asyncio.create_task(keep_heap_frozen(is_warm, warm_within_s, check_s=0.01, **kw))
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_freezes_only_once_every_bus_is_warm() -> None:
    warm = asyncio.Event()
    async with policy(warm.is_set, 60.0, every_s=60.0):
        await asyncio.sleep(0.1)               # negative check: ten rounds of checks pass, the buses cold
        assert gc.get_freeze_count() == 0      # not warm yet: nothing frozen
        survivor = Node()
        warm.set()
        await await_until(gc.get_freeze_count, 2.0, "the heap frozen once warm", step=0.01)
        assert frozen(survivor)


async def test_freezes_after_the_cap_when_a_bus_never_answers() -> None:
    async with policy(lambda: False, 0.05, every_s=60.0):
        await await_until(gc.get_freeze_count, 2.0, "the heap frozen at the cap", step=0.01)


async def test_objects_made_later_are_frozen_and_still_freed_by_refcount() -> None:
    async with policy(lambda: True, 1.0, every_s=0.05):
        await await_until(gc.get_freeze_count, 2.0, "the first freeze", step=0.01)
        later = Node()
        ref = weakref.ref(later)
        await await_until(lambda: frozen(ref()), 2.0, "a later object frozen by a round")
        del later                              # no cycle: reference counting frees it at once
        assert ref() is None


async def test_a_frozen_cycle_is_reclaimed_by_the_full_round() -> None:
    async with policy(lambda: True, 1.0, every_s=0.05, full_every_s=1e9):
        await await_until(gc.get_freeze_count, 2.0, "the first freeze", step=0.01)
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        await await_until(lambda: frozen(ref()), 2.0, "the cycle frozen by a round")
        del a, b
        gc.collect()
        assert ref() is not None               # frozen: a full collection does not see the cycle
    async with policy(lambda: True, 1.0, every_s=0.05, full_every_s=0.05):
        # the round that unfreezes and collects everything
        await await_until(lambda: ref() is None, 2.0, "the frozen cycle reclaimed by the full round")


def test_short_lived_objects_die_before_the_young_generation_is_collected() -> None:
    """The reason for the raised threshold: a burst of objects that live a little while (a
    group of readings between poll and delivery) triggers young collections at CPython's
    default and none once the threshold is raised, and nothing else about the collector changes."""
    before = gc.get_threshold()

    def passes_over_a_burst() -> int:
        seen: list[int] = []

        def count(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                seen.append(info["generation"])

        gc.collect()
        gc.callbacks.append(count)
        try:
            held = [[n] for n in range(YOUNG_THRESHOLD // 2)]   # alive together, then freed together
            del held
        finally:
            gc.callbacks.remove(count)
        return len(seen)

    try:
        gc.set_threshold(700, *before[1:])
        assert passes_over_a_burst() >= 5
        spare_young_collections()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert passes_over_a_burst() == 0
    finally:
        gc.set_threshold(*before)
