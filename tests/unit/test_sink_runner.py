"""SinkRunner over a real store and a scripted in-memory sink: cursor, window, pages,
independence, resend after a broken session, rejection, graceful stop, metrics, wiring."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import SinkError
from gateway.settings import GatewaySettings, InfluxSettings, MqttSettings, Settings, StoreSettings
from gateway.sinks.base import AckTracker, Backoff, Reporter, SinkAuthError, SinkRefusedError
from gateway.sinks.delivery import SinkRunner, build_sinks, prometheus_lines
from gateway.store import OutboxRow, Store
from tests.servicefixtures import await_until, commit, make_reading

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


class ScriptedSink:
    """An in-memory peer: acknowledges (or not) on the next loop turn, as told."""

    open_proves_access = True
    probe_first = False

    def __init__(self, name: str = "fake", window: int = 8, page: int = 16) -> None:
        self.name = name
        self.window = window
        self.page = page
        self.auto_ack = True
        self.open_error: SinkError | None = None
        self.sent: list[int] = []
        self.max_outstanding = 0
        self.opens = 0
        self.closes: list[bool] = []
        self.reporter: Reporter | None = None
        self.unacked: list[int] = []
        self.reject: set[int] = set()
        self.break_after: int | None = None
        self.refuse: str | None = None

    def target(self) -> str:
        """A fake target."""
        return "memory://"

    async def open(self, reporter: Reporter) -> None:
        """Connect, or fail as scripted."""
        self.opens += 1
        if self.open_error is not None:
            raise self.open_error
        self.reporter = reporter

    def send(self, row: OutboxRow) -> None:
        """Record the row; acknowledge, reject or break on the next loop turn."""
        self.sent.append(row.seq)
        self.unacked.append(row.seq)
        self.max_outstanding = max(self.max_outstanding, len(self.unacked))
        reporter = self.reporter
        assert reporter is not None
        if self.break_after is not None and len(self.sent) >= self.break_after:
            self.break_after = None
            self.unacked.remove(row.seq)                 # this one is never acknowledged
            asyncio.get_running_loop().call_soon(reporter.broken, SinkError("peer went away", "keep"))
            return
        if self.refuse is not None:                      # a peer that refuses (MQTT 5 PUBACK ≥ 0x80)
            self.unacked.remove(row.seq)
            asyncio.get_running_loop().call_soon(reporter.broken, SinkRefusedError(self.refuse))
            return
        if row.seq in self.reject:
            self.unacked.remove(row.seq)
            asyncio.get_running_loop().call_soon(reporter.rejected, [row.seq], "bad line")
        elif self.auto_ack:
            asyncio.get_running_loop().call_soon(self.ack_all)

    def ack_all(self) -> None:
        """Acknowledge everything sent so far."""
        if self.reporter is not None and self.unacked:
            seqs, self.unacked = self.unacked, []
            self.reporter.delivered(seqs)

    def flush(self) -> None:
        """Nothing buffered."""

    async def close(self, graceful: bool) -> None:
        """Record how it was closed."""
        self.closes.append(graceful)
        self.unacked = []


class CountingStore(Store):
    """A real store that records the page sizes asked of it."""

    limits: list[int]

    async def pending(self, sink: str, limit: int, after: int | None = None) -> list[OutboxRow]:
        """Record ``limit``, then answer as the store does."""
        self.limits.append(limit)
        return await super().pending(sink, limit, after)

    def pending_now(self, sink: str, limit: int, after: int | None = None) -> list[OutboxRow] | None:
        """Record ``limit``, then answer as the store does (the runner's call for the tail)."""
        self.limits.append(limit)
        return super().pending_now(sink, limit, after)


async def open_store(tmp_path: Path) -> CountingStore:
    """A real store on disk that counts page sizes."""
    store = await CountingStore.open(tmp_path / "amr.sqlite", FAST, "gw")
    assert isinstance(store, CountingStore)
    store.limits = []
    return store


def quick(sink: ScriptedSink, store: Store, **kw: object) -> SinkRunner:
    """A runner with a tiny backoff."""
    return SinkRunner(sink, store, backoff=Backoff(base=0.01, cap=0.05), **kw)  # type: ignore[arg-type]


async def test_delivers_backlog_in_seq_order_within_window_and_pages(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading() for _ in range(500)])
    sink = ScriptedSink(window=8, page=16)
    runner = quick(sink, store)
    await runner.start()
    assert await runner.wait_idle(30)
    await runner.stop()
    assert sink.sent == list(range(1, 501))
    assert sink.max_outstanding <= 8                     # the window bounds what is in flight
    assert set(store.limits) == {16}                     # pages, never the whole backlog
    assert await store.cursor("fake") == 500
    assert sink.closes == [True]
    await store.close()


