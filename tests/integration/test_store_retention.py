"""Retention in the running gateway: no row a configured sink (enabled or disabled) has not
acknowledged is deleted, even by a retention round that runs before any sink registers
(issue 16 item 7: the first round ran 5 s after start and purged undelivered rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings_from_text
from gateway.runtime import STORE_FILE, Gateway
from gateway.settings import StoreSettings
from gateway.store import Store
from tests.servicefixtures import free_port, make_reading

pytestmark = pytest.mark.integration


async def test_retention_before_the_sinks_register_keeps_undelivered_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seed = await Store.open(data / STORE_FILE, StoreSettings(synchronous="NORMAL"), "ret-test")
    await seed.append_readings([make_reading(ts=float(i)) for i in range(6)])   # long past retention
    await seed.close()
    settings = load_settings_from_text(f"""\
gateway: {{id: ret-test, timezone: UTC, data_dir: {data}}}
buses:
  - {{id: lan, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: modbus-tcp}}
meters:
  - {{id: m1, customer: C1, bus: lan, address: 1, profile: simulator}}
schedules:
  quarter: {{every: 15m}}
mqtt: {{host: 127.0.0.1, port: {free_port()}}}
influxdb: {{url: "http://127.0.0.1:{free_port()}", org: o, bucket: b, token: t, enabled: false}}
store: {{retention: {{interval_days: 1}}}}
""", "gw.yaml", tmp_path, env={})
    gw = Gateway(settings, enable_sinks=False, enable_api=False)   # the sinks have not registered
    await gw.start()
    try:
        store = gw.require_store()
        assert await store.enforce_retention(now=400 * 86400.0) == 0
        await store.flush()
        cursors = await store.read(lambda c: sorted(c.execute("SELECT sink, acked_seq FROM sink_cursor")))
        assert cursors == [("influxdb", 0), ("mqtt", 0)]                 # durable for the next run too
        await store.ack("mqtt", 6)                                       # MQTT delivered everything
        assert await store.enforce_retention(now=400 * 86400.0) == 0     # the disabled InfluxDB has not
        await store.ack("influxdb", 4)
        assert await store.enforce_retention(now=400 * 86400.0) == 4
    finally:
        await gw.stop()
