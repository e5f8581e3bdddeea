"""Two MQTT clients with one client id: the sink names the clash, not only "unreachable".

When a second client connects with the gateway's client id (a copied configuration on a
second gateway, say), the broker drops the gateway's session. An MQTT 5 broker may say
why ("session taken over", 0x8E): the sink's error then names the clash and the fix (its
own ``mqtt.client_id``). mosquitto 2.0 just closes the socket, so the error for a dropped
connection names our client id and the same fix as the possible cause.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import SinkError
from gateway.settings import MqttSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.mqtt import MqttSink, _Connection
from gateway.store import Store
from tests.servicefixtures import MosquittoProcess, await_until

pytestmark = pytest.mark.integration


async def test_a_second_client_with_our_id_is_named_as_the_cause(tmp_path: Path) -> None:
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    client_id = f"clash-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", StoreSettings(), "g1")
    sink = MqttSink(MqttSettings(host=broker.host, port=broker.port, client_id=client_id), "g1")
    runner = SinkRunner(sink, store, backoff=Backoff(base=5.0, cap=5.0))  # stays down while we look
    other = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    try:
        await runner.start()
        await await_until(lambda: runner.state()["state"] == "connected", 20, "the sink connected",
                          detail=runner.state)
        other.connect(broker.host, broker.port, 30)
        other.loop_start()
        await await_until(lambda: runner.state()["state"] != "connected", 20, "the sink evicted",
                          detail=runner.state)
        error = runner.state()["last_error"] or ""
        # mosquitto 2.0 closes the older connection without a reason: the possible cause is named
        assert f"another client may be using our client id '{client_id}'" in error, error
        assert "give every gateway its own mqtt.client_id" in error, error
    finally:
        other.loop_stop()
        other.disconnect()
        await runner.stop()
        await store.close()
        broker.stop()


class Broken:
    """A Reporter that keeps the session errors it hears."""

    def __init__(self) -> None:
        self.errors: list[SinkError] = []

    def delivered(self, seqs: Iterable[int]) -> None:
        """Not used here."""

    def rejected(self, seqs: Sequence[int], reason: str) -> None:
        """Not used here."""

    def broken(self, error: SinkError) -> None:
        """Keep the error."""
        self.errors.append(error)


async def test_session_taken_over_names_the_clash() -> None:
    reporter = Broken()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="amr-g1", protocol=paho.MQTTv5)
    conn = _Connection(asyncio.get_running_loop(), client, reporter, "amr/g1", "amr-g1")
    conn.on_disconnect(client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E), None)
    assert len(reporter.errors) == 1
    text = str(reporter.errors[0])
    assert "another client connected with our client id 'amr-g1'" in text, text
    assert "session taken over" in text and "give every gateway its own mqtt.client_id" in text, text
