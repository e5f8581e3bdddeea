"""``/metrics`` on a running gateway (issue 18 item 7): per-meter last good read, the bus
read-latency histogram, sink backlog and the age of its oldest undelivered message, and the
loopback rule (``api.metrics_public_on_loopback``).

Real peers: the demo fleet's simulators over sockets and ptys, SQLite on disk, the API over
loopback HTTP; the MQTT sink points at a free port where nothing listens (a dead broker).
The exposition is checked by a small text-format parser (``prometheus_client`` is not a
dependency).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import defaultdict
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.api.metrics import metrics_public
from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.demo import demo_config_text
from gateway.ports import free_port
from gateway.read_latency import READ_SECONDS_BUCKETS, LatencyHistogram
from gateway.runtime import Gateway
from gateway.settings import Settings
from gateway.simulator.fleet import SimulatedFleet
from tests.servicefixtures import await_until

RATE = 120.0
START = 1_795_939_200.0 + 8 * 3600 + 50
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Labels = tuple[tuple[str, str], ...]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')
_KINDS = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_exposition(text: str) -> dict[str, dict[Labels, float]]:
    """Samples by metric name, checking the text format as it goes: every sample belongs to a
    family declared once with HELP and TYPE before it; histogram samples end in
    _bucket/_sum/_count; label syntax and values parse."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"HELP twice for {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in _KINDS and name not in types, line
            assert name in helps, f"TYPE before HELP for {name}"
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        name, raw_labels, value = m.groups()
        family = name
        if family not in types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert types.get(family) == "histogram", f"sample {name} has no TYPE line"
        labels: list[tuple[str, str]] = []
        if raw_labels:
            consumed = "".join(x.group(0) for x in _LABEL.finditer(raw_labels))
            assert consumed == raw_labels, f"bad labels in {line!r}"
            labels = [(x.group(1), x.group(2)) for x in _LABEL.finditer(raw_labels)]
        key = tuple(sorted(labels))
        assert key not in samples[name], f"duplicate sample {line!r}"
        samples[name][key] = float(value)
    return samples


def one(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` (fails when absent)."""
    key = tuple(sorted(labels.items()))
    assert key in samples.get(name, {}), f"no {name}{labels}; have {sorted(samples.get(name, {}))}"
    return samples[name][key]


def settings_for(tmp: Path, *, public_on_loopback: bool | None) -> Settings:
    text = demo_config_text(tmp, api_port=free_port(), mqtt=("127.0.0.1", free_port()))
    if public_on_loopback is not None:
        flag = "true" if public_on_loopback else "false"
        text = text.replace("api: {listen: ", f"api: {{metrics_public_on_loopback: {flag}, listen: ", 1)
        assert "metrics_public_on_loopback" in text
    return load_settings_from_text(text, "<test>", tmp, {"AMR_API_TOKEN": TOKEN})


async def get(settings: Settings, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET over loopback HTTP."""
    url = f"http://127.0.0.1:{settings.api.port}{path}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as resp:
        return resp.status, await resp.text()


async def scrape(settings: Settings) -> dict[str, dict[Labels, float]]:
    status, text = await get(settings, "/metrics", AUTH)
    assert status == 200, text
    return parse_exposition(text)


async def test_new_series_on_a_running_gateway_with_a_dead_mqtt_broker(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, public_on_loopback=None)
    clock = ScaledClock(START, RATE)
    fleet = SimulatedFleet(settings, clock, seed=7)
    await fleet.start()
    gw = Gateway(settings, clock)
    await gw.start()
    try:
        await await_until(lambda: all(m.stats.last_good_ts for m in gw.meters.values()), 30,
                          "a good read of every meter",
                          detail=lambda: {m.id: m.stats.last_error for m in gw.meters.values()})
        store = gw.require_store()
        await await_until(lambda: store.last_seq > 0 and gw.sinks[0].backlog() > 0, 30, "an MQTT backlog")
        first = await scrape(settings)
        backlog_seen = one(first, "amr_sink_backlog", sink="mqtt")
        seen = {b: one(first, "amr_bus_transactions_total", bus=b) for b in settings.buses}
        await await_until(lambda: gw.sinks[0].backlog() > backlog_seen
                          and all(w.transactions > seen[b] for b, w in gw.workers.items()), 30,
                          "the MQTT backlog to grow and every bus to read again")
        second = await scrape(settings)
        now = clock.time()
    finally:
        await gw.stop()
        await fleet.stop()

    # per meter: the last good read's timestamp is the ts of a good reading the store holds
    conn = sqlite3.connect(gw.store_path)
    try:
        good_ts: dict[str, list[float]] = defaultdict(list)
        for meter, ts in conn.execute("SELECT meter, ts FROM outbox WHERE kind='reading' AND quality='good'"):
            good_ts[meter].append(ts)
        first_ts = conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()[0]
    finally:
        conn.close()
    for meter_id, meter in settings.meters.items():
        for sample in (first, second):
            ts = one(sample, "amr_meter_last_good_read_timestamp_seconds", meter=meter_id, bus=meter.bus)
            assert START - 1 < ts <= now
            assert any(abs(ts - t) < 0.002 for t in good_ts[meter_id]), (meter_id, ts)
        assert one(second, "amr_meter_last_good_read_timestamp_seconds", meter=meter_id, bus=meter.bus) >= one(
            first, "amr_meter_last_good_read_timestamp_seconds", meter=meter_id, bus=meter.bus)

    # per bus: the histogram counts every transaction, its buckets are cumulative up to +Inf
    for bus_id in settings.buses:
        for sample in (first, second):
            count = one(sample, "amr_bus_read_seconds_count", bus=bus_id)
            assert count == one(sample, "amr_bus_transactions_total", bus=bus_id) > 0
            buckets = [one(sample, "amr_bus_read_seconds_bucket", bus=bus_id, le=repr(le))
                       for le in READ_SECONDS_BUCKETS]
            buckets.append(one(sample, "amr_bus_read_seconds_bucket", bus=bus_id, le="+Inf"))
            assert buckets == sorted(buckets) and buckets[-1] == count
            assert 0 < one(sample, "amr_bus_read_seconds_sum", bus=bus_id) < count * 10
        assert one(second, "amr_bus_read_seconds_count", bus=bus_id) > one(first, "amr_bus_read_seconds_count",
                                                                            bus=bus_id)
        worker = gw.workers[bus_id]
        assert worker.read_latency.count == worker.transactions

    # the dead broker: the backlog grows, and so does the age of the oldest undelivered message
    assert one(second, "amr_sink_backlog", sink="mqtt") > one(first, "amr_sink_backlog", sink="mqtt") > 0
    age1 = one(first, "amr_sink_oldest_undelivered_age_seconds", sink="mqtt")
    age2 = one(second, "amr_sink_oldest_undelivered_age_seconds", sink="mqtt")
    assert 0 < age1 < age2 <= now - first_ts + 0.002


async def test_metrics_without_a_token_only_when_the_config_allows_it_on_loopback(tmp_path: Path) -> None:
    for flag in (None, False, True):
        data = tmp_path / str(flag)
        data.mkdir()
        settings = settings_for(data, public_on_loopback=flag)
        assert settings.api.metrics_public_on_loopback is bool(flag)
        gw = Gateway(settings, ScaledClock(START, RATE), enable_sinks=False)
        await gw.start()
        try:
            status, text = await get(settings, "/metrics")
            with_token, _ = await get(settings, "/metrics", AUTH)
            wrong, _ = await get(settings, "/metrics", {"Authorization": "Bearer nope"})
            meters, _ = await get(settings, "/api/v1/meters")
        finally:
            await gw.stop()
        assert with_token == 200
        assert meters == 401                # only /metrics is opened, never the rest of the API
        if flag:
            assert status == 200 and "amr_bus_read_seconds_bucket" in text
            assert wrong == 200             # a wrong token changes nothing for a public scrape
        else:
            assert status == 401 and "token" in json.loads(text)["error"]
            assert wrong == 401


class _Transport:
    """A stand-in transport that reports a chosen TCP peer: the tests only listen on
    127.0.0.1, so no real peer can come from another address (a fake, for that reason)."""

    def __init__(self, peer: object) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


def _request(path: str, peer: object) -> web.Request:
    return make_mocked_request("GET", path, transport=_Transport(peer))


def test_only_loopback_peers_and_only_metrics_skip_the_token() -> None:
    for peer in (("127.0.0.1", 5), ("127.8.9.10", 5), ("::1", 5, 0, 0), ("::ffff:127.0.0.1", 5, 0, 0)):
        assert metrics_public(_request("/metrics", peer), True), peer
        assert not metrics_public(_request("/metrics", peer), False), peer
        assert not metrics_public(_request("/api/v1/meters", peer), True), peer
    for peer in (("10.0.0.5", 5), ("192.168.1.2", 5), ("::2", 5, 0, 0), ("fe80::1%eth0", 5, 0, 2),
                 ("::ffff:10.0.0.1", 5, 0, 0), "/run/amr.sock", None, ("not-an-ip", 5)):
        assert not metrics_public(_request("/metrics", peer), True), peer


def test_histogram_buckets_are_inclusive_upper_bounds_and_overflow_to_inf() -> None:
    hist = LatencyHistogram()
    for seconds in (0.0, 0.01, 0.0100001, 0.3, 10.0, 11.0, math.inf):
        hist.observe(seconds)
    cumulative = dict(hist.cumulative())
    assert cumulative[0.01] == 2                  # 0 and exactly 0.01
    assert cumulative[0.025] == 3
    assert cumulative[0.5] == 4
    assert cumulative[10.0] == 5
    assert cumulative[math.inf] == hist.count == 7