async def test_cursor_waits_for_acknowledgement(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading() for _ in range(20)])
    sink = ScriptedSink(window=5)
    sink.auto_ack = False
    runner = quick(sink, store, drain_timeout_s=0.1)
    await runner.start()
    await await_until(lambda: len(sink.sent) == 5, 10, "a full window")
    assert await store.cursor("fake") == 0 and runner.published == 0
    assert sink.reporter is not None
    sink.reporter.delivered([2, 3])                      # out of order: the cursor cannot move yet
    assert await store.cursor("fake") == 0
    sink.reporter.delivered([1])
    await await_until(lambda: store.backlog_now("fake") == 17, 10, "the store's cursor at 3")
    assert runner.state()["cursor"] == 3
    await runner.stop()
    await store.close()


async def test_probe_first_sends_one_row_until_the_peer_acknowledges_one(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading() for _ in range(20)])
    sink = ScriptedSink(window=5)
    sink.probe_first = True
    sink.auto_ack = False
    runner = quick(sink, store, drain_timeout_s=0.1)
    await runner.start()
    await await_until(lambda: len(sink.sent) == 1, 10, "the probe")
    assert await store.cursor("fake") == 0 and sink.sent == [1]
    assert sink.reporter is not None
    sink.reporter.delivered([1])
    await await_until(lambda: len(sink.sent) == 6, 10, "the full window after the probe")
    assert sink.sent == [1, 2, 3, 4, 5, 6]
    assert runner._session is not None and runner._session.tracker.outstanding == 5   # a full window
    await runner.stop()
    await store.close()


async def test_a_refusing_peer_holds_the_cursor_shows_refused_and_logs_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading() for _ in range(10)])
    sink = ScriptedSink(window=4)
    sink.refuse = "denied by the ACL"
    runner = quick(sink, store)
    caplog.set_level(logging.INFO, logger="amr.sinks")
    await runner.start()
    await await_until(lambda: runner.sessions >= 5, 10, "five refused sessions")
    state = runner.state()
    assert state["state"] == "refused" and state["last_error"] == "denied by the ACL"
    assert state["published"] == 0 and state["cursor"] == 0 and await store.cursor("fake") == 0
    # Opening does not end "refused" (the broker takes the login and still refuses): one
    # ERROR line for the whole episode, no "delivering again" in between.
    assert [r.levelno for r in caplog.records if "refuses" in r.getMessage()] == [logging.ERROR]
    assert not any("again" in r.getMessage() for r in caplog.records)
    sink.refuse = None
    assert await runner.wait_idle(10)
    assert runner.status == "connected" and runner.published == 10
    assert len([r for r in caplog.records if "again" in r.getMessage()]) == 1
    await runner.stop()
    await store.close()


async def test_broken_session_resends_from_the_cursor(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading() for _ in range(100)])
    sink = ScriptedSink(window=10, page=10)
    sink.break_after = 35
    runner = quick(sink, store)
    await runner.start()
    assert await runner.wait_idle(30)
    await runner.stop()
    assert set(sink.sent) == set(range(1, 101))
    # The resend starts at the cursor: every seq after the break point appears in order again.
    back = [i for i in range(1, len(sink.sent)) if sink.sent[i] <= sink.sent[i - 1]]
    assert len(back) == 1
    assert sink.sent[back[0]] <= 35
    assert runner.sessions == 2 and sink.opens == 2 and runner.failed >= 1
    await store.close()


async def test_rejected_rows_pass_the_cursor_and_are_counted(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading() for _ in range(30)])
    sink = ScriptedSink()
    sink.reject = {5, 6, 29}
    runner = quick(sink, store)
    await runner.start()
    assert await runner.wait_idle(30)
    await runner.stop()
    assert runner.rejected == 3 and runner.published == 27
    assert await store.cursor("fake") == 30
    assert runner.last_error == "bad line"
    await store.close()


async def test_a_dead_sink_blocks_neither_the_other_sink_nor_commits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_store(tmp_path)
    dead = ScriptedSink("dead")
    dead.open_error = SinkError("connection refused", "keep")
    live = ScriptedSink("live")
    group: list[SinkRunner] = []
    r_dead = SinkRunner(dead, store, backoff=Backoff(base=0.01, cap=0.02), group=group)
    r_live = SinkRunner(live, store, backoff=Backoff(base=0.01, cap=0.02), group=group)
    with caplog.at_level("WARNING", logger="amr.sinks"):
        await r_dead.start()
        await r_live.start()
        for _ in range(20):
            await commit(store, [make_reading() for _ in range(50)])
        assert await r_live.wait_idle(30)
        await await_until(lambda: dead.opens >= 5, 10, "repeated connection attempts")
    assert r_dead.state()["state"] == "disconnected"
    assert r_dead.state()["backlog"] == 1000 and r_live.state()["backlog"] == 0
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1   # once, not per retry
    # The dead sink's cursor keeps retention from purging what it has not had.
    assert store.min_cursor() == 0
    dead.open_error = None
    assert await r_dead.wait_idle(30)
    assert dead.sent == list(range(1, 1001))
    lines = r_dead.prometheus_lines() + r_live.prometheus_lines()
    assert lines == prometheus_lines(group)
    assert 'amr_sink_published_total{sink="dead"} 1000' in lines
    assert sum(line.startswith("# TYPE amr_sink_backlog ") for line in lines) == 1   # one family, once
    for line in lines:
        assert line.startswith("#") or re.fullmatch(r'amr_sink_[a-z_]+\{sink="[a-z]+"\} \d+', line), line
    await r_dead.stop()
    await r_live.stop()
    await store.close()


