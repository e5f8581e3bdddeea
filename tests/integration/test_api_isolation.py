"""The API reads the store on its own connections (issue 16 item 6), against a real gateway,
its SQLite store on disk and its API over TCP.

* while every API read connection is held by a query in the middle of a large result,
  a sink's ``pending()`` read and a commit still complete: delivery never waits behind
  the API (shown by order of events, not by timing);
* a query past ``api.query_timeout`` (one waiting for a connection, one running without
  end) is a 503 naming the limit, and the next query works;
* stopping the API interrupts a query that would never end.

The queries held open here are plain functions passed to ``ApiServer.query``, the method
every API route reads through; holding them on a ``threading.Event`` is how the test makes
"a slow query" without depending on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.api.server import ApiServer
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.readpool import QueryTimeout
from gateway.runtime import Gateway
from tests.servicefixtures import await_until, commit, make_reading

pytestmark = pytest.mark.integration

TOKEN = "isolation-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS = 3000
T0 = 1_767_225_600.0
FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


class Held:
    """A query that has read the first of many rows and holds its connection until released."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> int:
        cursor = conn.execute("SELECT seq, payload FROM outbox ORDER BY seq")
        n = 1 if cursor.fetchone() is not None else 0
        self.reading.set()
        if not self.release.wait(30):
            raise AssertionError("the test never released the held query")
        return n + len(cursor.fetchall())


async def _running(tmp_path: Path, read_connections: int, query_timeout: str) -> tuple[Gateway, int]:
    port = free_port()
    text = f"""\
gateway: {{id: isolation, timezone: UTC, data_dir: {tmp_path / 'data'}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: modbus-tcp, timeout_ms: 200}}
meters:
  - {{id: m1, customer: C1, bus: lan, address: 1, profile: simulator}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
api: {{listen: "127.0.0.1:{port}", token: {TOKEN}, read_connections: {read_connections},
       query_timeout: {query_timeout}}}
"""
    gw = Gateway(load_settings_from_text(text, "<test>", tmp_path, {}), enable_sinks=False)
    await gw.start()
    await commit(gw.require_store(), [make_reading("m1", T0 + 60 * i) for i in range(ROWS)])
    return gw, port


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, int]]:
    gw, port = await _running(tmp_path, read_connections=2, query_timeout="60s")
    try:
        yield gw, port
    finally:
        await gw.stop()


def _api(gw: Gateway) -> ApiServer:
    assert gw.api is not None
    return gw.api


async def _readings(port: int, limit: int = 100000) -> tuple[int, dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/meters/m1/readings?from=2026-01-01&to=2026-01-04&limit={limit}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
            http.get(url, headers=AUTH) as resp:
        return resp.status, json.loads(await resp.text())


async def _wait_thread_event(event: threading.Event) -> None:
    await await_until(event.is_set, 30, "the held query to start")


async def test_delivery_reads_and_commits_while_every_api_connection_is_busy(
        gateway: tuple[Gateway, int]) -> None:
    gw, port = gateway
    store, api = gw.require_store(), _api(gw)
    held = [Held(), Held()]
    queries = [asyncio.create_task(api.query(h)) for h in held]
    for h in held:
        await _wait_thread_event(h.reading)
    http = asyncio.create_task(_readings(port))     # a third API query: waits for a connection
    pool = api.queries
    assert pool is not None
    await await_until(lambda: pool.waiting == 1, 10, "the HTTP query to wait for a connection")

    rows = await store.pending("mqtt", 10_000)     # what a sink does, with the API saturated
    assert [r.seq for r in rows] == list(range(1, ROWS + 1))
    seqs = await commit(store, [make_reading("m1", T0 + 60 * ROWS)])     # and a commit
    assert seqs == [ROWS + 1]
    assert not any(q.done() for q in queries) and not http.done()       # the API still waits

    for h in held:
        h.release.set()
    assert [await q for q in queries] == [ROWS, ROWS]     # their snapshot predates the commit
    status, body = await http
    assert status == 200 and body["count"] == ROWS + 1


async def test_a_query_past_the_limit_is_a_503_and_the_next_one_works(tmp_path: Path) -> None:
    gw, port = await _running(tmp_path, read_connections=1, query_timeout="100ms")
    try:
        api = _api(gw)
        # one that runs without end is interrupted
        with pytest.raises(QueryTimeout, match=r"ran longer than api.query_timeout \(0.1 s\)"):
            await api.query(lambda conn: conn.execute(FOREVER).fetchone())

        # one that waited for the only connection past its limit is a 503 over HTTP
        held = Held()
        holding = asyncio.create_task(api.query(held))
        await _wait_thread_event(held.reading)
        http = asyncio.create_task(_readings(port))
        pool = api.queries
        assert pool is not None
        await await_until(lambda: pool.waiting == 1, 10, "the HTTP query to wait for a connection")
        asked = time.monotonic()
        await await_until(lambda: time.monotonic() > asked + 0.1, 10, "its deadline to pass")
        held.release.set()
        with pytest.raises(QueryTimeout, match="ran longer"):     # past its own limit too
            await holding
        status, body = await http
        assert status == 503
        assert "api.query_timeout (0.1 s)" in str(body["error"])

        # the next one is served: a small one, well inside 0.1 s (all 3,000 rows took longer
        # than that in a parallel run of the suite); a host loaded enough to stall this thread
        # for 0.1 s gets a 503 of the same kind and the next try is served (at most three)
        for attempt in range(3):
            status, body = await _readings(port, limit=10)
            if status == 200 or attempt == 2:
                break
            assert status == 503 and "api.query_timeout (0.1 s)" in str(body["error"]), (status, body)
        assert status == 200 and body["count"] == 10
    finally:
        await gw.stop()


async def test_stopping_the_api_interrupts_a_query_that_would_never_end(
        gateway: tuple[Gateway, int]) -> None:
    gw, _ = gateway
    api = _api(gw)
    started = threading.Event()

    def forever(conn: sqlite3.Connection) -> object:
        started.set()
        return conn.execute(FOREVER).fetchone()

    query = asyncio.create_task(api.query(forever))
    await _wait_thread_event(started)
    await api.stop()
    with pytest.raises(QueryTimeout, match="stopping"):
        await query
    with pytest.raises(QueryTimeout, match="stopping"):     # and no new connections open
        await api.query(lambda conn: conn.execute("SELECT 1").fetchone())
    assert api.queries is None
