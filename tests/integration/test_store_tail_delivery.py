"""The store's committed-row tail and lazy rendering, on a real SQLite store on disk.

:meth:`Store.pending` serves a sink that keeps up from the last rows committed (kept in
memory, :data:`gateway.store.TAIL_KEPT`) and one further behind from SQLite; a compact
reading's message is rendered only when a sink asks for it, and the InfluxDB sink makes its
line from the stored values (:func:`gateway.sinks.lineproto.compact_line`). These drive the
store as two sinks would — one keeping up, one falling far behind, disabled and enabled
again, across retention, a restart and ``amr-gateway sink drop`` — and check after every
read that what the tail handed out is exactly what SQLite holds (seq, kind, meter, ts, the
message text, the line), and at the end that every committed seq went to each sink once, in
order: committed equals delivered.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.model import PointValue, Reading
from gateway.runtime import STORE_FILE
from gateway.settings import InfluxSettings, MqttSettings, StoreSettings
from gateway.sinks.base import Backoff
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.influx import InfluxSink
from gateway.sinks.lineproto import compact_line, row_line
from gateway.sinks.mqtt import MqttSink
from gateway.store import TAIL_KEPT, OutboxRow, Store
from tests.servicefixtures import (
    MosquittoProcess,
    Subscriber,
    VictoriaProcess,
    await_until,
    commit,
    make_reading,
    run_sink_drop,
    sink_drop_site,
    vm_export,
    vm_seqs,
)

pytestmark = pytest.mark.integration

SETTINGS = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01, retention_realtime_days=1)
MEASUREMENT = "amr_reading"


def odd_reading(rng: random.Random, ts: float) -> Reading:
    """A reading with the values a field sees besides plain decimals: CT-scaled values,
    exponents, negative zero, ints, floats, text, failed and invalid points, a failed read."""
    r = make_reading(f"m{rng.randrange(5)}", ts=ts, kwh=str(rng.randrange(10**6)) + ".25",
                     failed_point=rng.random() < 0.2)
    extra = {
        "demand_max_kw": PointValue(Decimal("1.2E+2"), Decimal("4.8E+3"), "kW"),
        "power_factor": PointValue(Decimal("-0"), Decimal("-0"), ""),
        "frequency_hz": PointValue(rng.uniform(49.5, 50.5), rng.uniform(49.5, 50.5), "Hz"),
        "x_counter": PointValue(rng.randrange(-50, 50), rng.randrange(-50, 50), ""),
        "x_label": PointValue("on", "on", ""),
        "voltage_v_l2": PointValue(Decimal("230.1"), Decimal("230.1"), "V", "invalid", "out of range"),
    }
    for name in rng.sample(sorted(extra), rng.randrange(len(extra) + 1)):
        r.points[name] = extra[name]
    if rng.random() < 0.05:                         # a failed read: every point failed alike
        r.points = {n: PointValue(None, None, p.unit, "timeout", None) for n, p in r.points.items()}
        r.quality, r.error = "timeout", "no reply"
    return r


def as_sqlite_gives(row: OutboxRow) -> tuple[object, ...]:
    """What a sink can see of a row: its identity, its message, and its InfluxDB line (the
    InfluxDB sink's: from the stored values for a compact reading, which must be the line of
    its message)."""
    line = row_line(MEASUREMENT, row.kind, row.meter, row.ts, row.payload, row.seq)
    if row.shape is not None:
        assert compact_line(MEASUREMENT, row.shape, row.seq, row.ts, row.body) == line
    return row.seq, row.kind, row.meter, row.ts, row.payload, line


class Sink:
    """A sink as the runner drives the store: pages after its last sent seq, acks as it goes.
    Every page is checked against the same rows read back from SQLite."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[int] = []
        self.from_tail = 0
        self.from_sqlite = 0

    async def catch_up(self, store: Store, limit: int, pages: int = 10_000) -> None:
        """Read and acknowledge pages (at most ``pages``) until nothing is pending."""
        for _ in range(pages):
            after = await store.cursor(self.name)
            now = store.pending_now(self.name, limit, after)     # the runner's call: the tail only
            assert store.tail_covers(after) == (now is not None)
            rows = await store.pending(self.name, limit, after)
            if now is not None:
                assert now == rows                   # the same row objects, or both empty
            if not rows:
                return
            tail = store._tail
            k = rows[0].seq - tail[0].seq if tail else -1
            if 0 <= k < len(tail) and rows[0] is tail[k]:
                self.from_tail += 1            # the very row objects the commit kept
            else:
                self.from_sqlite += 1
            back = await store.read(store._select_pending, after, limit)
            assert [as_sqlite_gives(r) for r in rows] == [as_sqlite_gives(r) for r in back[:len(rows)]]
            seqs = [r.seq for r in rows]
            assert seqs == list(range(after + 1, after + 1 + len(seqs))), (after, seqs[:5])
            self.got += seqs
            if len(self.got) % 2:
                await store.ack(self.name, seqs[-1])
            else:
                store.ack_now(self.name, seqs[-1])       # the runner's call from a PUBACK