async def test_auth_and_throttle_states(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await commit(store, [make_reading()])
    sink = ScriptedSink()
    sink.open_error = SinkAuthError("bad password")
    runner = quick(sink, store, auth_retry_min_s=0.05)
    await runner.start()
    await await_until(lambda: runner.status == "auth_failed", 10, "auth_failed")
    assert runner.state()["last_error"] == "bad password"
    sink.open_error = SinkError("slow down", "throttle", retry_after=0.3)
    await await_until(lambda: runner.status == "throttled", 10, "throttled")
    assert runner.retry_in_s == 0.3
    sink.open_error = None
    assert await runner.wait_idle(10)
    assert runner.status == "connected"
    await runner.stop()
    assert runner.state()["state"] == "stopped"
    await store.close()


async def test_stop_is_prompt_while_waiting_to_reconnect(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    sink = ScriptedSink()
    sink.open_error = SinkError("down", "keep")
    runner = SinkRunner(sink, store, backoff=Backoff(base=100.0, cap=100.0))
    await runner.start()
    await await_until(lambda: runner.status == "disconnected", 10, "disconnected")
    await asyncio.wait_for(runner.stop(), 5)        # does not sit out a 50–100 s backoff
    await store.close()


def test_ack_tracker_contiguous_rule() -> None:
    t = AckTracker(10)
    for s in (11, 12, 13, 15):
        t.sent(s)
    assert t.done([12, 13]) == 2 and t.cursor == 10
    assert t.done([11]) == 1 and t.cursor == 13
    assert t.done([99, 5, 12]) == 0 and t.cursor == 13  # unknown or stale seqs change nothing
    assert t.outstanding == 1 and t.last_sent == 15
    assert t.done([15]) == 1 and t.cursor == 15 and t.outstanding == 0
    with pytest.raises(ValueError, match="out of order"):
        t.sent(16)
        t.sent(16)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=8), max_size=12), st.integers(0, 3))
def test_ack_tracker_agrees_with_the_rule_in_any_order(batches: list[list[int]], start: int) -> None:
    """Acknowledgements in order (the fast path), out of order, repeated, stale or unknown:
    the cursor is the highest sent seq with every sent seq up to it acknowledged, and each
    sent seq is counted once."""
    sent = list(range(start + 1, start + 21))       # 20 rows in flight, seqs start+1 … start+20
    t = AckTracker(start)
    for seq in sent:
        t.sent(seq)
    acked: set[int] = set()
    for batch in [sorted(b) for b in batches[::2]] + batches[1::2]:    # in order first, then any order
        new = {s for s in batch if s in sent and s not in acked}
        assert t.done(batch) == len(new)
        acked |= new
        cursor = start
        for seq in sent:
            if seq not in acked:
                break
            cursor = seq
        assert t.cursor == cursor
        assert t.outstanding == len([seq for seq in sent if seq > cursor])
    assert t.done(sent) == len(set(sent) - acked) and t.cursor == sent[-1] and t.outstanding == 0


def test_backoff_is_jittered_exponential_and_capped() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = Backoff(base=1.0, cap=8.0, rng=lambda: 0.0)
    assert [low.next() for _ in range(3)] == [0.5, 1.0, 2.0]
    b.reset()
    assert b.next() == 1.0


async def test_build_sinks_follows_the_configuration(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    base = Settings(gateway=GatewaySettings(id="gw"), buses={}, meters={}, schedules={}, profiles={})
    assert build_sinks(base, store) == []
    both = Settings(gateway=GatewaySettings(id="gw"), buses={}, meters={}, schedules={}, profiles={},
                    mqtt=MqttSettings(), influxdb=InfluxSettings())
    runners = build_sinks(both, store)
    assert [r.name for r in runners] == ["mqtt", "influxdb"]
    assert runners[1].prometheus_lines() == []           # the group's first runner speaks for both
    off = Settings(gateway=GatewaySettings(id="gw"), buses={}, meters={}, schedules={}, profiles={},
                   mqtt=MqttSettings(enabled=False), influxdb=InfluxSettings(enabled=False))
    assert build_sinks(off, store) == []
    await store.close()
