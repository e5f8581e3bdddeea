"""The delivery loop: per sink, committed rows from the store → the peer → the durable cursor.

Design constraints
------------------
1. **Only committed rows are sent**, read from the store with ``pending(sink, page, after)``
   in ``seq`` order, a page at a time, never from an in-memory queue a crash would lose.
2. **The cursor moves only on acknowledgement** (MQTT PUBACK, InfluxDB 2xx or a definitive
   rejection), and only to the highest seq below which *everything* is acknowledged
   (:class:`~gateway.sinks.base.AckTracker`). After any failure the next session starts
   from that cursor, so delivery is at-least-once: rows in flight when a connection broke
   are sent again, none is skipped. Duplicates happen only across such a boundary
   (reconnect, restart, crash); consumers deduplicate on (gateway, seq).
3. **Bounded memory whatever the backlog**: at most two pages read ahead (the page being
   sent and the next one, prefetched so the window never runs dry during a store read) plus
   ``window`` rows in flight. A backlog of millions costs the same memory as one of ten.
4. **Independence**: each sink has its own runner task, its own cursor and its own
   backoff; a dead or slow peer blocks nothing but itself, and never polling (polling
   only commits to the store).
5. **Full speed replay**: the window is kept full and the next page is fetched while the
   current one is sent, so a backlog drains as fast as the peer acknowledges. (A sink with
   ``probe_first`` sends one row and waits for its acknowledgement first, once a session.)
6. **State changes are logged once** (``mqtt: delivering to …`` / ``… is unreachable``),
   not at every retry; ``state()`` and ``prometheus_lines()`` show the rest.

Times here are real seconds (``asyncio``), not the injected clock: network timeouts and
backoff must not speed up under ``demo --clock-rate``. The clock only stamps state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from gateway.aio import wait_event
from gateway.clock import Clock, SystemClock
from gateway.errors import SinkError
from gateway.settings import Settings
from gateway.sinks.base import AckTracker, Backoff, Sink, SinkAuthError, SinkRefusedError, redact_credentials
from gateway.store import OutboxRow, Store

log = logging.getLogger("amr.sinks")

__all__ = ["SinkAuthError", "SinkRunner", "build_sinks", "prometheus_lines"]

SinkState = Literal["starting", "connecting", "connected", "disconnected", "throttled", "auth_failed", "refused",
                    "stopped"]
_NOT_PROVEN_BY_OPEN = ("auth_failed", "throttled", "refused")
"""States an open alone does not end (see ``Sink.open_proves_access``): a write must succeed."""

MAX_RETRY_AFTER_S = 600.0
"""A peer's Retry-After is honoured up to this many seconds (guards against absurd values)."""


class _Session:
    """One connection's worth of delivery; implements :class:`~gateway.sinks.base.Reporter`.

    Reports that arrive after the session ended (a late PUBACK from a dropped connection)
    are ignored: the next session resends from the durable cursor anyway.
    """

    def __init__(self, runner: SinkRunner, tracker: AckTracker) -> None:
        self.runner = runner
        self.tracker = tracker
        self.active = True
        self.room = asyncio.Event()
        self.took_one = False      # the peer acknowledged (or rejected) a row in this session
        self.broken_error: asyncio.Future[SinkError] = asyncio.get_running_loop().create_future()

    def delivered(self, seqs: Iterable[int]) -> None:
        """The peer acknowledged these seqs."""
        if self.active:
            self.runner._acked(self, seqs, rejected=False)

    def rejected(self, seqs: Sequence[int], reason: str) -> None:
        """The peer refused these seqs for good: count, log once for the batch, pass them."""
        if not self.active or not seqs:
            return
        log.warning("%s rejected %d message(s) (seq %d…%d) for good; skipping them: %s",
                    self.runner.name, len(seqs), min(seqs), max(seqs), reason)
        self.runner.last_error = redact_credentials(reason)
        self.runner._acked(self, seqs, rejected=True)

    def broken(self, error: SinkError) -> None:
        """The session failed; the runner reconnects and resends from the cursor."""
        if self.active and not self.broken_error.done():
            self.broken_error.set_result(error)