async def test_every_committed_seq_goes_to_each_sink_once_in_order_tail_or_sqlite(tmp_path: Path) -> None:
    rng = random.Random(16)
    gw = f"t-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "data" / STORE_FILE
    path.parent.mkdir()
    now = time.time()
    old = now - 3 * 86400                         # realtime rows past their retention once delivered
    fast, slow = Sink("mqtt"), Sink("influxdb")
    store = await Store.open(path, SETTINGS, gw)
    try:
        store.declare_sinks(["mqtt", "influxdb"])
        for s in (fast, slow):
            store.register_sink(s.name)
        t = old
        for round_no in range(50):                     # ~9,000 rows: the slow sink falls > TAIL_KEPT behind
            n = rng.choice([1, 3, 50, 200, 700])
            readings = []
            for _ in range(n):
                t += 0.5
                readings.append(odd_reading(rng, t))
            await store.append_readings(readings, retention="realtime" if round_no % 2 else "interval")
            if round_no % 7 == 3:
                await store.append_message("event", "m1", t, {"event": "cover_open", "value": Decimal("1.5")})
            await fast.catch_up(store, rng.choice([1, 100, 1000]))
            if round_no in (5, 14):                   # the slow sink catches up now and then
                await slow.catch_up(store, rng.choice([7, 500]))
            if round_no == 15:                         # retention deletes what both acknowledged
                assert await store.enforce_retention(now) > 0
        assert store.last_seq - await store.cursor("influxdb") > TAIL_KEPT
        assert fast.from_tail > 0                      # the tail served the sink that kept up
        await slow.catch_up(store, 1000)
        assert slow.from_sqlite > 0                    # the one far behind read SQLite
        # disabled: the slow sink stops reading while rows keep coming
        store.declare_sinks(["mqtt"], ["influxdb"])
        await store.append_readings([odd_reading(rng, t + k) for k in range(300)])
        await fast.catch_up(store, 1000)
    finally:
        await store.close()

    # a restart: the tail is gone, both sinks go on from their durable cursors
    store = await Store.open(path, SETTINGS, gw)
    try:
        assert await store.cursor("mqtt") == fast.got[-1] and await store.cursor("influxdb") == slow.got[-1]
        store.declare_sinks(["mqtt", "influxdb"])      # enabled again
        await store.append_readings([odd_reading(rng, now + k) for k in range(50)])
        await slow.catch_up(store, 64)
        await fast.catch_up(store, 1000)
        last = store.last_seq
        for s in (fast, slow):
            assert s.got == list(range(1, last + 1)), s.name     # once each, in order
            assert await store.cursor(s.name) == last
        store.ack_now("mqtt", 1)                         # an older acknowledgement never moves it back
        assert await store.cursor("mqtt") == last
        await store.append_readings([odd_reading(rng, now + 100 + k) for k in range(20)])
        await fast.catch_up(store, 1000)
    finally:
        await store.close()

    # `amr-gateway sink drop influxdb`: its 20 undelivered rows go, audited; then it delivers anew
    cfg = sink_drop_site(tmp_path / "site.yaml", gw, path.parent,
                         'influxdb: {url: "http://127.0.0.1:1", enabled: false}')
    done = await asyncio.to_thread(run_sink_drop, cfg, "influxdb")
    assert done.returncode == 0, done.stdout + done.stderr
    store = await Store.open(path, SETTINGS, gw)
    try:
        dropped_upto = await store.cursor("influxdb")
        assert dropped_upto == store.last_seq == fast.got[-1]
        store.declare_sinks(["mqtt", "influxdb"])
        seqs = await store.append_readings([odd_reading(rng, now + 200 + k) for k in range(30)])
        before = len(slow.got)
        await slow.catch_up(store, 1000)
        await fast.catch_up(store, 1000)
        assert slow.got[before:] == seqs and fast.got[-30:] == seqs
    finally:
        await store.close()


