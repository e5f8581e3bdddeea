"""CPU per reading of each in-process step of the gateway's pipeline, without sockets or threads.

``bench/tcp_fleet.py`` measures the whole gateway against the bare loop, but on a shared
2-core box two runs of one build differ by ±20 %, which hides a change of a few per cent.
This bench times the per-reading steps alone, in one thread, on the same readings every
run, so two source trees can be compared within a few per cent:

* **decode + build**: the Modbus reply bytes (``amr-gateway simulate``'s own register
  image for the bench's point set) decoded into point results (``_decode_into``) and
  turned into a :class:`~gateway.model.Reading` (``ReadingBuilder.build``);
* **review**: ``observe_reading`` and every per-reading rule (``gateway.review.ruleset``)
  against each meter's memory, as the review engine runs them;
* **payload**: the ``amr.reading.v1`` JSON document as the store makes it: with the
  compact store (``gateway/storecodec.py``) the row encoded at commit and rendered back at
  delivery (``encode`` + ``render``), in an older tree ``reading_payload`` at commit;
* **line**: the InfluxDB line: from the stored values where the tree has
  ``lineproto.compact_line`` (what its InfluxDB sink does), else rendered at commit from the
  reading (``reading_line``, the older trees).

It also prints checksums of what the steps produced (the review's events, every payload,
every line): two trees that only differ in speed print the same ones.

With ``--store N`` a further step, **store + sinks**, runs the same readings through a real
:class:`~gateway.store.Store` on disk (``synchronous=NORMAL``, so the disk's fsync time does
not swamp the figure), 20 readings per commit as the group window gathers them at 1,000
readings/s, and after each commit two sinks read what is new (``pending``), one taking
each message's text and topic bytes as the MQTT sink does, the other each row's InfluxDB
line as that tree's InfluxDB sink does, and acknowledge it; the best of ``N`` passes. It
counts the store's threads as well (process CPU). The sinks' sockets, the transport and
polling are not in any step: those are in ``tcp_fleet.py``'s figures only.

Compare trees by putting each first on ``PYTHONPATH`` and running this file as a script
from a folder that holds no ``gateway/`` (``python -m`` from the repository root puts the
root first on ``sys.path``, so every tree would be the root's own)::

    cd /tmp && PYTHONPATH=/tmp/old python /path/to/bench/pipeline_parts.py --store 3   # another tree
    cd /tmp && PYTHONPATH=/path/to/repo python /path/to/bench/pipeline_parts.py --store 3

Alone, ``python -m bench.pipeline_parts`` from the repository root. Prints one line per
step: µs of process CPU per reading (the best of ``--repeat`` passes, each over ``--meters`` × ``--slots`` readings).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.modbus.driver import _decode_into
from drivers.modbus.plan import DecodeStep, ReadPlan
from drivers.modbus.simulator import SimMeter, SimMeterSpec, _pdu_reply
from gateway.clock import SystemClock
from gateway.config import load_settings_from_text
from gateway.model import PointResult, Reading, reading_payload
from gateway.review.engine import meter_context
from gateway.review.rules import MeterState, RuleEvent, observe_reading
from gateway.review.ruleset import evaluate
from gateway.settings import ScheduleSettings, StoreSettings
from gateway.sinks.lineproto import reading_line, row_line
from gateway.store import Store

GROUP = 20
"""Readings per commit in the store step: what the 20-ms group window gathers at 1,000/s."""

POINTS = '["energy_import_kwh*", "power_kw", "voltage_*"]'   # bench/tcp_fleet.py's point set
T0 = 1_796_000_000.0
"""The first slot the bench's simulated meters are read at."""


