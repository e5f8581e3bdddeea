"""The composition root: builds one runtime of the gateway from its settings, and reloads it.

What it builds, in this order, from one :class:`~gateway.settings.Settings`:

* the store (opened once per process; a reload hands it to the next runtime),
* every meter's compiled plans and one :class:`~gateway.polling.BusWorker` per bus, held
  in a :class:`~gateway.core.Core` with the clock, the store and the reading observers,
* the features on that core: :class:`~gateway.review.engine.ReviewEngine` and
  :class:`~gateway.billing.capture.BillingCapture` (each a
  :class:`~gateway.lifecycle.Component`), and the sink runners,
* the API, with the billing and review routes registered here (importing a feature
  registers nothing), its listening socket bound at build time.

:meth:`Gateway.prepare` builds and binds, starting nothing; :meth:`Gateway.start` starts in
the order store → ratio audit → workers → scheduler → review → billing → sinks → API, so
nothing polls before the store can take a reading and nothing is served before it exists;
:meth:`Gateway.stop` stops in the reverse order, and the store commits everything queued
before it closes.

Reload (SIGHUP) is transactional, see :func:`reload`: the new runtime is built and its API
listener bound while the old one runs; any failure keeps the old one running, is logged
and shows in ``/api/v1/health``. The settings in :data:`RESTART_SETTINGS` belong to the
process, not to a runtime, and a reload that changes them is refused with their names:

* ``gateway.id`` — the store belongs to one gateway id (every stored message carries it);
* ``gateway.data_dir`` — where the store lives: a second store cannot be opened beside the
  running one without two writers of seq;
* ``store`` — durability, commit interval, cap and retention of the open store.

Everything else (buses, meters, profiles, schedules, billing, review, sinks, the API's
address and token) is reloaded by building a new runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from drivers.base import ReadPlan
from drivers.registry import create_bus_drivers
from gateway import __version__
from gateway.api.routes_billing import billing_routes
from gateway.api.routes_changes import change_routes
from gateway.api.routes_customers import install_customer_routes
from gateway.api.routes_events import event_routes
from gateway.api.server import ApiServer
from gateway.billing.capture import BillingCapture
from gateway.billing.periods import period_source
from gateway.clock import Clock, SystemClock
from gateway.core import Core
from gateway.heap import freeze_heap, keep_heap_frozen, refreeze_heap, spare_young_collections
from gateway.lifecycle import Component, MetricsSource, ReloadStatus
from gateway.multiplier import audit_ratios
from gateway.pipeline import ReadingBuilder, select_points
from gateway.poll_limit import PollLimit
from gateway.polling import BusWorker, MeterRuntime, ReadingObserver
from gateway.profiles import compile_meter_plan
from gateway.review.engine import ReviewEngine
from gateway.scheduler import Scheduler
from gateway.settings import Settings
from gateway.sinks.delivery import SinkRunner, build_sinks, configured_sinks
from gateway.store import Store
from gateway.web.console import Console

log = logging.getLogger("amr.runtime")

STORE_FILE = "amr-gateway.sqlite"
TCP_CONCURRENCY_LIMIT = 512
STOP_PART_S = 15.0  # the longest one component (a feature, the polling tasks) may take to stop
#: Settings a reload cannot change (see the module docstring): the process must restart.
RESTART_SETTINGS: Final = ("gateway.id", "gateway.data_dir", "store")


def build_meters(settings: Settings) -> dict[str, MeterRuntime]:
    """Compile every meter's read plans (once, at load) into runtime objects."""
    meters: dict[str, MeterRuntime] = {}
    # Meters with the same profile, protocol and schedules share their compiled plans and
    # their plan tables (thousands of TCP meters are usually a handful of meter types).
    shared_plans: dict[tuple[str, str, str], tuple[dict[str, tuple[ReadPlan, list[str]]], dict[str, str]]] = {}
    for m in settings.meters.values():
        profile = settings.profiles[m.profile]
        bus = settings.buses[m.bus]
        key = (profile.name, m.protocol or bus.protocol, ",".join(m.schedules))
        cached = shared_plans.get(key)
        if cached is None:
            plans: dict[str, tuple[ReadPlan, list[str]]] = {}
            retention: dict[str, str] = {}
            for sched_name in m.schedules:
                sched = settings.schedules[sched_name]
                names = select_points(list(profile.points), sched.points)
                if not names:
                    log.warning("schedule %s selects no point of profile %s (meter %s)",
                                sched_name, profile.name, m.id)
                    continue
                plans[sched_name] = (compile_meter_plan(bus, m, profile, names), names)
                retention[sched_name] = "realtime" if sched.priority == "realtime" else "interval"
            cached = shared_plans[key] = (plans, retention)
        meters[m.id] = MeterRuntime(m, profile, ReadingBuilder(m, profile), cached[0], cached[1])
    return meters


