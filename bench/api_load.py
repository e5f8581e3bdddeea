"""Benchmark: MQTT delivery latency with and without 200 API clients pulling a day of readings.

Issue 16 item 6: the API reads the store on its own connections (gateway/readpool.py), so
API load must not hold delivery back. In one run, on the same machine, broker and store:

* **the gateway**: ``amr-gateway run`` as its own process, ``--meters`` Modbus TCP meters
  (the simulator of ``amr-gateway simulate``, another process) read every second, the full
  pipeline (store, MQTT sink to mosquitto 127.0.0.1:1883, InfluxDB sink to
  victoria-metrics 127.0.0.1:8428, API). Before it starts, its store is given a day of
  1-minute readings of meter ``m1`` (1,440 readings of 8 points), already acknowledged by
  both sinks, for the API to serve;
* **idle window**: delivery latency = arrival of a reading at a QoS 1 subscriber in this
  process − its ``ts`` (when the read finished), p50 and p99 over ``--window`` seconds;
* **load window**: the same while ``--clients`` concurrent HTTP clients (another process,
  aiohttp, one connection each) pull ``/api/v1/meters/m1/readings`` for that day in a loop;
* **SIGTERM**: sent to the gateway with the clients still pulling; the time until it exited.

It prints both p50s side by side and their ratio, and the SIGTERM time; exit status 1 when
a target is missed (p50 under load ≤ 2× idle, SIGTERM ≤ 5 s). Not a test: the machine is
shared, re-run before trusting a miss.

    python -m bench.api_load                 # ≈ 1 min
    python -m bench.api_load --clients 50 --window 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench.tcp_fleet import (
    AMR_GATEWAY,
    API_TOKEN,
    ROOT,
    Procs,
    Subscriber,
    ensure_services,
    http_get,
    iso_epoch,
    pct,
    pick_port_base,
    proc_cpu_s,
    start_simulator,
    write_config,
)
from gateway.model import PointValue, Reading
from gateway.settings import StoreSettings
from gateway.sinks.influx import InfluxSink
from gateway.sinks.mqtt import MqttSink
from gateway.store import Store

DAY_S = 86400
LATENCY_RATIO_TARGET = 2.0
SIGTERM_TARGET_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def day_reading(i: int, day: float) -> Reading:
    """The ``i``-th 1-minute reading of meter m1 on ``day`` (8 points, as a real profile)."""
    kwh = Decimal(100000 + i) / 100
    points = {f"energy_import_kwh{s}": PointValue(kwh, kwh * 40, "kWh") for s in ("", "_t1", "_t2", "_t3", "_t4")}
    points.update({f"power_kw_l{p}": PointValue(Decimal("1.25"), Decimal("50.00"), "kW") for p in (1, 2, 3)})
    slot = day + 60 * i
    return Reading(meter="m1", customer="C1", bus="b1", schedule="p0", slot=slot, ts=slot + 0.2,
                   points=points, ct=Decimal(40))


async def prefill(db: Path, gateway_id: str, day: float) -> int:
    """A day of readings in the store, acknowledged by both sinks (so they are not resent)."""
    store = await Store.open(db, StoreSettings(synchronous="NORMAL"), gateway_id)
    try:
        futures = [store.submit(day_reading(i, day)) for i in range(DAY_S // 60)]
        await store.flush()
        for f in futures:
            await f
        for sink in (MqttSink.name, InfluxSink.name):
            await store.ack(sink, store.last_seq)
        return store.last_seq
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------
# The API clients (a child process: their work must not slow the subscriber's clock)
# ---------------------------------------------------------------------------------------


async def pull(port: int, clients: int, path: str) -> str:
    """``clients`` loops GETting ``path`` until SIGTERM; the counts as JSON."""
    import aiohttp

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    counts: dict[str, int] = {}
    nbytes = 0
    headers = {"Authorization": f"Bearer {API_TOKEN}"}

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal nbytes
        while not stop.is_set():
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
                    data = await resp.read()
                    key = str(resp.status)
                nbytes += len(data)
            except (aiohttp.ClientError, TimeoutError):
                key = "connection error"
                await asyncio.sleep(0.1)
            counts[key] = counts.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        tasks = [asyncio.create_task(client(http)) for _ in range(clients)]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return json.dumps({"responses": counts, "bytes": nbytes})


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def latencies(sub: Subscriber, seconds: float) -> list[float]:
    """Arrival − ts of every reading the subscriber gets during the next ``seconds``."""
    sub.take()
    time.sleep(seconds)
    out = []
    for arrival, payload in sub.take():
        j = payload.index(b'"ts":"') + 6
        out.append(arrival - iso_epoch(payload[j:j + 24]))
    return out


def wait_health(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Until the API answers (the gateway runs), or exit with its log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"did not start:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            http_get(port, "/api/v1/health", 2.0)
            return
        time.sleep(0.2)


def run(args: argparse.Namespace, tmp: Path, procs: Procs) -> int:
    """The whole benchmark; the exit status."""
    ensure_services()
    gateway_id = f"bench-api-{os.getpid()}"
    port_base = pick_port_base(args.meters, None)
    sim_cfg, gw_cfg = tmp / "sim.yaml", tmp / "gw.yaml"
    write_config(sim_cfg, gateway_id="bench-sim", data_dir=tmp / "sim-data", meters=args.meters, interval=1.0,
                 phases=1, port_base=port_base, units=1, api_port=_free_port(), sinks=False, commit_ms=None,
                 synchronous=None)
    api_port = _free_port()
    write_config(gw_cfg, gateway_id=gateway_id, data_dir=tmp / "data", meters=args.meters, interval=1.0,
                 phases=4, port_base=port_base, units=1, api_port=api_port, sinks=True, commit_ms=None,
                 synchronous=None)
    text = gw_cfg.read_text()
    gw_cfg.write_text(text.replace(f"token: {API_TOKEN}}}",
                                   f"token: {API_TOKEN}, read_connections: {args.read_connections}}}"))
    sim_log = tmp / "simulator.log"
    start_simulator(procs, sim_cfg, sim_log, 60)

    today = time.time() // DAY_S * DAY_S
    day = today - DAY_S
    rows = asyncio.run(prefill(tmp / "data" / "amr-gateway.sqlite", gateway_id, day))
    gw_log = tmp / "gateway.log"
    gw = procs.start([AMR_GATEWAY, "--log-level", "info", "run", "-c", str(gw_cfg)], gw_log)
    wait_health(api_port, gw, gw_log, 60)
    sub = Subscriber(f"amr/{gateway_id}/meters/+/reading")
    sub.start()
    d = datetime.fromtimestamp(day, UTC).date()
    path = f"/api/v1/meters/m1/readings?from={d.isoformat()}&to={datetime.fromtimestamp(today, UTC).date()}" \
           "&limit=100000"
    body = http_get(api_port, path, 30)
    served = json.loads(body)["count"]
    print(f"gateway {gateway_id}: {args.meters} meters read every 1 s, api.read_connections "
          f"{args.read_connections}; store prefilled with {rows:,} readings; "
          f"one API pull = {served:,} readings, {len(body) / 1e6:.1f} MB", flush=True)

    time.sleep(args.warmup)
    c0 = proc_cpu_s(gw.pid)
    idle = latencies(sub, args.window)
    cpu_idle = (proc_cpu_s(gw.pid) - c0) / args.window

    counts_file = tmp / "clients.json"
    clients = procs.start([sys.executable, "-m", "bench.api_load", "--pull", str(api_port), "--clients",
                           str(args.clients), "--path", path, "--out", str(counts_file)], tmp / "clients.log")
    time.sleep(args.warmup)
    c0 = proc_cpu_s(gw.pid)
    loaded = latencies(sub, args.window)
    cpu_load = (proc_cpu_s(gw.pid) - c0) / args.window

    t = time.monotonic()
    gw.send_signal(signal.SIGTERM)
    try:
        gw.wait(60)
    except subprocess.TimeoutExpired:
        print("the gateway did not stop within 60 s of SIGTERM; killing it")
    sigterm_s = time.monotonic() - t
    procs.stop(gw)
    procs.stop(clients, 30)
    sub.stop()
    pulled = json.loads(counts_file.read_text()) if counts_file.exists() else {}

    p50_idle, p50_load = pct(idle, 0.5), pct(loaded, 0.5)
    ratio = p50_load / p50_idle if p50_idle > 0 else float("inf")
    print(f"{'':24}{'idle':>12}{'200 clients' if args.clients == 200 else f'{args.clients} clients':>14}")
    print(f"{'readings delivered':24}{len(idle):>12,}{len(loaded):>14,}")
    print(f"{'delivery p50 (ms)':24}{1000 * p50_idle:>12.1f}{1000 * p50_load:>14.1f}")
    print(f"{'delivery p99 (ms)':24}{1000 * pct(idle, 0.99):>12.1f}{1000 * pct(loaded, 0.99):>14.1f}")
    print(f"{'gateway CPU (cores)':24}{cpu_idle:>12.2f}{cpu_load:>14.2f}")
    print(f"p50 ratio load/idle: {ratio:.2f} (target ≤ {LATENCY_RATIO_TARGET:g})")
    print(f"SIGTERM to exit under load: {sigterm_s:.2f} s (target ≤ {SIGTERM_TARGET_S:g} s), "
          f"exit status {gw.returncode}")
    print(f"API responses during the load: {pulled.get('responses')}, {pulled.get('bytes', 0) / 1e6:,.0f} MB")
    if sigterm_s > SIGTERM_TARGET_S:
        print("gateway log (end):\n" + "\n".join(gw_log.read_text().splitlines()[-25:]))
    missed = ratio > LATENCY_RATIO_TARGET or sigterm_s > SIGTERM_TARGET_S or not idle or not loaded
    print("targets met" if not missed else "TARGET MISSED")
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: the benchmark, or (``--pull``) the client process it starts."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meters", type=int, default=20)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--read-connections", type=int, default=2, help="api.read_connections")
    p.add_argument("--window", type=float, default=15.0, help="seconds measured, idle and under load")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--pull", type=int, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pull is not None:
        args.out.write_text(asyncio.run(pull(args.pull, args.clients, args.path)))
        return 0
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        try:
            return run(args, Path(tmp), procs)
        finally:
            procs.stop_all()


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
