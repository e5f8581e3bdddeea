"""The MQTT sink's event-loop driving of paho when something goes wrong mid-session.

The sink runs paho's network work on the event loop (add_reader / add_writer / a 1-s tick).
These cases check that a failure there never leaves a session half alive: a stop cancelled
while it waits for the ``offline`` PUBACK, a keepalive ping the socket could not take at
once, and an exception raised inside paho. Real brokers play every case they can (the
shared mosquitto, or a local server that never acknowledges); where a real peer cannot
produce the condition — a full send buffer for one 2-byte PINGREQ, paho itself raising —
the test injects it and says so.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest

from gateway.settings import MqttSettings
from gateway.sinks.mqtt import MqttSink
from gateway.store import OutboxRow
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    MuteBroker,
    Outcomes,
    _mosquitto_fixture,
    await_until,
)

pytestmark = pytest.mark.integration


def row(seq: int) -> OutboxRow:
    """A committed message as the runner hands it over."""
    return OutboxRow(seq=seq, kind="reading", meter="m1", ts=1.77e9, payload=f'{{"seq":{seq}}}')


def sink_for(host: str, port: int, **kw: Any) -> MqttSink:
    """A sink of its own gateway id (tests sharing the broker never see each other)."""
    return MqttSink(MqttSettings(host=host, port=port, **kw), f"t-{uuid.uuid4().hex[:10]}")


async def test_a_stop_cancelled_while_waiting_for_the_offline_ack_leaves_nothing_on_the_loop() -> None:
    """A broker that accepts the session but never acknowledges (a local server: mosquitto
    always PUBACKs) keeps ``close(True)`` in its bounded wait; cancelling it there must still
    unregister the socket, stop the keepalive tick and close the socket."""

    async with MuteBroker() as broker:
        sink = sink_for("127.0.0.1", broker.port)
        await sink.open(Outcomes())
        conn = sink._conn
        assert conn is not None and conn._fd is not None
        sock = conn.client.socket()
        assert sock is not None
        closing = asyncio.create_task(sink.close(True))
        await asyncio.sleep(0.3)                   # negative check: inside the 5-s wait for the offline PUBACK
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert conn._fd is None, "the socket is still watched by the loop"
        assert conn._misc is None, "the keepalive tick still runs"
        assert sock.fileno() == -1, "the socket was left open"


class RefusesOnePing:
    """Injected (no real peer can fill a socket's send buffer for one 2-byte PINGREQ): the
    first PINGREQ send fails with EAGAIN, as on a congested link; everything else passes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = False

    def send(self, data: bytes) -> int:
        if not self.refused and bytes(data[:1]) == b"\xc0":
            self.refused = True
            raise BlockingIOError(11, "send buffer full (injected)")
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def test_a_ping_the_socket_could_not_take_goes_out_when_there_is_room(mosquitto: Broker) -> None:
    """The keepalive PINGREQ that met a full socket is written once the socket has room, so a
    live broker's session is kept (before: it waited in paho's queue and the link was dropped
    for a missing PINGRESP after one keepalive)."""
    # keepalive 2 s: mosquitto drops a client silent for 3 s, which a loaded run's stalls
    # must not reach by themselves (at 1 s the margin was half a second)
    sink = sink_for(mosquitto.host, mosquitto.port, keepalive_s=2)
    reporter = Outcomes()
    await sink.open(reporter)
    try:
        conn = sink._conn
        assert conn is not None
        proxy = RefusesOnePing(conn.client._sock)  # type: ignore[attr-defined]
        conn.client._sock = proxy  # type: ignore[attr-defined]
        await await_until(lambda: proxy.refused, 10, "a PINGREQ refused by the socket")
        await asyncio.sleep(7.0)                   # negative check: the session survives three keepalives
        assert reporter.errors == [] and reporter.bad == [], (reporter.errors, reporter.bad)
        sink.send(row(1))
        await await_until(lambda: reporter.ok == [1], 10, "a PUBACK on the kept session")
    finally:
        await sink.close(False)


async def test_a_failure_inside_paho_breaks_the_session_instead_of_leaving_it_stuck(mosquitto: Broker) -> None:
    """Injected (no peer makes paho raise): ``loop_read`` raises once. The session must be
    reported broken — the runner then resends from the cursor on a new one — rather than the
    error vanishing into asyncio's callback log while the sink waits for PUBACKs forever.
    A reading's PUBACK is read by the sink itself (plain sockets), so what reaches paho here
    is the PINGRESP of a 1-s keepalive."""
    sink = sink_for(mosquitto.host, mosquitto.port, keepalive_s=1)
    reporter = Outcomes()
    await sink.open(reporter)
    try:
        conn = sink._conn
        assert conn is not None

        def broken_read(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("paho failed (injected)")

        conn.client.loop_read = broken_read  # type: ignore[method-assign]
        sink.send(row(1))
        await await_until(lambda: reporter.errors, 10, "the session reported broken")
        assert "failed while reading" in str(reporter.errors[0])
        assert reporter.bad == []
        assert conn._fd is None and conn.lost
    finally:
        await sink.close(False)
