"""InfluxDB sink against a real v2-write-compatible server (VictoriaMetrics).

VictoriaMetrics stores a line-protocol field as the series ``<measurement>_<field>`` with the
tags as labels, and answers ``/api/v1/export`` with every raw sample; the tests read that.
Every test runs with both writers (``influxdb.client``: the built-in ``http.client`` one and
influxdb-client).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from gateway.settings import InfluxClient, InfluxSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.influx import InfluxSink
from gateway.store import Store
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    VictoriaProcess,
    _victoria_fixture,
    await_until,
    commit,
    make_reading,
    vm_export,
    vm_seqs,
)

pytestmark = pytest.mark.integration

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)


@pytest.fixture(params=["builtin", "influxdb-client"])
def client(request: pytest.FixtureRequest) -> InfluxClient:
    """The ``influxdb.client`` writer under test."""
    name: InfluxClient = request.param
    return name


def influx(url: str, client: InfluxClient, **kw: object) -> InfluxSettings:
    """Sink settings for a server, with small batches so several writes happen."""
    defaults: dict[str, object] = {"url": url, "org": "utility", "bucket": "amr", "token": "t0ken",
                                   "batch_size": 100, "batch_age_s": 0.05, "timeout_s": 5.0,
                                   "client": client}
    defaults.update(kw)
    return InfluxSettings(**defaults)  # type: ignore[arg-type]


async def test_points_land_with_tags_fields_and_read_time(
    tmp_path: Path, victoria_metrics: str, client: InfluxClient
) -> None:
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    t0 = time.time() - 3600
    readings = [make_reading(f"m {i % 3},x", ts=t0 + i, kwh=f"{1000 + i}.25", customer="C=1\\",
                             failed_point=(i % 2 == 0)) for i in range(250)]
    seqs = await commit(store, readings)
    kpi = await store.append_message("kpi", None, t0, {"completeness": {"interval": 0.98}, "note": "text"})
    runner = SinkRunner(InfluxSink(influx(victoria_metrics, client), gw), store)
    await runner.start()
    try:
        assert await runner.wait_idle(60), runner.state()
        assert runner.state()["published"] == 251
    finally:
        await runner.stop()
    assert await store.cursor("influxdb") == kpi
    landed = vm_seqs(victoria_metrics, "amr_reading", gw)
    assert set(landed) == set(seqs)
    for i, seq in enumerate(seqs):
        labels = landed[seq]["labels"]
        assert labels["meter"] == f"m {i % 3},x"            # escaped on the wire, intact in the TSDB
        assert labels["customer"] == "C=1\\" and labels["bus"] == "rs485-1" and labels["gateway"] == gw
        assert landed[seq]["ts_ms"] == round((t0 + i) * 1000)   # timestamp = read time
    energy = vm_export(victoria_metrics, f'{{__name__="amr_reading_energy_import_kwh",gateway="{gw}"}}')
    values = sorted(v for s in energy for v in s["values"])
    assert values == sorted((1000 + i + 0.25) * 40 for i in range(250))    # value after CT×PT
    # A failed point is not written as a number; its good neighbours are.
    volts = vm_export(victoria_metrics, f'{{__name__=~"amr_reading_voltage.*",gateway="{gw}"}}')
    assert volts == []
    kpis = vm_export(victoria_metrics, f'{{__name__="amr_kpi_completeness_interval",gateway="{gw}"}}')
    assert [s["values"] for s in kpis] == [[0.98]]
    await store.close()


async def test_two_readings_of_one_meter_in_one_second_both_survive(
    tmp_path: Path, victoria_metrics: str, client: InfluxClient
) -> None:
    """Issue 16 item 8: the realtime and the interval reading of one meter taken at the same
    instant are two points (the schedule is a tag), each with its own seq and value."""
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    t = float(int(time.time()) - 300)
    interval = make_reading("m1", ts=t, kwh="100.5")
    realtime = make_reading("m1", ts=t, kwh="200.5")
    realtime.schedule = "realtime"
    seqs = await commit(store, [interval, realtime])
    runner = SinkRunner(InfluxSink(influx(victoria_metrics, client), gw), store)
    await runner.start()
    try:
        assert await runner.wait_idle(30), runner.state()
    finally:
        await runner.stop()
    landed = vm_seqs(victoria_metrics, "amr_reading", gw)
    assert sorted(landed) == sorted(seqs)
    assert {landed[s]["labels"]["schedule"] for s in seqs} == {"interval", "realtime"}
    assert {landed[s]["ts_ms"] for s in seqs} == {round(t * 1000)}
    energy = vm_export(victoria_metrics, f'{{__name__="amr_reading_energy_import_kwh",gateway="{gw}"}}')
    by_schedule = {s["metric"]["schedule"]: s["values"] for s in energy}
    assert by_schedule == {"interval": [100.5 * 40], "realtime": [200.5 * 40]}
    await store.close()


async def test_replay_rewrites_points_harmlessly(tmp_path: Path, victoria_metrics: str, client: InfluxClient) -> None:
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    t0 = time.time() - 600
    await commit(store, [make_reading("m1", ts=t0 + i) for i in range(20)])
    for name in ("influxdb", "influxdb-replay"):   # the second cursor starts at 0: a full replay
        sink = InfluxSink(influx(victoria_metrics, client), gw)
        sink.name = name
        runner = SinkRunner(sink, store)
        await runner.start()
        assert await runner.wait_idle(30)
        await runner.stop()
    landed = vm_seqs(victoria_metrics, "amr_reading", gw)
    assert sorted(landed) == list(range(1, 21))
    await store.close()


async def test_tsdb_restart_readings_kept_and_delivered_after(tmp_path: Path, client: InfluxClient) -> None:
    vm = VictoriaProcess(tmp_path / "vm")
    await asyncio.to_thread(vm.start)
    gw = f"t-{uuid.uuid4().hex[:8]}"
    store = await Store.open(tmp_path / "amr.sqlite", FAST, gw)
    runner = SinkRunner(InfluxSink(influx(vm.url, client), gw), store, backoff=Backoff(base=0.05, cap=0.5))
    try:
        await runner.start()
        t0 = time.time() - 600
        await commit(store, [make_reading("m1", ts=t0 + i) for i in range(100)])
        assert await runner.wait_idle(30)
        await asyncio.to_thread(vm.stop)
        await commit(store, [make_reading("m1", ts=t0 + 100 + i) for i in range(300)])
        await await_until(lambda: runner.status == "disconnected", 20, "the sink noticing the TSDB is gone")
        assert await store.cursor("influxdb") == 100
        assert runner.state()["backlog"] == 300
        await asyncio.to_thread(vm.start)
        assert await runner.wait_idle(60), runner.state()
        assert runner.status == "connected"
        landed = await asyncio.to_thread(vm_seqs, vm.url, "amr_reading", gw)
        assert sorted(landed) == list(range(1, 401))
    finally:
        await runner.stop()
        await store.close()
        await asyncio.to_thread(vm.stop)