async def test_tsdb_down_past_the_tail_both_sinks_deliver_every_seq(tmp_path: Path) -> None:
    """The real pair on real peers: VictoriaMetrics is down while 6,000 readings commit, so its
    sink falls further behind than the tail holds and reads from SQLite, while MQTT keeps up
    from the tail. When VictoriaMetrics starts, every seq lands there once, with the
    values of its message; the MQTT subscriber got every seq in order; both cursors end at
    the last seq. (A private mosquitto: the shared one's queue cap, 1,000 messages per
    subscriber by default, would drop messages a slow subscriber has not taken yet.)"""
    broker = MosquittoProcess(tmp_path / "broker")
    broker.start()
    mosquitto = broker.broker
    gw = f"t-{uuid.uuid4().hex[:8]}"
    vm = VictoriaProcess(tmp_path / "vm")             # port reserved, started later
    store = await Store.open(tmp_path / "amr.sqlite", SETTINGS, gw)
    sub = Subscriber(mosquitto, f"amr/{gw}/meters/+/reading", f"sub-{gw}").start()
    mqtt = SinkRunner(MqttSink(MqttSettings(host=mosquitto.host, port=mosquitto.port), gw), store,
                      backoff=Backoff(base=0.05, cap=0.5))
    influx = SinkRunner(InfluxSink(InfluxSettings(url=vm.url, batch_size=500, batch_age_s=0.05, timeout_s=2.0), gw),
                        store, backoff=Backoff(base=0.05, cap=0.5))
    rng = random.Random(8428)
    for r in (mqtt, influx):
        await r.start()
    try:
        t0 = time.time() - 3600
        for b in range(12):
            await commit(store, [odd_reading(rng, t0 + b * 100 + j * 0.1) for j in range(500)])
        assert await mqtt.wait_idle(60), mqtt.state()
        assert influx.state()["backlog"] == 6000 > TAIL_KEPT
        await asyncio.to_thread(vm.start)
        assert await influx.wait_idle(90), influx.state()
        landed = await asyncio.to_thread(vm_seqs, vm.url, MEASUREMENT, gw)
        assert sorted(landed) == list(range(1, 6001))
        await await_until(lambda: len(sub.seqs()) >= 6000, 30, "6000 readings on MQTT", detail=sub.summary)
        assert sub.seqs() == list(range(1, 6001))
        assert await store.cursor("mqtt") == await store.cursor("influxdb") == 6000
        # the values: what VictoriaMetrics holds for one seq is its message's good points
        by_seq = {m.json()["seq"]: m.json() for m in sub.snapshot() if m.topic.endswith("/reading")}
        series = await asyncio.to_thread(vm_export, vm.url, f'{{__name__=~"{MEASUREMENT}_.*",gateway="{gw}"}}')
        checked = 0
        for s in series:
            field = s["metric"]["__name__"][len(MEASUREMENT) + 1:]
            if field == "seq":
                continue
            seq_series = [x for x in series if x["metric"]["__name__"] == f"{MEASUREMENT}_seq"
                          and x["metric"]["meter"] == s["metric"]["meter"]
                          and x["metric"].get("schedule") == s["metric"].get("schedule")]
            seq_at = {ts: int(v) for x in seq_series for ts, v in zip(x["timestamps"], x["values"], strict=True)}
            for ts, v in zip(s["timestamps"][:50], s["values"][:50], strict=True):
                doc = by_seq[seq_at[ts]]
                p = doc["points"][field]
                assert p["quality"] == "good" and float(p["value"]) == pytest.approx(v, rel=1e-12), (field, doc)
                checked += 1
        assert checked > 100
    finally:
        for r in (mqtt, influx):
            await r.stop()
        sub.stop()
        await store.close()
        await asyncio.to_thread(vm.stop)
        broker.stop()
