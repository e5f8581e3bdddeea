"""The review engine: watches every reading, runs the rules, stores and publishes events.

How it fits the gateway
-----------------------
* Built by the composition root (:mod:`gateway.runtime`) once per runtime, on the runtime's
  :class:`~gateway.core.Core`; it follows the :class:`~gateway.lifecycle.Component`
  lifecycle (start, stop; a reload builds a new engine).
* :meth:`ReviewEngine.observe` is a ``Core.observers`` callback: bus workers call it
  synchronously for every reading, before the reading is committed. It only appends the
  reading to a **bounded queue** and returns, so review never slows a bus; when the queue
  is full the reading is not reviewed (counted in ``dropped`` and logged once) — it is
  still stored, because the observer never raises.
* One task takes readings off the queue in order and runs :func:`gateway.review.rules.evaluate`
  on the meter's in-memory :class:`~gateway.review.rules.MeterState`, synchronously for
  every reading already queued (one wake-up per batch, no timer per reading: at 1,000
  readings/s the engine's own overhead mattered more than the rules). A rule that raises is
  logged and counted; the other rules still run. A reading's events are stored before the
  next reading is evaluated, so a clear always names the event id of its raise.
* Each raised or cleared event is appended to the store's outbox (``kind="event"``,
  schema ``amr.event.v1``: the MQTT sink publishes it on ``amr/{gw}/meters/{meter}/event``)
  and then recorded in ``review_event`` (see :mod:`gateway.review.db` for why that order).
* Rule memory that matters across a restart (last register values, the stop reference,
  conditions still raised, interval history) is saved in the review tables about once a
  minute per meter (a slice of the meters every second, so a big fleet's save never holds
  the store for long) and on stop, and restored at start — so a register that went down while the
  gateway was restarting is still caught, and a condition raised before a restart is not
  raised twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from drivers.capacity import capacity_of
from gateway.aio import wait_event
from gateway.audit import AuditLog
from gateway.model import Reading, iso_utc
from gateway.review import db
from gateway.review.bus import bus_key, fold_bus_failure
from gateway.review.periods import PeriodUse, judge_periods
from gateway.review.rules import (
    Condition,
    MeterContext,
    MeterState,
    RuleEvent,
    local_second_of_day,
    observe_reading,
    rated_power_kw,
)
from gateway.review.ruleset import evaluate
from gateway.review.worklist import WorkItem, acknowledge, close, close_cleared, severity
from gateway.review_thresholds import METER_EVENT_KINDS, ReviewThresholds

if TYPE_CHECKING:
    from gateway.core import Core
    from gateway.polling import MeterRuntime
    from gateway.settings import MeterSettings, Profile

log = logging.getLogger("amr.review")

QUEUE_SIZE: Final = 10_000
#: seconds the review gathers readings before it runs them (see :meth:`ReviewEngine._run`)
BATCH_S: Final = 0.05
#: real seconds between two saves of one meter's state: the save rolls round the meters, a
#: slice every SAVE_TICK_S, rather than serialising every dirty meter at once
SAVE_EVERY_S: Final = 60.0
#: meters whose state one transaction saves: 10,000 meters' documents in one go held the
#: store's writer (and, serialising them, the event loop) for most of a second, and every
#: reading committed meanwhile waited — once a minute, case b's p99 of 800 ms (bench/README.md)
SAVE_CHUNK: Final = 500
#: real seconds between two slices of the rolling state save (:meth:`ReviewEngine._save`)
SAVE_TICK_S: Final = 1.0
PURGE_EVERY_S: Final = 3600.0
STOP_DRAIN_S: Final = 5.0
RETRY_KEEP: Final = 1000
RETRY_EVERY_S: Final = 5.0          # real seconds between retries of events that could not be stored
PERIODS_EVERY_S: Final = 5.0        # real seconds between looks at the clock for a new hour (period rules)


def meter_context(m: MeterSettings, tz: str, th: ReviewThresholds, profile: Profile | None = None) -> MeterContext:
    """What the rules need to know about a configured meter (rated power, nominal voltage, and the
    capacity of each cumulative register its ``profile`` states, where it rolls over)."""
    capacities: dict[str, Decimal] = {}
    for name, point in (profile.points.items() if profile is not None else ()):
        cap = capacity_of(point)
        if cap is not None:
            capacities[name] = cap.modulus
    nominal: Decimal | None = None
    if m.rated_voltage_v is not None:
        phase_v = m.rated_voltage_v if th.rated_voltage_is == "phase" else m.rated_voltage_v / Decimal(3).sqrt()
        nominal = phase_v * m.pt_ratio.factor
    return MeterContext(
        tz=tz,
        identity=f"{m.address}|{m.profile}",
        rated_kw=rated_power_kw(m.rated_voltage_v, m.rated_current_a, m.multiplier, th.rated_voltage_is),
        nominal_v=nominal,
        capacities=capacities,
    )


#: (connection, meter, now) → the meter's completed stages and cycles, oldest first, as
#: (kind, cycle label, stage index, start, end, kWh): what the billing feature provides
#: (gateway.billing.periods.period_source), connected by the composition root.
PeriodSource = Callable[[Any, str, float], list[tuple[str, str, int, float, float, Decimal]]]


def evidence_links(meter: str, ts: float) -> dict[str, str]:
    """API URLs of the readings (the hour before to a quarter after) and the day's intervals around an event."""
    q = urllib.parse.quote
    day = 86400.0
    return {
        "readings": f"/api/v1/meters/{q(meter)}/readings?from={iso_utc(ts - 3600)}&to={iso_utc(ts + 900)}",
        "intervals": f"/api/v1/meters/{q(meter)}/intervals?from={iso_utc(ts - day)}&to={iso_utc(ts + 3600)}",
    }