def raise_open_file_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE toward ``wanted`` (one socket per TCP meter); returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


class Gateway:
    """One runtime of the gateway, built from one :class:`~gateway.settings.Settings`."""

    def __init__(self, settings: Settings, clock: Clock | None = None, *,
                 enable_api: bool = True, enable_sinks: bool = True,
                 reload_status: ReloadStatus | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.enable_api = enable_api
        self.enable_sinks = enable_sinks
        #: What the last reload did; one object kept across the runtimes of a process.
        self.reload_status = reload_status if reload_status is not None else ReloadStatus()
        self.store: Store | None = None
        self.core: Core | None = None
        self.meters: dict[str, MeterRuntime] = {}
        self.workers: dict[str, BusWorker] = {}
        self.observers: list[ReadingObserver] = []
        self.scheduler: Scheduler | None = None
        self.review: ReviewEngine | None = None
        self.billing: BillingCapture | None = None
        #: The features, started in this order and stopped in the reverse one.
        self.components: list[Component] = []
        self.sinks: list[SinkRunner] = []
        self.api: ApiServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._owns_store = False
        self._prepared = False
        self.started_at = 0.0
        self.stopped = asyncio.Event()

    @property
    def store_path(self) -> Path:
        """Where the SQLite store lives."""
        return self.settings.gateway.data_dir / STORE_FILE

    def require_store(self) -> Store:
        """The open store (raises if the gateway has not started)."""
        if self.store is None:
            raise RuntimeError("the gateway has not started")
        return self.store

    def metrics_sources(self) -> Sequence[MetricsSource]:
        """The components that add lines to ``/metrics``."""
        return [self.review] if self.review is not None else []

    # ------------------------------------------------------------------ build
    async def prepare(self, *, store: Store | None = None, listener: socket.socket | None = None) -> None:
        """Build every part from the settings and bind the API's listener; start nothing.

        ``store`` is the previous runtime's open store (a reload; it stays the caller's until
        :meth:`start` succeeds), otherwise the store is opened here. ``listener`` is the
        previous runtime's API socket on the same address, taken over instead of binding.
        Raises when this runtime cannot run (the store belongs to another gateway id, the
        API port is in use, ...), having released what it took.
        """
        if self._prepared:
            return
        s = self.settings
        if store is None:
            self.store = await Store.open(self.store_path, s.store, s.gateway.id)
            self._owns_store = True
        else:
            self.store = store
        try:
            self._build(listener)
        except BaseException:
            await self.discard()
            raise
        self._prepared = True

    def _build(self, listener: socket.socket | None) -> None:
        s = self.settings
        store = self.require_store()
        self.meters = build_meters(s)
        tcp_buses = sum(1 for b in s.buses.values() if b.type == "tcp")
        if tcp_buses > 200:
            raise_open_file_limit(tcp_buses * 2 + 256)
        limiter = PollLimit(TCP_CONCURRENCY_LIMIT)
        for bus in s.buses.values():
            on_bus = [m for m in self.meters.values() if m.settings.bus == bus.id]
            if not on_bus:
                continue
            drivers = create_bus_drivers(bus, {m.settings.protocol or bus.protocol for m in on_bus})
            self.workers[bus.id] = BusWorker(
                bus, drivers[bus.protocol], store, self.clock, shared=len(on_bus) > 1,
                observers=self.observers, limiter=limiter if bus.type == "tcp" else None, drivers=drivers,
            )
        self.core = core = Core(s, self.clock, store, self.meters, self.workers, self.observers)
        plans = {m.id: core.settings.billing[m.billing] for m in core.settings.meters.values()
                 if m.billing is not None and m.billing in core.settings.billing}
        self.review = ReviewEngine(core, period_source=period_source(plans, core.settings.gateway.timezone))
        self.billing = BillingCapture(core)
        self.components = [self.review, self.billing]
        if self.enable_api and s.api.enabled:
            # the web console at / (sessions live as long as this API server); it shows the gateway
            # clock's state by the billing capture's own check and keeps meter clock offsets
            console = Console(clock_state=self.billing.clock_state)
            self.observers.append(console.data.observe)
            routes = (billing_routes(self.billing), change_routes(self.billing, self.review),
                      install_customer_routes, event_routes(self.review),
                      console.install)
            self.api = ApiServer(self, routes=routes, middlewares=(console.middleware,))
            self.api.bind(listener)

    async def discard(self) -> None:
        """Release what :meth:`prepare` took (listener, a store it opened) without starting."""
        if self.api is not None:
            await self.api.stop()
        if self._owns_store and self.store is not None:
            await self.store.close()
        self.stopped.set()

    # ------------------------------------------------------------------ run
    async def start(self, *, announce: bool = True) -> None:
        """Build (unless :meth:`prepare` ran) and start every part; then log the start line
        (unless ``announce`` is false: a reload logs its own single line instead)."""
        self.started_at = self.clock.time()
        await self.prepare()
        self._owns_store = True          # from here on, this runtime's stop closes the store
        s = self.settings
        store = self.require_store()
        store.declare_sinks(*configured_sinks(s))   # retention holds their rows from now on
        await self._audit_ratios()
        for worker in self.workers.values():
            self._spawn(worker.run(), f"bus-{worker.bus.id}")
        self.scheduler = Scheduler(s.schedules, self.meters, self.workers, self.clock,
                                   s.gateway.timezone, pressure=lambda: store.pressure)
        self._spawn(self.scheduler.run(), "scheduler")
        self._spawn(self._maintenance(), "maintenance")
        for component in self.components:
            await component.start()
        if self.enable_sinks:
            self.sinks = build_sinks(s, store, self.clock)
            for sink in self.sinks:
                await sink.start()
        if self.api is not None:
            await self.api.start()
        # Everything built so far lives as long as the process: out of the collector's sight
        # now, and again once the connections exist (gateway/heap.py).
        spare_young_collections()
        freeze_heap()
        workers = list(self.workers.values())
        longest = max((sc.every_s for sc in s.schedules.values()), default=60.0)
        self._spawn(keep_heap_frozen(lambda: all(w.transactions for w in workers), 2 * longest + 5),
                    "heap")
        if announce:
            log.info("amr-gateway %s started: %d buses, %d meters, store %s",
                     __version__, len(self.workers), len(self.meters), self.store_path)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed: %s", task.get_name(), exc, exc_info=exc)

    async def _audit_ratios(self) -> None:
        """Record every CT/PT change against the last run: an audited event, not a rewrite."""
        await audit_ratios(self.require_store(), self.settings.meters.values(), self.started_at)

    async def _maintenance(self) -> None:
        """Retention and size checks, bounded work each round."""
        store = self.require_store()
        round_no = 0
        while True:
            await asyncio.sleep(5.0)
            round_no += 1
            try:
                await store.refresh_size()
                if round_no % 60 == 1 or store.pressure != "ok":
                    await store.enforce_retention(self.clock.time())
            except Exception:
                log.exception("store maintenance failed")

    async def stop(self, *, close_store: bool = True) -> None:
        """Stop polling, commit what is queued, then stop sinks and close the store.

        ``close_store=False`` leaves the store open for the next runtime (a reload).
        """
        if self.api is not None:
            await self.api.stop()
        for component in reversed(self.components):
            try:
                async with asyncio.timeout(STOP_PART_S):
                    await component.stop()
            except TimeoutError:
                log.error("%s did not stop within %.0f s; stopping the rest", type(component).__name__, STOP_PART_S)
            except Exception:
                log.exception("%s failed to stop cleanly", type(component).__name__)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=STOP_PART_S)
            for task in stuck:
                log.error("task %s ignored its cancellation for %.0f s; leaving it", task.get_name(), STOP_PART_S)
        self._tasks.clear()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.flush()  # the last polls are committed before the sinks close
        for sink in reversed(self.sinks):
            with contextlib.suppress(Exception):
                await sink.stop()
        if self.store is not None and close_store and self._owns_store:
            await self.store.close()
        self.stopped.set()


