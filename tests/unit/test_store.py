"""Store invariants: seq, commit-before-send, cursors, restart, retention, cap, full disk."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from gateway import store as store_module
from gateway.errors import StoreError
from gateway.model import PointValue, Reading, loads_exact
from gateway.settings import StoreSettings
from gateway.store import Store
from tests.servicefixtures import await_until

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


def make_reading(meter: str = "m1", slot: float = 1_767_225_600.0, kwh: str = "123.45") -> Reading:
    """A small reading with one exact energy point."""
    return Reading(
        meter=meter, customer="C1", bus="b1", schedule="interval", slot=slot, ts=slot + 0.5,
        points={"energy_import_kwh": PointValue(Decimal(kwh), Decimal(kwh) * 40, "kWh")},
        ct=Decimal(40),
    )


async def test_seq_strictly_increases_and_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "amr.db"
    store = await Store.open(db, FAST, "gw1")
    first = await store.append_readings([make_reading(slot=1_767_225_600.0 + i * 900) for i in range(5)])
    assert first == [1, 2, 3, 4, 5]
    await store.close()
    store = await Store.open(db, FAST, "gw1")
    more = await store.append_readings([make_reading()])
    assert more == [6]
    assert store.last_seq == 6
    await store.close()


async def test_seq_never_reused_after_purge(tmp_path: Path) -> None:
    settings = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01, retention_interval_days=1)
    store = await Store.open(tmp_path / "a.db", settings, "gw1")
    store.declare_sinks([])                         # a gateway with no sinks at all
    await store.append_readings([make_reading(slot=0.0), make_reading(slot=10.0)])
    deleted = await store.enforce_retention(now=10 * 86400.0)
    assert deleted == 2
    await store.close()
    store = await Store.open(tmp_path / "a.db", settings, "gw1")
    assert await store.append_readings([make_reading()]) == [3]
    await store.close()


async def test_a_new_store_uses_the_page_size_and_an_older_store_keeps_its_own(tmp_path: Path) -> None:
    """New stores are made with PAGE_SIZE (fewer bytes written per reading's index entry); a
    store made with SQLite's default 4096 keeps it and its readings, and takes new ones."""
    def page_size(db: Path) -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("PRAGMA page_size").fetchone()[0])

    store = await Store.open(tmp_path / "new.db", FAST, "gw1")
    await store.append_readings([make_reading()])
    await store.close()
    assert store_module.PAGE_SIZE != 4096
    assert page_size(tmp_path / "new.db") == store_module.PAGE_SIZE

    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:      # what an earlier release left: a 4096-byte WAL store
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t(a)")
    store = await Store.open(old, FAST, "gw1")
    assert await store.append_readings([make_reading(slot=0.0), make_reading(slot=900.0)]) == [1, 2]
    await store.close()
    store = await Store.open(old, FAST, "gw1")
    assert await store.append_readings([make_reading(slot=1800.0)]) == [3]
    rows = await store.read(lambda c: c.execute("SELECT count(*) FROM outbox").fetchone()[0])
    await store.close()
    assert rows == 3
    assert page_size(old) == 4096


