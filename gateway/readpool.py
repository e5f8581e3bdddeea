"""The API's own read connections to the store: a small pool with a time limit per query.

Why: the store's single reader connection (``Store.read``) is what delivery uses to fetch
pending rows. When API requests shared it, 200 clients pulling a day of readings queued
ahead of every ``pending()`` and delivery stalled for seconds (issue 16 item 6). A
:class:`ReadPool` gives the API its own read-only connections (SQLite in WAL mode lets
any number of readers run beside the one writer), each on its own thread, so neither
delivery nor commits ever wait behind an API query.

Every query has a deadline, counted from when it is asked (so waiting for a free
connection counts too): a query that has not started by then is refused, and one running
past it is interrupted by SQLite's progress handler. Both raise :class:`QueryTimeout`,
which the API answers with 503. :meth:`ReadPool.close` interrupts what runs and refuses
what waits, so stopping the gateway never waits for API queries.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import AmrError
from gateway.storecodec import register

T = TypeVar("T")

PROGRESS_STEPS = 2000
"""SQLite virtual-machine steps between two deadline checks (well under a millisecond)."""


class QueryTimeout(AmrError):
    """A query ran (or waited for a connection) past its time limit, or the pool closed."""


class ReadPool:
    """``size`` read-only SQLite connections to ``path``, each used by one thread at a time."""

    def __init__(self, path: Path, size: int, time_limit_s: float) -> None:
        self.path = path
        self.size = size
        self.time_limit_s = time_limit_s
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="amr-api-read")
        self._free: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._closing = threading.Event()
        self.timeouts = 0
        """Queries refused or interrupted by their time limit (since the pool opened)."""
        self._count_lock = threading.Lock()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Queries asked that have not yet started on a connection."""
        return self._waiting

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA query_only=1")     # the writer has set WAL mode; never write here
        return register(conn)                   # readings are rendered from the compact store

    def open(self) -> None:
        """Open the connections (the store must exist: the store opens it first)."""
        for _ in range(self.size):
            conn = self._connect()
            self._all.append(conn)
            self._free.put(conn)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` on a free connection, within the time limit.

        Raises :class:`QueryTimeout` when it could not start or finish in time, or the pool
        is closing.
        """
        if self._closing.is_set():
            raise QueryTimeout("the gateway is stopping; ask again once it runs")
        deadline = time.monotonic() + self.time_limit_s
        loop = asyncio.get_running_loop()
        with self._count_lock:
            self._waiting += 1
        return await loop.run_in_executor(self._executor, self._call, deadline, fn, args)

    def _call(self, deadline: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self._count_lock:
            self._waiting -= 1
        if self._closing.is_set():
            raise QueryTimeout("the gateway is stopping; ask again once it runs")
        if time.monotonic() >= deadline:
            self.timeouts += 1
            raise QueryTimeout(self._too_long("waited"))
        conn = self._free.get_nowait()      # one connection per executor thread: never empty
        closing = self._closing

        def over() -> int:
            return 1 if closing.is_set() or time.monotonic() >= deadline else 0

        conn.set_progress_handler(over, PROGRESS_STEPS)
        try:
            return fn(conn, *args)
        except sqlite3.OperationalError as exc:
            if "interrupt" not in str(exc):
                raise
            if closing.is_set():
                raise QueryTimeout("the gateway is stopping; ask again once it runs") from exc
            self.timeouts += 1
            raise QueryTimeout(self._too_long("ran")) from exc
        finally:
            conn.set_progress_handler(None, 0)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._free.put(conn)

    def _too_long(self, what: str) -> str:
        return (f"the query {what} longer than api.query_timeout ({self.time_limit_s:g} s) and was "
                "stopped; ask for a shorter time range or a smaller limit, or try again when the "
                "gateway is less busy")

    async def close(self) -> None:
        """Interrupt running queries, refuse waiting ones, close every connection."""
        self._closing.set()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        for conn in self._all:
            conn.close()
        self._all.clear()
