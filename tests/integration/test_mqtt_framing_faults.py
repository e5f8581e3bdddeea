"""The MQTT sink's own PUBLISH framing (plain sockets) under faults, against a real mosquitto.

Since the sink frames its readings' QoS 1 PUBLISH packets itself and settles their PUBACKs
itself (paho keeps the session, keepalive and status messages), these check what paho used
to guarantee for it: the broker's flow control (``max_inflight_messages``, announced as
Receive Maximum in an MQTT 5 CONNACK), a socket that takes nothing for a while (a stopped
broker: partial writes, ``EAGAIN``, a keepalive due in between), and an ACL that denies one
meter's topic in the middle of a full window. Each test runs a private mosquitto on a free
loopback port with its own configuration; the subscriber is an independent paho client.

What must hold every time: every committed seq reaches the subscriber, in order within a
session; the cursor never passes a seq the broker did not acknowledge with success; and
when the peer is healthy again, committed equals delivered.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import pytest

from gateway.model import PointValue, Reading
from gateway.settings import MqttProtocol, MqttSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.mqtt import MqttSink
from gateway.store import Store
from tests.servicefixtures import MosquittoProcess, Subscriber, await_until, commit, make_reading

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


def runner_for(broker: MosquittoProcess, gw: str, store: Store, *, inflight: int = 100,
               protocol: MqttProtocol = "5", keepalive_s: int = 30,
               backoff: Backoff | None = None) -> tuple[SinkRunner, MqttSink]:
    """A runner with a short reconnect backoff (fault tests stay fast) and its sink."""
    sink = MqttSink(MqttSettings(host=broker.host, port=broker.port, inflight=inflight, protocol=protocol,
                                 keepalive_s=keepalive_s), gw)
    return SinkRunner(sink, store, backoff=backoff or Backoff(base=0.05, cap=0.5)), sink


async def release(broker: MosquittoProcess, runner: SinkRunner, store: Store) -> None:
    """A test's end, passed or failed: the broker resumed if a test stopped it (SIGSTOP), the
    sink stopped, the store closed, the broker stopped."""
    if broker.proc is not None and broker.proc.poll() is None:
        os.kill(broker.proc.pid, signal.SIGCONT)
    await runner.stop()
    await store.close()
    broker.stop()


class Rig(NamedTuple):
    """One test's private mosquitto, the gateway id, its store, an independent subscriber
    (already subscribed) and the MQTT sink's runner (not started) with its sink."""

    broker: MosquittoProcess
    gw: str
    store: Store
    sub: Subscriber
    runner: SinkRunner
    sink: MqttSink


#: The ``rig`` fixture: ``await rig(extra_conf, topic=..., **options of runner_for)`` -> Rig
MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    """Makes the test's :class:`Rig`: a mosquitto with ``extra_conf`` on a free loopback port, a
    store for a fresh gateway id, a subscriber to ``amr/{gw}/{topic}`` and a runner
    (:func:`runner_for`); however the test ends, :func:`release` then (broker resumed, sink
    stopped, store closed, broker stopped)."""
    made: list[tuple[MosquittoProcess, SinkRunner, Store]] = []

    async def make(extra_conf: str, *, topic: str = "meters/+/reading", inflight: int = 100,
                   protocol: MqttProtocol = "5", keepalive_s: int = 30, backoff: Backoff | None = None) -> Rig:
        broker = MosquittoProcess(tmp_path / "broker", extra_conf=extra_conf)
        broker.start()
        gw = f"t-{uuid.uuid4().hex[:8]}"
        try:
            store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
        except BaseException:
            broker.stop()
            raise
        runner, sink = runner_for(broker, gw, store, inflight=inflight, protocol=protocol, keepalive_s=keepalive_s,
                                  backoff=backoff)
        made.append((broker, runner, store))         # released from here on, however the test ends
        sub = Subscriber(broker.broker, f"amr/{gw}/{topic}", f"sub-{gw}").start()
        return Rig(broker, gw, store, sub, runner, sink)

    yield make
    for broker, runner, store in made:
        await release(broker, runner, store)


def backward_jumps(seqs: list[int]) -> int:
    """How often the received seq went backwards (each is a resend after a reconnect)."""
    return sum(1 for a, b in itertools.pairwise(seqs) if b <= a)


