"""The running gateway: assembles store, bus workers, scheduler, sinks and API, and stops them.

Start order is store → ratio audit → workers → scheduler → sinks → API, so nothing polls
before the store can take a reading and nothing is served before it exists. Stop order is
the reverse, and the store commits everything queued before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import ReadPlan
from drivers.registry import create_driver
from gateway import __version__
from gateway.clock import Clock, SystemClock
from gateway.heap import freeze_heap, keep_heap_frozen
from gateway.pipeline import ReadingBuilder, select_points
from gateway.polling import BusWorker, MeterRuntime, ReadingObserver
from gateway.profiles import compile_meter_plan
from gateway.scheduler import Scheduler
from gateway.settings import Settings
from gateway.store import Store

log = logging.getLogger("amr.runtime")

STORE_FILE = "amr-gateway.sqlite"
TCP_CONCURRENCY_LIMIT = 512
STOP_PART_S = 15.0  # the longest one component (an extension, the polling tasks) may take to stop


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
    """One gateway process: everything SPEC describes, wired together."""

    def __init__(self, settings: Settings, clock: Clock | None = None, *,
                 enable_api: bool = True, enable_sinks: bool = True) -> None:
        self.settings = settings
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.enable_api = enable_api
        self.enable_sinks = enable_sinks
        self.store: Store | None = None
        self.meters: dict[str, MeterRuntime] = {}
        self.workers: dict[str, BusWorker] = {}
        self.scheduler: Scheduler | None = None
        self.sinks: list[Any] = []
        self.api: Any = None
        self.observers: list[ReadingObserver] = []
        self.extensions: list[Any] = []
        self._tasks: list[asyncio.Task[Any]] = []
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

    async def start(self) -> None:
        """Open the store and start every component."""
        s = self.settings
        self.started_at = self.clock.time()
        self.store = await Store.open(self.store_path, s.store, s.gateway.id)
        from gateway.sinks.delivery import configured_sinks

        self.store.declare_sinks(*configured_sinks(s))   # retention holds their rows from now on
        await self._audit_ratios()
        self.meters = build_meters(s)
        tcp_buses = sum(1 for b in s.buses.values() if b.type == "tcp")
        if tcp_buses > 200:
            raise_open_file_limit(tcp_buses * 2 + 256)
        limiter = asyncio.Semaphore(TCP_CONCURRENCY_LIMIT)
        for bus in s.buses.values():
            on_bus = [m for m in self.meters.values() if m.settings.bus == bus.id]
            if not on_bus:
                continue
            worker = BusWorker(
                bus, create_driver(bus), self.store, self.clock, shared=len(on_bus) > 1,
                observers=self.observers, limiter=limiter if bus.type == "tcp" else None,
            )
            self.workers[bus.id] = worker
        for ext_factory in _extension_factories():
            ext = ext_factory(self)
            if ext is not None:
                self.extensions.append(ext)
        for worker in self.workers.values():
            self._spawn(worker.run(), f"bus-{worker.bus.id}")
        store = self.store
        self.scheduler = Scheduler(s.schedules, self.meters, self.workers, self.clock,
                                   s.gateway.timezone, pressure=lambda: store.pressure)
        self._spawn(self.scheduler.run(), "scheduler")
        self._spawn(self._maintenance(), "maintenance")
        for ext in self.extensions:
            start = getattr(ext, "start", None)
            if start is not None:
                await start()
        if self.enable_sinks:
            await self._start_sinks()
        if self.enable_api and s.api.enabled:
            from gateway.api.server import ApiServer

            self.api = ApiServer(self)
            await self.api.start()
        # Everything built so far lives as long as the process: out of the collector's sight
        # now, and again once the connections exist (gateway/heap.py).
        freeze_heap()
        workers = list(self.workers.values())
        longest = max((sc.every_s for sc in s.schedules.values()), default=60.0)
        self._spawn(keep_heap_frozen(lambda: all(w.transactions for w in workers), 2 * longest + 5),
                    "heap")
        log.info("amr-gateway %s started: %d buses, %d meters, store %s",
                 __version__, len(self.workers), len(self.meters), self.store_path)

    async def _start_sinks(self) -> None:
        try:
            from gateway.sinks.delivery import build_sinks
        except ImportError:
            log.debug("no sinks module available")
            return
        assert self.store is not None
        self.sinks = list(build_sinks(self.settings, self.store, self.clock))
        for sink in self.sinks:
            await sink.start()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed: %s", task.get_name(), exc, exc_info=exc)

    async def _audit_ratios(self) -> None:
        """Record every CT/PT change against the last run: an audited event, not a rewrite."""
        assert self.store is not None
        import sqlite3

        def _read(conn: sqlite3.Connection) -> dict[str, str]:
            rows = conn.execute("SELECT key, value FROM meta WHERE key LIKE 'ratio:%'").fetchall()
            return {k[6:]: v for k, v in rows}

        known = await self.store.read(_read)
        now = self.clock.time()
        changes: list[tuple[str, str, str]] = []
        for m in self.settings.meters.values():
            current = f"ct={m.ct_ratio};pt={m.pt_ratio}"
            if known.get(m.id) != current:
                changes.append((m.id, known.get(m.id, ""), current))
        if not changes:
            return

        def _write(conn: sqlite3.Connection) -> None:
            for meter, old, new in changes:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"ratio:{meter}", new))
                if old:
                    conn.execute(
                        "INSERT INTO audit(ts, meter, kind, detail) VALUES (?,?,?,?)",
                        (now, meter, "ratio_change", f'{{"from":"{old}","to":"{new}"}}'),
                    )
                    log.warning("meter %s: CT/PT changed from %s to %s (audited)", meter, old, new)

        await self.store.write(_write)

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

    async def stop(self) -> None:
        """Stop polling, commit what is queued, then stop sinks and close the store."""
        if self.api is not None:
            await self.api.stop()
        for ext in reversed(self.extensions):
            stop = getattr(ext, "stop", None)
            if stop is not None:
                try:
                    async with asyncio.timeout(STOP_PART_S):
                        await stop()
                except TimeoutError:
                    log.error("%s did not stop within %.0f s; stopping the rest", type(ext).__name__, STOP_PART_S)
                except Exception:
                    log.exception("%s failed to stop cleanly", type(ext).__name__)
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
        if self.store is not None:
            await self.store.close()
        self.stopped.set()


ExtensionFactory = Callable[[Gateway], Any]
_EXTENSIONS: list[ExtensionFactory] = []


def register_extension(factory: ExtensionFactory) -> ExtensionFactory:
    """Register a component (billing, review rules) built for every gateway at start."""
    _EXTENSIONS.append(factory)
    return factory


def install_builtin_extensions() -> None:
    """Register the components every gateway runs: review rules, then billing (idempotent)."""
    from gateway.review import install as install_review

    install_review()
    try:
        import gateway.extensions  # noqa: F401 - billing and the other extensions register on import
    except ImportError:
        log.debug("no gateway.extensions module")


def _extension_factories() -> list[ExtensionFactory]:
    install_builtin_extensions()
    return list(_EXTENSIONS)