def settings_needing_restart(running: Settings, new: Settings) -> list[str]:
    """The names in :data:`RESTART_SETTINGS` whose values differ between two configurations."""
    changed: list[str] = []
    if running.gateway.id != new.gateway.id:
        changed.append("gateway.id")
    if running.gateway.data_dir != new.gateway.data_dir:
        changed.append("gateway.data_dir")
    if running.store != new.store:
        changed.append("store")
    return changed


async def reload(current: Gateway, settings: Settings) -> Gateway:
    """Replace the running ``current`` by a runtime built from ``settings``; returns the one running.

    Transactional: a change of :data:`RESTART_SETTINGS` is refused; otherwise the new
    runtime is built and its API listener bound (taking over the old socket when the
    address is unchanged) *before* the old one stops. Any failure there keeps ``current``
    running untouched. Should the new runtime then fail to start, it is stopped and a
    runtime of the previous settings is started again on the same store. Every outcome is
    logged and kept in ``reload_status`` (``/api/v1/health`` shows it).
    """
    status = current.reload_status
    now = current.clock.time()
    changed = settings_needing_restart(current.settings, settings)
    if changed:
        reason = (f"reload refused: {', '.join(changed)} changed and cannot be reloaded; restart the gateway "
                  "to apply it (the running configuration stays)")
        log.error("%s", reason)
        status.failed(now, reason, changed)
        return current
    new = Gateway(settings, current.clock, enable_api=current.enable_api, enable_sinks=current.enable_sinks,
                  reload_status=status)
    old_api = current.settings.api
    same_address = (settings.api.host, settings.api.port) == (old_api.host, old_api.port)
    inherited = current.api.listener if current.api is not None and same_address else None
    try:
        await new.prepare(store=current.store, listener=inherited)
    except Exception as exc:
        reason = f"reload failed, the running configuration stays: {exc}"
        log.error("%s", reason)
        status.failed(now, reason)
        return current
    await current.stop(close_store=False)
    refreeze_heap()          # the old runtime's frozen cycles are garbage now: collect them once
    try:
        await new.start(announce=False)
    except Exception as exc:
        log.exception("the reloaded configuration failed to start; starting the previous one again")
        await new.stop(close_store=False)
        back = Gateway(current.settings, current.clock, enable_api=current.enable_api,
                       enable_sinks=current.enable_sinks, reload_status=status)
        await back.prepare(store=current.store)
        await back.start()
        status.failed(now, f"reload failed at start, the previous configuration runs again: {exc}")
        return back
    status.succeeded(now)
    log.info("configuration reloaded: %d buses, %d meters", len(new.workers), len(new.meters))
    return new
