"""The baseline for ``bench/tcp_fleet.py``: the same Modbus TCP reads with no pipeline.

A bare asyncio loop, run as its own process so its CPU and memory are measured apart:
one TCP connection per meter (meter ``i`` = 1…N is unit ``(i-1) % U + 1`` at
``127.0.0.1:port_base + (i-1) // U + 1``, U = ``--units-per-port``, as in the gateway's
configuration), one long-lived coroutine per meter that sleeps until the meter's next slot
(wall-clock multiples of ``--interval`` plus the meter's phase offset, exactly the slots the
gateway's scheduler computes for the same configuration), then sends the plan's requests
one after the other (``--pdu`` hex PDUs, the very requests ``compile_plan`` produced for the
gateway), waits for each reply (MBAP transaction id, ``asyncio.Protocol``, a future per
request, 1 s timeout) and unpacks the registers into integers. Nothing else: no reading
objects, no store, no JSON, no sinks, no scheduler, no metrics.

After ``--warmup`` seconds it opens a window of ``--window`` seconds (``t0`` half a phase
before a slot boundary, so the window holds whole cycles) and counts the reads whose slot
falls in it. CPU is ``os.times()`` user + system of this process over the window (the same
utime + stime as ``/proc/PID/stat``). It prints one JSON line::

    {"reads": …, "failed": …, "cpu_s": …, "sys_s": …, "rss_kb": …, "hwm_kb": …,
     "lat_p50_ms": …, "lat_p99_ms": …, "connect_s": …, "t0": …, "t1": …}

``lat`` is slot → last reply of the read (the floor any pipeline adds to).

Run by ``bench/tcp_fleet.py``; standalone for experiments::

    python -m bench.fleet_baseline --meters 1000 --port-base 10000 --interval 1 \\
        --phases 10 --pdu 030000000a --pdu 03001a0002 --pdu 0300270003
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.pipeline_floor import FloorPipeline

_MBAP = struct.Struct(">HHHB")


class _Conn(asyncio.Protocol):
    """One meter's connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.tid = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < 7:
            return
        tid, _proto, length, _unit = _MBAP.unpack_from(self.buf, 0)
        end = 6 + length
        if len(self.buf) < end:
            return
        pdu = bytes(self.buf[7:end])
        del self.buf[:end]
        w = self.waiter
        if w is not None and not w.done() and tid == self.tid:
            w.set_result(pdu)

    async def transact(self, unit: int, pdu: bytes, timeout: float) -> bytes:
        assert self.transport is not None
        self.tid = (self.tid + 1) & 0xFFFF
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(_MBAP.pack(self.tid, 0, len(pdu) + 1, unit) + pdu)
        async with asyncio.timeout(timeout):
            return await self.waiter


