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
   delete rows at or below the cursor of *every* sink with a durable cursor, enabled or
   disabled, configured or left from an earlier configuration. Before the runtime has
   declared the configured sinks (:meth:`Store.declare_sinks`) a store without any cursor
   deletes nothing. Only ``amr-gateway sink drop NAME`` (audited) lets a sink's backlog
   go. Settlement rows are never deleted by the cap.
5. **One writer.** One task, the writer loop, owns every commit: readings, messages
   (settlements, events, KPIs) and cursor saves are queued and it commits them, in queue
   order, on one thread with one connection (SQLite allows one writer anyway); the
   readings of a failed commit are retried by the same loop (7 says when any are
   dropped), and a message that cannot be written at all (its payload does not render)
   is refused alone, never holding back the others. Readers (billing, and sinks further
   behind than the last :data:`TAIL_KEPT` committed rows, which are served from memory)
   use a second connection in their own thread, which WAL lets run beside the writer;
   the API has read connections of its own (:mod:`gateway.readpool`), so delivery never
   waits behind an API query.
   :meth:`Store.write` runs other modules' transactions (billing, review tables) on the
   same writer thread, so they too are serialised with the commits.
6. **Bounded delay.** A reading is committed within ``store.commit_interval`` (default
   1 s) of being queued, whatever comes after it, as long as the disk takes writes: the
   writer never waits for a later append to commit an earlier one.
7. **Bounded memory, drops counted.** While commits fail (a full disk) readings stay
   queued and are retried every ``store.commit_interval``; at most ``store.max_pending``
   of them are held (plus what arrives during one commit attempt). Beyond that, queued
   realtime samples are dropped first, then interval readings, then any other (``keep``)
   readings, the oldest of each first; every drop is counted in :attr:`Store.dropped`
   (health and metrics) and the first of a spell is logged once. Settlements, events and
   KPIs are never queued for long: their commit fails to the caller, which keeps them.
8. **Pressure** (``ok``, ``near_cap``, ``full``) reads the store's size against
   ``store.max_size`` *and* the free space of its filesystem against ``store.min_free``
   (``full`` below it, ``near_cap`` below twice it), and is ``full`` from a commit the
   disk refused until one succeeds. The scheduler pauses realtime polling first, interval
   polling when full. Each change of state is logged once.

