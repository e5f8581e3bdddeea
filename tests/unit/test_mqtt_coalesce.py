"""The MQTT sink joins a burst of QoS 1 PUBLISH packets into one write, bytes and order kept."""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sinks.mqtt import _coalesce


def _client_with_queue() -> paho.Client:
    """A paho client (never connected) whose send queue holds a PINGREQ, three QoS 1
    publishes, a partly written publish, two more publishes and a QoS 0 publish."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="coalesce-test", protocol=paho.MQTTv5)
    q = client._out_packet  # type: ignore[attr-defined]

    def pkt(command: int, qos: int, data: bytes, mid: int, pos: int = 0) -> None:
        q.append({"command": command, "mid": mid, "qos": qos, "pos": pos, "to_process": len(data) - pos,
                  "packet": bytearray(data), "info": None})

    pkt(0xC0, 0, b"\xc0\x00", 0)
    pkt(0x32, 1, b"P1", 1)
    pkt(0x32, 1, b"P2", 2)
    pkt(0x32, 1, b"P3", 3)
    pkt(0x32, 1, b"xxP4", 4, pos=2)      # partly written: kept as it is
    pkt(0x32, 1, b"P5", 5)
    pkt(0x32, 1, b"P6", 6)
    pkt(0x30, 0, b"Q0", 7)               # QoS 0: paho reports it after the write, kept apart
    return client


def test_a_burst_of_qos1_publishes_becomes_one_packet_with_the_same_bytes_in_order() -> None:
    client = _client_with_queue()
    q = client._out_packet  # type: ignore[attr-defined]
    wire_before = b"".join(bytes(p["packet"][p["pos"]:]) for p in q)
    _coalesce(client)
    assert [bytes(p["packet"][p["pos"]:]) for p in q] == [b"\xc0\x00", b"P1P2P3", b"P4", b"P5P6", b"Q0"]
    assert b"".join(bytes(p["packet"][p["pos"]:]) for p in q) == wire_before
    joined = q[1]
    assert joined["to_process"] == 6 and joined["pos"] == 0 and joined["qos"] == 1
    assert joined["command"] & 0xF0 == 0x30 and joined["mid"] == 3


def test_a_single_publish_is_left_alone() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="coalesce-one", protocol=paho.MQTTv5)
    q = client._out_packet  # type: ignore[attr-defined]
    packet = {"command": 0x32, "mid": 1, "qos": 1, "pos": 0, "to_process": 2, "packet": bytearray(b"P1"),
              "info": None}
    q.append(packet)
    _coalesce(client)
    assert list(q) == [packet] and q[0] is packet
