"""The durable local store: every reading, settlement and event lives here first.

Design constraints (what every other module may rely on)
-------------------------------------------------------
1. **Committed before sent.** A message (reading, settlement, event, KPI) exists once its
   transaction has committed. Sinks only ever read committed rows (``pending``), so nothing
   is delivered that a crash could un-commit.
2. **One gateway-wide ``seq``**, strictly increasing, never reused, surviving restarts and
   retention purges (``AUTOINCREMENT``: SQLite keeps the high-water mark in
   ``sqlite_sequence``). Consumers deduplicate on (gateway, seq).
3. **Per-sink cursors** (``sink_cursor``): the highest seq a sink's peer acknowledged.
   A cursor never moves backwards. Delivery resumes from it after any outage or crash, so
   delivery is at-least-once: a crash between a PUBACK and the cursor's commit replays a
   few messages, never skips one.
4. **Nothing undelivered is purged.** Retention (default 14 days for realtime samples,
   400 days for interval readings, settlements and events) and the storage cap only ever
   delete rows at or below every registered sink's cursor. Settlement rows are never
   deleted by the cap.
5. **One writer.** All writes go through one thread with one connection (SQLite allows one
   writer anyway); readers (API, sinks) use a second connection in their own thread, which
   WAL lets run beside the writer without blocking it.

Durability (the promise, also in the README)
--------------------------------------------
SQLite in WAL mode. Appends are *group-committed*: readings submitted within
``store.commit_interval_ms`` (default 20 ms) share one transaction. With the default
``synchronous=FULL`` every commit fsyncs the WAL, so a committed reading survives both
``kill -9`` and a power loss; what can be lost is only what had not yet committed (at most
one commit interval of polls, which were never acknowledged to anyone). With
``synchronous=NORMAL`` a commit survives ``kill -9`` but the last transactions before a
power loss may roll back (the database itself stays consistent). Sink cursors are written
with the next group commit, so a crash can only make a sink resend, never skip.

Schema
------
::

    meta(key TEXT PRIMARY KEY, value TEXT)              schema_version, gateway_id
    outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT,
           kind TEXT,           reading | settlement | event | kpi
           meter TEXT,          NULL for gateway-wide messages
           schedule TEXT,       readings: schedule name
           retention TEXT,      realtime | interval | keep
           slot REAL,           readings: aligned slot (UTC epoch s)
           ts REAL,             read/creation time (UTC epoch s)
           quality TEXT,        readings: overall quality
           payload TEXT)        the JSON document sinks publish, verbatim, seq inside
        index outbox_meter_kind_slot(meter, kind, slot)
    sink_cursor(sink TEXT PRIMARY KEY, acked_seq INTEGER)
    audit(id INTEGER PRIMARY KEY, ts REAL, meter TEXT, kind TEXT, detail TEXT)
                        configuration changes that matter to billing (CT/PT ratio changes)

Other modules (billing) keep their own tables in the same database through
:meth:`Store.write` / :meth:`Store.read`, which run a function on the writer or reader
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.aio import wait_event
from gateway.errors import StoreError
from gateway.model import Reading, reading_payload, to_json
from gateway.settings import StoreSettings

log = logging.getLogger("amr.store")

SCHEMA_VERSION = 1
RENDERED_KEPT = 4096
"""Rendered rows kept per sink (:meth:`Store.render_on_commit`): four seconds at 1,000
readings/s, far more than a live sink lags; about 1 MB of InfluxDB lines."""
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    meter TEXT,
    schedule TEXT,
    retention TEXT NOT NULL,
    slot REAL,
    ts REAL NOT NULL,
    quality TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_meter_kind_slot ON outbox(meter, kind, slot);
CREATE TABLE IF NOT EXISTS sink_cursor (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    meter TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

Pressure = Literal["ok", "near_cap", "full"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One committed message as a sink sees it."""

    seq: int
    kind: str
    meter: str | None
    ts: float
    payload: str