def wide_reading(meter: str, k: int, points: int = 120) -> Reading:
    """A reading of ``points`` points (about 8 KB of JSON): a window of them is far more
    than loopback socket buffers hold, so a stopped broker leaves a PUBLISH half written."""
    pts = {f"register_{i:03d}_kwh": PointValue(Decimal(k * 1000 + i), Decimal(k * 1000 + i), "kWh")
           for i in range(points)}
    r = make_reading(meter, kwh=str(k))
    r.points = pts
    return r


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_the_brokers_inflight_limit_loses_nothing(protocol: MqttProtocol, rig: MakeRig) -> None:
    """mosquitto with ``max_inflight_messages 2``: under MQTT 5 it announces Receive Maximum 2
    and the sink's window shrinks to it; under 3.1.1 it announces nothing. Either way every
    reading of a 3,000-reading backlog (window 100 configured) reaches the subscriber once,
    in order, in one session, and the cursor ends at the last seq."""
    _, _, store, sub, runner, sink = await rig("max_inflight_messages 2\n", inflight=100, protocol=protocol)
    for i in range(6):
        await commit(store, [make_reading(f"m{j}", kwh=str(i)) for j in range(500)])
    await runner.start()
    assert await runner.wait_idle(60), runner.state()
    await await_until(lambda: len(sub.seqs()) >= 3000, 30, "the whole backlog", detail=sub.summary)
    assert sub.seqs() == list(range(1, 3001))
    assert store.cursor_now("mqtt") == store.last_seq == 3000
    state = runner.state()
    assert runner.sessions == 1 and state["failed"] == 0 and state["rejected"] == 0, state
    if protocol == "5":
        assert sink.window == 2          # the CONNACK's Receive Maximum, not mqtt.inflight
    sub.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_stopped_broker_leaves_a_packet_half_written_and_nothing_breaks(
        protocol: MqttProtocol, rig: MakeRig,
) -> None:
    """The broker stops reading (SIGSTOP) while a window of ~9 KB readings goes out: the
    socket takes part of the bytes and refuses the rest (``EAGAIN``), so a PUBLISH is left
    half written, and paho's keepalive PINGREQ comes due in the pause (keepalive 10 s). When
    the broker runs again the rest follows in the same session: had any other bytes (the
    PINGREQ) cut into the half written packet, mosquitto would have dropped the connection
    as malformed. Every seq arrives once, in order, and only PUBACKed seqs ever count: the
    cursor does not move while the broker is stopped."""
    broker, _, store, sub, runner, sink = await rig("max_inflight_messages 0\n",   # no Receive Maximum
                                                    inflight=1000, keepalive_s=10, protocol=protocol)
    assert broker.proc is not None
    pid = broker.proc.pid
    loop = asyncio.get_running_loop()
    await runner.start()
    await await_until(lambda: runner.status == "connected", 20, "the sink connecting")
    # paho's PINGREQ is due 10 s after its birth message; mosquitto drops a client it has read
    # nothing from for 1.5 × keepalive (15 s), so the three commits below have 13 s to be
    # made while it is stopped (with keepalive 4 s, a loaded run took more than its 6 s)
    connected_at = loop.time()
    await commit(store, [wide_reading("m0", 0)])
    await await_until(lambda: store.cursor_now("mqtt") == 1, 20, "the probe reading delivered")
    conn = sink._conn
    assert conn is not None
    await asyncio.sleep(max(0.0, connected_at + 2.0 - loop.time()))
    os.kill(pid, signal.SIGSTOP)
    try:
        for k in range(1, 4):
            await commit(store, [wide_reading(f"m{j}", k) for j in range(500)])
        await await_until(lambda: conn.pending_bytes > 0, 20,
                          "bytes the socket refused while the broker is stopped")
        cursor = store.cursor_now("mqtt")
        await asyncio.sleep(max(0.5, connected_at + 10.5 - loop.time()))   # past the PINGREQ's due time
        assert store.cursor_now("mqtt") == cursor    # nothing counts without its PUBACK
        assert conn.pending_bytes > 0 and sink._conn is conn and not conn.lost
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await runner.wait_idle(60), runner.state()
    total = store.last_seq
    assert total == 1501
    await await_until(lambda: len(sub.seqs()) >= total, 60, f"all {total} seqs", detail=sub.summary)
    assert sub.seqs() == list(range(1, total + 1))
    assert runner.sessions == 1, runner.state()
    assert store.cursor_now("mqtt") == total
    await asyncio.sleep(1.5)                   # the PINGREQ that waited goes out and is answered
    assert sink._conn is conn and not conn.lost, runner.state()
    sub.stop()