Durability (the promise, also in the README)
--------------------------------------------
SQLite in WAL mode. Appends are *group-committed*: the writer gathers what arrives for
:data:`GROUP_COMMIT_S` (20 ms), or ``store.commit_interval`` when that is shorter, into one
transaction (``store.commit_interval_ms``, the older key, sets the same bound in
milliseconds). A message (settlement, event, KPI) and :meth:`Store.flush` skip the wait.
With the default ``synchronous=FULL`` every commit fsyncs the WAL, so a committed reading
survives both ``kill -9`` and a power loss; what can be lost is only what had not yet
committed (at most one group of polls, which were never acknowledged to anyone). With
``synchronous=NORMAL`` a commit survives ``kill -9`` but the last transactions before a
power loss may roll back (the database itself stays consistent). Sink cursors are written
with the next commit (a cursor-only commit when nothing else is queued) and kept for the
following one when a commit fails, so a crash can only make a sink resend, never skip.

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
           payload TEXT,        settlements, events, KPIs: the JSON document sinks publish,
                                verbatim, seq inside; readings: the compact body
           shape INTEGER)       readings: their reading_shape (NULL: payload is the JSON)
        index outbox_meter_kind_slot(meter, kind, slot)
    reading_shape(id INTEGER PRIMARY KEY, spec TEXT UNIQUE)
                        what repeats from one reading of a meter to the next (names, units,
                        CT/PT), kept once (gateway/storecodec.py)
    sink_cursor(sink TEXT PRIMARY KEY, acked_seq INTEGER)
                        one row per sink ever declared or registered, until sink drop
                        forgets it
    audit(id INTEGER PRIMARY KEY, ts REAL, meter TEXT, kind TEXT, detail TEXT)
                        changes that matter to billing (ratio_change: CT/PT) and to
                        delivery (sink_drop: a sink's backlog discarded)

Schema 2 keeps a reading in about 250 bytes instead of its 2 KB message (docs/sizing.md):
its point values against its shape, rendered back to exactly the ``amr.reading.v1`` text
the gateway publishes by :data:`gateway.storecodec.PAYLOAD_SQL`, which every query for a
reading's message selects instead of ``payload`` (the connections of this class, of the
API's read pool and of the exports know the SQL function it calls); the rows
:meth:`pending` hands to sinks render it themselves, only when a sink asks
(:class:`OutboxRow`).
A store of schema 1 (every reading's JSON) is converted in place when it is opened,
resumable after a kill (:mod:`gateway.storemigrate`).

Beside the database, ``<store>.lock``: every open store holds a shared ``flock`` on it, so
``amr-gateway sink drop`` (gateway/sinkdrop.py), which must have the store to itself, can
refuse to run beside a gateway.

Other modules (billing) keep their own tables in the same database through
:meth:`Store.write` / :meth:`Store.read`, which run a function on the writer or reader
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
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
from gateway.model import Reading, to_json
from gateway.settings import StoreSettings
from gateway.storecodec import (
    SHAPE_DDL,
    Shape,
    ShapeKey,
    encode,
    factors_of,
    insert_shapes,
    key_of_spec,
    marks_of,
    register,
    render,
    shape_from_spec,
    shape_key,
    shared_key,
    spec_of,
)
from gateway.storemigrate import migrate

log = logging.getLogger("amr.store")

SCHEMA_VERSION = 2
"""1: every reading's JSON message in ``outbox.payload``; 2: readings compact against
``reading_shape`` (:mod:`gateway.storecodec`), converted in place by :mod:`gateway.storemigrate`."""
TAIL_KEPT = 4096
"""Committed rows kept in memory (:meth:`Store.pending` serves a sink that keeps up from them
instead of reading them back from SQLite): four seconds at 1,000 readings/s, far more than
a live sink lags; about 1.5 MB (compact rows: the message is rendered when a sink asks)."""
PAGE_SIZE = 2048
"""SQLite page size of a store this release creates (SQLite's default is 4096; a store made
with another keeps it). Each reading's entry in the ``(meter, kind, slot)`` index lands on
its meter's own leaf page once a store holds more than a few rows per meter, so a commit
writes about one whole index page per reading to the WAL (and later to the database).
Measured with ``bench/store_commit.py`` (120 rows per meter) and ``bench/store_size.py``:
4096 bytes, 1.00× the CPU per committed reading and 250 B on disk per reading; 2048, 0.92×
and 258 B; 1024, 0.82× and 291 B (close to the 300-B budget of docs/sizing.md). 2048 takes
most of the saving for 3 % more disk."""
GROUP_COMMIT_S = 0.02
"""How long the writer gathers appends into one transaction (one fsync for all of them),
unless ``store.commit_interval`` is shorter."""
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
    payload TEXT NOT NULL,
    shape INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_meter_kind_slot ON outbox(meter, kind, slot);
CREATE TABLE IF NOT EXISTS sink_cursor (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
{shape_ddl};
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    meter TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

_SCHEMA = _SCHEMA.replace("{shape_ddl}", SHAPE_DDL)

Pressure = Literal["ok", "near_cap", "full"]


class OutboxRow:
    """One committed message as a sink sees it.

    A compact reading (store schema 2) keeps its stored form (:attr:`shape`, :attr:`body`)
    and renders its ``amr.reading.v1`` text only when a sink asks for :attr:`payload`
    (MQTT); a sink that writes another format from the values (the InfluxDB line,
    :func:`gateway.sinks.lineproto.compact_line`) never renders the JSON at all. The text is
    not kept on the row: the store's tail holds thousands of rows, and each sink asks once.
    """

    __slots__ = ("body", "kind", "meter", "quality", "seq", "shape", "slot", "text", "ts")

    def __init__(self, seq: int, kind: str, meter: str | None, ts: float, payload: str | None = None, *,
                 shape: Shape | None = None, body: str = "", slot: float = 0.0, quality: str = "good") -> None:
        self.seq = seq
        self.kind = kind
        self.meter = meter
        self.ts = ts
        self.text = payload
        """The message text as stored (settlements, events, KPIs, verbatim readings), else None."""
        self.shape = shape
        """A compact reading's shape (then :attr:`body`, :attr:`slot` and :attr:`quality` hold the rest)."""
        self.body = body
        self.slot = slot
        self.quality = quality

    @classmethod
    def stored(cls, seq: int, kind: str, meter: str | None, ts: float, stored: str, shape: Shape | None,
               slot: float | None, quality: str | None) -> OutboxRow:
        """The row of an outbox record as stored: its message text when ``shape`` is None,
        else a compact reading (``stored`` is then its body)."""
        if shape is None:
            return cls(seq, kind, meter, ts, stored, slot=slot or 0.0, quality=quality or "good")
        return cls(seq, kind, meter, ts, shape=shape, body=stored, slot=slot or 0.0, quality=quality or "good")

    @property
    def payload(self) -> str:
        """The JSON document sinks publish (rendered now for a compact reading)."""
        text = self.text
        if text is not None:
            return text
        shape = self.shape
        if shape is None:
            raise StoreError(f"outbox row {self.seq} has neither a payload nor a shape")
        return render(shape, self.seq, self.slot, self.ts, self.quality, self.body)

    def __repr__(self) -> str:
        return f"OutboxRow(seq={self.seq}, kind={self.kind!r}, meter={self.meter!r}, ts={self.ts})"


@dataclass(slots=True)
class _Pending:
    """Readings waiting for their commit (one submit or one ``append_readings`` call)."""

    readings: list[Reading]
    retention: str
    future: asyncio.Future[list[int]] | None


@dataclass(slots=True)
class _Message:
    """A non-reading message (settlement, event, KPI) waiting for its commit."""

    kind: str
    meter: str | None
    ts: float
    body: dict[str, Any]
    retention: str
    future: asyncio.Future[int]


_Item = _Pending | _Message


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")     # a new file only: an existing store keeps its own
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return register(conn)


class Store:
    """The gateway's SQLite store: an outbox of committed messages, sink cursors, audit.

    Open with :meth:`open`; everything is async and runs SQLite on two private threads.
    One task, the writer loop (:meth:`_write_loop`), owns every commit of the outbox and
    of the cursors; appends, acknowledgements and :meth:`flush` only queue work and wake it.
    """

    def __init__(self, path: Path, settings: StoreSettings, gateway_id: str) -> None:
        self.path = path
        self.settings = settings
        self.gateway_id = gateway_id
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="amr-store-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="amr-store-r")
        self._wconn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._rconn: sqlite3.Connection | None = None
        self._last_seq = 0
        self._queue: list[_Item] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._flush_waiters: list[asyncio.Future[bool]] = []
        #: a commit round is on the writer thread: what it took from the queue is not committed yet
        self._committing = False
        self._writer_task: asyncio.Task[None] | None = None
        self._new_data = asyncio.Event()
        self._cursors: dict[str, int] = {}
        self._dirty_cursors: dict[str, int] = {}
        self._sinks: set[str] = set()
        self._declared = False
        self._closing = False
        self._closed = False
        self.pressure: Pressure = "ok"
        self.size_bytes = 0
        self.free_bytes: int | None = None
        """Free space on the store's filesystem for the gateway's user, at the last measure."""
        self._disk_full = False
        self._pending_readings = 0
        self.dropped: dict[str, int] = {"realtime": 0, "interval": 0, "keep": 0}
        """Readings dropped uncommitted because memory for them was full, by retention class."""
        self._shedding = False
        self.commit_failures = 0
        self.last_error: str | None = None
        self._shapes: dict[ShapeKey, Shape] = {}
        """Every reading shape in the store (writer thread only)."""
        self._next_shape = 1
        self._shapes_by_id: dict[int, Shape] = {}
        """The same shapes by id, for the reader thread (the writer adds a shape once it has
        committed; the reader loads one it does not find, e.g. written by a migration)."""
        self._tail: list[OutboxRow] = []
        """The last committed rows, contiguous in seq, oldest first: written by the writer
        thread right after each COMMIT (before :attr:`last_seq` moves), read by sinks on the
        loop (:meth:`pending`). Trimmed by replacing the list, never in place, so a reader
        holding the old list still sees contiguous rows."""

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    async def open(cls, path: Path, settings: StoreSettings, gateway_id: str) -> Store:
        """Open (creating if needed) the store at ``path``; refuses another gateway's store."""
        store = cls(Path(path), settings, gateway_id)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(store._writer, store._open_writer)
        await loop.run_in_executor(store._reader, store._open_reader)
        store._assess()
        store._writer_task = loop.create_task(store._write_loop(), name="store-writer")
        return store

    def _open_writer(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(lock_path(self.path), os.O_RDWR | os.O_CREAT, 0o640)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)   # shared: only `sink drop` asks for it alone
            conn = _connect(self.path, self.settings.synchronous)
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            self._release_lock()
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
            self._release_lock()
            raise StoreError(
                f"the store {self.path} belongs to gateway {row[0]!r}, not {self.gateway_id!r}; "
                "point data_dir elsewhere or keep the gateway id"
            )
        version_row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version_row is not None and int(version_row[0]) > SCHEMA_VERSION:
            conn.close()
            self._release_lock()
            raise StoreError(
                f"the store {self.path} has schema version {version_row[0]}, newer than this gateway's "
                f"{SCHEMA_VERSION}: it was written by a newer amr-gateway; install that version again "
                "(a downgrade cannot read it), or point data_dir elsewhere"
            )
        try:
            migrate(conn, self.path, log)
        except sqlite3.Error as exc:
            conn.close()
            self._release_lock()
            raise StoreError(
                f"cannot convert the local store {self.path} to schema {SCHEMA_VERSION}: {exc}; it resumes where "
                "it stopped at the next start; check free disk space and the data_dir permissions"
            ) from exc
        for shape_id, spec in conn.execute("SELECT id, spec FROM reading_shape"):
            shape = self._shapes[shared_key(key_of_spec(spec))] = shape_from_spec(int(shape_id), spec)
            self._shapes_by_id[shape.id] = shape
            self._next_shape = max(self._next_shape, int(shape_id) + 1)
        seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        self._last_seq = int(seq_row[0]) if seq_row else 0
        for sink, acked in conn.execute("SELECT sink, acked_seq FROM sink_cursor"):
            self._cursors[sink] = int(acked)
        self._wconn = conn
        self._update_size()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open_reader(self) -> None:
        self._rconn = _connect(self.path, self.settings.synchronous)
        self._rconn.execute("PRAGMA query_only=1")

    async def close(self) -> None:
        """Commit everything queued (one last attempt), write cursors, close both connections."""
        if self._closed:
            return
        await self.flush()
        self._closing = True
        self._wake.set()
        self._urgent.set()      # out of a retry's wait at once
        if self._writer_task is not None:
            await asyncio.gather(self._writer_task, return_exceptions=True)
        self._closed = True
        lost = sum(len(i.readings) for i in self._queue if isinstance(i, _Pending))
        if lost:
            log.error("closing the local store with %d readings it could not commit (%s)",
                      lost, self.last_error or "the store was closed")
        loop = asyncio.get_running_loop()
        cursors = dict(self._dirty_cursors)

        def _close_w() -> None:
            if self._wconn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._wconn.execute("BEGIN IMMEDIATE")
                    self._write_cursors(cursors)
                    self._wconn.execute("COMMIT")
                _rollback(self._wconn)
                with contextlib.suppress(sqlite3.Error):
                    self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._wconn.close()
                self._wconn = None
            self._release_lock()

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
        """Queue one reading for the writer's next commit; the future resolves with its seq.

        Bus workers call this without awaiting, so a commit never stalls a serial bus.
        """
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending([reading], retention, fut))
        return fut

    def submit_nowait(self, reading: Reading, retention: str = "interval") -> None:
        """Queue one reading for the writer's next commit, with no future to resolve.

        What bus workers call for every reading (they never await the seq): the same
        queue and order as :meth:`submit`, one allocation less per reading.
        """
        self._enqueue(_Pending([reading], retention, None))

    async def append_readings(self, readings: list[Reading], retention: str = "interval") -> list[int]:
        """Commit readings (group-committed); returns their seqs once durable."""
        if not readings:
            return []
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(list(readings), retention, fut))
        return await fut

    async def append_message(
        self, kind: str, meter: str | None, ts: float, body: dict[str, Any], retention: str = "keep"
    ) -> int:
        """Commit a non-reading message (settlement, event, kpi); ``seq`` is added to ``body``.

        It commits with the writer's next group, after every reading queued before it, and
        at once (no group window). Raises :class:`StoreError` when that commit fails: the
        caller, which keeps the message, decides when to try again.
        """
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(_Message(kind, meter, ts, body, retention, fut))
        self._urgent.set()
        return await fut

    def _enqueue(self, item: _Item) -> None:
        if self._closing:
            raise StoreError("the local store is closed")
        self._queue.append(item)
        if isinstance(item, _Pending):
            self._pending_readings += len(item.readings)
            if self._pending_readings > self.settings.max_pending:
                self._shed()
        self._wake.set()

    @property
    def pending_readings(self) -> int:
        """Readings held in memory, not yet committed (queued or in the commit under way)."""
        return self._pending_readings

    def _shed(self) -> None:
        """Memory for uncommitted readings is full (``store.max_pending``, reached only while
        commits fail): drop queued readings, realtime samples first, then interval readings,
        then the rest (``keep``), the oldest of each class first, down to 1 % under the cap
        (so the queue is scanned once per hundredth of the cap, not once per reading).
        Every drop is counted in :attr:`dropped`; the first drop of a spell is logged once.
        Readings inside the commit under way cannot be dropped; they come back with its
        failure and are weighed then."""
        cap = self.settings.max_pending
        excess = self._pending_readings - (cap - max(1, cap // 100))
        if excess <= 0:
            return
        if not self._shedding:
            self._shedding = True
            log.error("memory for uncommitted readings is full (store.max_pending) while the local store "
                      "cannot commit: dropping realtime samples first, interval and settlement readings "
                      "last; drops are counted in health and metrics")
        for cls in _DROP_ORDER:
            if excess <= 0:
                break
            kept: list[_Item] = []
            for item in self._queue:
                if excess > 0 and isinstance(item, _Pending) and _drop_class(item.retention) == cls:
                    n = len(item.readings)
                    excess -= n
                    self._pending_readings -= n
                    self.dropped[cls] += n
                    if item.future is not None and not item.future.done():
                        item.future.set_exception(StoreError(
                            "dropped uncommitted: memory for uncommitted readings (store.max_pending) was full"))
                        item.future.exception()
                else:
                    kept.append(item)
            self._queue = kept

    async def flush(self) -> bool:
        """Commit everything queued now, without the group window (at shutdown, in tests).

        Returns once the writer's attempt that covers everything queued before this call
        has ended: True when it committed, False when it failed (what failed stays queued
        and the writer keeps retrying it).
        """
        if self._writer_task is None or self._writer_task.done():
            return not self._has_work()
        if not self._has_work() and not self._committing:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(fut)
        self._urgent.set()
        self._wake.set()
        return await fut

    # ------------------------------------------------------------------ the writer loop
    def _has_work(self) -> bool:
        return bool(self._queue) or bool(self._dirty_cursors)

    @property
    def group_window_s(self) -> float:
        """How long the writer gathers appends into one transaction: ``GROUP_COMMIT_S``, or
        ``store.commit_interval`` when that is shorter (the promised bound comes first)."""
        return min(GROUP_COMMIT_S, self.settings.commit_interval_s)

    async def _write_loop(self) -> None:
        """The one task that commits: wait for work, gather it for the group window, commit
        readings, messages and cursor updates in one transaction; after a failure keep
        everything and try again every ``store.commit_interval``. A reading is therefore
        committed within about one window plus one commit of being queued, whatever comes
        after it, as long as the disk takes writes."""
        while not self._closing:
            if not self._has_work():
                # A flush asked for during the last round, which committed all it wanted.
                waiters, self._flush_waiters = self._flush_waiters, []
                _resolve(waiters, True)
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._urgent.is_set():
                await wait_event(self._urgent, self.group_window_s)
            self._urgent.clear()
            try:
                ok = await self._commit_round()
            except Exception as exc:   # never let the one writer die; what it held is requeued
                log.exception("the store's writer failed unexpectedly; retrying")
                self.last_error = str(exc)
                ok = False
            if not ok and not self._closing:
                await wait_event(self._urgent, max(0.01, self.settings.commit_interval_s))

    async def _commit_round(self) -> bool:
        batch, self._queue = self._queue, []
        waiters, self._flush_waiters = self._flush_waiters, []
        cursors = dict(self._dirty_cursors)
        loop = asyncio.get_running_loop()
        self._committing = True       # a flush() now waits for this round (the loop resolves it after)
        try:
            seqs = await loop.run_in_executor(self._writer, self._commit_batch, batch, cursors)
        except StoreError as exc:
            self._failed(batch, exc)
            _resolve(waiters, False)
            return False
        except asyncio.CancelledError:
            # Only at the end of the process (close() never cancels the writer): the commit
            # may still finish on its thread, so requeueing could store it twice.
            _resolve(waiters, False)
            raise
        except BaseException:
            self._queue[:0] = batch      # broken mid-commit (not by the data): nothing is dropped
            _resolve(waiters, False)
            raise
        finally:
            self._committing = False
        for sink, acked in cursors.items():
            if self._dirty_cursors.get(sink) == acked:
                del self._dirty_cursors[sink]
        self._pending_readings -= sum(len(i.readings) for i in batch if isinstance(i, _Pending))
        for item, got in zip(batch, seqs, strict=True):
            if item.future is None or item.future.done():
                continue
            if isinstance(got, Exception):
                item.future.set_exception(got)
                item.future.exception()  # mark retrieved: submitters need not await
            elif isinstance(item, _Message):
                item.future.set_result(got[0])
            else:
                item.future.set_result(got)
        if batch:
            self._new_data.set()
        _resolve(waiters, True)
        if self._shedding and self._pending_readings < self.settings.max_pending // 2:
            self._shedding = False
            log.warning("memory for uncommitted readings has room again (store.max_pending)")
        if self.last_error is not None:
            log.warning("the local store accepts writes again")
            self.last_error = None
            self._disk_full = False
            await self.refresh_size()
        return True

    def _failed(self, batch: list[_Item], exc: StoreError) -> None:
        """A commit failed: readings go back to the head of the queue (retried, in order);
        messages fail to their callers, who keep them."""
        self.commit_failures += 1
        if self.last_error is None:
            log.error("%s", exc)
        self.last_error = str(exc)
        if "full" in str(exc.__cause__ or exc).lower():
            self._disk_full = True
            self._assess()
        keep: list[_Item] = []
        for item in batch:
            fut = item.future
            if isinstance(item, _Pending):
                keep.append(item)
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: submitters need not await
        self._queue[:0] = keep
        if self._pending_readings > self.settings.max_pending:
            self._shed()

    def _commit_batch(self, batch: list[_Item], cursors: dict[str, int]) -> list[list[int] | Exception]:
        """Commit ``batch`` and the cursor updates in one transaction (on the writer thread).

        Returns each item's seqs, in batch order, or the exception that kept an item out:
        one whose payload cannot be written (a bug or bad data) is refused alone, so it
        never blocks the items around it. Raises :class:`StoreError` when SQLite refuses
        the transaction (nothing of it committed)."""
        conn = self._require_w()
        seq = self._last_seq
        rows: list[tuple[Any, ...]] = []
        out: list[list[int] | Exception] = []
        gw = self.gateway_id
        shapes = self._shapes
        new_shapes: dict[ShapeKey, Shape] = {}
        next_shape = self._next_shape
        for item in batch:
            mine: list[tuple[Any, ...]] = []
            try:
                if isinstance(item, _Message):
                    doc = {"schema": item.body.get("schema", f"amr.{item.kind}.v1"), "gateway": gw, "seq": seq + 1}
                    doc.update({k: v for k, v in item.body.items() if k != "schema"})
                    mine.append((seq + 1, item.kind, item.meter, None, item.retention, None, item.ts,
                                 item.body.get("quality"), to_json(doc), None))
                else:
                    retention = item.retention
                    for k, r in enumerate(item.readings, start=seq + 1):
                        key = shape_key(r, gw)
                        shape = shapes.get(key) or new_shapes.get(key)
                        if shape is None:
                            marks = marks_of(r, factors_of(key[5], key[6]))
                            shape = new_shapes[shared_key(key)] = shape_from_spec(next_shape, spec_of(key, marks))
                            next_shape += 1
                        mine.append((k, "reading", r.meter, r.schedule, retention, r.slot, r.ts, r.quality,
                                     encode(r, shape), shape.id))
            except Exception as exc:
                log.error("refused a message the store cannot write (%s: %s); the rest commits",
                          type(exc).__name__, exc)
                out.append(StoreError(f"this message cannot be stored: {type(exc).__name__}: {exc}"))
                continue
            rows += mine
            out.append(list(range(seq + 1, seq + len(mine) + 1)))
            seq += len(mine)
        try:
            conn.execute("BEGIN IMMEDIATE")
            insert_shapes(conn, new_shapes)
            if rows:
                _insert_outbox(conn, rows)
            self._write_cursors(cursors)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            hint = (
                "the disk is full: free space or lower store.max_size/retention"
                if "full" in str(exc).lower()
                else "check the disk and the data_dir permissions"
            )
            what = "readings" if rows else "the sink cursors"
            raise StoreError(f"cannot commit {what} to {self.path}: {exc}; {hint}") from exc
        shapes.update(new_shapes)
        by_id = self._shapes_by_id
        for shape in new_shapes.values():
            by_id[shape.id] = shape
        self._next_shape = next_shape
        self._extend_tail([
            OutboxRow.stored(k, kind, meter, ts, stored, None if shape_id is None else by_id[shape_id], slot, quality)
            for k, kind, meter, _schedule, _retention, slot, ts, quality, stored, shape_id in rows])
        self._last_seq = seq      # after the tail: a sink that sees the new seq finds its row there
        for item, seqs in zip(batch, out, strict=True):
            if isinstance(item, _Pending) and not isinstance(seqs, Exception):
                for r, s in zip(item.readings, seqs, strict=True):
                    r.seq = s
        return out

    # ------------------------------------------------------------------ sinks
    def register_sink(self, sink: str) -> None:
        """A sink starts delivering: its cursor counts for purging (a new sink starts at 0
        and replays) and is made durable with the next commit, so it holds rows back from
        retention in every later run too."""
        self._sinks.add(sink)
        if sink not in self._cursors:
            self._cursors[sink] = 0
            self._dirty_cursors[sink] = 0
            self._wake.set()

    def declare_sinks(self, enabled: Iterable[str], disabled: Iterable[str] = ()) -> None:
        """The sinks the configuration names, enabled or not (the runtime says so at start,
        before any sink registers). Until this is called retention deletes nothing above
        the lowest durable cursor, and nothing at all in a store without one; a declared
        sink gets a durable cursor (0 when new) that holds its undelivered rows, in this
        run and the next, until it acknowledges them or ``amr-gateway sink drop`` discards
        them. A cursor left by a sink no longer configured holds its rows as well (said
        once here, with the way out)."""
        on, off = set(enabled), set(disabled)
        for sink in sorted(on | off):
            if sink not in self._cursors:
                self._cursors[sink] = 0
                self._dirty_cursors[sink] = 0
                self._wake.set()
        for sink, acked in sorted(self._cursors.items()):
            if acked >= self._last_seq or sink in on:
                continue
            why = "is disabled" if sink in off else "is no longer configured"
            log.warning("sink %s %s; retention keeps the rows it has not acknowledged (after seq %d) "
                        "until it is enabled again or `amr-gateway sink drop %s` discards them",
                        sink, why, acked, sink)
        self._declared = True

    async def pending(self, sink: str, limit: int, after: int | None = None) -> list[OutboxRow]:
        """Committed messages after the sink's cursor (or ``after``), in seq order.

        A sink that keeps up gets them from the rows just committed (:data:`TAIL_KEPT` are
        kept), without a query or a thread hand-off; one further behind (a replay, a
        restart) reads them from SQLite on the reader thread. Both give the same rows."""
        start = self._cursors.get(sink, 0) if after is None else after
        rows = self.pending_now(sink, limit, start)
        if rows is not None:
            return rows
        return await self.read(self._select_pending, start, limit)

    def pending_now(self, sink: str, limit: int, after: int | None = None) -> list[OutboxRow] | None:
        """What :meth:`pending` gives, when it can give it without a query: the rows from the
        kept tail, ``[]`` when nothing is newer; None when they must be read from SQLite.

        A sink that keeps up asks once per commit; as a plain call that costs no task and no
        turn of the event loop (``await pending`` made a task for each page and two wake-ups)."""
        start = self._cursors.get(sink, 0) if after is None else after
        if start >= self._last_seq:
            return []
        tail = self._tail       # read once: the writer thread may replace it (_extend_tail)
        i = _tail_index(tail, start)
        return None if i is None else tail[i:i + max(1, limit)]

    def tail_covers(self, after: int) -> bool:
        """Whether :meth:`pending_now` answers for the rows after ``after`` (kept in the tail, or none yet)."""
        return after >= self._last_seq or _tail_index(self._tail, after) is not None

    def _extend_tail(self, rows: list[OutboxRow]) -> None:
        """Keep the rows a commit just made (writer thread, after COMMIT)."""
        tail = self._tail
        if tail and rows and rows[0].seq != tail[-1].seq + 1:
            tail = []                 # never a gap: the tail starts again
        if len(tail) + len(rows) > 2 * TAIL_KEPT:
            self._tail = (tail + rows)[-TAIL_KEPT:]
        elif tail is self._tail:
            tail.extend(rows)
        else:
            self._tail = tail + rows

    def _select_pending(self, conn: sqlite3.Connection, start: int, limit: int) -> list[OutboxRow]:
        """The rows after ``start`` as sinks send them (on the reader thread); a compact
        reading's message is rendered when a sink asks for it (:attr:`OutboxRow.payload`)."""
        cur = conn.execute("SELECT seq, kind, meter, ts, payload, shape, slot, quality FROM outbox "
                           "WHERE seq > ? ORDER BY seq LIMIT ?", (start, limit))
        shapes = self._shapes_by_id
        out = []
        for seq, kind, meter, ts, stored, shape_id, slot, quality in cur:
            shape = None if shape_id is None else shapes.get(shape_id)
            if shape is None and shape_id is not None:
                spec = conn.execute("SELECT spec FROM reading_shape WHERE id=?", (shape_id,)).fetchone()[0]
                shape = shapes[shape_id] = shape_from_spec(shape_id, spec)
            out.append(OutboxRow.stored(seq, kind, meter, ts, stored, shape, slot, quality))
        return out

    async def ack(self, sink: str, upto_seq: int) -> None:
        """Advance the sink's cursor to ``upto_seq``; the writer saves it with its next commit
        (a cursor-only commit when nothing else is queued), and again after a failed one."""
        self.ack_now(sink, upto_seq)

    def ack_now(self, sink: str, upto_seq: int) -> None:
        """:meth:`ack` as a plain call, for a sink's acknowledgement callback (no task to wake)."""
        if upto_seq > self._cursors.get(sink, 0):
            self._cursors[sink] = upto_seq
            self._dirty_cursors[sink] = upto_seq
            self._wake.set()

    def _write_cursors(self, cursors: dict[str, int]) -> None:
        if not cursors:
            return
        self._require_w().executemany(
            "INSERT INTO sink_cursor(sink, acked_seq) VALUES (?, ?) "
            "ON CONFLICT(sink) DO UPDATE SET acked_seq=max(acked_seq, excluded.acked_seq)",
            list(cursors.items()),
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
        """The highest seq every sink acknowledged: the lowest cursor of all sinks the store
        knows (registered, declared, or durable from an earlier run, enabled or not).
        Everything above it is undelivered to someone. With no cursor at all it is the last
        seq once the configured sinks were declared (:meth:`declare_sinks`: there are none),
        and 0 before (they may not have registered yet)."""
        if self._cursors:
            return min(self._cursors.values())
        return self._last_seq if self._declared else 0

    async def enforce_retention(self, now: float) -> int:
        """Delete delivered rows past their retention, and more realtime rows under the cap.

        Returns how many rows were deleted. Never deletes undelivered rows or settlements.
        """
        upto = self.min_cursor()
        rt_cut = now - self.settings.retention_realtime_days * 86400
        iv_cut = now - self.settings.retention_interval_days * 86400
        loop = asyncio.get_running_loop()
        deleted: int = await loop.run_in_executor(self._writer, self._purge, upto, rt_cut, iv_cut)
        await self.refresh_size()
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
            self._tail = []           # it may hold rows just deleted: sinks read SQLite until it refills
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def _update_size(self) -> None:
        """Measure (on the writer thread) the store's bytes in use and the free space left on
        its filesystem; :meth:`_assess` turns them into :attr:`pressure`."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(str(self.path) + suffix)
        conn = self._wconn
        free_pages_bytes = 0
        if conn is not None:
            try:
                free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                free_pages_bytes = int(free_pages) * int(page_size)
            except sqlite3.Error:
                free_pages_bytes = 0
        self.size_bytes = max(0, total - free_pages_bytes)
        try:
            st = os.statvfs(self.path.parent)
            self.free_bytes = st.f_bavail * st.f_frsize
        except OSError:
            self.free_bytes = None

    def _assess(self) -> Pressure:
        """Set :attr:`pressure` from the last measurement and the last commit, and log a
        change of state once (the line names the reason, never a count that changes)."""
        cap = self.settings.max_bytes
        min_free = self.settings.min_free_bytes
        free = self.free_bytes
        new: Pressure = "ok"
        reason = "the store is under its cap and the disk has free space"
        if self._disk_full:
            new, reason = "full", "the disk refused the last commit as full"
        elif free is not None and free < min_free:
            new, reason = "full", "the disk has less free space than store.min_free"
        elif cap is not None and self.size_bytes >= cap:
            new, reason = "full", "the store reached store.max_size"
        elif free is not None and free < 2 * min_free:
            new, reason = "near_cap", "the disk has less than twice store.min_free left"
        elif cap is not None and self.size_bytes >= cap * 0.9:
            new, reason = "near_cap", "the store is above 90 % of store.max_size"
        if new != self.pressure:
            self.pressure = new
            if new == "ok":
                log.warning("local store pressure ok again: %s", reason)
            else:
                log.error("local store pressure %s: %s; realtime polling pauses first, settlement reads go on; "
                          "free disk space or raise store.max_size", new, reason)
        return self.pressure

    async def refresh_size(self) -> Pressure:
        """Re-measure the store's size and the free disk space, and update :attr:`pressure`."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._update_size)
        return self._assess()

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


_DROP_ORDER = ("realtime", "interval", "keep")
"""Which uncommitted readings go first when memory for them is full (docs/delivery.md §1: realtime
samples first, settlement and interval readings last)."""


def _drop_class(retention: str) -> str:
    return retention if retention in ("realtime", "interval") else "keep"


def lock_path(path: Path) -> Path:
    """The lock file beside the store: every open store holds a shared lock on it, so a
    command that must have the store to itself (``amr-gateway sink drop``) can tell."""
    return path.with_name(path.name + ".lock")


def _resolve(waiters: list[asyncio.Future[bool]], ok: bool) -> None:
    for w in waiters:
        if not w.done():
            w.set_result(ok)


#: rows per INSERT statement, largest first: a commit's rows go in as few statements as these
#: sizes allow (20 rows: one of 16 and one of 4), each statement text cached by SQLite
_INSERT_CHUNKS = (64, 16, 4, 1)
#: the INSERT of each chunk size, written once
_OUTBOX_INSERTS = tuple(
    (size, "INSERT INTO outbox(seq, kind, meter, schedule, retention, slot, ts, quality, payload, shape) VALUES "
     + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * size))
    for size in _INSERT_CHUNKS
)


def _insert_outbox(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with a few multi-row INSERT statements rather than one per row.

    The sqlite3 module lets go of the GIL around every statement step; one step per row
    (``executemany``) hands the GIL back and forth with the event loop's thread for every
    reading, and each of those hand-overs costs both threads a context switch. A group of
    rows in one statement is one step. 64 rows × 10 columns stay far below SQLite's variable
    limit (999 before SQLite 3.32).
    """
    at = 0
    for size, sql in _OUTBOX_INSERTS:
        while len(rows) - at >= size:
            conn.execute(sql, [v for row in rows[at:at + size] for v in row])
            at += size


def _tail_index(tail: list[OutboxRow], after: int) -> int | None:
    """Where the row after seq ``after`` is in ``tail`` (rows of consecutive seqs); None when it holds none."""
    if not tail:
        return None
    i = after + 1 - tail[0].seq
    return i if 0 <= i < len(tail) else None


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def _count_kind(conn: sqlite3.Connection, kind: str) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox WHERE kind=?", (kind,)).fetchone()[0])