class SinkRunner:
    """Delivers one sink's backlog from the store, forever, until :meth:`stop`.

    ``start()`` registers the sink's cursor with the store (so retention never purges what
    this sink has not had) and starts the task; ``stop()`` stops reading, waits (bounded)
    for what is in flight, closes the sink gracefully (MQTT publishes ``offline``) and
    leaves the cursor at what the peer acknowledged.
    """

    def __init__(
        self,
        sink: Sink,
        store: Store,
        clock: Clock | None = None,
        *,
        drain_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        group: list[SinkRunner] | None = None,
        auth_retry_min_s: float = 5.0,
    ) -> None:
        self.sink = sink
        self.store = store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.drain_timeout_s = drain_timeout_s
        self.auth_retry_min_s = auth_retry_min_s
        self.backoff = backoff if backoff is not None else Backoff()
        self.status: SinkState = "starting"
        self.since = self.clock.time()
        self.published = 0
        self.failed = 0
        self.rejected = 0
        self.sessions = 0
        self.last_error: str | None = None
        self.retry_in_s: float | None = None
        self._group = group if group is not None else [self]
        if self not in self._group:
            self._group.append(self)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._progress = asyncio.Event()
        self._acked_cursor = 0
        self._session: _Session | None = None

    @property
    def name(self) -> str:
        """The sink's name (its cursor in the store)."""
        return self.sink.name

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Register the cursor and start delivering in the background."""
        if self._task is not None:
            return
        self.store.register_sink(self.name)
        self._acked_cursor = await self.store.cursor(self.name)
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name=f"sink-{self.name}")

    async def stop(self) -> None:
        """Stop gracefully (bounded): drain what is in flight, close the sink, save the cursor."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.drain_timeout_s + 10.0)
        except TimeoutError:
            log.warning("%s: did not stop in time; abandoning what is in flight (it is resent next start)",
                        self.name)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._task = None
        await self.store.ack(self.name, self._acked_cursor)
        self._set_state("stopped", None)

    def backlog(self) -> int:
        """Committed messages the peer has not acknowledged yet.

        Counted from the acknowledgements this runner has seen, which the durable cursor in
        the store catches up with a moment later (so health never shows a stale backlog).
        """
        return max(0, self.store.last_seq - max(self._acked_cursor, self.store.cursor_now(self.name)))

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded, event-driven) until the cursor reaches the store's last seq.

        For tests, benchmarks and the demo; returns False on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._acked_cursor < self.store.last_seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            await wait_event(self._progress, remaining)
        return True

    # ------------------------------------------------------------------ health and metrics
    def state(self) -> dict[str, Any]:
        """What ``GET /api/v1/health`` shows for this sink."""
        return {
            "name": self.name,
            "target": redact_credentials(self.sink.target()),
            "state": self.status,
            "since": self.since,
            "backlog": self.backlog(),
            "cursor": self._acked_cursor,
            "published": self.published,
            "failed": self.failed,
            "rejected": self.rejected,
            "sessions": self.sessions,
            "last_error": self.last_error,
            "retry_in_s": self.retry_in_s,
        }

    def prometheus_lines(self) -> list[str]:
        """Prometheus text lines for every runner of this runner's group (first runner only).

        Runners built together share one group; the first emits the whole group so each
        metric family appears once with its HELP/TYPE, the others return nothing.
        """
        if self._group[0] is not self:
            return []
        return prometheus_lines(self._group)

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    if await self._one_session():
                        return
                except Exception as exc:   # a bug or a closed store: never let delivery die silently
                    if self.last_error != str(exc):
                        log.error("%s: delivery failed: %s", self.name, exc, exc_info=exc)
                    await self._pause(SinkError(f"delivery failed: {exc}", "keep"))
        except asyncio.CancelledError:
            if self._session is not None:
                self._session.active = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sink.close(False), 5.0)
            raise

    async def _one_session(self) -> bool:
        """Open, deliver until broken or stopped, close. Returns True when stopped."""
        tracker = AckTracker(await self.store.cursor(self.name))
        session = _Session(self, tracker)
        self._session = session
        if self.status not in ("disconnected", *_NOT_PROVEN_BY_OPEN):
            self._set_state("connecting", None)
        try:
            opened = await self._until_stop(self.sink.open(session))
        except Exception as exc:
            err = exc if isinstance(exc, SinkError) else SinkError(f"opening the sink failed: {exc}", "keep")
            if not isinstance(exc, SinkError):
                log.error("%s: opening the sink failed unexpectedly: %s", self.name, exc, exc_info=exc)
            session.active = False
            with contextlib.suppress(Exception):
                await self.sink.close(False)
            await self._pause(err)
            return self._stop.is_set()
        if not opened:
            session.active = False
            with contextlib.suppress(Exception):
                await self.sink.close(False)
            return True
        self.sessions += 1
        self.retry_in_s = None
        if self.status not in _NOT_PROVEN_BY_OPEN or (self.sink.open_proves_access and self.status == "auth_failed"):
            self._set_state("connected", None)
        pump = asyncio.create_task(self._pump(session), name=f"sink-{self.name}-pump")
        stop_wait = asyncio.create_task(self._stop.wait(), name=f"sink-{self.name}-stop")
        cursor_before = tracker.cursor
        waits: set[asyncio.Future[Any]] = {pump, stop_wait, session.broken_error}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            pump.cancel()
            await asyncio.gather(pump, stop_wait, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            failure = pump.exception()
            log.error("%s: delivery loop failed: %s", self.name, failure, exc_info=failure)
            if not session.broken_error.done():
                session.broken_error.set_result(SinkError(f"delivery loop failed: {failure}", "keep"))
        if self._stop.is_set() and not session.broken_error.done():
            await self._drain(session)
            session.active = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sink.close(True), 10.0)
            return True
        session.active = False
        error = session.broken_error.result() if session.broken_error.done() else SinkError("stopped", "keep")
        self.failed += tracker.outstanding
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.sink.close(False), 10.0)
        if tracker.cursor > cursor_before:   # the session made progress: retry soon
            self.backoff.reset()
        if self._stop.is_set():
            return True
        await self._pause(error)
        return self._stop.is_set()

    async def _until_stop(self, coro: Any) -> bool:
        """Run ``coro`` unless stop is requested first; True when it completed."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        stop_wait = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            await asyncio.gather(stop_wait, return_exceptions=True)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            return False
        task.result()  # re-raises the sink's error
        return True

    async def _pause(self, error: SinkError) -> None:
        """Record the failure, change state (logging once), and wait before the next try."""
        if isinstance(error, SinkAuthError):
            state: SinkState = "auth_failed"
            delay = max(self.auth_retry_min_s, 2.0 * self.backoff.next())
        elif isinstance(error, SinkRefusedError):
            state = "refused"
            delay = self.backoff.next()
        elif error.action == "throttle":
            state = "throttled"
            delay = (min(MAX_RETRY_AFTER_S, error.retry_after) if error.retry_after is not None
                     else self.backoff.next())
        else:
            state = "disconnected"
            delay = self.backoff.next()
        self.retry_in_s = round(delay, 3)
        self._set_state(state, str(error))
        await wait_event(self._stop, delay)

    async def _pump(self, s: _Session) -> None:
        """Read pages in seq order (prefetching the next) and keep the window full."""
        store, name, sink = self.store, self.name, self.sink
        window, page = max(1, sink.window), max(1, sink.page)
        limit = 1 if sink.probe_first else window   # see Sink.probe_first
        tracker = s.tracker
        after = tracker.cursor
        # the next page when it comes from SQLite (a replay): read on the reader thread while
        # this one is sent; a sink that keeps up takes its pages from the store's tail
        nxt: asyncio.Future[list[OutboxRow]] | None = None
        try:
            while True:
                if nxt is not None:
                    rows = await nxt
                    nxt = None
                else:
                    now = store.pending_now(name, page, after)
                    rows = now if now is not None else await store.pending(name, page, after)
                if not rows:
                    # Caught up: no flush here. A batching sink writes by size or age as it
                    # documents (InfluxDB: one write per second at 1,000 readings/s instead of
                    # one per store commit); only a stop flushes early (see _drain).
                    await store.wait_for_new(after, 30.0)
                    continue
                after = rows[-1].seq
                if not store.tail_covers(after):
                    nxt = asyncio.ensure_future(store.pending(name, page, after))
                for row in rows:
                    while tracker.outstanding >= limit:
                        if limit < window and s.took_one:
                            limit = window
                            continue
                        s.room.clear()
                        await s.room.wait()
                    tracker.sent(row.seq)
                    sink.send(row)
        finally:
            if nxt is not None:
                nxt.cancel()
                await asyncio.gather(nxt, return_exceptions=True)

    async def _drain(self, s: _Session) -> None:
        """On stop: flush buffers and wait (bounded) for acknowledgements of what is in flight."""
        self.sink.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout_s
        while s.tracker.outstanding and not s.broken_error.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("%s: %d message(s) still unacknowledged at stop; they are resent next start",
                            self.name, s.tracker.outstanding)
                return
            s.room.clear()
            await wait_event(s.room, remaining)

    # ------------------------------------------------------------------ acknowledgements
    def _acked(self, s: _Session, seqs: Iterable[int], *, rejected: bool) -> None:
        before = s.tracker.cursor
        counted = s.tracker.done(seqs)
        if rejected:
            self.rejected += counted
        else:
            self.published += counted
        if counted:
            s.took_one = True
        moved = s.tracker.cursor != before
        if self.status != "connected" and counted and (moved or self.status != "refused"):
            self._set_state("connected", None)   # the peer took a write: access proven
        if moved:
            self._acked_cursor = s.tracker.cursor
            self.store.ack_now(self.name, self._acked_cursor)   # saved with the store's next commit
            self._progress.set()
        s.room.set()

    def _set_state(self, state: SinkState, error: str | None) -> None:
        if error is not None:
            error = redact_credentials(error)      # shown in health and logs: no URL secrets
            self.last_error = error
        if state == self.status:
            if error is not None:
                log.debug("%s still %s: %s", self.name, state, error)
            return
        if state == "connected" and error is None:
            self.last_error = None          # recovered: health no longer shows the old failure
        old, self.status, self.since = self.status, state, self.clock.time()
        target = redact_credentials(self.sink.target())
        if state == "connected":
            if old in ("disconnected", *_NOT_PROVEN_BY_OPEN):
                log.warning("%s: delivering to %s again (backlog %d)", self.name, target,
                            self.backlog())
            else:
                log.info("%s: delivering to %s", self.name, target)
        elif state == "auth_failed":
            log.error("%s: %s refused our credentials; readings are kept and retried: %s", self.name, target, error)
        elif state == "refused":
            log.error("%s: %s refuses our messages; nothing is delivered, readings are kept and retried: %s",
                      self.name, target, error)
        elif state == "throttled":
            log.warning("%s: %s asks us to slow down; retrying in %.1f s: %s", self.name, target,
                        self.retry_in_s or 0.0, error)
        elif state == "disconnected":
            log.warning("%s: %s is unreachable; readings are kept and retried: %s", self.name, target, error)
        else:
            log.debug("%s: %s", self.name, state)


_STATE_CODES: dict[str, int] = {
    "connected": 1, "starting": 0, "connecting": 0, "disconnected": 0, "throttled": 0, "auth_failed": 0,
    "refused": 0, "stopped": 0,
}


def prometheus_lines(runners: Sequence[SinkRunner]) -> list[str]:
    """Prometheus text-format lines for sinks: published, failed, rejected, backlog, up, cursor."""
    families: list[tuple[str, str, str, Any]] = [
        ("amr_sink_published_total", "counter", "Messages the sink's peer acknowledged.", lambda r: r.published),
        ("amr_sink_failed_total", "counter", "Messages whose delivery attempt failed and will be resent.",
         lambda r: r.failed),
        ("amr_sink_rejected_total", "counter", "Messages the peer refused for good (skipped).",
         lambda r: r.rejected),
        ("amr_sink_backlog", "gauge", "Committed messages not yet acknowledged by the sink.",
         lambda r: r.backlog()),
        ("amr_sink_cursor", "gauge", "Highest seq below which the sink acknowledged everything.",
         lambda r: r._acked_cursor),
        ("amr_sink_up", "gauge", "1 when the sink is connected and delivering.",
         lambda r: _STATE_CODES.get(r.status, 0)),
        ("amr_sink_sessions_total", "counter", "Connections (sessions) the sink opened.", lambda r: r.sessions),
    ]
    out: list[str] = []
    for metric, kind, help_text, get in families:
        out.append(f"# HELP {metric} {help_text}")
        out.append(f"# TYPE {metric} {kind}")
        out.extend(f'{metric}{{sink="{r.name}"}} {get(r)}' for r in runners)
    return out


def configured_sinks(settings: Settings) -> tuple[list[str], list[str]]:
    """The cursor names of the sinks the configuration has a section for: (enabled,
    disabled). The store holds rows back for both (:meth:`Store.declare_sinks`)."""
    enabled: list[str] = []
    disabled: list[str] = []
    if settings.mqtt is not None:
        from gateway.sinks.mqtt import MqttSink

        (enabled if settings.mqtt.enabled else disabled).append(MqttSink.name)
    if settings.influxdb is not None:
        from gateway.sinks.influx import InfluxSink

        (enabled if settings.influxdb.enabled else disabled).append(InfluxSink.name)
    return enabled, disabled


def build_sinks(settings: Settings, store: Store, clock: Clock | None = None) -> list[SinkRunner]:
    """One runner per enabled sink section (``mqtt``, ``influxdb``), not yet started."""
    group: list[SinkRunner] = []
    gw = settings.gateway.id
    if settings.mqtt is not None and settings.mqtt.enabled:
        from gateway.sinks.mqtt import MqttSink

        SinkRunner(MqttSink(settings.mqtt, gw), store, clock, group=group)
    if settings.influxdb is not None and settings.influxdb.enabled:
        from gateway.sinks.influx import InfluxSink

        SinkRunner(InfluxSink(settings.influxdb, gw), store, clock, group=group)
    return list(group)
