"""MQTT delivery across broker outages, on a private mosquitto that the tests stop and start.

The broker runs with persistence, so a persistent-session subscriber (clean_session=False)
keeps its subscription and queued messages across the broker's restart, as a head end's
consumer would.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path

import pytest

from gateway.settings import MqttSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.mqtt import MqttSink
from gateway.store import Store
from tests.servicefixtures import MosquittoProcess, Subscriber, await_until, commit, make_reading

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


def quick_runner(broker: MosquittoProcess, gw: str, store: Store, inflight: int = 100) -> SinkRunner:
    """A runner whose reconnect backoff is short, so outage tests stay fast."""
    sink = MqttSink(MqttSettings(host=broker.host, port=broker.port, inflight=inflight), gw)
    return SinkRunner(sink, store, backoff=Backoff(base=0.05, cap=0.5))


def backward_jumps(seqs: list[int]) -> int:
    """How often the received seq went backwards (each is a resend after a reconnect)."""
    return sum(1 for a, b in itertools.pairwise(seqs) if b <= a)


async def test_backlog_spooled_while_broker_down_is_replayed_in_order_without_duplicates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MosquittoProcess(tmp_path / "broker")
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    runner = quick_runner(broker, gw, store)
    try:
        with caplog.at_level("WARNING", logger="amr.sinks"):
            await runner.start()                      # nothing listens yet: spool
            for i in range(10):
                await commit(store, [make_reading(f"m{j}", kwh=str(i)) for j in range(500)])
            await await_until(lambda: runner.sessions == 0 and runner.backoff.attempts >= 3, 20,
                              "several failed connection attempts")
            assert runner.state()["state"] == "disconnected"
            assert runner.state()["backlog"] == 5000
            broker.start()
            sub = Subscriber(broker.broker, f"amr/{gw}/#", f"sub-{gw}").start()
            # The subscriber may connect before or after the sink: count from its start.
            assert await runner.wait_idle(60), runner.state()
            await await_until(lambda: len(sub.seqs()) >= 5000 - _sent_before(sub), 60, "the whole backlog",
                              detail=sub.summary)
        unreachable = [r for r in caplog.records if "is unreachable" in r.getMessage()]
        assert len(unreachable) == 1                    # logged once, not per retry
        back = [r for r in caplog.records if "again (backlog" in r.getMessage()]
        assert len(back) == 1                           # and one line when it is delivering again
        seqs = sub.seqs()
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))   # in order, no duplicates
        assert seqs[-1] == 5000
        assert runner.sessions == 1
        sub.stop()
    finally:
        await runner.stop()
        await store.close()
        broker.stop()


def _sent_before(sub: Subscriber) -> int:
    seqs = sub.seqs()
    return (seqs[0] - 1) if seqs else 0


async def test_broker_restarts_during_delivery_persistent_subscriber_sees_every_seq(tmp_path: Path) -> None:
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    sub = Subscriber(broker.broker, f"amr/{gw}/meters/+/reading", f"persist-{gw}", persistent=True).start()
    runner = quick_runner(broker, gw, store, inflight=20)
    await runner.start()
    stop_producing = asyncio.Event()

    async def produce() -> None:
        for i in range(400):                        # bounded: at most 400 batches
            if stop_producing.is_set():
                return
            await commit(store, [make_reading(f"m{j}", kwh=str(i)) for j in range(10)])
            await asyncio.sleep(0.01)               # the scenario: readings keep arriving over time

    producer = asyncio.create_task(produce())
    try:
        for _ in range(2):                          # two outages while readings keep coming
            floor = runner.published + 200
            await await_until(lambda: runner.status == "connected" and runner.published >= floor, 30,  # noqa: B023
                              "some deliveries")
            await asyncio.to_thread(broker.stop)
            await await_until(lambda: runner.status == "disconnected", 20, "the sink noticing the outage")
            await asyncio.sleep(0.3)                # the scenario: the outage lasts a moment, readings still come
            await asyncio.to_thread(broker.start)
            await await_until(lambda: runner.status == "connected", 30, "the sink reconnecting")
        stop_producing.set()
        await producer
        assert await runner.wait_idle(60), runner.state()
        total = store.last_seq
        await await_until(lambda: set(range(1, total + 1)) <= set(sub.seqs()), 60, f"all {total} seqs",
                          detail=sub.summary)
        seqs = sub.seqs()
        assert set(seqs) == set(range(1, total + 1))        # nothing lost, nothing invented
        # Duplicates only across a reconnect: what the gateway sent goes backwards at most once
        # per session. The broker's own redelivery (DUP) of what was in flight to this
        # persistent subscriber when it stopped is the broker's at-least-once, not a resend
        # of ours, and may add one step per restart; it is counted apart.
        assert backward_jumps(sub.seqs(broker_redeliveries=False)) <= runner.sessions - 1
        assert backward_jumps(seqs) <= 2 * (runner.sessions - 1)
        assert runner.sessions >= 3
        # A broken session leaves at most one window (inflight=20) unacknowledged; those rows
        # count as failed and were resent (every seq arrived, above). Nothing was rejected.
        state = runner.state()
        assert state["failed"] <= 20 * (runner.sessions - 1), state
        assert state["rejected"] == 0 and state["backlog"] == 0, state
    finally:
        stop_producing.set()
        await asyncio.gather(producer, return_exceptions=True)
        await runner.stop()
        sub.stop()
        await store.close()
        broker.stop()


async def test_restart_of_the_gateway_resumes_from_the_durable_cursor(tmp_path: Path) -> None:
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    gw = f"t-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "amr.sqlite"
    sub = Subscriber(broker.broker, f"amr/{gw}/meters/+/reading", f"sub-{gw}").start()
    try:
        store = await Store.open(db, FAST, gw)
        await commit(store, [make_reading() for _ in range(300)])
        runner = quick_runner(broker, gw, store)
        await runner.start()
        assert await runner.wait_idle(30)
        await runner.stop()
        await store.close()
        store = await Store.open(db, FAST, gw)       # "restart": a new process would do the same
        assert await store.cursor("mqtt") == 300
        await commit(store, [make_reading() for _ in range(200)])
        runner = quick_runner(broker, gw, store)
        await runner.start()
        assert await runner.wait_idle(30)
        await runner.stop()
        await store.close()
        await await_until(lambda: len(sub.seqs()) >= 500, 30, "500 readings", detail=sub.summary)
        assert sub.seqs() == list(range(1, 501))      # graceful restart: no resend at all
    finally:
        sub.stop()
        broker.stop()