class _Clock(SystemClock):
    """The simulator's clock, set by the bench."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def time(self) -> float:
        """The instant the bench set."""
        return self.t


def _config(meters: int) -> str:
    lines = ["gateway: {id: parts, timezone: UTC, data_dir: /tmp/amr-bench-parts}", "buses:"]
    lines += [f"  - {{id: b{i}, type: tcp, host: 127.0.0.1, port: {10000 + i}, protocol: modbus-tcp}}"
              for i in range(1, meters + 1)]
    lines.append("meters:")
    lines += [f"  - {{id: m{i}, customer: C{i}, bus: b{i}, address: 1, profile: simulator, schedules: [s]}}"
              for i in range(1, meters + 1)]
    lines.append(f"schedules:\n  s: {{every: 1s, points: {POINTS}}}")
    return "\n".join(lines) + "\n"


def payload_maker(gateway: str, stored: list[Any]) -> tuple[str, Callable[[Reading, int], str]]:
    """How this tree turns a committed reading into its message text, and that function
    (which appends each compact row's (shape, body) to ``stored``, for the line step)."""
    import gateway as package

    spec = importlib.util.find_spec("gateway.storecodec")
    # an editable install's finder may answer from another tree: only this tree's module counts
    if spec is None or not any(str(spec.origin).startswith(p) for p in package.__path__):
        return "reading_payload", lambda r, seq: reading_payload(r, gateway, seq)
    codec: Any = importlib.import_module("gateway.storecodec")
    shapes: dict[Any, Any] = {}
    keep = stored.append

    def make(r: Reading, seq: int) -> str:
        key = codec.shape_key(r, gateway)
        shape = shapes.get(key)
        if shape is None:
            marks = codec.marks_of(r, codec.factors_of(key[5], key[6]))
            shape = shapes[key] = codec.shape_from_spec(len(shapes) + 1, codec.spec_of(key, marks))
        body = codec.encode(r, shape)
        keep((shape, body))
        text: str = codec.render(shape, seq, r.slot, r.ts, r.quality, body)
        return text

    return "storecodec encode + render", make


def line_maker(stored: list[Any]) -> tuple[str, Callable[[Reading, int], str]]:
    """How this tree's InfluxDB sink makes a reading's line: from the stored values
    (``compact_line``) where it can, else from the reading at commit (``reading_line``)."""
    lineproto: Any = importlib.import_module("gateway.sinks.lineproto")
    compact = getattr(lineproto, "compact_line", None)
    if compact is None or len(stored) == 0:
        return "reading_line", lambda r, seq: reading_line("amr_reading", "parts", r, seq)

    def make(r: Reading, seq: int) -> str:
        shape, body = stored[seq]
        text: str = compact("amr_reading", shape, seq, r.ts, body)
        return text

    return "compact_line", make


async def _store_pass(readings: list[Reading], folder: str) -> tuple[float, int]:
    """One pass of the store step: CPU seconds, and a checksum of what the sinks took."""
    store = await Store.open(Path(folder) / f"parts-{time.monotonic_ns()}.sqlite",
                             StoreSettings(synchronous="NORMAL"), "parts")
    lineproto: Any = importlib.import_module("gateway.sinks.lineproto")
    compact = getattr(lineproto, "compact_line", None)
    old: Any = store
    at_commit = compact is None and hasattr(old, "render_on_commit")
    if at_commit:   # the older trees: the InfluxDB line rendered on the writer thread at commit
        old.render_on_commit("influxdb", lambda r, seq: reading_line("amr_reading", "parts", r, seq))
    crc = 0
    after = {"mqtt": 0, "influxdb": 0}
    c = time.process_time()
    for k in range(0, len(readings), GROUP):
        for r in readings[k:k + GROUP]:
            store.submit_nowait(r, "realtime")
        await store.flush()
        for sink in ("mqtt", "influxdb"):
            rows = await store.pending(sink, 1000, after[sink])
            if not rows:
                continue
            for row in rows:
                if sink == "mqtt":
                    data = f"amr/parts/meters/{row.meter}/{row.kind}".encode() + row.payload.encode()
                else:
                    line = old.rendered(sink, row.seq) if at_commit else None
                    shape = getattr(row, "shape", None)
                    if line is None and shape is not None and compact is not None:
                        line = compact("amr_reading", shape, row.seq, row.ts, row.body)
                    if line is None:
                        line = row_line("amr_reading", row.kind, row.meter, row.ts, row.payload, row.seq)
                    data = line.encode()
                crc = zlib.crc32(data, crc)
            after[sink] = rows[-1].seq
            await store.ack(sink, after[sink])
    await store.flush()
    spent = time.process_time() - c
    await store.close()
    return spent, crc


Replies = list[tuple[str, float, list[tuple[tuple[DecodeStep, ...], bytes]]]]
"""One meter's (meter, slot, [(decode steps, register bytes) per request]) at each slot."""


def simulated_replies(runtimes: dict[str, Any], slots: int, every_s: float = 1.0) -> list[Replies]:
    """What each meter's simulator (``amr-gateway simulate``'s register image, seeded by its
    place) answers to the requests of its schedule ``s`` at ``slots`` slots ``every_s`` apart."""
    clock = _Clock()
    out: list[Replies] = []
    for n, rt in enumerate(runtimes.values()):
        plan, _names = rt.plans["s"]
        assert isinstance(plan, ReadPlan)
        sim = SimMeter(SimMeterSpec(rt.id, "modbus-tcp", 1, rt.profile, seed=n), clock, "UTC")
        per_slot: Replies = []
        for k in range(slots):
            clock.t = T0 + k * every_s
            per_slot.append((rt.id, clock.t, [(req.layout, _pdu_reply(sim, req.pdu)[2:]) for req in plan.requests]))
        out.append(per_slot)
    return out


def main(argv: list[str] | None = None) -> int:
    """Time each step; print µs of CPU per reading."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=50)
    ap.add_argument("--slots", type=int, default=300, help="1-s slots per meter (the review keeps state)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--store", type=int, default=0, metavar="N",
                    help="also time the store + sinks step, best of N passes (each ≈ 15,000 commits of rows)")
    args = ap.parse_args(argv)
    from gateway.runtime import build_meters

    settings = load_settings_from_text(_config(args.meters))
    runtimes = build_meters(settings)
    sched: ScheduleSettings = settings.schedules["s"]
    # the replies every meter gives at every slot, computed once (not timed)
    replies = simulated_replies(runtimes, args.slots)
    best: dict[str, float] = {}
    readings_n = args.meters * args.slots
    for _ in range(args.repeat):
        states = {rt.id: MeterState() for rt in runtimes.values()}
        contexts = {m.id: meter_context(m, "UTC", settings.review.for_meter(m.id, m.customer),
                                        runtimes[m.id].profile) for m in settings.meters.values()}
        th = {m.id: settings.review.for_meter(m.id, m.customer) for m in settings.meters.values()}
        readings: list[Reading] = []
        c = time.process_time()
        for per_slot in replies:
            for meter_id, slot, parts in per_slot:
                results: dict[str, PointResult] = {}
                for layout, data in parts:
                    _decode_into(results, layout, data)
                readings.append(runtimes[meter_id].builder.build("s", slot, slot + 0.004, results))
        steps = {"decode + build": time.process_time() - c}
        events: list[RuleEvent] = []
        c = time.process_time()
        for r in readings:
            obs = observe_reading(r, sched.every_s, th[r.meter].power_point)
            got, errors = evaluate(states[r.meter], obs, contexts[r.meter], th[r.meter])
            assert not errors, errors
            events += got
        steps["review"] = time.process_time() - c
        stored: list[Any] = []
        how, make = payload_maker("parts", stored)
        c = time.process_time()
        payloads = [make(r, seq) for seq, r in enumerate(readings)]
        steps["payload"] = time.process_time() - c
        line_how, make_line = line_maker(stored)
        c = time.process_time()
        lines = [make_line(r, seq) for seq, r in enumerate(readings)]
        steps["line"] = time.process_time() - c
        # what the steps produced, so two trees can be shown to agree (not timed)
        digest = (len(events), zlib.crc32("\n".join(payloads).encode()), zlib.crc32("\n".join(lines).encode()),
                  zlib.crc32(repr([(e.type, e.state, e.key, e.ts) for e in events]).encode()))
        for step, v in steps.items():
            best[step] = min(best.get(step, v), v)
    store_crc = None
    if args.store:
        with tempfile.TemporaryDirectory(prefix="amr-parts-") as folder:
            for _ in range(args.store):
                spent, store_crc = asyncio.run(_store_pass(readings, folder))
                best["store + sinks"] = min(best.get("store + sinks", spent), spent)
    total = 0.0
    for name, v in best.items():
        us = 1e6 * v / readings_n
        total += us
        print(f"{name:<16} {us:7.2f} µs/reading")
    print(f"{'total':<16} {total:7.2f} µs/reading  ({readings_n:,} readings, best of {args.repeat})")
    print(f"payload by {how}, line by {line_how}")
    print(f"output: {digest[0]} review events (crc32 {digest[3]:08x}), payloads crc32 {digest[1]:08x}, "
          f"lines crc32 {digest[2]:08x}" + ("" if store_crc is None else f", sinks took crc32 {store_crc:08x}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
