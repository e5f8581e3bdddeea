"""Bus workers: one supervised task per bus, the only code that talks to drivers.

RS-485 is half-duplex with one master, so a serial bus (and a TCP endpoint that is really a
serial device server) runs one transaction at a time: a task per bus makes that structural,
not a lock someone might forget. A TCP bus whose protocol allows it (its descriptor's
``concurrent``, :mod:`drivers.registry`) may run ``concurrency`` transactions at once.
Jobs wait in a priority queue: settlement reads, then interval reads, then realtime reads;
within a priority, the oldest slot first.

A meter that stops answering is retried ``retries`` times for the slot, then its slot is
recorded as a failed read. On every bus type, a meter which failed a whole poll (every
retry) is *dead*: its slots are recorded as failed without touching the wire, and it is
probed with a single attempt on an exponential backoff (15 s, 30 s, … capped at
``dead_backoff_s``), so it costs the healthy meters almost nothing (a few timeouts a minute
at most; on TCP, no connection attempts and no share of the connection limit). State
changes are logged once ("stopped answering" … "answers again"), never every poll.

Every due slot has a row: a slot skipped because the meter is dead, or because the bus ran
late (the meter's poll of an earlier slot is still queued: an *overrun*), is stored as a
failed read (quality ``timeout``) whose reason says why, so completeness and intervals
count it as missing instead of not knowing it was due.

A serial bus whose meters speak different protocols (DL/T 645 and DL/T 698.45 on one
RS-485 pair) has one driver per protocol, all on the bus's one byte pipe
(:func:`drivers.registry.create_bus_drivers`); each job runs on the driver of its meter's
protocol, still one transaction at a time on the line.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers import registry
from drivers.base import ChainedReader, MeterDriver, ReadPlan
from gateway.clock import Clock
from gateway.errors import (
    AmrError,
    DeviceException,
    ReadTimeout,
    TransportError,
    quality_for,
)
from gateway.event_polling import EventWatch, add_event_records
from gateway.model import NOT_POLLED_BUS, PointResult, Quality, Reading
from gateway.pipeline import ReadingBuilder
from gateway.poll_limit import PollLimit
from gateway.read_latency import LatencyHistogram
from gateway.settings import PRIORITY_ORDER, BusSettings, MeterSettings, Profile

log = logging.getLogger("amr.poll")

DEAD_AFTER_FAILURES = 1
FIRST_PROBE_S = 15.0


class ReadingSink(Protocol):
    """Where finished readings go (the store); ``submit_nowait`` must not block."""

    def submit_nowait(self, reading: Reading, retention: str = "interval") -> None:
        """Queue a reading for commit."""
        ...


ReadingObserver = Callable[["MeterRuntime", Reading], None]


@dataclass(slots=True)
class MeterStats:
    """Counters and last-known state of one meter, shown by the API."""

    reads_ok: int = 0
    reads_failed: int = 0
    reads_skipped: int = 0
    last_read_ts: float | None = None
    last_good_ts: float | None = None
    last_error: str | None = None
    last_quality: str | None = None
    consecutive_failures: int = 0

    def success_rate(self) -> float | None:
        """Good reads ÷ due polls since start, a skipped poll (dead meter, bus overrun) counting as a failure:
        a slot that was never read is a slot without data (None before the first due poll)."""
        total = self.reads_ok + self.reads_failed + self.reads_skipped
        return None if total == 0 else self.reads_ok / total


@dataclass(slots=True)
class MeterRuntime:
    """A configured meter with its compiled plans and live state."""

    settings: MeterSettings
    profile: Profile
    builder: ReadingBuilder
    plans: dict[str, tuple[ReadPlan, list[str]]]  # schedule → (compiled plan, point names)
    retention: dict[str, str]                    # schedule → realtime | interval
    stats: MeterStats = field(default_factory=MeterStats)
    next_probe: float = 0.0
    dead: bool = False
    #: event counters as last seen, records to fetch (gateway.event_polling)
    events: EventWatch = field(default_factory=EventWatch)

    @property
    def id(self) -> str:
        """The meter id."""
        return self.settings.id


@dataclass(order=True, slots=True)
class Job:
    """One unit of bus work: a scheduled poll or an arbitrary action (e.g. settlement)."""

    priority: int
    slot: float
    order: int
    meter: MeterRuntime = field(compare=False)
    schedule: str | None = field(compare=False, default=None)
    action: Callable[[MeterDriver], Awaitable[Any]] | None = field(compare=False, default=None)
    future: asyncio.Future[Any] | None = field(compare=False, default=None)
    #: a poll's first attempt, made by a chained read, failed with this (the rest is the job's)
    prior: AmrError | None = field(compare=False, default=None)


class BusWorker:
    """Runs every transaction of one bus, in priority order."""

    def __init__(
        self,
        bus: BusSettings,
        driver: MeterDriver,
        sink: ReadingSink,
        clock: Clock,
        *,
        shared: bool,
        observers: list[ReadingObserver] | None = None,
        limiter: PollLimit | None = None,
        drivers: Mapping[str, MeterDriver] | None = None,
    ) -> None:
        self.bus = bus
        self.driver = driver
        #: protocol → driver, for meters of a protocol other than the bus's (a mixed line)
        self.drivers: dict[str, MeterDriver] = {p: d for p, d in (drivers or {}).items() if d is not driver}
        self.sink = sink
        self.clock = clock
        self.shared = shared
        self.observers = observers if observers is not None else []
        self.limiter = limiter
        self._heap: list[Job] = []
        self._order = itertools.count()
        #: what :meth:`run` awaits while the queue is empty; resolved by :meth:`_wake`. A bare
        #: future, not an asyncio.Event: every poll of every meter wakes its bus, and the
        #: Event's wait/set/clear cost more than the rest of queueing the poll.
        self._idle: asyncio.Future[None] | None = None
        #: (meter, schedule) of each queued job; a dict used as a set: an empty set costs 216
        #: bytes, an empty dict 64, on each of 10,000 single-meter TCP buses
        self._queued: dict[tuple[str, str], None] = {}
        self._inflight: dict[asyncio.Task[None], None] = {}
        self.overruns = 0
        self.transactions = 0
        self.poll_lag_max = 0.0
        #: duration of every transaction (monotonic clock), for ``amr_bus_read_seconds``
        self.read_latency = LatencyHistogram()
        # An outer deadline around each read guards a shared line against a driver that never
        # returns; a TCP bus of a single meter (whose driver times out each request itself)
        # skips the extra timer on the hot path, which runs thousands of times a second.
        self._guarded = bus.type == "serial" or shared
        #: the bus's link as the last transactions showed it: None (no answer yet), True (a
        #: meter answered), False (the port or connection failed); logged once per change
        self.link_up: bool | None = None
        #: a job (or a chained read) is running
        self._busy = False
        self._stopping = False
        #: A TCP bus of one meter, one transaction at a time, whose driver chains a plan's
        #: requests from its connection's callbacks (drivers.base.ChainedReader): a poll that
        #: finds the bus idle starts there at once, without waking this bus's task or a task per
        #: request, which at a thousand meters a second cost more than the rest of the reading.
        #: Whatever needs waiting (connecting, retrying, draining, event records) is the task's.
        self._chains = bus.type == "tcp" and not shared and max(1, bus.concurrency) == 1
        #: (meter, schedule) → the reader that chains its poll, or None: the protocol offers
        #: none (registry capability ``chained_reads``), the meter has a driver of its own, or
        #: it has event counters whose records the protocol could be asked for (_event_records)
        self._chained_by: dict[tuple[str, str], ChainedReader | None] = {}

    # -------------------------------------------------------------- enqueue
    def poll(self, meter: MeterRuntime, schedule: str, slot: float, priority: str | None = None) -> bool:
        """Queue a scheduled poll; False (and counted) when the previous one is still queued."""
        key = (meter.id, schedule)
        if key in self._queued:
            self.overruns += 1
            self._skipped(meter, schedule, slot, f"{NOT_POLLED_BUS}{self.bus.id} ran late and the meter's poll "
                          "of an earlier slot was still waiting (overrun)")
            return False
        if self._chains and not self._busy and not self._heap and self._start_chained(meter, schedule, slot):
            return True
        self._queue(meter, schedule, slot, priority)
        return True

    def _queue(self, meter: MeterRuntime, schedule: str, slot: float, priority: str | None,
               prior: AmrError | None = None) -> None:
        self._queued[(meter.id, schedule)] = None
        prio = PRIORITY_ORDER[priority] if priority else PRIORITY_ORDER.get(_priority_of(meter, schedule), 1)
        heapq.heappush(self._heap, Job(prio, slot, next(self._order), meter, schedule, prior=prior))
        self._wake()

    # -------------------------------------------------------------- chained reads
    def _start_chained(self, meter: MeterRuntime, schedule: str, slot: float) -> bool:
        """Start ``meter``'s poll as a chained read; False when it must wait its turn as a job."""
        if meter.dead:
            return False
        key = (meter.id, schedule)
        plan, names = meter.plans[schedule]
        try:
            reader = self._chained_by[key]
        except KeyError:
            reader = self._chained_by[key] = self._chained_reader(meter, names)
        if reader is None:
            return False
        limit = self.limiter
        if limit is not None and not limit.try_take():
            return False
        start = self.clock.time()
        began = time.monotonic()
        try:
            started = reader.start_read(meter.settings.address, plan, self.bus.timeout_s,
                                        _ChainedPoll(self, meter, schedule, slot, began).done)
        except Exception:                # e.g. a bad address: the job raises it the usual way
            started = False
        if not started:
            if limit is not None:
                limit.give()
            return False
        self.poll_lag_max = max(self.poll_lag_max, start - slot)
        self._busy = True
        return True

    def _chained_reader(self, meter: MeterRuntime, names: list[str]) -> ChainedReader | None:
        """The bus driver as a chained reader of ``meter``'s plan of ``names``, if it may be one."""
        caps = registry.capabilities(registry.meter_protocol(self.bus, meter.settings.protocol))
        if caps.chained_reads is None or self.driver_for(meter) is not self.driver:
            return None
        if caps.event_records is not None and any(n.startswith("event_") for n in names):
            return None
        return caps.chained_reads(self.driver)

    def _chained_done(self, meter: MeterRuntime, schedule: str, slot: float, began: float,
                      results: dict[str, PointResult] | None, error: Exception | None) -> None:
        """A chained read ended: store its reading, or hand the poll to the bus's task."""
        self._busy = False
        if self.limiter is not None:
            self.limiter.give()
        if self._stopping:
            return
        if results is None and not isinstance(error, AmrError):
            self._queue(meter, schedule, slot, None)     # from the start, the usual way
            return
        self.transactions += 1
        self.read_latency.observe(time.monotonic() - began)
        if results is None:
            assert isinstance(error, AmrError)
            self._queue(meter, schedule, slot, None, prior=error)   # its retries, the usual way
            return
        self._track_link(None)
        reading = meter.builder.build(schedule, slot, self.clock.time(), results)
        self._finish(meter, reading, schedule, ok=True, attempted=True)
        if self._heap:
            self._wake()

    def submit(
        self, meter: MeterRuntime, action: Callable[[MeterDriver], Awaitable[Any]],
        priority: str = "settlement", slot: float | None = None,
    ) -> asyncio.Future[Any]:
        """Run ``action(driver)`` on this bus at ``priority``; the future has its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = Job(PRIORITY_ORDER[priority], slot if slot is not None else self.clock.time(),
                  next(self._order), meter, None, action, fut)
        heapq.heappush(self._heap, job)
        self._wake()
        return fut

    def _wake(self) -> None:
        """Let :meth:`run` take the job just queued."""
        waiter, self._idle = self._idle, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def queue_depth(self) -> int:
        """Jobs waiting (not running)."""
        return len(self._heap)

    # -------------------------------------------------------------- run
    async def run(self) -> None:
        """Serve the queue forever (cancel to stop); the driver is closed on the way out."""
        concurrency = max(1, self.bus.concurrency)
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self._heap or self._busy:
                    waiter = self._idle = loop.create_future()
                    await waiter
                job = heapq.heappop(self._heap)
                if concurrency == 1:
                    self._busy = True
                    try:
                        await self._run_job(job)
                    finally:
                        self._busy = False
                else:
                    while len(self._inflight) >= concurrency:
                        await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                    task = asyncio.create_task(self._run_job(job), name=f"bus-{self.bus.id}-job")
                    self._inflight[task] = None
                    task.add_done_callback(self._job_done)
        finally:
            self._stopping = True
            for task in list(self._inflight):
                task.cancel()
            if self._inflight:
                await asyncio.gather(*self._inflight, return_exceptions=True)
            for driver in self._all_drivers():
                try:
                    await driver.close()
                except Exception:
                    log.debug("closing bus %s failed", self.bus.id, exc_info=True)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)

    def driver_for(self, meter: MeterRuntime) -> MeterDriver:
        """The driver of ``meter``'s protocol (the bus's own unless the meter speaks another)."""
        protocol = meter.settings.protocol
        if protocol is None or not self.drivers:
            return self.driver
        return self.drivers.get(protocol, self.driver)

    def _all_drivers(self) -> list[MeterDriver]:
        out = [self.driver]
        for driver in self.drivers.values():
            if all(driver is not d for d in out):
                out.append(driver)
        return out

    async def _run_job(self, job: Job) -> None:
        limit = self.limiter
        if limit is None:
            await self._dispatch(job)
            return
        if not limit.try_take():
            await limit.take()
        try:
            await self._dispatch(job)
        finally:
            limit.give()

    async def _dispatch(self, job: Job) -> None:
        if job.action is not None:
            await self._run_action(job)
        else:
            assert job.schedule is not None
            self._queued.pop((job.meter.id, job.schedule), None)
            await self._poll(job.meter, job.schedule, job.slot, job.prior)

    async def _run_action(self, job: Job) -> None:
        fut = job.future
        assert fut is not None and job.action is not None
        if fut.done():
            return
        driver = self.driver_for(job.meter)
        began = time.monotonic()
        try:
            await driver.open()
            result = await job.action(driver)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            if isinstance(exc, TransportError) and not isinstance(exc, ReadTimeout):
                await self._reset_driver(driver)
            self._track_link(exc)
            if not fut.done():
                fut.set_exception(exc)
        else:
            self._track_link(None)
            if not fut.done():
                fut.set_result(result)
        finally:
            self.transactions += 1
            self.read_latency.observe(time.monotonic() - began)

    def _track_link(self, failure: BaseException | None) -> None:
        """Follow the bus's link and log one line when it goes down and one when it is back.

        Down: the port could not be opened or the connection broke (a transport error other
        than a timeout or a garbled frame). Up: a meter answered (a reading, or a Modbus
        exception reply). A silent meter or a bad frame says nothing about the link itself, so
        it changes nothing; the first answer after start is not logged (start has its line).
        """
        if failure is None or isinstance(failure, DeviceException):
            up = True
        elif isinstance(failure, TransportError) and not isinstance(failure, ReadTimeout):
            up = False
        else:
            return
        was, self.link_up = self.link_up, up
        if up and was is False:
            log.warning("bus %s is up again: meters answer", self.bus.id)
        elif not up and was is not False:
            log.warning("bus %s is down: %s; its meters are retried", self.bus.id, failure)

    async def _reset_driver(self, driver: MeterDriver) -> None:
        try:
            await driver.close()
        except Exception:
            log.debug("closing bus %s after a transport error failed", self.bus.id, exc_info=True)

    async def _poll(self, meter: MeterRuntime, schedule: str, slot: float, prior: AmrError | None = None) -> None:
        """Poll ``meter`` for ``slot`` with retries and store the reading; ``prior``: the first
        attempt (a chained read) failed with it, so this goes on from the second."""
        plan, names = meter.plans[schedule]
        start = self.clock.time()
        if prior is None:
            lag = start - slot
            self.poll_lag_max = max(self.poll_lag_max, lag)
            if meter.dead and start < meter.next_probe:
                self._skipped(meter, schedule, slot, (
                    f"not polled: the meter failed {meter.stats.consecutive_failures} polls in a row;"
                    f" next probe at {time.strftime('%H:%M:%S', time.gmtime(meter.next_probe))} UTC"
                ), start)
                return
        attempts = 1 if meter.dead else 1 + max(0, self.bus.retries)
        results: dict[str, PointResult] | None = None
        failure: AmrError | None = None
        timeout = self.bus.timeout_s
        guard = timeout * (2 + plan.request_count) + 1.0
        driver = self.driver_for(meter)
        for attempt in range(attempts):
            if attempt == 0 and prior is not None:
                failure = prior          # the chained read's attempt, counted where it ran
            else:
                results, failure = await self._attempt(meter, driver, plan, timeout, guard)
                if failure is None or isinstance(failure, DeviceException):
                    break  # a read, or the meter answered "no": retrying will not change its mind
            lost = isinstance(failure, TransportError) and not isinstance(failure, ReadTimeout)
            if lost:
                await self._reset_driver(driver)
            self._track_link(failure)
            if lost and attempt + 1 < attempts:
                await asyncio.sleep(min(0.5, 0.05 * (2**attempt)))
        self._track_link(failure)    # the outcome (a read or a refusal ends the loop early)
        if results is not None:
            await self._event_records(meter, driver, results, timeout)
        now = self.clock.time()
        if results is not None:
            reading = meter.builder.build(schedule, slot, now, results)
            self._finish(meter, reading, schedule, ok=True, attempted=True)
            return
        assert failure is not None
        quality: Quality = quality_for(failure)  # type: ignore[assignment]
        reading = meter.builder.failed(schedule, slot, now, quality, str(failure), names)
        self._finish(meter, reading, schedule, ok=False, attempted=True, error=failure)

    async def _attempt(self, meter: MeterRuntime, driver: MeterDriver, plan: ReadPlan, timeout: float,
                       guard: float) -> tuple[dict[str, PointResult] | None, AmrError | None]:
        """One try at reading ``plan``: its results, or why it failed (counted and timed)."""
        began = time.monotonic()
        try:
            await driver.open()
            if self._guarded:
                async with asyncio.timeout(guard):
                    return await driver.read(meter.settings.address, plan, timeout), None
            return await driver.read(meter.settings.address, plan, timeout), None
        except TimeoutError:
            await self._reset_driver(driver)
            return None, ReadTimeout(f"meter {meter.id} did not finish a read within {guard:.1f} s")
        except AmrError as exc:
            return None, exc
        finally:
            self.transactions += 1
            self.read_latency.observe(time.monotonic() - began)

    async def _event_records(self, meter: MeterRuntime, driver: MeterDriver, results: dict[str, PointResult],
                             timeout: float) -> None:
        """Add the last record of every event counter that rose (gateway.event_polling)."""
        if not any(n.startswith("event_") for n in results):
            return
        view = registry.capabilities(registry.meter_protocol(self.bus, meter.settings.protocol)).event_records
        if view is None:
            return
        began = time.monotonic()
        try:
            await add_event_records(meter.events, view(driver), meter.id, meter.settings.address, results, timeout)
        finally:
            self.read_latency.observe(time.monotonic() - began)

    def record_skipped(self, meter: MeterRuntime, schedule: str, slot: float, reason: str) -> None:
        """Store a due slot the scheduler passed over (the gateway fell behind) as a failed read
        with ``reason``, so every due slot has a row."""
        self._skipped(meter, schedule, slot, reason)

    def _skipped(self, meter: MeterRuntime, schedule: str, slot: float, reason: str,
                 now: float | None = None) -> None:
        """Store a due slot that was not polled as a failed read with ``reason`` (counted as
        skipped, not as a failed attempt: the meter was not asked)."""
        names = meter.plans[schedule][1]
        ts = self.clock.time() if now is None else now
        reading = meter.builder.failed(schedule, slot, ts, "timeout", reason, names)
        meter.stats.reads_skipped += 1
        self._finish(meter, reading, schedule, ok=False, attempted=False)

    def _finish(
        self, meter: MeterRuntime, reading: Reading, schedule: str, *, ok: bool, attempted: bool,
        error: AmrError | None = None,
    ) -> None:
        st = meter.stats
        st.last_read_ts = reading.ts
        st.last_quality = reading.quality
        if ok:
            st.reads_ok += 1
            st.last_good_ts = reading.ts
            if meter.dead or st.consecutive_failures >= DEAD_AFTER_FAILURES:
                log.warning(
                    "meter %s on bus %s answers again after %d failed polls",
                    meter.id, self.bus.id, st.consecutive_failures,
                )
            st.consecutive_failures = 0
            meter.dead = False
            if reading.quality != "good":
                st.last_error = reading.error
        elif attempted:
            st.reads_failed += 1
            st.consecutive_failures += 1
            st.last_error = reading.error
            if isinstance(error, DeviceException):
                pass  # it answers; it just refuses this request
            elif st.consecutive_failures == DEAD_AFTER_FAILURES:
                log.warning("meter %s on bus %s stopped answering: %s", meter.id, self.bus.id, reading.error)
            if st.consecutive_failures >= DEAD_AFTER_FAILURES and not isinstance(error, DeviceException):
                meter.dead = True
                backoff = min(
                    self.bus.dead_backoff_s,
                    FIRST_PROBE_S * 2 ** (st.consecutive_failures - DEAD_AFTER_FAILURES),
                )
                meter.next_probe = reading.ts + backoff
        for observer in self.observers:
            try:
                observer(meter, reading)
            except Exception:
                log.exception("reading observer failed for meter %s", meter.id)
        self.sink.submit_nowait(reading, meter.retention.get(schedule, "interval"))


class _ChainedPoll:
    """What a chained read reports back to its bus worker (the poll it belongs to)."""

    __slots__ = ("began", "meter", "schedule", "slot", "worker")

    def __init__(self, worker: BusWorker, meter: MeterRuntime, schedule: str, slot: float, began: float) -> None:
        self.worker = worker
        self.meter = meter
        self.schedule = schedule
        self.slot = slot
        self.began = began

    def done(self, results: dict[str, PointResult] | None, error: Exception | None) -> None:
        """The read's outcome (drivers.base.ReadDone)."""
        self.worker._chained_done(self.meter, self.schedule, self.slot, self.began, results, error)


def _priority_of(meter: MeterRuntime, schedule: str) -> str:
    return "realtime" if meter.retention.get(schedule) == "realtime" else "interval"
