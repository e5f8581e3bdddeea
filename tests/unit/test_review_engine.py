"""The review engine on a real SQLite store: readings in, events stored and in the outbox.

No meters and no network: readings are built by hand and handed to the engine's observer,
as a bus worker would. Covers storage and publication (schema, exact decimals), restart
recovery (a decrease across a restart, an open condition not raised twice), the crash
window between outbox and table, the bounded queue, a failing rule, and the CSV export.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.core import Core
from gateway.demo import demo_config_text
from gateway.model import PointValue, Reading
from gateway.review import engine, rules, ruleset
from gateway.review.engine import ReviewEngine
from gateway.review.export import export_events
from gateway.runtime import STORE_FILE
from gateway.store import Store
from tests.reviewkit import failed_reading

START = 1_795_939_200.0  # 2026-11-29 16:00:00 +08:00
METER = "c1002-main"


async def open_core(tmp: Path) -> Core:
    """The polling core the engine builds on (settings, clock, open store), without polling."""
    settings = load_settings_from_text(demo_config_text(tmp, api_port=1, mqtt=("127.0.0.1", 1)), "<test>", tmp,
                                       {"AMR_API_TOKEN": "t"})
    store = await Store.open(settings.gateway.data_dir / STORE_FILE, settings.store, settings.gateway.id)
    return Core(settings, ScaledClock(START, 1.0), store)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Core]:
    g = await open_core(tmp_path)
    try:
        yield g
    finally:
        await g.store.close()


def reading(k: int, energy: str, meter: str = METER) -> Reading:
    slot = START + 900 * k
    return Reading(meter, "C1002", "tcp-c1002", "interval", slot, slot + 0.4, {
        "energy_import_kwh": PointValue(D(energy), D(energy), "kWh"),
    })


def runtime(meter: str = METER) -> Any:
    return SimpleNamespace(id=meter)


async def started(g: Core, **kw: Any) -> ReviewEngine:
    eng = ReviewEngine(g, **kw)
    await eng.start()
    return eng


def rows(g: Core, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(g.store.path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


async def test_a_decrease_is_stored_and_published_with_exact_evidence(gw: Core) -> None:
    eng = await started(gw)
    eng.observe(runtime(), reading(0, "1234.50"))
    eng.observe(runtime(), reading(1, "1200.00"))
    assert await eng.drain()
    await eng.stop()
    events = rows(gw, "SELECT id, meter, type, state, key, seq, evidence FROM review_event")
    assert [(r[1], r[2], r[3], r[4]) for r in events] == [(METER, "register_decrease", "raised", "energy_import_kwh")]
    outbox = rows(gw, "SELECT seq, kind, meter, payload FROM outbox WHERE kind='event'")
    assert len(outbox) == 1 and outbox[0][0] == events[0][5] and outbox[0][2] == METER
    payload = outbox[0][3]
    doc = json.loads(payload)
    assert doc["schema"] == "amr.event.v1" and doc["gateway"] == "demo-gateway" and doc["seq"] == outbox[0][0]
    assert doc["id"] == events[0][0] and doc["customer"] == "C1002" and doc["state"] == "raised"
    assert '"before_raw":1234.50' in payload and '"after_raw":1200.00' in payload  # exact decimals
    assert '"before_raw":1234.50' in events[0][6]


async def review_session(tmp: Path, energies: list[tuple[int, str]]) -> Core:
    """Start a gateway's store and review engine, review readings (quarter, kWh), stop both."""
    g = await open_core(tmp)
    eng = await started(g)
    for k, e in energies:
        eng.observe(runtime(), reading(k, e))
    assert await eng.drain()
    await eng.stop()
    await g.store.close()
    return g


