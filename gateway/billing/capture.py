"""Settlement capture: the gateway component that takes a settlement reading at each boundary.

How it fits the gateway
-----------------------
* Built by the composition root (:mod:`gateway.runtime`) once per runtime, on the
  runtime's :class:`~gateway.core.Core` (a :class:`~gateway.lifecycle.Component`: start,
  stop; a reload builds a new one). It appends :meth:`BillingCapture.observe` to
  ``Core.observers`` and runs one task that sleeps until the next boundary of any plan.
* At a boundary, every meter on the plan gets a capture task. Each attempt runs on the
  meter's bus through ``BusWorker.submit(..., priority="settlement")``, so it goes ahead of
  every queued interval and realtime poll on that bus (RS-485 stays one transaction at a
  time: the attempt *is* a bus job).
* One attempt, best source first:

  1. meters whose protocol keeps freeze records (the ``freeze_records`` capability of its
     descriptor, :mod:`drivers.registry`; today DL/T 645-2007), boundary at 00:00: the
     meter's **daily freeze found by date**
     (``read_daily_freeze``; the log can have gaps, so never by index) and used only when
     its **freeze time** (from the record) is the boundary within the plan's tolerance →
     ``meter_frozen`` stamped with the meter's freeze time. A freeze taken at another time
     (12:00 for a 00:00 boundary) is not used: the attempt goes on to 2. and 3., the reason
     names both times, and a ``freeze_mismatch`` review event is raised once (through
     ``Core.event_sinks``);
  2. the same meters: the **settlement-day record** whose instant is the boundary
     (上n结算日, n = 1..3) → ``meter_frozen``;
  3. a **live read** of the plan's registers → ``actual`` when it finished within the
     plan's tolerance after the boundary, ``late`` after it (with the real read time).

  A meter_frozen settlement holds what the meter froze (active energy per tariff, and where
  the meter freezes them reactive energy and maximum demand with its time); registers it does
  not freeze come from a live read at the boundary, each marked ``actual`` (see
  :meth:`BillingCapture._complete_frozen`).

  A meter that does not answer gives a ``missing`` settlement at once (billing sees the
  gap immediately, never a silent hole); the capture then retries with exponential backoff
  (60 s … 15 min of gateway time) and at once when the meter's next good poll shows it is
  back. A meter with freeze records back days later still yields its frozen value *by date*;
  one without yields ``late``. When such a meter's freeze was not there yet (a real meter
  freezes a little after 00:00) and a live read was stored, the capture comes back a few
  times for the frozen value, which then supersedes it.
* ``estimated`` only when the plan says ``allow_estimated: true``: linear between the
  nearest good readings before and after the boundary, both named; a real value later
  supersedes it.
* Storage (:mod:`gateway.billing.db`): a settlement row is kept only when strictly better
  than the current one (never silently replaced; the older one stays in the history),
  then appended to the outbox as ``amr.settlement.v1`` (MQTT publishes it on
  ``…/meters/{meter}/settlement``), then its ``seq`` is recorded. Rows a crash left
  unpublished are published at the next start.
* On start it **reads the meter at a CT/PT change**: a meter whose ratio change the runtime
  audited (:func:`gateway.multiplier.audit_ratios`) and billing has not kept yet gets a
  reading at the change, kept as a ``billing_ratio_change`` record (see
  :meth:`BillingCapture._check_ratio`).
* On start it **catches up**: every boundary since the meter was first seen on its plan
  whose settlement is absent or ``missing`` (the gateway was down, say) is captured.
* The observer adds ``reading.extra["billing"]`` to every reading of a meter on a plan:
  cycle, stage, and consumption (``energy_import_kwh`` after CT×PT) since the cycle start
  and since the stage start, from the stored settlements. It is O(1) per reading.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, tzinfo
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

from drivers import registry
from drivers.base import FreezeRecordReader, MeterDriver, ReadPlan
from drivers.capacity import capacity_of
from gateway.audit import AuditLog
from gateway.billing import db
from gateway.billing.change_event import event_of
from gateway.billing.clockstate import ClockStateSource, GatewayClockState, clock_state_source
from gateway.billing.customer_publish import CustomerPublisher
from gateway.billing.cycles import (
    Boundary,
    boundaries_between,
    cycle_at,
    last_boundary_at_or_before,
    local_date_of,
    next_boundary_after,
)
from gateway.billing.settlement import (
    NOT_CUMULATIVE,
    SETTLEMENT_SCHEMA,
    Draft,
    RegisterValue,
    Settlement,
    rank,
    stage_consumption,
)
from gateway.clock import SystemClock
from gateway.errors import DeviceException
from gateway.model import Reading, iso_utc
from gateway.multiplier import RatioChange, last_audit_at, last_ratio_change, register_factor
from gateway.profiles import compile_meter_plan
from gateway.settings import BillingPlan
from gateway.slots import local_midnight, zone

if TYPE_CHECKING:
    from gateway.core import Core
    from gateway.polling import MeterRuntime

log = logging.getLogger("amr.billing")

RETRY_FIRST_S: Final = 60.0          # gateway-clock seconds before the first retry of a failed capture
RETRY_MAX_S: Final = 900.0           # backoff cap
FROZEN_FOLLOWUPS: Final = (300.0, 3600.0, 6 * 3600.0)   # come back for a freeze after a live read
ESTIMATE_LOOKBACK_ROWS: Final = 200
KPI_DELAY_S: Final = 300.0           # publish yesterday's KPI this long after local midnight
_MIDNIGHT: Final = time(0, 0)
_GOOD_ENOUGH_LIVE: Final = rank("late")


class _NotFrozen(Exception):
    """Only a frozen value was wanted and the meter has none for this boundary (yet)."""


@dataclass(slots=True)
class _Known:
    """What the observer needs of a stored settlement: quality, values, multiplier."""

    quality: str
    values: dict[str, Decimal]
    multiplier: Decimal | None


@dataclass(slots=True)
class _Window:
    """The stage a meter's readings currently fall in (recomputed when they leave it)."""

    lo: float
    hi: float
    cycle: str
    stage: int
    cycle_start: float


