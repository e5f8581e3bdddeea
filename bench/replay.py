"""Benchmark: drain a spooled backlog of ≥ 200,000 readings from the store to mosquitto.

What it measures, in one run, on the same machine and broker:

1. **store read**: paging the whole backlog out of SQLite (``Store.pending``), nothing sent —
   the ceiling the store sets;
2. **paho alone**: the same payloads published at QoS 1 by a bare paho client with the same
   in-flight window, no store, no cursor — the ceiling the MQTT client sets;
3. **replay**: the real delivery path — ``SinkRunner`` + ``MqttSink`` reading pages from the
   store, keeping the window full, advancing the durable cursor on PUBACK — from a cursor
   at 0 to the last seq.

It prints readings/s for each and the replay as a fraction of the paho-alone ceiling. This
is a benchmark, not a test: nothing is asserted. Needs a broker (``make services``).

    python bench/replay.py                     # 200,000 readings to 127.0.0.1:1883
    python bench/replay.py --readings 500000 --inflight 500
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.model import PointValue, Reading
from gateway.settings import MqttSettings, StoreSettings
from gateway.sinks.delivery import SinkRunner
from gateway.sinks.mqtt import MqttSink
from gateway.store import Store

GATEWAY = "bench-replay"


def reading(i: int, t0: float) -> Reading:
    """A realistic interval reading: 5 energy registers and 3 powers of one of 1000 meters."""
    kwh = Decimal(100000 + i) / 100
    points = {f"energy_import_kwh{s}": PointValue(kwh, kwh * 40, "kWh") for s in ("", "_t1", "_t2", "_t3", "_t4")}
    points.update({f"power_kw_l{p}": PointValue(Decimal("1.25"), Decimal("50.00"), "kW") for p in (1, 2, 3)})
    ts = t0 + i * 0.01
    return Reading(meter=f"m{i % 1000:04d}", customer=f"C{i % 97:03d}", bus=f"bus-{i % 8}", schedule="interval",
                   slot=ts - ts % 900, ts=ts, points=points, ct=Decimal(40))


async def build_backlog(path: Path, n: int) -> Store:
    """Commit ``n`` readings in group commits of 5,000."""
    store = await Store.open(path, StoreSettings(synchronous="NORMAL", commit_interval_s=0.05), GATEWAY)
    t0 = time.time() - n * 0.01
    for start in range(0, n, 5000):
        futures = [store.submit(reading(i, t0)) for i in range(start, min(n, start + 5000))]
        await store.flush()
        for f in futures:
            await f
    return store


async def time_store_read(store: Store, page: int) -> tuple[float, list[tuple[str, str]]]:
    """Page the whole backlog out of the store; returns seconds and a sample of (topic, payload)."""
    t = time.perf_counter()
    after = 0
    sample: list[tuple[str, str]] = []
    while True:
        rows = await store.pending("bench-read", page, after)
        if not rows:
            break
        if len(sample) < 20000:
            sample.extend((f"amr/{GATEWAY}/meters/{r.meter}/reading", r.payload) for r in rows)
        after = rows[-1].seq
    return time.perf_counter() - t, sample


def paho_alone(host: str, port: int, messages: list[tuple[str, str]], total: int, window: int) -> float:
    """Publish ``total`` messages (cycling ``messages``) at QoS 1 with a bounded window."""
    done = threading.Semaphore(0)
    room = threading.Semaphore(window)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-paho-alone", clean_session=True)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)

    def on_publish(c: paho.Client, u: object, mid: int, rc: object, p: object) -> None:
        room.release()
        done.release()

    client.on_publish = on_publish
    client.connect(host, port, 30)
    client.loop_start()
    t = time.perf_counter()
    for i in range(total):
        room.acquire()
        topic, payload = messages[i % len(messages)]
        client.publish(topic, payload, qos=1)
    for _ in range(total):
        done.acquire()
    elapsed = time.perf_counter() - t
    client.disconnect()
    client.loop_stop()
    return elapsed


async def replay(store: Store, host: str, port: int, window: int) -> tuple[float, SinkRunner]:
    """The real delivery path from cursor 0 to the end."""
    sink = MqttSink(MqttSettings(host=host, port=port, inflight=window, client_id="bench-replay"), GATEWAY)
    runner = SinkRunner(sink, store)
    t = time.perf_counter()
    await runner.start()
    ok = await runner.wait_idle(3600)
    elapsed = time.perf_counter() - t
    await runner.stop()
    if not ok:
        raise SystemExit(f"replay did not finish: {runner.state()}")
    return elapsed, runner


async def main() -> None:
    """Run the three measurements and print readings/s."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--inflight", type=int, default=100, help="MQTT in-flight window (mqtt.inflight)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args()
    n = args.readings
    with tempfile.TemporaryDirectory(prefix="amr-bench-") as tmp:
        t = time.perf_counter()
        store = await build_backlog(Path(tmp) / "amr.sqlite", n)
        build_s = time.perf_counter() - t
        size = store.path.stat().st_size
        print(f"backlog: {n:,} readings committed in {build_s:.1f} s ({n / build_s:,.0f}/s), "
              f"store {size / 1e6:.0f} MB, payload ~{size / n:.0f} B/reading")
        read_s, sample = await time_store_read(store, 1000)
        print(f"store read      : {n / read_s:>10,.0f} readings/s  ({read_s:.2f} s)")
        alone_s = await asyncio.to_thread(paho_alone, args.host, args.port, sample, n, args.inflight)
        print(f"paho alone      : {n / alone_s:>10,.0f} readings/s  ({alone_s:.2f} s, window {args.inflight})")
        replay_s, runner = await replay(store, args.host, args.port, args.inflight)
        st = runner.state()
        print(f"replay (ours)   : {n / replay_s:>10,.0f} readings/s  ({replay_s:.2f} s, window {args.inflight}, "
              f"cursor {st['cursor']:,}, published {st['published']:,})")
        print(f"replay / paho alone = {alone_s / replay_s:.2f}")
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
