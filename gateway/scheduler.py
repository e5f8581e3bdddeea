"""The scheduler: turns schedules into polls at wall-clock aligned slots.

One task per schedule sleeps until the next aligned slot (``every: 15m`` fires at
:00/:15/:30/:45 in the gateway's timezone) and queues a poll for every meter on that
schedule with its bus worker. It never computes ``now + interval``; if the process was
stopped or starved for more than a slot, or the wall clock stepped forward, it resumes at
the current slot instead of replaying a burst of polls; every slot it passed over still gets
its row, a failed read naming why (so completeness and the KPIs stay honest), up to
:data:`MAX_RECORDED_GAP_SLOTS` per gap. A clock stepped back repeats no slot: the next slot
always follows the last one fired.

Under storage pressure it stops the lowest-priority schedules first: realtime when the
store is near its cap, interval too when the store is full (settlement reads never stop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.clock import Clock
from gateway.model import NOT_POLLED_SCHEDULE
from gateway.polling import BusWorker, MeterRuntime
from gateway.settings import ScheduleSettings
from gateway.slots import next_slot

log = logging.getLogger("amr.scheduler")

#: Slots of one schedule passed over in one gap that still get a row each (a day of 1-minute
#: slots); beyond that a gap is logged with its count, not stored slot by slot, so a clock
#: stepped a year forward cannot flood the store.
MAX_RECORDED_GAP_SLOTS = 1440


class Scheduler:
    """Fires polls for every schedule on its aligned slots."""

    def __init__(
        self,
        schedules: dict[str, ScheduleSettings],
        meters: dict[str, MeterRuntime],
        workers: dict[str, BusWorker],
        clock: Clock,
        timezone: str,
        pressure: Callable[[], str] = lambda: "ok",
    ) -> None:
        self.schedules = schedules
        self.meters = meters
        self.workers = workers
        self.clock = clock
        self.timezone = timezone
        self.pressure = pressure
        self.fired: dict[str, int] = dict.fromkeys(schedules, 0)
        self.paused: dict[str, int] = dict.fromkeys(schedules, 0)
        self.last_slot: dict[str, float] = {}
        #: slots passed over (suspended process, starved loop, clock stepped forward), per schedule
        self.gap_slots: dict[str, int] = dict.fromkeys(schedules, 0)
        self._paused_logged: set[str] = set()
        self._members: dict[str, list[MeterRuntime]] = {}

    def members(self, schedule: str) -> list[MeterRuntime]:
        """The meters polled by a schedule (computed once: every slot of every schedule asks)."""
        got = self._members.get(schedule)
        if got is None:
            got = self._members[schedule] = [m for m in self.meters.values() if schedule in m.plans]
        return got

    def next_slot_after(self, sched: ScheduleSettings, t: float, start: float) -> float:
        """The slot that follows ``t`` for this schedule."""
        if sched.aligned:
            return next_slot(t, sched.every_s, self.timezone, sched.offset_s)
        k = int((t - start) // sched.every_s) + 1
        return start + k * sched.every_s

    async def run(self) -> None:
        """Run every schedule until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for name, sched in self.schedules.items():
                if self.members(name):
                    tg.create_task(self._run_schedule(sched), name=f"schedule-{name}")

    def _gate(self, sched: ScheduleSettings) -> bool:
        pressure = self.pressure()
        blocked = (pressure == "near_cap" and sched.priority == "realtime") or (
            pressure == "full" and sched.priority in ("realtime", "interval")
        )
        if blocked:
            if sched.name not in self._paused_logged:
                log.error(
                    "schedule %s paused: the local store is %s (free space or raise store.max_size)",
                    sched.name, pressure,
                )
                self._paused_logged.add(sched.name)
            self.paused[sched.name] += 1
            return False
        if sched.name in self._paused_logged:
            log.warning("schedule %s resumes: the local store has room again", sched.name)
            self._paused_logged.discard(sched.name)
        return True

    def fire(self, sched: ScheduleSettings, slot: float) -> int:
        """Queue one slot's polls; returns how many were queued."""
        if not self._gate(sched):
            return 0
        queued = 0
        for meter in self.members(sched.name):
            worker = self.workers[meter.settings.bus]
            if worker.poll(meter, sched.name, slot, sched.priority):
                queued += 1
        self.fired[sched.name] += 1
        self.last_slot[sched.name] = slot
        return queued

    def record_gap(self, sched: ScheduleSettings, first: float, now: float, start: float) -> int:
        """Store every slot from ``first`` up to ``now`` as a failed read of each member meter.

        Returns how many slots were passed over. Only the first
        :data:`MAX_RECORDED_GAP_SLOTS` get rows; the rest are counted and named in the log.
        """
        reason = (f"{NOT_POLLED_SCHEDULE}{sched.name} fell behind (the gateway was suspended or starved, or "
                  "its clock stepped forward) and resumed at the current slot")
        slots: list[float] = []
        s = first
        while s <= now and len(slots) <= MAX_RECORDED_GAP_SLOTS:
            slots.append(s)
            s = self.next_slot_after(sched, s, start)
        recorded = slots[:MAX_RECORDED_GAP_SLOTS]
        for slot in recorded:
            for meter in self.members(sched.name):
                self.workers[meter.settings.bus].record_skipped(meter, sched.name, slot, reason)
        total = len(recorded)
        if len(slots) > MAX_RECORDED_GAP_SLOTS:
            total += int((now - slots[-1]) // sched.every_s) + 1
            log.error("schedule %s passed over %d slots; only the first %d are stored as failed reads "
                      "(check the gateway's clock: it may have stepped far forward)",
                      sched.name, total, MAX_RECORDED_GAP_SLOTS)
        self.gap_slots[sched.name] += total
        return total

    async def _run_schedule(self, sched: ScheduleSettings) -> None:
        start = self.clock.time()
        t = start
        while True:
            slot = self.next_slot_after(sched, t, start)
            now = self.clock.time()
            if slot < now - sched.every_s:
                # More than a whole slot behind (suspended, starved, clock stepped forward):
                # resume at the present, and give each passed-over slot its row.
                passed = self.record_gap(sched, slot, now, start)
                log.warning("schedule %s fell %.0f s behind (%d slots not polled, stored as failed reads); "
                            "resuming at the current slot", sched.name, now - slot, passed)
                t = now
                continue
            await self.clock.sleep_until(slot)
            self.fire(sched, slot)
            t = slot