async def test_a_broker_that_takes_nothing_for_a_keepalive_is_dropped_and_everything_resent(rig: MakeRig) -> None:
    """The broker stays stopped longer than the keepalive with bytes waiting: the session is
    dropped (the sink's own rule while its bytes wait, as paho's PINGREQ cannot go out) and,
    once the broker runs again, everything is resent from the cursor: every seq arrives, in
    order within each session, and committed equals delivered."""
    broker, _, store, sub, runner, _ = await rig("max_inflight_messages 0\n", inflight=1000, keepalive_s=1)
    assert broker.proc is not None
    pid = broker.proc.pid
    await runner.start()
    await await_until(lambda: runner.status == "connected", 20, "the sink connecting")
    os.kill(pid, signal.SIGSTOP)
    try:
        for k in range(3):
            await commit(store, [wide_reading(f"m{j}", k) for j in range(500)])
        await await_until(lambda: runner.sessions >= 1 and runner.status != "connected", 20,
                          "the sink dropping a broker that takes nothing", detail=runner.state)
        cursor = store.cursor_now("mqtt")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await runner.wait_idle(60), runner.state()
    total = store.last_seq
    await await_until(lambda: set(range(1, total + 1)) <= set(sub.seqs()), 60, f"all {total} seqs",
                      detail=sub.summary)
    seqs = sub.seqs()
    assert set(seqs) == set(range(1, total + 1))
    assert backward_jumps(seqs) <= runner.sessions - 1
    assert store.cursor_now("mqtt") == total
    assert cursor < total
    sub.stop()


DENY_ONE_METER = ("topic read #\n"
                  "topic write amr/+/status\n"
                  "topic write amr/+/meters/+/reading\n"
                  "topic deny amr/+/meters/bad/reading\n")


async def test_a_denied_reading_in_the_middle_of_a_full_window_holds_the_cursor(tmp_path: Path, rig: MakeRig) -> None:
    """The ACL denies one meter's topic only (mosquitto 2.0 ``topic deny``): the probe reading
    goes through, the window fills with 1,000 readings and the denied one (seq 301) sits in
    its middle. mosquitto answers it 0x87 and closes the connection. The cursor must stop
    right before it, whatever the broker acknowledged after it, and stay there through every
    retry; every seq below it reached the subscriber. Once the ACL allows the topic (SIGHUP
    reload), every seq arrives and committed equals delivered."""
    acl = tmp_path / "acl"
    acl.write_text(DENY_ONE_METER)
    broker, _, store, sub, runner, _ = await rig(f"acl_file {acl}\nmax_inflight_messages 0\n", inflight=1000,
                                                 backoff=Backoff(base=0.3, cap=0.6))
    readings = [make_reading("bad" if i == 300 else f"m{i % 7}", kwh=str(i)) for i in range(1000)]
    seqs = await commit(store, readings)
    assert seqs == list(range(1, 1001))
    await runner.start()
    await await_until(lambda: runner.sessions >= 3 and runner.status == "refused", 30,
                      "a few sessions refused at the denied reading", detail=runner.state)
    assert store.cursor_now("mqtt") == 300, runner.state()
    assert "refused seq 301" in (runner.last_error or ""), runner.state()
    got = await await_until(lambda: sub.received(lambda m: len(m) >= 300) and sub.seqs(), 20,
                            "the readings before the denied one", detail=sub.summary)
    assert set(range(1, 301)) <= set(got) and 301 not in got
    assert store.cursor_now("mqtt") == 300          # still: no later PUBACK moved it
    acl.write_text(DENY_ONE_METER.replace("topic deny", "topic write"))
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    assert await runner.wait_idle(60), runner.state()
    await await_until(lambda: set(range(1, 1001)) <= set(sub.seqs()), 30, "every seq", detail=sub.summary)
    assert store.cursor_now("mqtt") == 1000 and runner.status == "connected"
    assert backward_jumps(sub.seqs()) <= runner.sessions - 1
    sub.stop()