async def test_restart_keeps_the_last_register_and_open_conditions(tmp_path: Path) -> None:
    await review_session(tmp_path, [(0, "500.00")])
    # restart 1: the fall happens across the restart and is still caught
    await review_session(tmp_path, [(1, "400.00")])
    # restart 2: the condition is still open, so a further fall raises nothing; it clears later
    g = await review_session(tmp_path, [(2, "390.00"), (3, "391.00"), (4, "392.00")])
    got = rows(g, "SELECT id, type, state, raised_id FROM review_event ORDER BY id")
    assert [(r[1], r[2]) for r in got] == [("register_decrease", "raised"), ("register_decrease", "cleared")]
    assert got[1][3] == got[0][0]


async def test_an_event_published_but_not_recorded_is_recovered_at_start(gw: Core) -> None:
    store = gw.store
    body = {"schema": "amr.event.v1", "id": 7, "meter": METER, "type": "read_failure", "state": "raised", "key": "",
            "ts": "2026-11-29T08:00:00.000Z", "raised_id": None, "message": "m", "evidence": {"failed_polls": 3}}
    seq = await store.append_message("event", METER, START, body)
    eng = await started(gw)
    got = rows(gw, "SELECT id, seq, type, evidence FROM review_event")
    assert got == [(7, seq, "read_failure", '{"failed_polls":3}')]
    assert eng.state(METER).active[("read_failure", "")].event_id == 7   # and it is an open condition
    eng.observe(runtime(), reading(0, "1.00"))
    assert await eng.drain()
    await eng.stop()
    got = rows(gw, "SELECT id, type, state, raised_id FROM review_event ORDER BY id")
    assert got[-1] == (8, "read_recovered", "cleared", 7)


async def test_the_observer_never_blocks_or_raises_when_the_queue_is_full(gw: Core) -> None:
    eng = ReviewEngine(gw, queue_size=2)  # not started: nothing takes readings off the queue
    for k in range(5):
        eng.observe(runtime(), reading(k, "1.00"))
    assert len(eng.queue) == 2 and eng.dropped == 3
    assert eng.observe in gw.observers


