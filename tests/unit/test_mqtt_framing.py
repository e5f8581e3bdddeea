"""The MQTT sink frames readings' PUBLISH packets and reads their PUBACKs itself (plain sockets).

What mosquitto makes of it is in the integration tests (the test_mqtt files under tests/integration);
here the bytes: a PUBLISH as MQTT 3.1.1 and 5 define it, whatever the remaining length's
size, and PUBACKs however the socket splits them, with the reason-code rule of MQTT 5 (below
0x80 delivered, 0x80 and above never). No peer is needed: the bytes are checked against
paho's own packet reader and against the MQTT packet layout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import SinkError
from gateway.sinks.base import SinkRefusedError
from gateway.sinks.mqtt import _Connection, _RecvBuffer


class Reports:
    """Collects what the connection tells the runner."""

    def __init__(self) -> None:
        self.ok: list[int] = []
        self.errors: list[SinkError] = []

    def delivered(self, seqs: Iterable[int]) -> None:
        self.ok += list(seqs)

    def rejected(self, seqs: Sequence[int], reason: str) -> None:
        raise AssertionError("nothing is rejected over MQTT")

    def broken(self, error: SinkError) -> None:
        self.errors.append(error)


class Recording(_RecvBuffer):
    """The buffer paho reads from, remembering each packet handed to paho (not connected
    here, paho reads none of them: the test only checks what it was given)."""

    __slots__ = ("seen",)

    def __init__(self, client: paho.Client) -> None:
        super().__init__(client)
        self.seen: list[bytes] = []

    def feed(self, data: bytes, closed: bool = False) -> None:
        self.seen.append(data)
        super().feed(data, closed)


def _conn(protocol: int, reports: Reports) -> _Connection:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    conn = _Connection(asyncio.get_running_loop(), client, reports, "amr/gw")
    conn._rbuf = _RecvBuffer(client)
    conn.fast = True
    return conn


def _decode_length(data: bytes) -> tuple[int, int]:
    n, shift, i = 0, 0, 1
    while True:
        b = data[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return n, i
        shift += 7


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311])
@pytest.mark.parametrize("size", [0, 50, 200, 16_000, 20_000, 3_000_000])
async def test_a_publish_is_framed_as_mqtt_defines_it(protocol: int, size: int) -> None:
    conn = _conn(protocol, Reports())
    topic = b"amr/gw/meters/m1/reading"
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    conn.publish(len(topic).to_bytes(2, "big") + topic, payload, 42)
    data = bytes(conn._wbuf)
    assert data[0] == 0x32                       # PUBLISH, QoS 1, no DUP, no retain
    length, i = _decode_length(data)
    assert length == len(data) - i              # the remaining length says what follows
    assert int.from_bytes(data[i:i + 2], "big") == len(topic) and data[i + 2:i + 2 + len(topic)] == topic
    j = i + 2 + len(topic)
    mid = int.from_bytes(data[j:j + 2], "big")
    assert conn.mids == {mid: 42} and mid >= 3   # 1 and 2 are paho's (birth, offline)
    props = b"\x00" if protocol == paho.MQTTv5 else b""
    assert data[j + 2:j + 2 + len(props)] == props
    assert data[j + 2 + len(props):] == payload


async def test_message_ids_skip_those_in_flight_and_wrap() -> None:
    conn = _conn(paho.MQTTv5, Reports())
    conn.mids = {65535: 1, 3: 2}
    conn._mid = 65534
    topic = b"\x00\x01t"
    conn.publish(topic, b"a", 10)
    conn.publish(topic, b"b", 11)
    assert conn.mids == {65535: 1, 3: 2, 4: 10, 5: 11}


async def test_pubacks_split_anywhere_are_settled_in_order_by_reason_code() -> None:
    """Every split of a stream of PUBACKs (MQTT 5 short form, with reason 0x10 "no matching
    subscribers", with properties) delivers the same seqs in order; a PINGRESP between them
    goes to paho; a PUBACK for a message id not ours (a status message) too."""
    stream = (b"\x40\x02\x00\x03"                      # mid 3, success (short form)
              + b"\xd0\x00"                             # PINGRESP: paho's
              + b"\x40\x03\x00\x04\x10"                 # mid 4, 0x10 no matching subscribers: delivered
              + b"\x40\x04\x00\x05\x00\x00"             # mid 5, success, empty properties
              + b"\x40\x02\x00\x01")                    # mid 1: not a reading's
    for cut in range(len(stream) + 1):
        for cut2 in range(cut, len(stream) + 1):
            reports = Reports()
            conn = _conn(paho.MQTTv5, reports)
            conn.mids = {3: 30, 4: 40, 5: 50}
            conn._fd = -1                               # "attached": paho may read what it is fed
            rbuf = conn._rbuf = Recording(conn.client)
            for part in (stream[:cut], stream[cut:cut2], stream[cut2:]):
                if part:
                    conn._take(part)
            assert reports.ok == [30, 40, 50], (cut, cut2)
            assert reports.errors == []
            assert rbuf.seen == [b"\xd0\x00", b"\x40\x02\x00\x01"]
            assert conn.mids == {} and conn._inbuf == b""


@pytest.mark.parametrize(("code", "state"), [(0x87, "refused"), (0x80, "refused"), (0x97, "throttle"),
                                             (0xEE, "refused")])
async def test_a_puback_at_or_above_0x80_is_never_delivery(code: int, state: str) -> None:
    reports = Reports()
    conn = _conn(paho.MQTTv5, reports)
    conn.mids = {3: 30, 4: 40, 5: 50}
    conn._take(b"\x40\x02\x00\x03" + b"\x40\x03\x00\x04" + bytes([code]) + b"\x40\x02\x00\x05")
    assert reports.ok == [30]                           # what came before the refusal counts
    assert len(reports.errors) == 1 and conn.lost
    err = reports.errors[0]
    assert isinstance(err, SinkRefusedError) == (state == "refused")
    assert err.action == ("throttle" if state == "throttle" else "keep")
    assert "seq 40" in str(err)