class Tally:
    """Reads whose slot falls in [t0, t1)."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        self.reads = 0
        self.failed = 0
        self.lat: list[float] = []

    def add(self, slot: float, done: float, ok: bool) -> None:
        if self.t0 <= slot < self.t1:
            self.reads += 1
            if not ok:
                self.failed += 1
            self.lat.append(done - slot)


async def _meter(conn: _Conn, unit: int, pdus: list[tuple[bytes, int]], interval: float, offset: float,
                 tally: Tally, stop_at: float, floor: FloorPipeline | None = None, meter: int = 0,
                 schedule: str = "") -> None:
    """Poll one meter at its slots until ``stop_at`` (and hand each good read to ``floor``,
    as meter number ``meter`` of ``schedule``)."""
    loop_time = time.time
    while True:
        now = loop_time()
        slot = math.floor((now - offset) / interval + 1e-9) * interval + offset + interval
        if slot >= stop_at:
            return
        await asyncio.sleep(slot - now)
        ok = True
        regs = []
        try:
            for pdu, count in pdus:
                reply = await conn.transact(unit, pdu, 1.0)
                if reply[0] != pdu[0] or reply[1] != 2 * count:
                    ok = False
                    break
                regs.append(struct.unpack_from(f">{count}H", reply, 2))
        except (TimeoutError, ConnectionError, OSError, IndexError, struct.error):
            ok = False
        if floor is not None and ok:
            floor.take(meter, schedule, slot, regs)
        tally.add(slot, loop_time(), ok)


def prime_malloc() -> None:
    """Raise glibc's mmap threshold the way the gateway's own start-up happens to.

    asyncio's socket transport receives with ``recv(256 KiB)``: a block above glibc's initial
    mmap threshold (128 KiB), so each receive maps memory, shrinks it to the reply's size
    (``mremap``) and unmaps it when freed, three system calls per reply. glibc raises the
    threshold to the size of a mapped block that is freed whole; something in the gateway's
    start-up frees such a block (which step was not traced), so its receives come from the
    heap, and this loop's did not. Freeing one 1 MiB block puts this loop in the same state;
    what it changes is measured in bench/README.md ("The bare loop's kernel time").
    """
    block = bytearray(1 << 20)
    del block


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Connect every meter, poll through warm-up and window, return the figures."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.meters + 256) if hard != resource.RLIM_INFINITY else args.meters + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    loop = asyncio.get_running_loop()
    pdus = [(bytes.fromhex(h), struct.unpack_from(">H", bytes.fromhex(h), 3)[0]) for h in args.pdu]
    t = time.monotonic()
    gate = asyncio.Semaphore(256)

    async def connect(i: int) -> _Conn:
        async with gate:
            port = args.port_base + (i - 1) // args.units_per_port + 1
            _tr, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
            return proto

    conns = await asyncio.gather(*(connect(i) for i in range(1, args.meters + 1)))
    connect_s = time.monotonic() - t
    interval, phases = args.interval, args.phases
    floor = None
    if args.floor:
        # imported here, not at the top: the bare loop's process loads nothing it does not use
        # (the floor's imports, the gateway's MQTT module among them, change malloc's state)
        from bench.pipeline_floor import FloorPipeline
        floor = FloorPipeline(Path(tempfile.mkdtemp(prefix="amr-floor-")), "bench-floor", args.mqtt_port,
                              args.influx_url)
        await floor.start()
    now = time.time()
    boundary = math.ceil((now + args.warmup) / interval) * interval
    half_phase = interval / phases / 2
    t0 = boundary - half_phase
    t1 = t0 + args.window
    tally = Tally(t0, t1)
    tasks = [
        asyncio.create_task(_meter(c, i % args.units_per_port + 1, pdus, interval, (i % phases) * interval / phases,
                                   tally, t1, floor, i + 1, f"p{i % phases}"), name=f"m{i + 1}")
        for i, c in enumerate(conns)
    ]
    await asyncio.sleep(max(0.0, t0 - time.time()))
    c0 = os.times()
    await asyncio.sleep(max(0.0, t1 - time.time()))
    c1 = os.times()
    await asyncio.wait(tasks, timeout=interval + 2.0)
    for task in tasks:
        task.cancel()
    hwm = _status_kb("VmHWM")
    rss = _status_kb("VmRSS")
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    extra: dict[str, float] = {}
    if floor is not None:
        extra = {**await floor.finish()}
        shutil.rmtree(floor.folder, ignore_errors=True)
    return {**extra,
        "reads": tally.reads, "failed": tally.failed,
        "cpu_s": (c1.user + c1.system) - (c0.user + c0.system), "sys_s": c1.system - c0.system,
        "rss_kb": rss, "hwm_kb": hwm,
        "lat_p50_ms": 1000 * _pct(tally.lat, 0.50), "lat_p99_ms": 1000 * _pct(tally.lat, 0.99),
        "connect_s": connect_s, "t0": t0, "t1": t1,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, required=True)
    ap.add_argument("--port-base", type=int, required=True)
    ap.add_argument("--units-per-port", type=int, default=1,
                    help="meter i (1…N) is unit (i-1) %% U + 1 at port-base + (i-1) // U + 1")
    ap.add_argument("--interval", type=float, required=True, help="seconds between a meter's reads")
    ap.add_argument("--phases", type=int, default=1, help="meter i is offset by (i %% phases) × interval / phases")
    ap.add_argument("--pdu", action="append", required=True, help="request PDU in hex (repeat; one read = all)")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--floor", action="store_true",
                    help="add bench/pipeline_floor.py's minimal store, MQTT and InfluxDB behind the loop")
    ap.add_argument("--mqtt-port", type=int, default=1883, help="the broker --floor publishes to (127.0.0.1)")
    ap.add_argument("--influx-url", default="http://127.0.0.1:8428", help="where --floor posts its lines")
    ap.add_argument("--prime-malloc", action="store_true",
                    help="free one 1 MiB block first, so asyncio's 256 KiB receive buffers come from the heap "
                         "(see prime_malloc)")
    args = ap.parse_args(argv)
    counts = tuple(struct.unpack_from(">H", bytes.fromhex(h), 3)[0] for h in args.pdu)
    if args.floor:
        from bench.pipeline_floor import REGISTERS
        if counts != REGISTERS:
            ap.error(f"--floor reads tcp_fleet.py's plan, requests of {REGISTERS} registers; "
                     f"these --pdu ask for {counts}")
    if args.prime_malloc:
        prime_malloc()
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
