"""A broker that denies the gateway's topic (issue 16 item 1), against a real mosquitto.

mosquitto 2.x answers a QoS 1 PUBLISH that its ACL denies with a PUBACK whose MQTT 5 reason
code is 0x87 (not authorized), and drops the message; under MQTT 3.1.1 the PUBACK has no
reason code and looks like delivery. Each test runs a private mosquitto on a free loopback
port with an ``acl_file`` of its own; anonymous clients may read everything, and may write
only once the test rewrites the file and reloads the broker (SIGHUP re-reads ``acl_file``).
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.settings import MqttProtocol, MqttSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.mqtt import MqttSink
from gateway.store import Store
from tests.servicefixtures import Broker, MosquittoProcess, Subscriber, await_until, commit, make_reading

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)
DENY_WRITES = "topic read #\n"
DENY_READINGS = "topic read #\ntopic write amr/+/status\n"    # the status topic only
ALLOW_WRITES = "topic readwrite #\n"


class AclBroker:
    """A private mosquitto whose ACL file the test rewrites and reloads."""

    def __init__(self, workdir: Path, acl: str = DENY_WRITES) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.acl = workdir / "acl"
        self.acl.write_text(acl)
        self.process = MosquittoProcess(workdir / "broker", extra_conf=f"acl_file {self.acl}\n")

    @property
    def broker(self) -> Broker:
        """Where it listens."""
        return self.process.broker

    def allow_writes(self) -> None:
        """Rewrite the ACL to let anonymous clients publish, reload (SIGHUP), and wait (bounded)
        until a QoS 1 probe publish is acknowledged with success: the new ACL is in force."""
        self.acl.write_text(ALLOW_WRITES)
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if probe_publish(self.broker) < 0x80:
                return
        pytest.fail("mosquitto did not apply the rewritten ACL after SIGHUP")


def probe_publish(broker: Broker, timeout: float = 5.0) -> int:
    """Publish once at QoS 1 over MQTT 5 to a topic nobody reads; the PUBACK's reason code."""
    done = threading.Event()
    codes: list[int] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)

    def on_publish(c: paho.Client, userdata: object, mid: int, reason: paho.ReasonCode, props: object) -> None:
        codes.append(int(reason.value))
        done.set()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port, 10)
    client.loop_start()
    try:
        client.publish("probe/acl", b"x", qos=1)
        if not done.wait(timeout):
            pytest.fail(f"no PUBACK for the probe within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    """A started private mosquitto that denies every publish until ``allow_writes()``."""
    b = AclBroker(tmp_path / "acl-broker")
    b.process.start()
    try:
        yield b
    finally:
        b.process.stop()


def test_mosquitto_answers_a_denied_qos1_publish_with_0x87(acl_broker: AclBroker) -> None:
    """The premise, checked on the installed broker: denied → 0x87; allowed → below 0x80."""
    assert probe_publish(acl_broker.broker) == 0x87
    acl_broker.allow_writes()
    assert probe_publish(acl_broker.broker) < 0x80


async def test_denied_publishes_are_not_delivered_and_go_out_once_in_order_after_the_acl_is_fixed(
    tmp_path: Path, acl_broker: AclBroker, caplog: pytest.LogCaptureFixture
) -> None:
    gw = f"t-{uuid.uuid4().hex[:10]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    sub = Subscriber(acl_broker.broker, f"amr/{gw}/meters/+/reading", f"sub-{gw}").start()
    # inflight above the broker's Receive Maximum (max_inflight_messages 100): the window shrinks to it.
    sink = MqttSink(MqttSettings(host=acl_broker.broker.host, port=acl_broker.broker.port, inflight=1000), gw)
    # Pauses of 1-2 s: a reload and its probe (milliseconds) fall between two sessions.
    runner = SinkRunner(sink, store, backoff=Backoff(base=2.0, cap=2.0))
    seqs = await commit(store, [make_reading(f"m{i % 3}", kwh=str(100 + i)) for i in range(150)])
    caplog.set_level(logging.INFO, logger="amr.sinks")
    await runner.start()
    try:
        # The birth message is refused already (the ACL denies every publish): each try is
        # one pause of the backoff.
        await await_until(lambda: runner.backoff.attempts >= 3, 30, "three tries refused by the ACL")
        seqs += await commit(store, [make_reading("m9", kwh=str(900 + i)) for i in range(10)])
        await await_until(lambda: runner.backoff.attempts >= 4, 30, "a fourth refused try")
        state = runner.state()
        assert state["state"] == "refused", state
        assert "Not authorized" in state["last_error"] and "0x87" in state["last_error"], state
        assert state["published"] == 0 and state["cursor"] == 0 and state["backlog"] == 160
        assert await store.cursor("mqtt") == 0                       # nothing counts as delivered
        assert sink.window == 100                                    # the broker's Receive Maximum
        assert sub.seqs() == []                                      # and nothing reached anyone
        refusals = [r for r in caplog.records if "refuses our messages" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR   # once per state change

        await await_until(lambda: runner._session is not None and not runner._session.active, 10,
                          "the runner pausing between sessions")
        acl_broker.allow_writes()
        assert await runner.wait_idle(60), runner.state()
        msgs = await await_until(lambda: sub.received(lambda m: len(m) >= len(seqs)), 30, f"{len(seqs)} readings",
                                 detail=sub.summary)
        assert len(msgs) == len(seqs)
        assert sub.seqs() == seqs                                    # every reading once, in order
        assert [m.json()["points"]["energy_import_kwh"]["raw"] for m in msgs[:2]] == [100, 101]
        state = runner.state()
        assert state["state"] == "connected" and state["published"] == len(seqs) and state["backlog"] == 0
        assert await store.cursor("mqtt") == seqs[-1]
        again = [r for r in caplog.records if "again" in r.getMessage()]
        assert len(again) == 1
    finally:
        await runner.stop()
        sub.stop()
        await store.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_what_each_protocol_can_see_of_a_denied_reading_topic(tmp_path: Path, protocol: MqttProtocol) -> None:
    """The status topic is allowed, the readings' topics are not. Under MQTT 5 the denial
    holds the cursor at 0 and health names the refused seq. Under 3.1.1 the PUBACK of a
    denied publish is the same as a delivered one's (mosquitto 2.0 then drops the
    connection), so the cursor moves over readings nobody received: why 5 is the default
    (README and the example configuration say so)."""
    broker = AclBroker(tmp_path / "acl-broker", DENY_READINGS)
    broker.process.start()
    gw = f"t-{uuid.uuid4().hex[:10]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    sub = Subscriber(broker.broker, f"amr/{gw}/meters/+/reading", f"sub-{gw}").start()
    await commit(store, [make_reading("m1", kwh=str(i)) for i in range(50)])
    settings = MqttSettings(host=broker.broker.host, port=broker.broker.port, protocol=protocol, inflight=5)
    runner = SinkRunner(MqttSink(settings, gw), store, backoff=Backoff(base=0.1, cap=0.2))
    await runner.start()
    try:
        if protocol == "5":
            await await_until(lambda: runner.sessions >= 3, 30, "three refused sessions")
            assert runner.status == "refused" and runner.published == 0
            assert "refused seq 1: Not authorized" in (runner.last_error or "")
            assert await store.cursor("mqtt") == 0
        else:
            await await_until(lambda: runner.state()["cursor"] > 0, 30, "the cursor moving over denied readings")
        assert sub.seqs() == []
    finally:
        await runner.stop()
        sub.stop()
        await store.close()
        broker.process.stop()