class ReviewEngine:
    """Per-gateway review: observer, queue, rules, event storage and publication."""

    def __init__(self, core: Core, thresholds: ReviewThresholds | None = None,
                 queue_size: int = QUEUE_SIZE, period_source: PeriodSource | None = None) -> None:
        self.gateway = core
        self.period_source = period_source
        self._periods_hour: int | None = None
        self.audit = AuditLog.in_dir(core.settings.gateway.data_dir)
        self.thresholds = thresholds if thresholds is not None else core.settings.review
        self.queue: deque[tuple[str, Reading]] = deque()
        self.queue_size = queue_size
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._hurry = asyncio.Event()        # a drain() waits for readings queued: no batch window
        self.states: dict[str, MeterState] = {}
        self.contexts: dict[str, MeterContext] = {}
        #: each meter's thresholds with its customer's and its own overrides applied
        self.meter_thresholds: dict[str, ReviewThresholds] = {}
        #: bus id → its meters (for bus_failure), and meter → bus
        self.buses: dict[str, list[str]] = {}
        self.bus_of: dict[str, str] = {}
        tz = core.settings.gateway.timezone
        for m in core.settings.meters.values():
            th = self.thresholds.for_meter(m.id, m.customer)
            self.meter_thresholds[m.id] = th
            runtime = core.meters.get(m.id)
            self.contexts[m.id] = meter_context(m, tz, th, runtime.profile if runtime is not None else None)
            self.buses.setdefault(m.bus, []).append(m.id)
            self.bus_of[m.id] = m.bus
        #: bus id → its state's key (bus_key), made once rather than for every reading
        self._bus_keys: dict[str, str] = {b: bus_key(b) for b in self.buses}
        self._tz = tz
        self._next_id = 1
        self._task: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._retry: list[tuple[str, RuleEvent]] = []
        self._emit_lock = asyncio.Lock()
        self._last_save = 0.0
        self._save_cursor = 0
        self._save_credit = 0.0
        self._last_retry = 0.0
        self._last_purge = 0.0
        self._started = False
        self.dropped = 0
        self.rule_errors = 0
        self.events_written = 0
        self.processed = 0
        self._full_logged = False
        core.observers.append(self.observe)
        core.event_sinks.append(self.raise_external)

    # ------------------------------------------------------------------ observer
    def observe(self, meter: MeterRuntime, reading: Reading) -> None:
        """Queue a reading for review; never blocks, never raises (a full queue drops it)."""
        try:
            if len(self.queue) >= self.queue_size:
                self.dropped += 1
                if not self._full_logged:
                    self._full_logged = True
                    log.error("review queue full (%d readings): readings are stored but not reviewed until "
                              "it drains", self.queue_size)
                return
            self.queue.append((meter.id, reading))
            if not self._wake.is_set():
                self._wake.set()
                self._idle.clear()
        except Exception:  # pragma: no cover - defensive: polling must never see an error here
            self.dropped += 1

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Create the tables, recover from a crash, restore rule memory, start reviewing."""
        store = self.gateway.store
        await store.write(db.create)
        recovered = await store.write(db.reconcile)
        if recovered:
            log.warning("review: %d published events recovered into review_event after a crash", recovered)
        th = self.thresholds
        since = self.gateway.clock.time() - (th.jump_history_days + 1) * 86400

        def _load(conn: Any) -> tuple[dict[str, dict[str, Any]], list[db.StoredEvent], int,
                                      list[tuple[str, float, float, Decimal]]]:
            return db.load_states(conn), db.open_events(conn), db.max_event_id(conn), db.load_intervals(conn, since)

        docs, open_events, max_id, intervals = await store.write(_load)
        self._next_id = max_id + 1
        for meter, doc in docs.items():
            try:
                self.states[meter] = MeterState.from_doc(doc)
            except Exception:
                log.exception("review: cannot restore the rule state of meter %s; starting it afresh", meter)
        for ev in open_events:
            st = self.state(ev.meter)
            st.active[(ev.type, ev.key)] = Condition(ev.type, ev.key, ev.ts, dict(ev.evidence), event_id=ev.id)
        for meter, slot, _secs, kwh in intervals:
            ctx = self.contexts.get(meter)
            key = local_second_of_day(slot, ctx.tz if ctx else self._tz)
            self.state(meter).history.setdefault(key, []).append((slot, kwh))
        self._seed_event_watches()
        self._last_save = time.monotonic()
        self._started = True
        self._task = asyncio.create_task(self._run(), name="review-engine")
        self._keeper = asyncio.create_task(self._keep(), name="review-housekeeping")
        log.info("review: %d meters restored, %d conditions open", len(docs), len(open_events))

    def _seed_event_watches(self) -> None:
        """Hand the poller the event counters the review last saw (gateway.event_polling).

        Without it, a counter that rose while the gateway was down would be the poller's
        baseline and its record never read, though the review (whose memory survives a
        restart) raises the rise; and a meter event still open (a cover not closed yet) gets
        its record read again until it ends, so it can clear.
        """
        for meter, st in self.states.items():
            rt = self.gateway.meters.get(meter)
            if rt is None:
                continue
            for stem, count in st.counters.items():
                rt.events.counts.setdefault(stem, int(count))
            for etype, key in st.active:
                if METER_EVENT_KINDS.get(key) == etype:
                    rt.events.pending.add(key)

    def prometheus_lines(self) -> list[str]:
        """Prometheus lines for the engine's counters (shown on /metrics)."""
        rows = [
            ("amr_review_processed_total", "Readings the review rules evaluated.", self.processed),
            ("amr_review_dropped_total", "Readings not reviewed because the queue was full.", self.dropped),
            ("amr_review_rule_errors_total", "Rule evaluations that failed.", self.rule_errors),
            ("amr_review_events_total", "Review events raised or cleared.", self.events_written),
        ]
        out: list[str] = []
        for name, text, value in rows:
            out += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
        return out

    async def stop(self) -> None:
        """Review what is queued (bounded wait), save the rule memory, stop."""
        with contextlib.suppress(ValueError):
            self.gateway.observers.remove(self.observe)
        if self._task is not None:
            await self.drain(STOP_DRAIN_S)
        for task in (self._task, self._keeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._keeper = None
        if self._started:
            try:
                await self._save(force=True)
            except Exception:
                log.exception("review: cannot save the rule state at stop")

    async def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued reading has been reviewed (False on timeout)."""
        if not self._idle.is_set():       # readings are queued (observe clears it): skip the window
            self._hurry.set()
        return await wait_event(self._idle, timeout)

    def state(self, meter: str) -> MeterState:
        """The meter's rule memory (created on first use)."""
        st = self.states.get(meter)
        if st is None:
            st = self.states[meter] = MeterState()
        return st

    # ------------------------------------------------------------------ work
    async def _run(self) -> None:
        """Review what is queued, in batches.

        After the first reading arrives the review waits :data:`BATCH_S` (unless a
        :meth:`drain` is waiting) and then runs everything queued by then in one go: at 1,000
        readings a second one wake-up per 50 readings instead of one per reading, and the
        rules' code and tables stay hot in the CPU's caches through the batch instead of
        being evicted by polling between two readings. This took 6–10 µs of CPU off each
        reading of ``bench/tcp_fleet.py`` case a, where the review cost about 33 µs a reading
        in place (bench/README.md); an event is raised up to that window later.
        """
        while True:
            if not self.queue:
                self._wake.clear()
                self._hurry.clear()
                self._idle.set()
                await self._wake.wait()
                await wait_event(self._hurry, BATCH_S)
            while self.queue:
                meter, reading = self.queue.popleft()
                try:
                    for who, ev in self.evaluate_all(meter, reading):
                        await self.emit_all(who, [ev])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("review of a reading of meter %s failed", meter)
            if self._full_logged:
                self._full_logged = False
                log.warning("review queue drains again (%d readings were not reviewed so far)", self.dropped)

    async def _keep(self) -> None:
        """Save the rule memory, purge old history, retry unstored events, judge new periods."""
        while True:
            await asyncio.sleep(min(SAVE_TICK_S, RETRY_EVERY_S, PERIODS_EVERY_S))
            try:
                if self._retry and time.monotonic() - self._last_retry >= RETRY_EVERY_S - 0.1:
                    self._last_retry = time.monotonic()      # (0.1: the loop's timer may fire early)
                    await self._retry_events()
                await self._save()
                hour = int(self.gateway.clock.time() // 3600)
                if hour != self._periods_hour:        # stage boundaries fall on hours: judge once per hour
                    self._periods_hour = hour
                    await self.judge_periods()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("review: housekeeping failed; will retry")

    async def raise_external(self, meter: str, etype: str, key: str, ts: float, message: str,
                             evidence: dict[str, object]) -> None:
        """Store and publish an event another feature decided (billing's ``freeze_mismatch``, ``negative``)."""
        await self.emit_all(meter, [RuleEvent(etype, "raised", key, ts, message, dict(evidence))])

    async def judge_periods(self) -> list[db.StoredEvent]:
        """stage_change / cycle_change: judge every meter's newest completed stage and cycle."""
        source = self.period_source
        if source is None:
            return []
        now = self.gateway.clock.time()
        stored: list[db.StoredEvent] = []
        for meter in self.contexts:
            th = self.meter_thresholds.get(meter, self.thresholds)
            if not th.enabled:
                continue
            rows = await self.gateway.store.read(source, meter, now)
            periods = [PeriodUse(k, c, i, s, e, kwh) for k, c, i, s, e, kwh in rows  # type: ignore[arg-type]
                       if k in ("stage", "cycle")]
            events = judge_periods(self.state(meter), meter, periods, now, th)
            if events:
                stored += await self.emit_all(meter, events)
        return stored

    def evaluate(self, meter: str, reading: Reading) -> list[RuleEvent]:
        """Run the rules on one reading against the meter's memory; the events they decide."""
        return [ev for m, ev in self.evaluate_all(meter, reading) if m == meter]

    def evaluate_all(self, meter: str, reading: Reading) -> list[tuple[str, RuleEvent]]:
        """Like :meth:`evaluate`, with the bus events it decides: (meter or ``bus:<id>``, event)."""
        ctx = self.contexts.get(meter)
        if ctx is None:
            ctx = MeterContext(tz=self._tz)
        th = self.meter_thresholds.get(meter, self.thresholds)
        interval_s: float | None = None
        sched = self.gateway.settings.schedules.get(reading.schedule)
        if sched is not None and sched.aligned:
            interval_s = sched.every_s
        obs = observe_reading(reading, interval_s, th.power_point)
        events, errors = evaluate(self.state(meter), obs, ctx, th)
        self.processed += 1
        for rule, exc in errors:
            self.rule_errors += 1
            log.error("review rule %s failed on meter %s: %s", rule, meter, exc, exc_info=exc)
        bus = self.bus_of.get(meter)
        if bus is None or not th.enabled:
            return [(meter, ev) for ev in events]
        key = self._bus_keys.get(bus) or bus_key(bus)
        bus_state = self.states.get(key)
        meters = self.buses[bus]
        if bus_state is None:
            if not obs.failed or len(meters) < th.bus_failure_min_meters:
                # a bus with no state has no raised failure and no meter in grace: nothing to
                # fold unless a failure could make one, and no state made (a fleet of
                # single-meter TCP buses keeps none, even through a network outage)
                return [(meter, ev) for ev in events]
            bus_state = self.state(key)
        mine, bus_events = fold_bus_failure(bus, bus_state, meters, self.states, obs, events, th)
        if not bus_events:          # nearly every reading: no second list to make and join
            return [(meter, ev) for ev in mine]
        return [(meter, ev) for ev in mine] + [(key, ev) for ev in bus_events]

    async def emit_all(self, meter: str, events: list[RuleEvent]) -> list[db.StoredEvent]:
        """Store and publish events in order; one that cannot be stored yet is kept for a retry."""
        stored: list[db.StoredEvent] = []
        for ev in events:
            try:
                stored.append(await self._emit(meter, ev))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("review: cannot store a %s event of meter %s yet (%s); will retry", ev.type, meter, exc)
                if len(self._retry) < RETRY_KEEP:
                    self._retry.append((meter, ev))
        return stored

    async def _retry_events(self) -> None:
        pending, self._retry = self._retry, []
        for i, (meter, ev) in enumerate(pending):
            try:
                await self._emit(meter, ev)
            except Exception:
                self._retry = pending[i:] + self._retry
                return

    async def _emit(self, meter: str, ev: RuleEvent) -> db.StoredEvent:
        """Publish (outbox) then record (review_event) one event, one at a time.

        Serialised: events raised by other features (:meth:`raise_external`) come from their
        own tasks, and two emits sharing one id would lose one to the ``INSERT OR IGNORE``.
        """
        async with self._emit_lock:
            return await self._emit_one(meter, ev)

    async def _emit_one(self, meter: str, ev: RuleEvent) -> db.StoredEvent:
        store = self.gateway.store
        st = self.state(meter)
        raised_id = ev.raised_id if ev.state == "cleared" else None
        event_id = self._next_id
        ms = self.gateway.settings.meters.get(meter)
        ms_customer = ms.customer if ms is not None else None   # bus events have none
        evidence = dict(ev.evidence)
        if ms is not None:
            evidence["links"] = evidence_links(meter, ev.ts)
        ev = RuleEvent(ev.type, ev.state, ev.key, ev.ts, ev.message, evidence, ev.raised_id)
        body: dict[str, Any] = {
            "schema": db.EVENT_SCHEMA,
            "id": event_id,
            "meter": meter,
            "customer": ms_customer,
            "type": ev.type,
            "state": ev.state,
            "key": ev.key,
            "ts": iso_utc(ev.ts),
            "raised_id": raised_id,
            "message": ev.message,
            "evidence": ev.evidence,
        }
        seq = await store.append_message("event", meter, ev.ts, body)
        self._next_id = event_id + 1
        row = db.StoredEvent(event_id, meter, ev.type, ev.key, ev.state, ev.ts, raised_id, seq, ev.message,
                             dict(ev.evidence))
        await store.write(db.insert_event, row)
        if ev.state == "cleared" and raised_id is not None:
            try:
                await self._rule_closes(raised_id, row)
            except asyncio.CancelledError:
                raise
            except Exception:   # the event itself is stored and published: never emit it twice
                log.exception("review: cannot close the worklist item of event %d", raised_id)
        if ev.state == "raised":
            cond = st.active.get((ev.type, ev.key))
            if cond is not None:
                cond.event_id = event_id
        self.events_written += 1
        log.warning("review event %s %s meter %s%s: %s", ev.type, ev.state, meter,
                    f" [{ev.key}]" if ev.key else "", ev.message)
        return row

    # ------------------------------------------------------------------ worklist
    async def acknowledge(self, event_id: int, actor: str, note: str | None) -> tuple[db.StoredEvent, WorkItem]:
        """An operator takes event ``event_id`` (KeyError: no such raised event; WorklistError: not now)."""
        ev, item = await self._item(event_id)
        return ev, await self._change(ev, item, acknowledge(item, actor, self.gateway.clock.time(), note),
                                      actor, "event.acknowledge")

    async def close(self, event_id: int, actor: str, reason: str) -> tuple[db.StoredEvent, WorkItem]:
        """An operator closes event ``event_id`` with a reason (same errors as :meth:`acknowledge`)."""
        ev, item = await self._item(event_id)
        return ev, await self._change(ev, item, close(item, actor, self.gateway.clock.time(), reason),
                                      actor, "event.close")

    async def _item(self, event_id: int) -> tuple[db.StoredEvent, WorkItem]:
        found = await self.gateway.store.read(db.get_event, event_id)
        if found is None or found[0].state != "raised":
            raise KeyError(event_id)
        return found

    async def _rule_closes(self, raised_id: int, cleared: db.StoredEvent) -> None:
        found = await self.gateway.store.read(db.get_event, raised_id)
        if found is None:
            return
        ev, item = found
        after = close_cleared(item, cleared.ts, cleared.id)
        if after is not None:
            await self._change(ev, item, after, "review:rule", "event.close")

    async def _change(self, ev: db.StoredEvent, before: WorkItem, after: WorkItem, actor: str,
                      action: str) -> WorkItem:
        """Store, publish (``amr.event_state.v1`` on the meter's event topic) and audit a state change."""
        store = self.gateway.store
        await store.write(db.save_work, after)
        ms = self.gateway.settings.meters.get(ev.meter)
        body: dict[str, Any] = {
            "schema": db.EVENT_STATE_SCHEMA, "id": ev.id, "meter": ev.meter,
            "customer": ms.customer if ms is not None else None, "type": ev.type, "key": ev.key,
            "severity": severity(ev.type), "worklist": after.doc(), "changed_by": actor,
        }
        now = self.gateway.clock.time()
        await store.append_message("event", ev.meter, now, body)
        try:
            await asyncio.to_thread(self.audit.append, actor, action, str(ev.id), before.doc(), after.doc())
        except Exception:
            log.exception("review: cannot write %s of event %d to the audit log", action, ev.id)
        log.info("review: event %d (%s, meter %s) is %s (%s)", ev.id, ev.type, ev.meter, after.state, actor)
        return after

    def _due_for_save(self, force: bool, now: float) -> list[tuple[str, MeterState]]:
        """The meters whose turn it is (all with ``force``): each tick takes the share of the
        meters that the time since the last tick is of :data:`SAVE_EVERY_S`, round the list,
        so every meter is saved about once per period and no tick takes them all at once.
        Shares smaller than a meter add up (5 meters: one every 12 s, not one every second:
        a small site writes no more often than before)."""
        names = list(self.states)
        n = len(names)
        if force:
            count = n
        else:
            self._save_credit = min(float(n), self._save_credit + n * (now - self._last_save) / SAVE_EVERY_S)
            count = int(self._save_credit + 1e-9)
            self._save_credit = max(0.0, self._save_credit - count)
        self._last_save = now
        start = self._save_cursor % n if n else 0
        self._save_cursor = (start + count) % n if n else 0
        turn = names[start:start + count] + names[:max(0, start + count - n)]
        states = self.states
        return [(meter, st) for meter in turn if (st := states[meter]).dirty or st.new_intervals]

    async def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        store = self.gateway.store
        due = self._due_for_save(force, now)
        for first in range(0, len(due), SAVE_CHUNK):
            chunk = due[first:first + SAVE_CHUNK]
            docs: dict[str, dict[str, object]] = {}
            intervals: list[tuple[str, float, float, Decimal]] = []
            taken: list[tuple[MeterState, bool, list[tuple[float, float, Decimal]]]] = []
            for meter, st in chunk:
                was_dirty, new = st.dirty, st.new_intervals
                if was_dirty:
                    docs[meter] = st.to_doc()
                    st.dirty = False
                if new:
                    intervals += [(meter, s, secs, kwh) for s, secs, kwh in new]
                    st.new_intervals = []
                taken.append((st, was_dirty, new))
            try:
                await store.write(db.save_states, self.gateway.clock.time(), docs, intervals)
            except BaseException:
                for st, was_dirty, new in taken:    # not saved: the next save takes them again
                    st.dirty = st.dirty or was_dirty
                    st.new_intervals[:0] = new
                raise
        if force or now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            horizon = self.gateway.clock.time() - (self.thresholds.jump_history_days + 2) * 86400
            await store.write(db.purge_intervals, horizon)