@dataclass(slots=True)
class _Pending:
    readings: list[Reading]
    retention: list[str]
    future: asyncio.Future[list[int]] | None


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Store:
    """The gateway's SQLite store: an outbox of committed messages, sink cursors, audit.

    Open with :meth:`open`; everything is async and runs SQLite on two private threads.
    """

    def __init__(self, path: Path, settings: StoreSettings, gateway_id: str) -> None:
        self.path = path
        self.settings = settings
        self.gateway_id = gateway_id
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="amr-store-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="amr-store-r")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._last_seq = 0
        self._queue: list[_Pending] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._new_data = asyncio.Event()
        self._cursors: dict[str, int] = {}
        self._dirty_cursors: dict[str, int] = {}
        self._sinks: set[str] = set()
        self._closed = False
        self.pressure: Pressure = "ok"
        self.size_bytes = 0
        self.commit_failures = 0
        self.last_error: str | None = None
        self._retry_batches: list[_Pending] = []
        self._commit_lock = asyncio.Lock()
        self._renderers: dict[str, tuple[Callable[[Reading, int], str], dict[int, str]]] = {}

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def open(cls, path: Path, settings: StoreSettings, gateway_id: str) -> Store:
        """Open (creating if needed) the store at ``path``; refuses another gateway's store."""
        store = cls(Path(path), settings, gateway_id)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(store._writer, store._open_writer)
        await loop.run_in_executor(store._reader, store._open_reader)
        return store

    def _open_writer(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, self.settings.synchronous)
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the local store {self.path}: {exc}; check that data_dir exists, "
                "is writable by the gateway's user and has free space"
            ) from exc
        row = conn.execute("SELECT value FROM meta WHERE key='gateway_id'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('gateway_id', ?)", (self.gateway_id,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != self.gateway_id:
            conn.close()
            raise StoreError(
                f"the store {self.path} belongs to gateway {row[0]!r}, not {self.gateway_id!r}; "
                "point data_dir elsewhere or keep the gateway id"
            )
        seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        self._last_seq = int(seq_row[0]) if seq_row else 0
        for sink, acked in conn.execute("SELECT sink, acked_seq FROM sink_cursor"):
            self._cursors[sink] = int(acked)
        self._wconn = conn
        self._update_size()

    def _open_reader(self) -> None:
        self._rconn = _connect(self.path, self.settings.synchronous)
        self._rconn.execute("PRAGMA query_only=1")

    async def close(self) -> None:
        """Commit everything queued, write cursors, and close both connections."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        if self._flush_task is not None and not self._flush_task.done():
            self._flush_task.cancel()
        loop = asyncio.get_running_loop()

        def _close_w() -> None:
            if self._wconn is not None:
                self._write_cursors()
                with contextlib.suppress(sqlite3.Error):
                    self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._wconn.close()
                self._wconn = None

        def _close_r() -> None:
            if self._rconn is not None:
                self._rconn.close()
                self._rconn = None

        await loop.run_in_executor(self._writer, _close_w)
        await loop.run_in_executor(self._reader, _close_r)
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    # ------------------------------------------------------------------ appends
    @property
    def last_seq(self) -> int:
        """The highest committed seq."""
        return self._last_seq

    def submit(self, reading: Reading, retention: str = "interval") -> asyncio.Future[list[int]]:
        """Queue one reading for the next group commit; the future resolves with its seq.

        Bus workers call this without awaiting, so a commit never stalls a serial bus.
        """
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending([reading], [retention], fut))
        self._schedule_flush()
        return fut

    def submit_nowait(self, reading: Reading, retention: str = "interval") -> None:
        """Queue one reading for the next group commit, with no future to resolve.

        What bus workers call for every reading (they never await the seq): the same
        queue and order as :meth:`submit`, one allocation less per reading.
        """
        self._queue.append(_Pending([reading], [retention], None))
        self._schedule_flush()

    async def append_readings(self, readings: list[Reading], retention: str = "interval") -> list[int]:
        """Commit readings (group-committed); returns their seqs once durable."""
        if not readings:
            return []
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(readings), [retention] * len(readings), fut))
        self._schedule_flush()
        return await fut

    async def append_message(
        self, kind: str, meter: str | None, ts: float, body: dict[str, Any], retention: str = "keep"
    ) -> int:
        """Commit a non-reading message (settlement, event, kpi); ``seq`` is added to ``body``."""
        await self.flush()
        loop = asyncio.get_running_loop()
        seq = await loop.run_in_executor(self._writer, self._insert_message, kind, meter, ts, body, retention)
        self._new_data.set()
        return seq

    def _insert_message(
        self, kind: str, meter: str | None, ts: float, body: dict[str, Any], retention: str
    ) -> int:
        conn = self._require_w()
        seq = self._last_seq + 1
        doc = {"schema": body.get("schema", f"amr.{kind}.v1"), "gateway": self.gateway_id, "seq": seq}
        doc.update({k: v for k, v in body.items() if k != "schema"})
        payload = to_json(doc)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO outbox(seq, kind, meter, schedule, retention, slot, ts, quality, payload)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (seq, kind, meter, None, retention, None, ts, body.get("quality"), payload),
            )
            self._write_cursors()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise StoreError(f"cannot commit a {kind} to the local store: {exc}") from exc
        self._last_seq = seq
        return seq

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_later(), name="store-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.settings.commit_interval_s)
        while True:
            # Shielded: once a commit has started, cancelling the trigger must not lose the batch.
            await asyncio.shield(self._flush_now())
            # Appends made while that commit ran saw this task still running and scheduled
            # nothing: commit them too (no await between this check and the return).
            if not self._queue or self._closed:
                return
            await asyncio.sleep(self.settings.commit_interval_s)

    async def flush(self) -> None:
        """Commit everything queued now (used at shutdown and before non-reading appends)."""
        await self._flush_now()

    async def _flush_now(self) -> None:
        async with self._commit_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        batch = self._retry_batches + self._queue
        self._retry_batches = []
        self._queue = []
        if not batch:
            return
        loop = asyncio.get_running_loop()
        try:
            seqs = await loop.run_in_executor(self._writer, self._commit_batch, batch)
        except StoreError as exc:
            self.commit_failures += 1
            if self.last_error != str(exc):
                log.error("%s", exc)
            self.last_error = str(exc)
            # Keep the readings in memory and try again: nothing is lost while we run.
            self._retry_batches = batch
            for p in batch:
                if p.future is not None and not p.future.done():
                    p.future.set_exception(exc)
                    p.future.exception()  # mark retrieved: submitters need not await
                    p.future = None
            self._schedule_retry()
            return
        if self.last_error is not None:
            log.warning("the local store accepts writes again")
            self.last_error = None
        i = 0
        for p in batch:
            n = len(p.readings)
            if p.future is not None and not p.future.done():
                p.future.set_result(seqs[i : i + n])
            i += n
        self._new_data.set()

    def _schedule_retry(self) -> None:
        async def _retry() -> None:
            await asyncio.sleep(min(5.0, self.settings.commit_interval_s * 10))
            await asyncio.shield(self._flush_now())

        if not self._closed:
            self._flush_task = asyncio.get_running_loop().create_task(_retry(), name="store-retry")

    def _commit_batch(self, batch: list[_Pending]) -> list[int]:
        conn = self._require_w()
        seq = self._last_seq
        rows = []
        gw = self.gateway_id
        for p in batch:
            for r, retention in zip(p.readings, p.retention, strict=True):
                seq += 1
                rows.append(
                    (seq, "reading", r.meter, r.schedule, retention, r.slot, r.ts, r.quality,
                     reading_payload(r, gw, seq))
                )
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO outbox(seq, kind, meter, schedule, retention, slot, ts, quality, payload)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
            self._write_cursors()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            hint = (
                "the disk is full: free space or lower store.max_size/retention"
                if "full" in str(exc).lower()
                else "check the disk and the data_dir permissions"
            )
            raise StoreError(f"cannot commit {len(rows)} readings to {self.path}: {exc}; {hint}") from exc
        first = self._last_seq + 1
        self._last_seq = seq
        for p in batch:
            for r in p.readings:
                r.seq = first
                first += 1
        if self._renderers:
            self._render(batch)
        return [row[0] for row in rows]

    # ------------------------------------------------------------------ rendered rows
    def render_on_commit(self, sink: str, render: Callable[[Reading, int], str]) -> None:
        """Render every committed reading for ``sink`` as it commits (on the writer thread,
        which holds the reading anyway) and keep the last :data:`RENDERED_KEPT` of them.

        A sink that must turn rows into its own format (InfluxDB lines) then takes the text
        from :meth:`rendered` instead of parsing the committed JSON again; a row that is no
        longer kept (a replay, a restart) is rendered from its payload as before, and both
        give the same text.
        """
        self._renderers[sink] = (render, {})

    def rendered(self, sink: str, seq: int) -> str | None:
        """The text rendered for ``sink`` when ``seq`` committed, while it is kept."""
        entry = self._renderers.get(sink)
        return None if entry is None else entry[1].get(seq)

    def _render(self, batch: list[_Pending]) -> None:
        for name, (render, kept) in self._renderers.items():
            for p in batch:
                for r in p.readings:
                    seq = r.seq
                    if seq is None:
                        continue
                    try:
                        kept[seq] = render(r, seq)
                    except Exception as exc:   # the sink renders it from the payload instead
                        log.debug("%s: cannot render seq %d at commit: %s", name, seq, exc)
            while len(kept) > RENDERED_KEPT:
                del kept[next(iter(kept))]

    # ------------------------------------------------------------------ sinks
    def register_sink(self, sink: str) -> None:
        """Declare a sink: its cursor counts for purging (a new sink starts at 0 and replays)."""
        self._sinks.add(sink)
        self._cursors.setdefault(sink, 0)

    async def pending(self, sink: str, limit: int, after: int | None = None) -> list[OutboxRow]:
        """Committed messages after the sink's cursor (or ``after``), in seq order."""
        start = self._cursors.get(sink, 0) if after is None else after
        if start >= self._last_seq:
            return []
        return await self.read(_select_pending, start, limit)

    async def ack(self, sink: str, upto_seq: int) -> None:
        """Advance the sink's cursor to ``upto_seq`` (written with the next commit)."""
        if upto_seq > self._cursors.get(sink, 0):
            self._cursors[sink] = upto_seq
            self._dirty_cursors[sink] = upto_seq
            if not self._queue:
                self._schedule_flush_cursors()

    def _schedule_flush_cursors(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.get_running_loop().create_task(
                self._flush_cursors_later(), name="store-cursors"
            )

    async def _flush_cursors_later(self) -> None:
        await asyncio.sleep(self.settings.commit_interval_s)
        if self._queue or self._retry_batches:
            await asyncio.shield(self._flush_now())
            return
        loop = asyncio.get_running_loop()

        def _w() -> None:
            conn = self._require_w()
            conn.execute("BEGIN IMMEDIATE")
            self._write_cursors()
            conn.execute("COMMIT")

        try:
            await loop.run_in_executor(self._writer, _w)
        except sqlite3.Error as exc:
            log.warning("cannot save sink cursors yet (%s); they will be saved with the next commit", exc)

    def _write_cursors(self) -> None:
        if not self._dirty_cursors:
            return
        conn = self._require_w()
        dirty, self._dirty_cursors = self._dirty_cursors, {}
        conn.executemany(
            "INSERT INTO sink_cursor(sink, acked_seq) VALUES (?, ?) "
            "ON CONFLICT(sink) DO UPDATE SET acked_seq=max(acked_seq, excluded.acked_seq)",
            list(dirty.items()),
        )

    async def cursor(self, sink: str) -> int:
        """The sink's acknowledged cursor."""
        return self._cursors.get(sink, 0)

    async def backlog(self, sink: str) -> int:
        """Messages committed but not yet acknowledged by the sink."""
        return max(0, self._last_seq - self._cursors.get(sink, 0))

    def cursor_now(self, sink: str) -> int:
        """Synchronous form of :meth:`cursor` for metrics."""
        return self._cursors.get(sink, 0)

    def backlog_now(self, sink: str) -> int:
        """Synchronous form of :meth:`backlog` for metrics."""
        return max(0, self._last_seq - self._cursors.get(sink, 0))

    async def wait_for_new(self, after_seq: int, timeout: float) -> bool:
        """Wait until something after ``after_seq`` is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._last_seq <= after_seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._new_data.clear()
            if not await wait_event(self._new_data, remaining):
                return self._last_seq > after_seq
        return True

    # ------------------------------------------------------------------ queries
    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the reader connection (for queries; never writes)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, _call_with, self._require_r, fn, args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the writer connection inside one transaction."""
        loop = asyncio.get_running_loop()

        def _w() -> T:
            conn = self._require_w()
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn, *args)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            return out

        return await loop.run_in_executor(self._writer, _w)

    async def count(self, kind: str = "reading") -> int:
        """How many messages of a kind are stored."""
        return await self.read(_count_kind, kind)

    async def audit(self, ts: float, meter: str | None, kind: str, detail: dict[str, Any]) -> None:
        """Record an audited configuration change (e.g. a CT/PT ratio change)."""

        def _w(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit(ts, meter, kind, detail) VALUES (?,?,?,?)",
                (ts, meter, kind, to_json(detail)),
            )

        await self.write(_w)

    # ------------------------------------------------------------------ retention and cap
    def min_cursor(self) -> int:
        """The lowest cursor of the registered sinks (everything above is undelivered)."""
        if not self._sinks:
            return self._last_seq
        return min(self._cursors.get(s, 0) for s in self._sinks)

    async def enforce_retention(self, now: float) -> int:
        """Delete delivered rows past their retention, and more realtime rows under the cap.

        Returns how many rows were deleted. Never deletes undelivered rows or settlements.
        """
        upto = self.min_cursor()
        rt_cut = now - self.settings.retention_realtime_days * 86400
        iv_cut = now - self.settings.retention_interval_days * 86400
        loop = asyncio.get_running_loop()
        deleted: int = await loop.run_in_executor(self._writer, self._purge, upto, rt_cut, iv_cut)
        await loop.run_in_executor(self._writer, self._update_size)
        return deleted

    def _purge(self, upto: int, rt_cut: float, iv_cut: float) -> int:
        conn = self._require_w()
        n = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            n += conn.execute(
                "DELETE FROM outbox WHERE seq <= ? AND retention='realtime' AND ts < ?", (upto, rt_cut)
            ).rowcount
            n += conn.execute(
                "DELETE FROM outbox WHERE seq <= ? AND retention IN ('interval','keep')"
                " AND kind != 'settlement' AND ts < ?",
                (upto, iv_cut),
            ).rowcount
            cap = self.settings.max_bytes
            if cap is not None and self.size_bytes > cap * 0.9:
                # Under pressure: drop the oldest delivered realtime samples first.
                n += conn.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= ? "
                    "AND retention='realtime' ORDER BY seq LIMIT 10000)",
                    (upto,),
                ).rowcount
            conn.execute("COMMIT")
        except sqlite3.Error:
            _rollback(conn)
            raise
        if n:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def _update_size(self) -> None:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(str(self.path) + suffix)
        conn = self._wconn
        free_bytes = 0
        if conn is not None:
            try:
                free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                free_bytes = int(free_pages) * int(page_size)
            except sqlite3.Error:
                free_bytes = 0
        self.size_bytes = max(0, total - free_bytes)
        cap = self.settings.max_bytes
        old = self.pressure
        if cap is None:
            self.pressure = "ok"
        elif self.size_bytes >= cap:
            self.pressure = "full"
        elif self.size_bytes >= cap * 0.9:
            self.pressure = "near_cap"
        else:
            self.pressure = "ok"
        if self.pressure != old:
            if self.pressure == "ok":
                log.warning("local store back under its cap (%d bytes)", self.size_bytes)
            else:
                log.error(
                    "local store is %s: %d of %d bytes; realtime polling pauses first, settlements are kept",
                    self.pressure, self.size_bytes, cap,
                )

    async def refresh_size(self) -> Pressure:
        """Re-measure the store's size on disk and update :attr:`pressure`."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._update_size)
        return self.pressure

    # ------------------------------------------------------------------ helpers
    def _require_w(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StoreError("the local store is closed")
        return self._wconn

    def _require_r(self) -> sqlite3.Connection:
        if self._rconn is None:
            raise StoreError("the local store is closed")
        return self._rconn


def _call_with(get: Callable[[], sqlite3.Connection], fn: Callable[..., T], args: Iterable[Any]) -> T:
    return fn(get(), *args)


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _count_kind(conn: sqlite3.Connection, kind: str) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0])


def _select_pending(conn: sqlite3.Connection, start: int, limit: int) -> list[OutboxRow]:
    cur = conn.execute(
        "SELECT seq, kind, meter, ts, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (start, limit)
    )
    return [OutboxRow(*row) for row in cur]