async def test_readings_wait_for_the_batch_window_but_a_drain_does_not(
    gw: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BATCH_S", 30.0)   # far longer than anything below waits
    eng = await started(gw)
    await asyncio.sleep(0.05)                      # the engine waits for its first reading
    for k in range(3):
        eng.observe(runtime(), reading(k, f"{10 - k}.00"))
        await asyncio.sleep(0.05)
    assert eng.processed == 0 and len(eng.queue) == 3      # gathered, not reviewed one by one
    assert await eng.drain(timeout=5.0)                   # does not wait out the window
    assert eng.processed == 3 and not eng.queue
    assert await eng.drain(timeout=5.0)                   # nothing queued: returns at once...
    eng.observe(runtime(), reading(3, "5.00"))
    await asyncio.sleep(0.05)
    assert eng.processed == 3                             # ...and the next batch waits its window again
    await eng.stop()                                      # stop reviews what is queued
    assert eng.processed == 4
    assert [r[0] for r in rows(gw, "SELECT state FROM review_event WHERE type='register_decrease'")] == ["raised"]


async def test_a_failing_rule_loses_neither_the_reading_nor_the_other_rules(
    gw: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> list[rules.RuleEvent]:
        raise ZeroDivisionError("a bug in a rule")

    monkeypatch.setattr(ruleset, "ALL_RULES", (("meter_fast", boom), *ruleset.ALL_RULES))
    eng = await started(gw)
    r0, r1 = reading(0, "10.00"), reading(1, "9.00")
    eng.observe(runtime(), r0)
    eng.observe(runtime(), r1)
    gw.store.submit(r1)  # what the bus worker does right after the observers
    assert await eng.drain()
    await eng.stop()
    assert eng.rule_errors == 2
    assert [r[0] for r in rows(gw, "SELECT type FROM review_event")] == ["register_decrease"]
    assert rows(gw, "SELECT count(*) FROM outbox WHERE kind='reading'") == [(1,)]


async def test_export_events_writes_csv_for_one_meter_or_all(gw: Core, tmp_path: Path) -> None:
    eng = await started(gw)
    for meter in (METER, "c1001-main"):
        eng.observe(runtime(meter), reading(0, "5.00", meter))
        eng.observe(runtime(meter), reading(1, "4.00", meter))
    assert await eng.drain()
    await eng.stop()
    out = io.StringIO()
    n = await export_events(gw.store.path, METER, START - 3600, START + 86400, out)
    lines = out.getvalue().splitlines()
    assert n == 1 and lines[0].startswith("id,seq,ts,meter,type,state,key,raised_id,message,evidence")
    assert METER in lines[1] and "register_decrease" in lines[1] and '""before_raw"":5.00' in lines[1]
    target = tmp_path / "all.csv"
    assert await export_events(gw.store.path, None, None, None, target) == 2
    assert len(target.read_text().splitlines()) == 3
    assert await export_events(gw.store.path, None, START + 86400, START + 2 * 86400, io.StringIO()) == 0
    with pytest.raises(FileNotFoundError):
        await export_events(tmp_path / "nope.sqlite", None, None, None, io.StringIO())


async def test_period_rules_judge_the_billing_periods_and_store_their_events(gw: Core) -> None:
    """stage_change from completed stages: the source here is a plain function standing in for
    the billing feature's (gateway.billing.periods, which reads settlement records the billing
    capture writes; the live path is the e2e billing month). A stage at a quarter of the one
    before it raises 环比 once, with both periods in the evidence; the next normal stage clears."""
    day = 86400.0
    stages = [("stage", "2026-11", 1, START - 30 * day, START - 20 * day, D(10000)),
              ("stage", "2026-11", 2, START - 20 * day, START - 10 * day, D(2500))]

    def source(conn: Any, meter: str, now: float) -> list[tuple[str, str, int, float, float, D]]:
        return list(stages) if meter == METER else []

    eng = await started(gw, period_source=source)
    stored = await eng.judge_periods()
    assert [(e.meter, e.type, e.state, e.key) for e in stored] == [(METER, "stage_change", "raised", "mom")]
    assert stored[0].evidence["ratio"] == D("0.2500") and stored[0].evidence["current"]["kwh"] == D(2500)
    assert await eng.judge_periods() == []                      # persisting: no duplicate
    stages.append(("stage", "2026-11", 3, START - 10 * day, START, D(2600)))
    cleared = await eng.judge_periods()
    assert [(e.type, e.state, e.raised_id) for e in cleared] == [("stage_change", "cleared", stored[0].id)]
    await eng.stop()


async def test_the_poller_gets_the_event_counters_the_review_last_saw(tmp_path: Path) -> None:
    """After a restart the poller's baseline is the review's memory, so a counter that rose
    while the gateway was down has its record read, and an open cover's record is re-read."""
    from gateway.runtime import build_meters

    g = await open_core(tmp_path)
    meter = "c2003-main"
    eng = await started(g)
    try:
        st = eng.state(meter)
        st.counters.update({"cover_open": D(4), "programming": D(7)})
        st.dirty = True
        await eng.emit_all(meter, [rules.RuleEvent("cover_open", "raised", "cover_open", START, "opened", {})])
    finally:
        await eng.stop()
        await g.store.close()
    g = await open_core(tmp_path)
    g.meters.update(build_meters(g.settings))
    eng = await started(g)
    try:
        watch = g.meters[meter].events
        assert watch.counts == {"cover_open": 4, "programming": 7}
        assert watch.pending == {"cover_open"}
    finally:
        await eng.stop()
        await g.store.close()


async def test_a_bus_keeps_no_review_state_until_a_reading_on_it_fails(gw: Core) -> None:
    # 10,000 single-meter TCP buses each kept an empty bus state (≈ 8 MB): good readings need
    # none, nor does a failure on a bus with fewer meters than a bus failure needs (2)
    eng = await started(gw)
    tcp, rs485 = eng._bus_keys["tcp-c1002"], eng._bus_keys["rs485-modbus"]
    eng.observe(runtime(), reading(0, "100.00"))
    eng.observe(runtime(), reading(1, "100.50"))
    eng.observe(runtime("c1004-main"), reading(1, "100.50", meter="c1004-main"))
    assert await eng.drain()
    assert METER in eng.states and tcp not in eng.states and rs485 not in eng.states
    eng.observe(runtime(), failed_reading(METER, START + 1800, bus="tcp-c1002"))
    assert await eng.drain()
    assert tcp not in eng.states                         # one meter: never a bus failure
    eng.observe(runtime("c1004-main"), failed_reading("c1004-main", START + 1800, bus="rs485-modbus"))
    assert await eng.drain()
    assert rs485 in eng.states                           # two meters: the failure is folded
    await eng.stop()


async def test_states_are_saved_a_chunk_at_a_time_and_a_failed_chunk_is_taken_again(
        gw: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    # one transaction per SAVE_CHUNK meters, so a big fleet's save never holds the writer long
    monkeypatch.setattr(engine, "SAVE_CHUNK", 2)
    meters = ["c1001-main", "c1002-main", "c1003-sub", "c1004-main", "c1005-sub"]
    eng = await started(gw)
    for m in meters:
        eng.observe(runtime(m), reading(0, "100.00", meter=m))
    assert await eng.drain()
    real_write = gw.store.write
    calls: list[int] = []

    async def write(fn: Any, *args: Any) -> Any:
        if fn is engine.db.save_states:
            calls.append(len(args[1]))
            if len(calls) == 2:
                raise OSError("disk full (test)")
        return await real_write(fn, *args)

    monkeypatch.setattr(gw.store, "write", write)
    with pytest.raises(OSError):
        await eng._save(force=True)
    assert calls == [2, 2]                     # the second chunk failed: the save stopped there
    assert sum(eng.states[m].dirty for m in meters) == 3      # its two meters, and the one after
    await eng._save(force=True)
    assert calls == [2, 2, 2, 1]
    monkeypatch.setattr(gw.store, "write", real_write)
    await eng.stop()
    saved = {r[0] for r in rows(gw, "SELECT meter FROM review_state")}
    assert saved >= set(meters)


async def test_the_save_rolls_round_the_meters_a_slice_per_tick(gw: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    # each tick saves the share of the meters that the time since the last tick is of
    # SAVE_EVERY_S: a big fleet's states are written a slice at a time, each about once a period
    eng = await started(gw)
    meters = ["c1001-main", "c1002-main", "c1003-sub", "c1004-main", "c1005-sub"]
    for m in meters:
        eng.observe(runtime(m), reading(0, "100.00", meter=m))
    assert await eng.drain()
    clock = [1000.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    eng._last_save = clock[0]
    saved: list[str] = []
    for _ in range(5):
        clock[0] += engine.SAVE_EVERY_S / 5            # a fifth of the period: a fifth of the meters
        due = eng._due_for_save(False, clock[0])
        assert len(due) <= 1
        for meter, st in due:
            saved.append(meter)
            st.dirty = False
            st.new_intervals.clear()
    assert sorted(saved) == sorted(meters)             # every meter once in one period
    assert eng._due_for_save(True, clock[0]) == []     # nothing dirty left
    # the cursor stays within the list: a state added after a wrap moves no meter's turn
    for m in meters:
        eng.states[m].dirty = True

    def turn(share: float) -> list[str]:
        clock[0] += share * engine.SAVE_EVERY_S
        return [m for m, _ in eng._due_for_save(False, clock[0])]

    assert turn(0.6) == meters[:3]
    assert turn(0.6) == [*meters[3:], meters[0]]       # round the end of the list
    eng.states["late-meter"] = rules.MeterState(dirty=True)
    assert turn(1 / 6) == [meters[1]]                  # on from where it stopped, not from 0
    # shares smaller than a meter add up: 6 meters, a second each: one meter every 10 s
    assert [len(turn(1 / engine.SAVE_EVERY_S)) for _ in range(20)] == ([0] * 9 + [1]) * 2
    await eng.stop()
