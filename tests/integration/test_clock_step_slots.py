"""A clock stepped forward and back by an hour: no slot polled twice, none passed over
without a row (issue 16 item 11).

Real peers: the store is SQLite on disk, the scheduler and a bus worker are the gateway's
own. The clock is a test clock (no real clock can be stepped here without root): it stands
still, jumps when a sleep asks, and is stepped by the test — the same moves chrony makes when
it steps a wrong system clock. The worker is not started, so the first slot's poll stays
queued and each later fired slot is stored as an overrun: every slot gets exactly one row,
either an overrun or a passed-over slot, which is what the test checks.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from drivers.registry import create_driver
from gateway.config import load_settings_from_text
from gateway.model import iso_utc
from gateway.polling import BusWorker
from gateway.runtime import build_meters
from gateway.scheduler import MAX_RECORDED_GAP_SLOTS, Scheduler
from gateway.settings import StoreSettings
from gateway.store import Store

pytestmark = pytest.mark.integration

T0 = 1_796_000_040.0    # on a whole minute
STEP_S = 3600.0
FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)
CONFIG = """\
gateway: {id: gw1}
buses:
  - {id: b1, type: tcp, host: 127.0.0.1, port: 1, protocol: modbus-tcp}
meters:
  - {id: m1, customer: C1, bus: b1, address: 1, profile: simulator}
schedules:
  minute: {every: 1m}
"""


class SteppedClock:
    """Stands still; a sleep moves it to the wake-up time (yielding to the loop). The test
    steps it with :meth:`step`; past ``stop_at`` sleeps block, which ends the run."""

    rate = 1.0

    def __init__(self, t: float, stop_at: float) -> None:
        self.t = t
        self.stop_at = stop_at
        self.stopped = asyncio.Event()
        self.hooks: list[tuple[float, float]] = []   # (when t reaches this, step by that)

    def time(self) -> float:
        """The standing time."""
        return self.t

    def now(self) -> datetime:
        """The standing time, UTC."""
        return datetime.fromtimestamp(self.t, ZoneInfo("UTC"))

    async def sleep_until(self, epoch: float) -> None:
        """Move to ``epoch`` (then apply a due step), or block once past the end."""
        await asyncio.sleep(0)
        if epoch > self.stop_at:
            self.stopped.set()
            await asyncio.Event().wait()
        self.t = max(self.t, epoch)
        for when, by in list(self.hooks):
            if self.t >= when:
                self.hooks.remove((when, by))
                self.t += by

    async def sleep(self, seconds: float) -> None:
        """Move on ``seconds``."""
        await self.sleep_until(self.t + seconds)


async def run_stepped(tmp_path: Path, hooks: list[tuple[float, float]], stop_at: float) -> list[dict[str, Any]]:
    """Run the scheduler over a stepped clock; every stored row, in seq order."""
    settings = load_settings_from_text(CONFIG, "gw.yaml", tmp_path, env={})
    meters = build_meters(settings)
    store = await Store.open(tmp_path / "amr.sqlite", FAST, "gw1")
    clock = SteppedClock(T0 - 1, stop_at)
    clock.hooks = hooks
    worker = BusWorker(settings.buses["b1"], create_driver(settings.buses["b1"]), store, clock, shared=False)
    scheduler = Scheduler(settings.schedules, meters, {"b1": worker}, clock, "UTC")
    task = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(clock.stopped.wait(), 60)
        await store.flush()
        return [json.loads(r.payload) for r in await store.pending("check", 100_000, after=0)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_a_clock_stepped_forward_leaves_a_row_for_every_slot_it_jumped(tmp_path: Path) -> None:
    """Forward an hour after the second slot: the scheduler resumes at the present, and the
    60 slots it jumped over are each stored once as a failed read saying why."""
    end = T0 + STEP_S + 5 * 60
    got = await run_stepped(tmp_path, [(T0 + 60, STEP_S)], end)
    slots = [r["slot"] for r in got]
    assert len(slots) == len(set(slots)), "a slot was stored twice"
    expected = [iso_utc(T0 + k * 60) for k in range(1, int((end - T0) // 60) + 1)]
    assert sorted(slots) == expected                      # every slot but the queued first has its row
    gap = [r for r in got if "fell behind" in (r["error"] or "")]
    assert len(gap) == 60 and all(r["quality"] == "timeout" for r in gap)
    assert "clock stepped forward" in gap[0]["error"]


async def test_a_clock_stepped_back_polls_no_slot_twice(tmp_path: Path) -> None:
    """Forward an hour, then back an hour: the slots already fired are not fired again; the
    scheduler waits until the clock passes the last slot it fired."""
    end = T0 + STEP_S + 10 * 60
    got = await run_stepped(tmp_path, [(T0 + 60, STEP_S), (T0 + STEP_S + 180, -STEP_S)], end)
    slots = [r["slot"] for r in got]
    assert len(slots) == len(set(slots)), "a slot was stored twice after the clock stepped back"
    assert sorted(slots) == [iso_utc(T0 + k * 60) for k in range(1, int((end - T0) // 60) + 1)]


async def test_a_huge_step_is_bounded(tmp_path: Path) -> None:
    """A clock stepped ten days forward stores at most a day of slots, not a flood."""
    end = T0 + 10 * 86400 + 120
    got = await run_stepped(tmp_path, [(T0 + 60, 10 * 86400.0)], end)
    gap = [r for r in got if "fell behind" in (r["error"] or "")]
    assert len(gap) == MAX_RECORDED_GAP_SLOTS