async def test_payload_is_exact_and_contains_seq(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    await store.append_readings([make_reading(kwh="98765.43")])
    rows = await store.pending("mqtt", 10)
    doc = loads_exact(rows[0].payload)
    assert isinstance(doc, dict)
    assert doc["seq"] == 1
    assert doc["gateway"] == "gw1"
    point = doc["points"]["energy_import_kwh"]
    assert point["raw"] == Decimal("98765.43")
    assert point["value"] == Decimal("98765.43") * 40
    assert doc["schema"] == "amr.reading.v1"
    await store.close()


async def test_cursor_only_moves_forward_and_persists(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    store = await Store.open(db, FAST, "gw1")
    store.register_sink("mqtt")
    await store.append_readings([make_reading(slot=float(i)) for i in range(10)])
    assert [r.seq for r in await store.pending("mqtt", 3)] == [1, 2, 3]
    await store.ack("mqtt", 3)
    await store.ack("mqtt", 2)  # an older ack must not move it back
    assert await store.cursor("mqtt") == 3
    assert await store.backlog("mqtt") == 7
    assert [r.seq for r in await store.pending("mqtt", 100)] == list(range(4, 11))
    await store.close()
    store = await Store.open(db, FAST, "gw1")
    store.register_sink("mqtt")
    assert await store.cursor("mqtt") == 3
    assert (await store.pending("mqtt", 1))[0].seq == 4
    await store.close()


async def test_retention_keeps_undelivered_rows(tmp_path: Path) -> None:
    settings = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01, retention_interval_days=1)
    store = await Store.open(tmp_path / "a.db", settings, "gw1")
    store.register_sink("mqtt")
    await store.append_readings([make_reading(slot=float(i)) for i in range(4)])
    await store.ack("mqtt", 2)
    deleted = await store.enforce_retention(now=30 * 86400.0)
    assert deleted == 2
    assert [r.seq for r in await store.pending("mqtt", 10)] == [3, 4]
    await store.close()


async def test_store_of_another_gateway_is_refused(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    await store.close()
    with pytest.raises(StoreError, match="belongs to gateway 'gw1'"):
        await Store.open(tmp_path / "a.db", FAST, "gw2")


async def test_store_of_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A downgrade must not write into a store a newer gateway laid out (schema_version in meta)."""
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    await store.append_readings([make_reading(slot=1.0)])
    await store.close()
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    before = (tmp_path / "a.db").read_bytes()
    with pytest.raises(StoreError, match="schema version 99, newer than"):
        await Store.open(tmp_path / "a.db", FAST, "gw1")
    assert (tmp_path / "a.db").read_bytes() == before
    with sqlite3.connect(tmp_path / "a.db") as conn:
        conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    reopened = await Store.open(tmp_path / "a.db", FAST, "gw1")
    assert [r.seq for r in await reopened.pending("mqtt", 10)] == [1]
    await reopened.close()


async def test_full_disk_keeps_readings_in_memory_and_commits_later(tmp_path: Path) -> None:
    """SQLite's own max_page_count plays a full disk (real SQLITE_FULL, no fake)."""
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    await store.append_readings([make_reading()])

    def cap(conn: sqlite3.Connection, pages: int) -> None:
        conn.execute(f"PRAGMA max_page_count={pages}")

    loop_pages = await store.read(lambda c: int(c.execute("PRAGMA page_count").fetchone()[0]))
    await store.write(cap, loop_pages)
    big = [make_reading(slot=float(i), kwh="1.00") for i in range(2000)]
    with pytest.raises(StoreError, match="disk is full"):
        await store.append_readings(big)
    assert store.last_seq == 1
    assert store.last_error is not None
    await store.write(cap, 1_000_000)
    await store.flush()
    assert store.last_seq == 2001
    assert await store.count() == 2001
    await store.close()


async def test_storage_cap_pressure(tmp_path: Path) -> None:
    settings = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01, max_bytes=512 * 1024)
    store = await Store.open(tmp_path / "a.db", settings, "gw1")
    assert store.pressure == "ok"
    await store.append_readings([make_reading(slot=float(i)) for i in range(5000)])
    assert await store.refresh_size() in ("near_cap", "full")
    await store.close()


async def test_appends_during_a_commit_are_committed_too(tmp_path: Path) -> None:
    """An append made as soon as the previous one committed (while the commit task is still
    finishing) must be committed without waiting for a later append."""

    store = await Store.open(tmp_path / "a.db", FAST, "gw1")

    async def sequential() -> list[int]:
        out: list[int] = []
        for i in range(50):
            out += await store.append_readings([make_reading(slot=float(i))])
        return out

    assert await asyncio.wait_for(sequential(), timeout=10) == list(range(1, 51))
    await store.close()


async def test_sinks_that_keep_up_read_the_committed_tail_and_get_what_sqlite_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pending() serves recent rows from memory (no query) and older ones from SQLite; both
    give the same rows with the same messages, a message and readings interleaved, and a
    sink further behind than the tail keeps reads them from SQLite."""
    monkeypatch.setattr(store_module, "TAIL_KEPT", 8)
    store = await Store.open(tmp_path / "amr.sqlite", FAST, "gw")
    queries = 0
    real_read = store.read

    async def counting_read(fn, *args):  # type: ignore[no-untyped-def]
        nonlocal queries
        queries += 1
        return await real_read(fn, *args)

    monkeypatch.setattr(store, "read", counting_read)
    try:
        await store.append_readings([make_reading(f"m{i}", kwh=f"{i}.5") for i in range(5)])
        await store.append_message("event", "m1", 1.0, {"type": "x", "n": Decimal("1.50")})
        await store.append_readings([make_reading(f"n{i}", kwh=f"{i}.25") for i in range(20)])
        assert store.last_seq == 26
        from_tail = await store.pending("mqtt", 5, after=20)
        assert queries == 0
        assert [r.seq for r in from_tail] == [21, 22, 23, 24, 25]
        old = await store.pending("mqtt", 30, after=0)      # older than the tail keeps: SQLite
        assert queries == 1
        assert [r.seq for r in old] == list(range(1, 27))
        sql = {r.seq: (r.kind, r.meter, r.ts, r.payload) for r in await real_read(store._select_pending, 0, 100)}
        assert {r.seq: (r.kind, r.meter, r.ts, r.payload) for r in old} == sql
        assert [(r.kind, r.meter, r.ts, r.payload) for r in from_tail] == [sql[s] for s in range(21, 26)]
        assert loads_exact(sql[6][3])["type"] == "x" and loads_exact(sql[21][3])["seq"] == 21
        assert await store.pending("mqtt", 5, after=26) == []
    finally:
        await store.close()


async def test_a_reading_commits_without_a_later_append_while_a_cursor_save_runs(tmp_path: Path) -> None:
    """Issue 14 item 5: the old store kept one task slot for the group flush, the retry and
    the cursor save, so a reading queued while a cursor-only save was running stayed in
    memory until the next append (up to a whole schedule interval). The writer is held on
    a real SQLite transaction so the cursor save is certainly queued behind it (seen in the
    writer thread's own work queue) when the reading arrives."""
    seeded = await Store.open(tmp_path / "a.db", FAST, "gw1")
    await seeded.append_readings([make_reading(slot=0.0)])
    await seeded.close()
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")   # a quiet store: nothing queued
    try:
        store.register_sink("mqtt")
        gate = threading.Event()
        held = asyncio.ensure_future(store.write(lambda conn: gate.wait(10)))
        await store.ack("mqtt", 1)                     # a cursor-only save is now due
        await await_until(lambda: store._writer._work_queue.qsize() > 0, 5,
                          "the cursor save to queue behind the held writer")
        store.submit_nowait(make_reading(slot=900.0))  # the single poll of a 15-minute schedule
        gate.set()
        await held
        await await_until(lambda: store.last_seq == 2, 5, "the reading's commit (no later append comes)")
        assert await store.count() == 2
        assert await store.read(lambda c: c.execute("SELECT acked_seq FROM sink_cursor").fetchall()) == [(1,)]
    finally:
        await store.close()


async def test_a_failed_cursor_only_commit_is_retried(tmp_path: Path) -> None:
    """Issue 16 item 7: a cursor save that fails (the database locked by another process's
    writer, played by a second real connection holding a write transaction) is kept and
    saved by a later round, never lost."""
    db = tmp_path / "a.db"
    store = await Store.open(db, StoreSettings(synchronous="NORMAL", commit_interval_s=0.01), "gw1")
    try:
        store.register_sink("mqtt")
        await store.append_readings([make_reading(slot=float(i)) for i in range(3)])
        other = sqlite3.connect(db, isolation_level=None, timeout=0.1)
        await store.write(lambda c: c.execute("PRAGMA busy_timeout=50"))
        other.execute("BEGIN IMMEDIATE")               # the database is locked for writers
        await store.ack("mqtt", 3)
        await await_until(lambda: store.commit_failures > 0, 5, "a failed cursor save")
        other.execute("ROLLBACK")
        other.close()
        await await_until(lambda: not store._dirty_cursors, 5, "the cursor saved by a later round")
        assert store.last_error is None
        assert await store.read(lambda c: c.execute("SELECT acked_seq FROM sink_cursor").fetchall()) == [(3,)]
    finally:
        await store.close()


async def test_a_flush_asked_for_during_the_commit_that_covers_it_returns(tmp_path: Path) -> None:
    """A flush asked for while the writer's round already holds everything it waits for
    (here a cursor save) returns when that round ends, not at some later commit: the writer
    once went idle with the flush still waiting, which hung a stop."""
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    try:
        store.register_sink("mqtt")
        await store.append_readings([make_reading()])
        gate = threading.Event()
        held = asyncio.ensure_future(store.write(lambda conn: gate.wait(10)))
        await store.ack("mqtt", 1)
        await await_until(lambda: store._writer._work_queue.qsize() > 0, 5, "the cursor save behind the held writer")
        flushed = asyncio.ensure_future(store.flush())
        gate.set()
        await held
        assert await asyncio.wait_for(flushed, 5) is True
    finally:
        await store.close()


async def test_a_flush_waits_for_the_commit_already_on_the_writer_thread(tmp_path: Path) -> None:
    """A reading the writer has taken from the queue is not committed until its round ends:
    a flush asked for meanwhile waits for that round. It once saw an empty queue and returned
    at once, and a chained poll's test read the store before its three readings were in."""
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    try:
        gate = threading.Event()
        held = asyncio.ensure_future(store.write(lambda conn: gate.wait(10)))
        store.submit_nowait(make_reading())
        await await_until(lambda: store._writer._work_queue.qsize() > 0 and not store._queue, 5,
                          "the reading's commit taken from the queue, behind the held writer")
        flushed = asyncio.ensure_future(store.flush())
        await asyncio.sleep(0.05)         # negative check: the commit is held, so must the flush be
        assert not flushed.done()
        gate.set()
        await held
        assert await asyncio.wait_for(flushed, 5) is True
        assert await store.read(lambda c: c.execute("SELECT seq FROM outbox").fetchall()) == [(1,)]
    finally:
        gate.set()
        await store.close()


async def old_rows(db: Path, n: int) -> Store:
    """A store at ``db`` holding ``n`` interval readings already past a 1-day retention."""
    store = await Store.open(db, StoreSettings(synchronous="NORMAL", commit_interval_s=0.01,
                                               retention_interval_days=1), "gw1")
    await store.append_readings([make_reading(slot=float(i)) for i in range(n)])
    return store


async def test_retention_before_the_sinks_are_declared_deletes_nothing(tmp_path: Path) -> None:
    """Issue 16 item 7: retention ran 5 s after start, before any sink registered, and a
    store with no cursor counted as "everything delivered"."""
    store = await old_rows(tmp_path / "a.db", 4)
    try:
        assert await store.enforce_retention(now=30 * 86400.0) == 0      # nobody declared yet
        store.declare_sinks(["mqtt"])
        assert await store.enforce_retention(now=30 * 86400.0) == 0      # declared, not registered
        await store.flush()
        assert await store.read(lambda c: c.execute("SELECT * FROM sink_cursor").fetchall()) == [("mqtt", 0)]
        store.register_sink("mqtt")
        await store.ack("mqtt", 3)
        assert await store.enforce_retention(now=30 * 86400.0) == 3
        assert [r.seq for r in await store.pending("mqtt", 10)] == [4]
    finally:
        await store.close()


@pytest.mark.parametrize(("disabled", "why"), [(["influxdb"], "is disabled"), ([], "is no longer configured")])
async def test_a_sink_not_delivering_this_run_still_holds_its_rows(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, disabled: list[str], why: str) -> None:
    """A durable cursor holds rows back whether its sink is enabled, disabled, or gone from
    the configuration; said once at start with the way out."""
    db = tmp_path / "a.db"
    store = await old_rows(db, 6)
    store.declare_sinks(["mqtt", "influxdb"])
    for sink, upto in (("mqtt", 5), ("influxdb", 2)):
        store.register_sink(sink)
        await store.ack(sink, upto)
    await store.close()

    store = await Store.open(db, StoreSettings(synchronous="NORMAL", commit_interval_s=0.01,
                                               retention_interval_days=1), "gw1")
    try:
        store.declare_sinks(["mqtt"], disabled)
        store.register_sink("mqtt")                                      # influxdb never starts
        assert store.min_cursor() == 2
        assert await store.enforce_retention(now=30 * 86400.0) == 2
        assert await store.count() == 4
        warned = [r.getMessage() for r in caplog.records if "sink drop influxdb" in r.getMessage()]
        assert len(warned) == 1 and why in warned[0]
    finally:
        await store.close()


async def test_a_reading_that_cannot_be_written_is_refused_alone(tmp_path: Path) -> None:
    """A reading whose payload cannot be rendered (a value of no JSON type: a bug upstream,
    played by putting one in) fails on its own; the readings queued with it commit, in
    order, with consecutive seqs, and the writer goes on."""
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    try:
        bad = make_reading("bad")
        bad.points["energy_import_kwh"] = PointValue(object(), None, "kWh")  # type: ignore[arg-type]
        futures = [store.submit(make_reading("m1")), store.submit(bad), store.submit(make_reading("m3"))]
        assert await store.flush() is True
        assert await futures[0] == [1] and await futures[2] == [2]
        with pytest.raises(StoreError, match="cannot be stored: TypeError"):
            await futures[1]
        assert await store.append_readings([make_reading("m4")]) == [3]
        assert store.pending_readings == 0 and store.last_error is None
    finally:
        await store.close()


@pytest.mark.parametrize("n", [1, 3, 4, 5, 16, 21, 63, 64, 65, 150])
async def test_a_commit_of_any_size_stores_every_row_once_in_order(tmp_path: Path, n: int) -> None:
    """A commit's rows go in with multi-row INSERTs of 64, 16, 4 and 1 rows: whatever the
    count, SQLite holds each reading once, at its seq, with its own values."""
    db = tmp_path / "amr.sqlite"
    store = await Store.open(db, FAST, "gw")
    try:
        readings = [make_reading(f"m{i}", slot=1_767_225_600.0 + i, kwh=f"{i}.5") for i in range(n)]
        assert await store.append_readings(readings) == list(range(1, n + 1))
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT seq, meter, slot FROM outbox WHERE kind = 'reading' ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert rows == [(i + 1, f"m{i}", 1_767_225_600.0 + i) for i in range(n)]
    store = await Store.open(db, FAST, "gw")
    try:
        got = await store.pending("mqtt", 1000, after=0)
        assert [loads_exact(r.payload)["points"]["energy_import_kwh"]["raw"] for r in got] == \
            [Decimal(f"{i}.5") for i in range(n)]
    finally:
        await store.close()
