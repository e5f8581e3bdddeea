"""``bench/pipeline_floor.py``: the yardstick pipeline really stores, publishes and writes.

bench/README.md sets the gateway's store and sinks beside this minimal pipeline; the
comparison means something only if the minimal one does the same work: every row in the
outbox schema, every message acknowledged by a real broker with a PUBACK, every line
accepted by a real time-series server. Against the shared mosquitto and VictoriaMetrics.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from pathlib import Path

from bench.pipeline_floor import FloorPipeline, _Mqtt, mqtt_publish
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    Subscriber,
    _mosquitto_fixture,
    _victoria_fixture,
    await_until,
    vm_export,
    wait_until,
)

_REGS = [tuple(range(10)), (0, 43_815), (2194, 2177, 2208)]


def test_publish_frame_carries_a_long_payload_whole() -> None:
    payload = b"x" * 300                       # remaining length needs two bytes
    frame = mqtt_publish("a/b", 7, payload)
    assert frame[0] == 0x32
    length = (frame[1] & 0x7F) | (frame[2] << 7)
    assert frame[1] & 0x80 and length == len(frame) - 3
    assert frame[3:5] == b"\x00\x03" and frame[5:8] == b"a/b" and frame[8:10] == b"\x00\x07"
    assert frame[10] == 0 and frame[11:] == payload


def test_pubacks_with_a_failure_reason_are_refusals_not_acks() -> None:
    async def feed() -> tuple[int, int]:
        proto = _Mqtt()
        # split mid-packet: a success (no reason byte), then 0x87 "not authorized"
        proto.data_received(b"\x40\x02\x00\x01\x40")
        proto.data_received(b"\x03\x00\x02\x87")
        return proto.acked, proto.refused

    assert asyncio.run(feed()) == (1, 1)


def test_every_read_is_committed_acknowledged_received_and_written(
        tmp_path: Path, mosquitto: Broker, victoria_metrics: str) -> None:
    gateway = f"floor-{uuid.uuid4().hex[:8]}"
    sub = Subscriber(mosquitto, f"amr/{gateway}/#", f"sub-{gateway}").start()
    slot0 = float(int(time.time()))

    async def run() -> FloorPipeline:
        floor = FloorPipeline(tmp_path, gateway, mosquitto.port, victoria_metrics)
        await floor.start()
        for i in range(40):
            floor.take(i % 4 + 1, "p0", slot0 - 40 + i, _REGS)
        assert floor.mqtt is not None
        mqtt = floor.mqtt
        await await_until(lambda: mqtt.acked >= 40, 10, "40 PUBACKs")
        await await_until(lambda: floor.posted >= 40, 10, "40 lines posted")
        await floor.close()
        return floor

    try:
        floor = asyncio.run(run())
        msgs = wait_until(lambda: sub.received(lambda m: len(m) >= 40), 10, "40 messages", detail=sub.summary)
    finally:
        sub.stop()
    assert floor.committed == 40 and floor.mqtt is not None and floor.mqtt.refused == 0
    assert floor.mqtt.transport is not None and floor.mqtt.transport.is_closing()   # no socket left behind
    with sqlite3.connect(tmp_path / "floor.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM outbox WHERE kind='reading'").fetchone()[0] == 40
    doc = json.loads(msgs[0].payload)
    assert doc["schema"] == "amr.reading.v1" and doc["gateway"] == gateway and doc["seq"] == 1
    assert doc["points"]["power_kw"]["value"] == 0.043815 and doc["points"]["voltage_v_l1"]["unit"] == "V"
    assert sorted(json.loads(m.payload)["seq"] for m in msgs) == list(range(1, 41))
    series = vm_export(victoria_metrics, f'{{__name__="amr_reading_seq",gateway="{gateway}"}}')
    assert sorted(v for s in series for v in s["values"]) == list(range(1, 41))
