"""Both sinks as the runtime builds them (``build_sinks``), on real peers: one peer down
never holds back the other, and the one that was down catches up on its own."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings, InfluxSettings, MqttSettings, Settings, StoreSettings
from gateway.sinks.delivery import build_sinks, prometheus_lines
from gateway.store import Store
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    Subscriber,
    VictoriaProcess,
    _mosquitto_fixture,
    await_until,
    commit,
    make_reading,
    vm_seqs,
)

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


async def test_tsdb_down_does_not_hold_back_mqtt_and_catches_up(tmp_path: Path, mosquitto: Broker) -> None:
    gw = f"t-{uuid.uuid4().hex[:8]}"
    vm = VictoriaProcess(tmp_path / "vm")             # port reserved, not started yet
    settings = Settings(
        gateway=GatewaySettings(id=gw, data_dir=tmp_path), buses={}, meters={}, schedules={}, profiles={},
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        influxdb=InfluxSettings(url=vm.url, batch_size=200, batch_age_s=0.05, timeout_s=2.0),
    )
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    sub = Subscriber(mosquitto, f"amr/{gw}/meters/+/reading", f"sub-{gw}").start()
    runners = build_sinks(settings, store)
    mqtt, influx = runners
    for r in runners:
        r.backoff.cap = 0.5
        await r.start()
    try:
        t0 = time.time() - 300
        for b in range(10):
            await commit(store, [make_reading(f"m{j}", ts=t0 + b * 10 + j * 0.01) for j in range(100)])
        assert await mqtt.wait_idle(30), mqtt.state()
        assert influx.state()["state"] == "disconnected" and influx.state()["backlog"] == 1000
        await await_until(lambda: len(sub.snapshot()) >= 1000, 30, "1000 readings on MQTT", detail=sub.summary)
        lines = prometheus_lines(runners)
        assert 'amr_sink_backlog{sink="influxdb"} 1000' in lines
        assert 'amr_sink_backlog{sink="mqtt"} 0' in lines
        assert 'amr_sink_up{sink="influxdb"} 0' in lines
        await asyncio.to_thread(vm.start)
        assert await influx.wait_idle(60), influx.state()
        await await_until(lambda: influx.status == "connected", 10, "influxdb connected")
        landed = await asyncio.to_thread(vm_seqs, vm.url, "amr_reading", gw)
        assert sorted(landed) == list(range(1, 1001))
        assert sub.seqs() == list(range(1, 1001))
    finally:
        for r in runners:
            await r.stop()
        sub.stop()
        await store.close()
        await asyncio.to_thread(vm.stop)