def _freeze_records(m: MeterRuntime, gw: Core) -> Callable[[MeterDriver], FreezeRecordReader] | None:
    """How to see this meter's driver as a freeze-record reader, or None when its protocol keeps none."""
    bus = gw.settings.buses[m.settings.bus]
    return registry.capabilities(registry.meter_protocol(bus, m.settings.protocol)).freeze_records


def _frozen_capable(m: MeterRuntime, gw: Core) -> bool:
    return _freeze_records(m, gw) is not None


def _known_of(s: Settlement) -> _Known:
    return _Known(s.quality, s.registers(), s.multiplier)


class BillingCapture:
    """The settlement-capture component (one per runtime)."""

    def __init__(self, core: Core) -> None:
        self.gw = core
        self.tz = core.settings.gateway.timezone
        self.plans: dict[str, BillingPlan] = {}
        for m in core.settings.meters.values():
            if m.billing is not None and m.billing in core.settings.billing:
                self.plans[m.id] = core.settings.billing[m.billing]
        self.current: dict[tuple[str, float], _Known] = {}
        self.since: dict[str, float] = {}
        self._live_plans: dict[str, tuple[ReadPlan, list[str]] | None] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._captures: dict[tuple[str, float], asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._windows: dict[str, _Window] = {}
        self.attempts = 0
        self.stored = 0
        self.ratio_changes = 0
        self._mismatches: dict[tuple[str, float], float] = {}     # (meter, boundary) → freeze time seen
        self._mismatch_raised: set[tuple[str, float]] = set()
        self.events_raised: list[tuple[str, str, str]] = []       # (meter, type, key), for tests and logs
        self._negative_raised: set[tuple[str, str, tuple[str, ...]]] = set()
        self._clock_plans: dict[str, ReadPlan | None] = {}
        #: Where the gateway clock's state comes from (tests inject their own: the kernel's NTP
        #: state cannot be set by a test).
        self.clock_state: ClockStateSource = clock_state_source(
            core.settings.gateway.clock_check_command, isinstance(core.clock, SystemClock))
        self._stopping = False
        #: Customer settlement messages, recomputed whenever a settlement of one of their meters is published.
        self.customers = CustomerPublisher(core)
        core.observers.append(self.observe)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Create tables, remember first sightings, republish leftovers, start the boundary task."""
        if not self.plans:
            return
        store = self.gw.store
        await store.write(db.create)
        now = self.gw.clock.time()
        await store.write(db.remember_meters, [(m, p.name, now) for m, p in self.plans.items()])
        seen = await store.read(db.meters_since)
        self.since = {m: seen.get((m, p.name), now) for m, p in self.plans.items()}
        horizon = min(*self.since.values(), *(cycle_at(p, now, self.tz).start for p in self.plans.values()))
        for s in await store.read(db.current_since, horizon):
            self.current[(s.meter, s.boundary)] = _known_of(s)
        for s in await store.read(db.unpublished):
            await self._publish(s)
        for meter_id, plan in self.plans.items():
            await self._check_ratio(meter_id, plan)
        self._tasks.append(asyncio.create_task(self._run(now), name="billing-boundaries"))
        self._tasks.append(asyncio.create_task(self._kpi_loop(), name="billing-kpi"))

    async def stop(self) -> None:
        """Cancel the boundary task and every capture in progress (they resume at next start)."""
        self._stopping = True
        tasks = [*self._tasks, *self._captures.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._captures.clear()

    # ------------------------------------------------------------------ CT/PT changes
    async def _check_ratio(self, meter_id: str, plan: BillingPlan) -> None:
        """Take the reading at an audited CT/PT change billing has not kept yet.

        A ratio change in the configuration is an audited event, never a silent rewrite:
        :func:`gateway.multiplier.audit_ratios` records it once when the gateway starts under
        the new ratio (``at``), with the old and new factors; here billing takes a reading
        **at the change** (ahead of routine polls on the bus, like a settlement): the last
        register under the old ratio and the first under the new, kept with the change in
        ``billing_ratio_change``. Stage consumption is then split there (see
        :func:`gateway.billing.settlement.stage_consumption`). Energy between the last
        reading under the old configuration and the change is priced at the old ratio (the
        configuration in force). When the meter does not answer at the change the record
        keeps ``registers: {}`` with the reason, and the stage stays withheld and flagged:
        a later reading would mix energy of both ratios. The same holds for a change audited
        at an earlier start that the gateway stopped too soon to read: it is kept without
        registers rather than read late.
        """
        m = self.gw.meters.get(meter_id)
        if m is None:
            return
        store = self.gw.store
        change = await store.read(last_ratio_change, meter_id)
        if change is None or await store.read(db.ratio_change_recorded, meter_id, change.at):
            return
        if await self._explained(m, change):
            return
        stale = change.at != await store.read(last_audit_at)
        log.warning("meter %s: CT/PT changed in the configuration (CT×PT %s → %s); recording the change%s",
                    meter_id, change.old_multiplier, change.new_multiplier,
                    " (audited at an earlier start: too late to read the meter at it)" if stale
                    else " and reading the meter at it")
        t = asyncio.create_task(self._record_ratio_change(m, plan, change, stale), name=f"ratio-change-{meter_id}")
        self._tasks.append(t)

    async def _explained(self, m: MeterRuntime, change: RatioChange) -> bool:
        """Keep the configuration's record of a change an operator already entered; False if none was.

        An operator who entered the change through the API (with its real time and the registers
        then) and then reloaded the configuration: the configuration's record names that one
        (``explained_by``) and is kept for the audit trail, unread and not splitting any stage.
        """
        at = change.at
        entered = [c for c in db.effective(await self.gw.store.read(db.all_changes, m.id))
                   if float(c.get("at_epoch", 0)) <= at]
        last = entered[-1] if entered else None
        if last is not None and last.get("entered_by") is not None and \
                Decimal(last["new"]["multiplier"]) == change.new_multiplier:
            body: dict[str, Any] = {
                "meter": m.id, "at": iso_utc(at), "at_epoch": Decimal(repr(at)), "kind": "ratio_change",
                "old": {"ct": change.old_ct, "pt": change.old_pt, "multiplier": change.old_multiplier},
                "new": {"ct": change.new_ct, "pt": change.new_pt, "multiplier": change.new_multiplier},
                "read_at": None, "registers": {}, "explained_by": int(last["id"]),
                "reason": f"entered by an operator as record {last['id']} at {last.get('at')}",
            }
            rid = await self.gw.store.write(db.insert_ratio_change, m.id, at, body)
            self.ratio_changes += 1
            log.info("meter %s: the configured CT/PT change is the one entered as record %s at %s", m.id,
                     last["id"], last.get("at"))
            await self._audit_change(m.id, rid, body)
            return True
        return False

    async def _record_ratio_change(self, m: MeterRuntime, plan: BillingPlan, change: RatioChange,
                                   stale: bool) -> None:
        at = change.at
        registers: dict[str, dict[str, object]] = {}
        reason: str | None = None
        read_at: float | None = None
        worker = self.gw.workers[m.settings.bus]
        timeout = self.gw.settings.buses[m.settings.bus].timeout_s

        async def action(driver: MeterDriver) -> tuple[dict[str, RegisterValue], float, str | None]:
            async with asyncio.timeout(timeout * 40 + 5.0):
                return await self._read_live(driver, m, plan, at, timeout, self._live_plan(m, plan))

        regs: dict[str, RegisterValue] = {}
        error: str | None = None
        if not stale:
            try:
                regs, read_at, error = await worker.submit(m, action, priority="settlement", slot=at)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                regs, error = {}, str(exc) or type(exc).__name__
        for name, r in regs.items():
            if name in NOT_CUMULATIVE:
                continue
            registers[name] = {
                "raw": r.raw,
                "value_old": r.raw * register_factor(m.profile, name, change.old_ct, change.old_pt),
                "value_new": r.raw * register_factor(m.profile, name, change.new_ct, change.new_pt),
                "unit": r.unit,
            }
        if stale:
            reason = (f"the gateway stopped before the meter was read at the change; a reading now "
                      f"({iso_utc(self.gw.clock.time())}) would mix energy of both ratios")
        elif not registers:
            reason = f"the meter could not be read at the change: {error or 'no register'}"
        body: dict[str, Any] = {
            "meter": m.id, "at": iso_utc(at), "at_epoch": Decimal(repr(at)), "kind": "ratio_change",
            "old": {"ct": change.old_ct, "pt": change.old_pt, "multiplier": change.old_multiplier},
            "new": {"ct": change.new_ct, "pt": change.new_pt, "multiplier": change.new_multiplier},
            "read_at": None if read_at is None or not registers else iso_utc(read_at),
            "registers": registers, "reason": reason,
        }
        rid = await self.store_change(m.id, at, body)
        (log.warning if reason else log.info)("meter %s: CT/PT change recorded at %s%s", m.id, iso_utc(at),
                                              f" ({reason})" if reason else " with the registers read at it")
        await self._audit_change(m.id, rid, body)

    async def _audit_change(self, meter: str, rid: int, body: dict[str, Any]) -> None:
        """The chained audit entry of a CT/PT change the configuration made (actor ``gateway:configuration``)."""
        try:
            await asyncio.to_thread(AuditLog.in_dir(self.gw.settings.gateway.data_dir).append, "gateway:configuration",
                                    "meter.ratio_change", meter, None, {"id": rid, **body})
        except Exception:
            log.exception("meter %s: the CT/PT change could not be written to the audit log", meter)

    async def store_change(self, meter: str, at: float, body: dict[str, Any]) -> int:
        """Keep a dated change (CT/PT change or exchange) and raise its review event; the record's id.

        The one writer of ``billing_ratio_change`` rows, for the automatic record at a start
        under a changed ratio and for what an operator enters through the API; the event
        (``ratio_change`` / ``meter_exchange``) is stored and published by the review engine.
        """
        rid = await self.gw.store.write(db.insert_ratio_change, meter, at, body)
        self.ratio_changes += 1
        etype, key, message, evidence = event_of(body, rid)
        await self.raise_event(meter, etype, key, message, evidence)
        return rid

    # ------------------------------------------------------------------ boundaries
    async def _run(self, started: float) -> None:
        clock = self.gw.clock
        for meter_id, plan in self.plans.items():
            # since is inclusive: a gateway first started exactly at a boundary captures it
            for b in boundaries_between(plan, self.tz, self.since[meter_id] - 1e-6, started):
                known = self.current.get((meter_id, b.ts))
                if known is None or known.quality == "missing":
                    self._spawn(meter_id, plan, b)
        checked = started
        while True:
            nxt = min(next_boundary_after(p, self.tz, checked).ts for p in set(self.plans.values()))
            await clock.sleep_until(nxt)
            now = clock.time()
            if now < nxt:
                continue
            for meter_id, plan in self.plans.items():
                for b in boundaries_between(plan, self.tz, checked, now):
                    self._spawn(meter_id, plan, b)
            checked = now

    def _spawn(self, meter_id: str, plan: BillingPlan, b: Boundary) -> None:
        key = (meter_id, b.ts)
        task = self._captures.get(key)
        if task is not None and not task.done():
            return
        m = self.gw.meters.get(meter_id)
        if m is None:
            return
        t = asyncio.create_task(self._capture(m, plan, b), name=f"settle-{meter_id}-{b.cycle}-{b.index}")
        self._captures[key] = t
        t.add_done_callback(functools.partial(self._capture_done, key))

    def _capture_done(self, key: tuple[str, float], task: asyncio.Task[None]) -> None:
        if self._captures.get(key) is task:
            del self._captures[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("settlement capture %s failed: %s", key, task.exception(), exc_info=task.exception())

    async def _capture(self, m: MeterRuntime, plan: BillingPlan, b: Boundary) -> None:
        """Capture one (meter, boundary) until a value is had (see the module docstring)."""
        key = (m.id, b.ts)
        frozen_capable = _frozen_capable(m, self.gw)
        backoff = RETRY_FIRST_S
        followups = 0
        while not self._stopping:
            known = self.current.get(key)
            cur = rank(known.quality) if known is not None else 0
            if cur >= rank("meter_frozen"):
                return
            if cur >= _GOOD_ENOUGH_LIVE:
                # A live value is stored; a DL/T 645 meter may still give its frozen one.
                if not frozen_capable or followups >= len(FROZEN_FOLLOWUPS):
                    return
                await self._wait(m.id, FROZEN_FOLLOWUPS[followups], wake=False)
                followups += 1
                await self._try(m, plan, b, frozen_only=True)
                continue
            draft, reason = await self._try(m, plan, b, frozen_only=False)
            if draft is not None:
                continue        # stored; the top of the loop decides whether to come back
            if known is None:
                await self._store(m, plan, b, Draft("missing", "none", {}, reason=reason))
            if plan.allow_estimated:
                est = await self._estimate(m, plan, b)
                if est is not None:
                    await self._store(m, plan, b, est)
            await self._wait(m.id, backoff, wake=True)
            backoff = min(backoff * 2, RETRY_MAX_S)

    async def _try(self, m: MeterRuntime, plan: BillingPlan, b: Boundary, *,
                   frozen_only: bool) -> tuple[Draft | None, str]:
        """One attempt; stores what it got. Returns (draft or None, why not)."""
        self.attempts += 1
        try:
            draft = await self._attempt(m, plan, b, frozen_only=frozen_only)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._raise_freeze_mismatch(m, b)
            return None, str(exc) or type(exc).__name__
        draft = clock_verdict(draft, await self.clock_state(), plan)
        await self._store(m, plan, b, draft)
        await self._raise_freeze_mismatch(m, b)
        return draft, ""

    async def _raise_freeze_mismatch(self, m: MeterRuntime, b: Boundary) -> None:
        """Raise (once per meter and boundary) the ``freeze_mismatch`` event an attempt found."""
        key = (m.id, b.ts)
        frozen_at = self._mismatches.pop(key, None)
        if frozen_at is None or key in self._mismatch_raised:
            return
        self._mismatch_raised.add(key)
        z = zone(self.tz)
        message = (f"the meter's daily freeze for the {_local(b.ts, z)} boundary was taken at "
                   f"{_local(frozen_at, z)}: not used as the settlement; the registers were read instead")
        await self.raise_event(m.id, "freeze_mismatch", iso_utc(b.ts), message,
                               {"boundary": iso_utc(b.ts), "frozen_at": iso_utc(frozen_at),
                                "tolerance_s": Decimal(repr(self.plans[m.id].tolerance_s))})

    async def raise_event(self, meter: str, etype: str, key: str, message: str, evidence: dict[str, object]) -> None:
        """Hand a billing review event to the review engine (``Core.event_sinks``); always logged."""
        log.warning("billing event %s meter %s [%s]: %s", etype, meter, key, message)
        for sink in self.gw.event_sinks:
            try:
                await sink(meter, etype, key, self.gw.clock.time(), message, evidence)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("billing event %s of meter %s could not be handed to review", etype, meter)
        self.events_raised.append((meter, etype, key))       # after the sinks: it is stored when listed here

    async def _wait(self, meter_id: str, seconds: float, *, wake: bool) -> None:
        """Sleep ``seconds`` of gateway time, or less when the meter's next good poll arrives."""
        if not wake:
            await self.gw.clock.sleep(seconds)
            return
        ev = self._wake.setdefault(meter_id, asyncio.Event())
        ev.clear()
        sleeper = asyncio.ensure_future(self.gw.clock.sleep(seconds))
        waiter = asyncio.ensure_future(ev.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (sleeper, waiter):
                f.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)

    # ------------------------------------------------------------------ one attempt
    async def _attempt(self, m: MeterRuntime, plan: BillingPlan, b: Boundary, *, frozen_only: bool) -> Draft:
        worker = self.gw.workers[m.settings.bus]
        bus = self.gw.settings.buses[m.settings.bus]
        timeout = bus.timeout_s
        guard = timeout * 40 + 5.0

        async def action(driver: MeterDriver) -> Draft:
            async with asyncio.timeout(guard):
                return await self._read(driver, m, plan, b, timeout, frozen_only=frozen_only)

        fut = worker.submit(m, action, priority="settlement", slot=b.ts)
        result: Draft = await fut
        return result

    async def _read(self, driver: MeterDriver, m: MeterRuntime, plan: BillingPlan, b: Boundary, timeout: float,
                    *, frozen_only: bool) -> Draft:
        notes: list[str] = []
        if _frozen_capable(m, self.gw):
            frozen = await self._read_frozen(driver, m, plan, b, timeout, notes)
            if frozen is not None:
                done = await self._complete_frozen(driver, m, plan, b, timeout, frozen)
                done = await self._with_demand_period(driver, m, plan, timeout, done)
                return await self._with_meter_clock(driver, m, timeout, done)
        if frozen_only:
            raise _NotFrozen("; ".join(notes) or "the meter has no frozen value for this boundary")
        regs, now, error = await self._read_live(driver, m, plan, b.ts, timeout, self._live_plan(m, plan))
        if not regs:
            raise DeviceException(0x02, "no requested data", error or "no register could be read")
        quality = "actual" if now - b.ts <= plan.tolerance_s else "late"
        note = "; ".join(notes) if notes else None
        live = Draft(quality, "live_read", regs, read_at=now, reason=note)  # type: ignore[arg-type]
        live = await self._with_demand_period(driver, m, plan, timeout, live)
        return await self._with_meter_clock(driver, m, timeout, live)

    async def _with_demand_period(self, driver: MeterDriver, m: MeterRuntime, plan: BillingPlan, timeout: float,
                                  d: Draft) -> Draft:
        """Keep the meter's last closed demand period (上1结算日 maximum demand and time) with ``d``.

        A meter resets its maximum demand at its settlement instant, so at a boundary that is
        (or follows) one, the current register reads 0 or only the new period; the closed
        period's maximum is in the settlement-day record (DL/T 645 0101 0001). Kept as the
        settlement's ``demand_period`` with the period's start and end, for
        :func:`gateway.billing.demand.meter_demand`. Only for plans billing ``demand_max_kw``
        on meters that keep settlement records; a refusal is noted, never fatal.
        """
        view = _freeze_records(m, self.gw)
        if view is None or "demand_max_kw" not in plan.registers:
            return d
        z = zone(self.tz)
        stamps: dict[str, datetime] = {}
        try:
            settled, values = await view(driver).read_settlement(m.settings.address, 1, timeout, tz=z, stamps=stamps)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return replace(d, reason=_join(d.reason, f"settlement-day demand record not read: {exc}"))
        raw = values.get("demand_max_kw")
        if settled is None or raw is None:
            return d
        at = stamps.get("demand_max_kw")
        begun = stamps.get("demand_period_start")
        record: dict[str, object] = {
            "raw": raw, "value": raw * _factor(m, "demand_max_kw"), "unit": "kW",
            "at": None if at is None else at.isoformat(timespec="minutes"),
            "period_start": None if begun is None else iso_utc(begun.replace(tzinfo=z).timestamp()),
            "period_end": iso_utc(settled.timestamp()),
            "record": "settlement_day",
        }
        return replace(d, demand_period=record)

    async def _with_meter_clock(self, driver: MeterDriver, m: MeterRuntime, timeout: float, d: Draft) -> Draft:
        """Read the meter's clock in the same bus job and keep its offset from the gateway's with ``d``.

        Only for profiles that map ``meter_clock``; a meter without one keeps ``meter_offset_s``
        None (nothing to check). A clock the meter does not give is noted and treated as an
        offset that cannot be verified (see :func:`clock_verdict`).
        """
        if "meter_clock" not in m.profile.points:
            return d
        if m.id not in self._clock_plans:
            bus = self.gw.settings.buses[m.settings.bus]
            self._clock_plans[m.id] = compile_meter_plan(bus, m.settings, m.profile, ["meter_clock"])
        compiled = self._clock_plans[m.id]
        if compiled is None:
            return d
        try:
            results = await driver.read(m.settings.address, compiled, timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return replace(d, meter_clock=None, reason=_join(d.reason, f"meter clock not read: {exc}"),
                           flags=(*d.flags, "meter_clock_unread"))
        now = self.gw.clock.time()
        reading = m.builder.build("settlement", now, now, results)
        p = reading.points.get("meter_clock")
        text = None if p is None or p.quality != "good" else str(p.value if p.value is not None else p.raw)
        at = None if text is None else _meter_time(text, self.tz)
        if text is None or at is None:
            why = p.reason if p is not None and p.reason else "no value"
            return replace(d, reason=_join(d.reason, f"meter clock not read: {why}"),
                           flags=(*d.flags, "meter_clock_unread"))
        offset = (Decimal(repr(at)) - Decimal(repr(now))).quantize(Decimal("0.001"))
        return replace(d, meter_clock=text, meter_offset_s=offset)

    async def _read_live(self, driver: MeterDriver, m: MeterRuntime, plan: BillingPlan, slot: float, timeout: float,
                         live: tuple[ReadPlan, list[str]] | None) -> tuple[dict[str, RegisterValue], float, str | None]:
        """One live read of a compiled plan: (good registers, read time, why none)."""
        if live is None:
            raise DeviceException(0x02, "no requested data",
                                  f"profile {m.profile.name} maps none of plan {plan.name}'s registers")
        compiled, _names = live
        results = await driver.read(m.settings.address, compiled, timeout)
        now = self.gw.clock.time()
        reading = m.builder.build("settlement", slot, now, results)
        at_point = reading.points.get("demand_max_kw_at")
        demand_at = (str(at_point.raw) if at_point is not None and at_point.quality == "good"
                     and at_point.raw is not None else None)
        regs: dict[str, RegisterValue] = {}
        for name, p in reading.points.items():
            if name not in plan.registers:
                continue
            if p.quality == "good" and isinstance(p.raw, Decimal | int) and isinstance(p.value, Decimal | int):
                regs[name] = RegisterValue(Decimal(p.raw), Decimal(p.value), p.unit,
                                           at=demand_at if name == "demand_max_kw" else None)
        return regs, now, reading.error

    async def _complete_frozen(self, driver: MeterDriver, m: MeterRuntime, plan: BillingPlan, b: Boundary,
                               timeout: float, frozen: Draft) -> Draft:
        """Fill in the plan registers a meter's freeze does not carry, where that is honest.

        A DL/T 645 meter may freeze active energy only (it answers "no requested data" for
        the reactive and demand blocks 050603nn/050604nn/050609nn). For those registers the
        settlement stays ``meter_frozen`` for what the meter froze, and:

        * **within the plan's tolerance** after the boundary, a live read of just the missing
          registers (same bus job) is added, each register marked with its own quality
          ``actual`` and its ``read_at`` — the same value an ``actual`` settlement would hold;
        * **after the tolerance** (a catch-up, a meter back days later) they are left out, not
          filled with a value from another instant: the stage consumption then lists them
          as known at one end only (flagged), and the reason says why.
        """
        missing = [r for r in plan.registers if r not in frozen.registers and r in m.profile.points]
        if not missing:
            return frozen
        now = self.gw.clock.time()
        if now - b.ts > plan.tolerance_s:
            return replace(frozen, reason=_join(frozen.reason, f"the meter's freeze has no {', '.join(missing)}; "
                                                "too late after the boundary for a live read of them"))
        names = list(missing)
        if "demand_max_kw" in names and "demand_max_kw_at" in m.profile.points:
            names.append("demand_max_kw_at")
        bus = self.gw.settings.buses[m.settings.bus]
        try:
            live, read_at, _err = await self._read_live(
                driver, m, plan, b.ts, timeout, (compile_meter_plan(bus, m.settings, m.profile, names), names))
        except DeviceException as exc:
            return replace(frozen, reason=_join(frozen.reason, f"live read of {', '.join(missing)}: {exc}"))
        regs = dict(frozen.registers)
        in_time = read_at - b.ts <= plan.tolerance_s
        for name, r in live.items():
            if in_time:
                regs[name] = replace(r, quality="actual", read_at=iso_utc(read_at))
        got = [n for n in missing if n in regs]
        left = [n for n in missing if n not in regs]
        note = f"the meter's freeze has no {', '.join(missing)}"
        if got:
            note += f"; live read at the boundary for {', '.join(got)}"
        if left:
            note += f"; not available: {', '.join(left)}"
        return replace(frozen, registers=regs, reason=_join(frozen.reason, note))

    async def _read_frozen(self, driver: MeterDriver, m: MeterRuntime, plan: BillingPlan, b: Boundary, timeout: float,
                           notes: list[str]) -> Draft | None:
        z = zone(self.tz)
        addr = m.settings.address
        view = _freeze_records(m, self.gw)
        if view is None:
            return None
        freezes = view(driver)
        if plan.at == _MIDNIGHT:
            day: date = local_date_of(b.ts, self.tz)
            stamps: dict[str, datetime] = {}
            try:
                when, values = await freezes.read_daily_freeze(addr, day, timeout, tz=z, points=plan.registers,
                                                               stamps=stamps)
            except DeviceException as exc:
                notes.append(f"daily freeze: {exc}")
            else:
                frozen_at = when.timestamp()
                if abs(frozen_at - b.ts) > plan.tolerance_s:
                    # Matched by date only: a freeze taken at another time of day is not this boundary.
                    notes.append(f"the daily freeze of {day} was taken at {_local(frozen_at, z)}, not at the "
                                 f"boundary {_local(b.ts, z)} (tolerance {plan.tolerance_s:g} s): not used")
                    self._mismatches[(m.id, b.ts)] = frozen_at
                else:
                    regs = self._frozen_registers(m, plan, values, stamps)
                    if regs:
                        return Draft("meter_frozen", "daily_freeze", regs, read_at=self.gw.clock.time(),
                                     frozen_at=frozen_at)
        for n in range(1, 4):
            try:
                settled, values = await freezes.read_settlement(addr, n, timeout, tz=z)
            except DeviceException as exc:
                notes.append(f"settlement-day block: {exc}")
                break
            if settled is None:
                break
            t = settled.timestamp()
            if t == b.ts:
                # the record's demand is the closed period's maximum (kept as demand_period), not the
                # demand register at the boundary: leave it to the live read at the boundary
                values = {k: v for k, v in values.items() if k != "demand_max_kw"}
                regs = self._frozen_registers(m, plan, values)
                if regs:
                    return Draft("meter_frozen", "settlement_day", regs, read_at=self.gw.clock.time(),
                                 frozen_at=t)
                break
            if t < b.ts:
                break
        return None

    def _frozen_registers(self, m: MeterRuntime, plan: BillingPlan, values: dict[str, Decimal],
                          stamps: dict[str, datetime] | None = None) -> dict[str, RegisterValue]:
        regs: dict[str, RegisterValue] = {}
        for name in plan.registers:
            raw = values.get(name)
            if raw is None:
                continue
            point = m.profile.points.get(name)
            unit = point.unit if point is not None else ("kvarh" if "kvarh" in name else "kWh")
            stamp = (stamps or {}).get(name)
            regs[name] = RegisterValue(raw, raw * _factor(m, name), unit,
                                       at=None if stamp is None else stamp.isoformat(timespec="minutes"))
        return regs

    def _live_plan(self, m: MeterRuntime, plan: BillingPlan) -> tuple[ReadPlan, list[str]] | None:
        if m.id in self._live_plans:
            return self._live_plans[m.id]
        names = [r for r in plan.registers if r in m.profile.points]
        if "demand_max_kw" in names and "demand_max_kw_at" in m.profile.points and "demand_max_kw_at" not in names:
            names.append("demand_max_kw_at")            # maximum demand is billed with its time
        compiled: tuple[ReadPlan, list[str]] | None = None
        if names:
            bus = self.gw.settings.buses[m.settings.bus]
            compiled = (compile_meter_plan(bus, m.settings, m.profile, names), names)
        self._live_plans[m.id] = compiled
        return compiled

    # ------------------------------------------------------------------ estimate
    async def _estimate(self, m: MeterRuntime, plan: BillingPlan, b: Boundary) -> Draft | None:
        store = self.gw.store
        pair = await store.read(_neighbours, m.id, b.ts, list(plan.registers))
        if pair is None:
            return None
        (t1, s1, v1), (t2, s2, v2) = pair
        if t2 <= t1:
            return None
        regs: dict[str, RegisterValue] = {}
        for name in plan.registers:
            if name in v1 and name in v2 and name not in NOT_CUMULATIVE:
                (r1, _x1, unit), (r2, _x2, _) = v1[name], v2[name]
                raw = interpolate(r1, t1, r2, t2, b.ts)
                regs[name] = RegisterValue(raw, raw * _factor(m, name), unit)
        if not regs:
            return None
        return Draft("estimated", "interpolated", regs, read_at=self.gw.clock.time(),
                     reason="plan allows estimates; linear between the two nearest good readings",
                     estimated_from=({"seq": s1, "ts": iso_utc(t1)}, {"seq": s2, "ts": iso_utc(t2)}))

    # ------------------------------------------------------------------ storage
    async def _store(self, m: MeterRuntime, plan: BillingPlan, b: Boundary, d: Draft) -> Settlement | None:
        s = m.settings
        body = settlement_body(m, plan, b, d)
        store = self.gw.store
        row = await store.write(db.insert_if_better, s.id, plan.name, b.cycle, b.index, b.ts, d.quality,
                                self.gw.clock.time(), body)
        if row is None:
            return None
        self.current[(s.id, b.ts)] = _known_of(row)
        self.stored += 1
        await self._publish(row)
        if d.quality != "missing":
            await self._check_stage(m, plan, b)
            nxt = next_boundary_after(plan, self.tz, b.ts)
            if (s.id, nxt.ts) in self.current:          # a catch-up stored an older boundary after a newer one
                await self._check_stage(m, plan, nxt)
        extra = f", read at {iso_utc(d.read_at)}" if d.quality in ("actual", "late") and d.read_at else ""
        extra += f", frozen at {iso_utc(d.frozen_at)}" if d.frozen_at else ""
        extra += f" ({d.reason})" if d.quality == "missing" and d.reason else ""
        (log.warning if d.quality in ("missing", "estimated") else log.info)(
            "settlement %s %s stage %d at %s: %s from %s%s", s.id, b.cycle, b.stage,
            datetime.fromtimestamp(b.ts, zone(self.tz)).isoformat(timespec="minutes"), d.quality, d.source, extra,
        )
        return row

    async def store_correction(
        self, m: MeterRuntime, plan: BillingPlan, b: Boundary, quality: str, body: dict[str, Any],
        expected: int | None,
    ) -> tuple[Settlement | None, Settlement] | None:
        """Store and publish an operator's correction (:mod:`gateway.billing.corrections`) as the new current
        version of ``m`` at ``b``; None when the current version is no longer ``expected`` (nothing written)."""
        done = await self.gw.store.write(db.insert_correction, m.id, plan.name, b.cycle, b.index, b.ts, quality,
                                         self.gw.clock.time(), body, expected)
        if done is None:
            return None
        previous, row = done
        self.current[(m.id, b.ts)] = _known_of(row)
        self.stored += 1
        await self._publish(row)
        await self._check_stage(m, plan, b)
        nxt = next_boundary_after(plan, self.tz, b.ts)
        if (m.id, nxt.ts) in self.current:
            await self._check_stage(m, plan, nxt)
        ev = self._wake.get(m.id)
        if ev is not None:
            ev.set()            # a capture waiting on this boundary looks at the new version now
        log.info("settlement %s %s stage %d at %s: %s entered through the API (revision %s)", m.id, b.cycle, b.stage,
                 iso_utc(b.ts), quality, row.body.get("revision"))
        return previous, row

    async def _check_stage(self, m: MeterRuntime, plan: BillingPlan, b: Boundary) -> None:
        """Raise a ``negative`` review event when the stage ending at ``b`` went down unexplained.

        Once per meter, stage end and register set; a rollover within the register's capacity is
        counted (flagged in the stage, :func:`~gateway.billing.settlement.stage_consumption`), not raised.
        """
        prev = last_boundary_at_or_before(plan, self.tz, b.ts - 1e-3)
        if prev.ts >= b.ts:
            return
        rows = await self.gw.store.read(db.for_meter, m.id, prev.ts, b.ts)
        changes = await self.gw.store.read(db.ratio_changes, m.id, prev.ts, b.ts)
        by_ts = {r.boundary: r for r in rows}
        st = stage_consumption(b.index if b.index else prev.index + 1, prev.ts, b.ts, by_ts.get(prev.ts),
                               by_ts.get(b.ts), list(plan.registers), changes)
        if "negative" not in st.codes:
            return
        down = sorted(n for n, v in st.consumption.items() if v is not None and v < 0)
        key = f"{iso_utc(prev.ts)}/{iso_utc(b.ts)}"
        if (m.id, key, tuple(down)) in self._negative_raised:
            return
        self._negative_raised.add((m.id, key, tuple(down)))
        z = zone(self.tz)
        await self.raise_event(
            m.id, "negative", key,
            f"stage {_local(prev.ts, z)} → {_local(b.ts, z)}: {', '.join(down)} went down and no rollover "
            "explains it; the stage is not complete",
            {"start": iso_utc(prev.ts), "end": iso_utc(b.ts),
             "consumption": {n: st.consumption[n] for n in down},
             "flags": [f for f in st.flags if f.startswith("negative")]})

    async def _publish(self, row: Settlement) -> None:
        store = self.gw.store
        seq = await store.append_message("settlement", row.meter, row.boundary, row.body)
        await store.write(db.set_seq, row.id, seq)
        row.seq = seq
        await self.customers.settlement_published(row)

    # ------------------------------------------------------------------ observer
    def observe(self, m: MeterRuntime, r: Reading) -> None:
        """Add cycle, stage and consumption since their starts to a reading (synchronous, O(1))."""
        plan = self.plans.get(m.id)
        if plan is None:
            return
        if r.quality == "good":
            ev = self._wake.get(m.id)
            if ev is not None:
                ev.set()
        w = self._windows.get(m.id)
        if w is None or not w.lo <= r.ts < w.hi:
            c = cycle_at(plan, r.ts, self.tz)
            k = c.stage_at(r.ts)
            w = self._windows[m.id] = _Window(c.boundaries[k - 1], c.boundaries[k], c.label, k, c.start)
        p = r.points.get("energy_import_kwh")
        value = p.value if p is not None and p.quality == "good" and isinstance(p.value, Decimal) else None
        mult = r.ct * r.pt
        cyc = self.current.get((m.id, w.cycle_start))
        stg = self.current.get((m.id, w.lo))
        r.extra["billing"] = {
            "plan": plan.name,
            "cycle": w.cycle,
            "stage": w.stage,
            "since_cycle_start_kwh": _since(value, cyc, mult),
            "since_stage_start_kwh": _since(value, stg, mult),
            "cycle_start_quality": None if cyc is None else cyc.quality,
            "stage_start_quality": None if stg is None else stg.quality,
        }

    # ------------------------------------------------------------------ KPI on MQTT
    async def _kpi_loop(self) -> None:
        """Publish each finished local day's read-completeness KPI (``kind="kpi"``)."""
        from gateway.billing.kpi import kpi_for_day

        clock = self.gw.clock
        store = self.gw.store
        while True:
            now = clock.time()
            target = local_midnight(now, self.tz) + 86400 + 3 * 3600
            target = local_midnight(target, self.tz) + KPI_DELAY_S
            await clock.sleep_until(target)
            day = local_date_of(target - KPI_DELAY_S - 1, self.tz)
            try:
                doc = await store.read(kpi_for_day, self.gw.settings, day, clock.time())
                await store.append_message("kpi", None, clock.time(), {"schema": "amr.kpi.v1", **doc})
            except Exception:
                log.exception("daily KPI for %s could not be published", day)


def settlement_body(m: MeterRuntime, plan: BillingPlan, b: Boundary, d: Draft) -> dict[str, Any]:
    """The ``amr.settlement.v1`` document of draft ``d`` for meter ``m`` at boundary ``b`` (no seq, no revision)."""
    s = m.settings
    body: dict[str, Any] = {
        "schema": SETTLEMENT_SCHEMA,
        "meter": s.id,
        "customer": s.customer,
        "bus": s.bus,
        "plan": plan.name,
        "cycle": b.cycle,
        "stage": b.stage,
        "boundary_index": b.index,
        "boundary": iso_utc(b.ts),
        "quality": d.quality,
        "source": d.source,
        "read_at": None if d.read_at is None else iso_utc(d.read_at),
        "frozen_at": None if d.frozen_at is None else iso_utc(d.frozen_at),
        "ct": str(s.ct_ratio),
        "pt": str(s.pt_ratio),
        "multiplier": s.multiplier,
        "registers": {n: r.doc() for n, r in d.registers.items()},
        "reason": d.reason,
    }
    caps = {n: c.doc() for n in d.registers if n not in NOT_CUMULATIVE
            and (c := capacity_of(m.profile.points.get(n))) is not None}
    if caps:
        body["capacity"] = caps          # where each register rolls over (stage consumption)
    if d.estimated_from:
        body["estimated_from"] = list(d.estimated_from)
    if d.gateway_clock is not None:
        body["gateway_clock"] = d.gateway_clock
        body["meter_clock"] = d.meter_clock
        body["meter_offset_s"] = d.meter_offset_s
    if d.flags:
        body["flags"] = list(d.flags)
    if d.demand_period is not None:
        body["demand_period"] = d.demand_period
    return body


def _factor(m: MeterRuntime, name: str) -> Decimal:
    """The factor of a plan register of ``m`` under its configured ratios (gateway.multiplier's rule)."""
    return register_factor(m.profile, name, m.settings.ct_ratio.factor, m.settings.pt_ratio.factor)


#: The factor (CT×PT where the profile says secondary) a register's value is the raw value times.
factor_of = _factor


def clock_verdict(d: Draft, state: GatewayClockState, plan: BillingPlan) -> Draft:
    """``d`` with the gateway clock's state kept and, when it cannot be trusted, ``clock_unverified``.

    A settlement read from the meter (``meter_frozen``, ``actual``, ``late``) is unverified when
    the gateway clock is not known to be synchronized, or the meter's clock was off from the
    gateway's by more than ``plan.max_meter_offset_s`` (or could not be read, its profile
    mapping one). Estimated and missing ones are left as they are. Pure.
    """
    if d.quality in ("missing", "estimated"):
        return d
    why: list[str] = []
    if state.synchronized is not True:
        why.append("the gateway clock is " + ("not synchronized" if state.synchronized is False
                                               else "of unknown state") + f" ({state.detail})")
    if d.meter_offset_s is not None and abs(d.meter_offset_s) > Decimal(repr(plan.max_meter_offset_s)):
        why.append(f"the meter clock is {d.meter_offset_s} s off the gateway's "
                   f"(the plan allows {plan.max_meter_offset_s:g} s)")
    if "meter_clock_unread" in d.flags:
        why.append("the meter clock could not be read")
    flags = tuple(f for f in d.flags if f != "meter_clock_unread")
    if why:
        flags = (*flags, "clock_unverified")
    reason = d.reason
    if why:
        reason = _join(reason, "clock_unverified: " + "; ".join(why))
    return replace(d, gateway_clock=state.doc(), flags=flags, reason=reason)


def _meter_time(text: str, tz: str) -> float | None:
    """A meter clock reading (ISO-8601; naive means the gateway's zone) as epoch seconds."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone(tz))
    return dt.timestamp()


def _local(t: float, z: tzinfo) -> str:
    """Epoch ``t`` as a local wall time to the minute (what an operator compares)."""
    return datetime.fromtimestamp(t, z).isoformat(timespec="minutes")


def _join(a: str | None, b: str) -> str:
    return b if not a else f"{a}; {b}"


ESTIMATE_QUANTUM: Final = Decimal("0.0001")


def interpolate(r1: Decimal, t1: float, r2: Decimal, t2: float, at: float) -> Decimal:
    """The register at ``at`` on the straight line through (t1, r1) and (t2, r2), exactly.

    Rational arithmetic on the exact binary values of the times (``Fraction`` of a float is
    exact), rounded once, half-even, to 4 decimals (the terminal's A14 precision,
    docs/billing-rules.md §2). Used for ``estimated`` settlements only.
    """
    frac = (Fraction(at) - Fraction(t1)) / (Fraction(t2) - Fraction(t1))
    exact = Fraction(r1) + (Fraction(r2) - Fraction(r1)) * frac
    scaled = exact / Fraction(ESTIMATE_QUANTUM)
    n = round(scaled)                    # Fraction rounds half to even
    return (Decimal(n) * ESTIMATE_QUANTUM).quantize(ESTIMATE_QUANTUM)


def _since(value: Decimal | None, known: _Known | None, mult: Decimal) -> Decimal | None:
    if value is None or known is None or known.quality == "missing":
        return None
    if known.multiplier is not None and known.multiplier != mult:
        return None
    start = known.values.get("energy_import_kwh")
    return None if start is None else value - start


def _neighbours(conn: sqlite3.Connection, meter: str, at: float, registers: list[str]) -> tuple[
        tuple[float, int, dict[str, tuple[Decimal, Decimal, str]]],
        tuple[float, int, dict[str, tuple[Decimal, Decimal, str]]]] | None:
    """The nearest good readings carrying plan registers before and after ``at``."""
    a, b = db.readings_around(conn, meter, at, registers, ESTIMATE_LOOKBACK_ROWS)
    if a is None or b is None:
        return None
    return a, b


__all__ = ["BillingCapture", "clock_verdict", "factor_of", "interpolate", "settlement_body"]