async def test_a_broker_killed_with_a_publish_half_written_loses_nothing(tmp_path: Path, rig: MakeRig) -> None:
    """The broker is stopped with a PUBLISH half written, then killed (SIGKILL: the socket is
    reset under the pending bytes) and started again on the same port. The half-written
    bytes belong to the dead session only: the new session starts with a clean CONNECT
    (mosquitto would refuse anything else) and resends from the cursor. Nothing counted as
    delivered before the kill was missing at the subscriber, and in the end every seq
    arrives and committed equals delivered. The restarted broker first denies publishing
    (its ACL) until the subscriber has subscribed again, so what the gateway resends cannot
    reach a broker with nobody subscribed."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    broker, _, store, sub, runner, sink = await rig(f"acl_file {acl}\nmax_inflight_messages 0\n", inflight=1000)
    assert broker.proc is not None
    await runner.start()
    await commit(store, [wide_reading(f"m{j}", 0) for j in range(50)])
    await await_until(lambda: store.cursor_now("mqtt") == 50 and len(sub.seqs()) >= 50, 20,
                      "the first readings delivered and received", detail=sub.summary)
    os.kill(broker.proc.pid, signal.SIGSTOP)
    for k in range(1, 4):
        await commit(store, [wide_reading(f"m{j}", k) for j in range(500)])
    conn = sink._conn     # the sink's framing buffer is what is under test
    await await_until(lambda: conn is not None and conn.pending_bytes > 0, 20, "bytes waiting for the socket")
    counted = store.cursor_now("mqtt")
    received = set(sub.seqs())
    assert set(range(1, counted + 1)) <= received      # counted only with the broker's PUBACK
    broker.proc.kill()
    broker.proc.wait(10)
    broker.proc = None
    acl.write_text("topic read #\n")                   # publishing denied until the subscriber is back
    sub._subscribed.clear()
    broker.start()
    await await_until(sub._subscribed.is_set, 20, "the subscriber subscribed again")
    await await_until(lambda: runner.status == "refused", 20, "the gateway refused by the ACL meanwhile",
                      detail=runner.state)
    assert store.cursor_now("mqtt") == counted
    acl.write_text("topic readwrite #\n")
    broker.proc.send_signal(signal.SIGHUP)               # type: ignore[union-attr]
    assert await runner.wait_idle(60), runner.state()
    total = store.last_seq
    await await_until(lambda: set(range(1, total + 1)) <= set(sub.seqs()), 60, f"all {total} seqs",
                      detail=sub.summary)
    assert store.cursor_now("mqtt") == total and runner.sessions >= 2
    assert backward_jumps(sub.seqs()) <= runner.sessions - 1
    sub.stop()


async def test_a_stop_with_a_publish_half_written_counts_only_what_was_acknowledged(rig: MakeRig) -> None:
    """The gateway stops (graceful) while the broker is stopped and a PUBLISH is half
    written: the drain waits its bounded time, the connection is closed without a
    DISCONNECT or an ``offline`` publish cut into the half-written bytes, and the stop
    returns. The saved cursor covers only what the broker acknowledged (all of it reached
    the subscriber); the broker, running again, publishes the will (``offline``), and a
    new runner delivers the rest from the cursor."""
    broker, gw, store, sub, runner, sink = await rig("max_inflight_messages 0\n", topic="#", inflight=1000)
    runner.drain_timeout_s = 1.0
    assert broker.proc is not None
    pid = broker.proc.pid
    loop = asyncio.get_running_loop()
    await runner.start()
    await commit(store, [wide_reading(f"m{j}", 0) for j in range(20)])
    await await_until(lambda: store.cursor_now("mqtt") == 20, 20, "the first readings delivered")
    os.kill(pid, signal.SIGSTOP)
    try:
        for k in range(1, 4):
            await commit(store, [wide_reading(f"m{j}", k) for j in range(500)])
        conn = sink._conn
        await await_until(lambda: conn is not None and conn.pending_bytes > 0, 20, "bytes waiting for the socket")
        t = loop.time()
        await runner.stop()
        assert loop.time() - t < 10.0
    finally:
        os.kill(pid, signal.SIGCONT)
    saved = await store.cursor("mqtt")
    assert 20 <= saved < store.last_seq
    await await_until(lambda: [m.payload for m in sub.snapshot() if m.topic.endswith("/status")][-1:]
                      == [b"offline"], 20, "the will published by the broker", detail=sub.summary)
    assert set(range(1, saved + 1)) <= set(sub.seqs())
    again, _ = runner_for(broker, gw, store, inflight=1000)
    await again.start()
    try:
        assert await again.wait_idle(60), again.state()
    finally:
        await again.stop()
    total = store.last_seq
    await await_until(lambda: set(range(1, total + 1)) <= set(sub.seqs()), 60, f"all {total} seqs",
                      detail=sub.summary)
    assert await store.cursor("mqtt") == total
    sub.stop()


async def oversized_refused(runner: SinkRunner, store: Store, sub: Subscriber) -> str:
    """Commits a small reading, one of about 9 KB and another small one, starts the sink and
    waits until the big one (seq 2) is refused: the first is delivered, the cursor stays
    before the refused one. Returns the sink's error (the refusal's text)."""
    await commit(store, [make_reading("m1", kwh="1")])
    await commit(store, [wide_reading("m2", 2)])
    await commit(store, [make_reading("m3", kwh="3")])
    await runner.start()
    await await_until(lambda: runner.sessions >= 2 and runner.status == "refused", 30,
                      "the oversized reading refused", detail=runner.state)
    assert store.cursor_now("mqtt") == 1
    await await_until(lambda: sub.seqs() == [1], 10, "the reading before it", detail=sub.summary)
    return runner.last_error or ""


async def test_a_reading_over_the_brokers_message_size_limit_is_refused_with_its_reason(rig: MakeRig) -> None:
    """mosquitto's ``message_size_limit``: a PUBLISH whose payload is larger is answered (MQTT
    5) with PUBACK 0x95 (packet too large), a code paho has no PUBACK name for. It is a
    refusal like any code >= 0x80: the cursor stays before it, health says ``refused`` with
    the code and the setting to change (not an unreachable broker or a client failure), and
    once the broker's limit is raised (reload) every reading arrives in order."""
    broker, _, store, sub, runner, _ = await rig("message_size_limit 4096\n")
    error = await oversized_refused(runner, store, sub)
    assert "refused seq 2" in error and "0x95" in error and "message_size_limit" in error, error
    broker.conf.write_text(broker.conf.read_text().replace("message_size_limit 4096", "message_size_limit 0"))
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)                  # mosquitto reloads the limit
    assert await runner.wait_idle(60), runner.state()
    await await_until(lambda: len(sub.seqs()) >= 3, 30, "every reading", detail=sub.summary)
    assert sub.seqs() == [1, 2, 3] and store.cursor_now("mqtt") == 3
    sub.stop()


async def test_a_reading_over_the_brokers_maximum_packet_size_is_refused_not_sent(rig: MakeRig) -> None:
    """mosquitto's ``max_packet_size``, announced in the MQTT 5 CONNACK: a broker drops the
    connection on a larger PUBLISH without a PUBACK, so sending it would reconnect in a loop
    while everything behind it waits. The sink refuses it before sending: health says
    ``refused`` naming the limit and the setting, the cursor stays before it, and once the
    broker's limit is raised (restart) every reading arrives, in order."""
    broker, gw, store, sub, runner, _ = await rig("max_packet_size 4096\n")
    error = await oversized_refused(runner, store, sub)
    assert "maximum packet size is 4096 bytes and seq 2" in error and "max_packet_size" in error, error
    assert "lost the connection" not in error
    sub.stop()
    broker.stop()
    broker.conf.write_text(broker.conf.read_text().replace("max_packet_size 4096", "max_packet_size 65536"))
    broker.start()
    sub = Subscriber(broker.broker, f"amr/{gw}/meters/+/reading", f"sub2-{gw}").start()
    await asyncio.sleep(0.5)                                # the subscriber is in before the replay
    assert await runner.wait_idle(60), runner.state()
    await await_until(lambda: store.cursor_now("mqtt") == 3, 30, "every reading acknowledged",
                      detail=runner.state)
    await await_until(lambda: 2 in sub.seqs() and 3 in sub.seqs(), 10, "the rest", detail=sub.summary)
    assert [s for s in sub.seqs() if s >= 2] == [2, 3]
    sub.stop()
