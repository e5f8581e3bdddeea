"""Disk bytes and store CPU per stored reading, schema 1 (full JSON) against schema 2
(compact), measured on real store files (issue 16 item 10, docs/sizing.md).

What runs: the gateway's own :class:`gateway.store.Store` (writer task, group commit,
``synchronous=FULL``) appends readings of a 15-point profile for ``--meters`` meters, slot
after slot, in the order a poll loop queues them. Schema 1 is the store as it was before
schema 2: its ``gateway/store.py`` is taken from git (``--old-rev``, default the last
commit before schema 2) and loaded beside the current one; without git the schema-1
figures come from :func:`write_v1_store` (the same table, index and messages, written
directly).

Two meters kinds: **primary** (CT = PT = 1: a point's value is its raw value) and **CT
meter** (CT 200/5, PT 10000/100, every point read on the secondary side: values differ
from raw values). Raw values are what the Modbus driver decodes from float32 registers
(``shortest_f32``), random-walking like a live meter.

Measured, per variant:

* **bytes/reading**: growth of the database file between two points of the run (after
  ``--warmup`` readings and at the end), each after ``PRAGMA wal_checkpoint(TRUNCATE)`` so
  the WAL is folded in; table rows, the index, page slack and the shape table included;
* **store CPU-s per 1000 readings**: this process's CPU (user + system, every thread: the
  store's writer thread does the encoding and SQLite) while appending, divided by readings,
  plus the CPU of two sinks reading every row back with ``pending()`` (a page of 500 each
  in turn, as two live sinks follow the head; schema 2 renders each message there, once
  for both sinks).

From bytes/reading it prints bytes per meter-day for each schedule (1-min realtime,
15-min interval, daily) and the disk of a 200-meter substation at the default retention.

Run from the repository root: ``python -m bench.store_size`` (≈ 1 min), ``--readings N``,
``--json FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

from drivers.modbus.decode import shortest_f32
from gateway.model import PointValue, Reading, reading_payload
from gateway.settings import StoreSettings

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "470b417"
"""The last commit whose store kept every reading as its full JSON message (schema 1)."""

POINTS: tuple[tuple[str, str, float, str], ...] = (
    # name, unit, typical raw value, scaling on the secondary side (c: CT, p: PT, *: CT×PT, -: none)
    ("voltage_v_l1", "V", 57.7, "p"), ("voltage_v_l2", "V", 57.6, "p"), ("voltage_v_l3", "V", 57.8, "p"),
    ("current_a_l1", "A", 3.21, "c"), ("current_a_l2", "A", 3.05, "c"), ("current_a_l3", "A", 3.33, "c"),
    ("power_kw_l1", "kW", 0.171, "*"), ("power_kw_l2", "kW", 0.162, "*"), ("power_kw_l3", "kW", 0.179, "*"),
    ("power_kw", "kW", 0.512, "*"), ("power_kvar", "kvar", 0.121, "*"), ("power_factor", "", 0.973, "-"),
    ("frequency_hz", "Hz", 50.01, "-"), ("energy_import_kwh", "kWh", 15234.5, "*"),
    ("energy_export_kwh", "kWh", 12.25, "*"),
)
"""The 15 points of the SDM630-like profile the figures are for."""

SCHEDULES: tuple[tuple[str, int, str], ...] = (
    ("realtime (1 min)", 1440, "realtime"),
    ("interval (15 min)", 96, "interval"),
    ("daily", 1, "interval"),
)
"""Schedule, readings per meter-day, retention class."""

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, meter TEXT, schedule TEXT,
    retention TEXT NOT NULL, slot REAL, ts REAL NOT NULL, quality TEXT, payload TEXT NOT NULL
);
CREATE INDEX outbox_meter_kind_slot ON outbox(meter, kind, slot);
CREATE TABLE sink_cursor (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY, ts REAL NOT NULL, meter TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL);
"""
"""The schema-1 store's tables, as the gateway before schema 2 created them."""

_F32 = struct.Struct(">f")


def _f32(x: float) -> Decimal:
    return Decimal(shortest_f32(_F32.unpack(_F32.pack(x))[0]))


def readings(meters: int, count: int, ct_meter: bool, schedule: str = "interval", step: float = 900.0,
             start: float = 1767225600.0, seed: int = 1) -> Iterator[Reading]:
    """``count`` readings, slot after slot, every meter per slot (the poll loop's order)."""
    rng = random.Random(seed)
    ct, pt = (Decimal(40), Decimal(100)) if ct_meter else (Decimal(1), Decimal(1))
    factor = {"c": ct, "p": pt, "*": ct * pt, "-": Decimal(1)}
    state = [[base * rng.uniform(0.9, 1.1) for _, _, base, _ in POINTS] for _ in range(meters)]
    n = 0
    slot = start
    while n < count:
        for m in range(meters):
            if n >= count:
                return
            pts: dict[str, PointValue] = {}
            for i, (name, unit, base, scaling) in enumerate(POINTS):
                if name.startswith("energy"):
                    state[m][i] += rng.uniform(0, base * 1e-4)
                else:
                    state[m][i] = base * rng.uniform(0.95, 1.05)
                raw = _f32(state[m][i])
                f = factor[scaling]
                pts[name] = PointValue(raw, raw if f == 1 else raw * f, unit)
            yield Reading(meter=f"m{m + 1:04d}", customer=f"c{m + 1:04d}", bus=f"bus{m % 8 + 1}",
                          schedule=schedule, slot=slot, ts=slot + 0.05 + rng.random() * 0.4, points=pts,
                          ct=ct, pt=pt)
            n += 1
        slot += step


def write_v1_store(path: Path, gateway: str, rows: Iterator[Reading], retention: str = "interval") -> list[str]:
    """A schema-1 store at ``path`` holding ``rows`` as the gateway before schema 2 stored
    them (every reading its ``amr.reading.v1`` text); returns the payloads in seq order."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('gateway_id', ?), ('schema_version', '1')", (gateway,))
    payloads: list[str] = []
    batch: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO outbox(seq, kind, meter, schedule, retention, slot, ts, quality, payload) "
                         "VALUES (?,?,?,?,?,?,?,?,?)", batch)
        conn.execute("COMMIT")
        batch.clear()

    for seq, r in enumerate(rows, start=1):
        p = reading_payload(r, gateway, seq)
        payloads.append(p)
        batch.append((seq, "reading", r.meter, r.schedule, retention, r.slot, r.ts, r.quality, p))
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return payloads


def _old_store_module(rev: str) -> ModuleType | None:
    """``gateway/store.py`` at ``rev``, loaded as its own module (None without git)."""
    try:
        text = subprocess.run(["git", "show", f"{rev}:gateway/store.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tempfile.TemporaryDirectory(prefix="amr-store-v1-") as tmp:
        path = Path(tmp) / "store_v1.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location("bench_store_v1", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_store_v1"] = mod
        spec.loader.exec_module(mod)
    return mod


def _db_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(os.path.getsize(str(path) + s) for s in ("", "-wal") if os.path.exists(str(path) + s))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _measure(store_cls: Any, path: Path, meters: int, count: int, warmup: int,
                   ct_meter: bool) -> dict[str, float]:
    store = await store_cls.open(path, StoreSettings(), "bench-gw")
    gen = readings(meters, count, ct_meter)
    size0 = 0
    n = 0
    cpu = 0.0
    batch: list[Reading] = []
    for r in gen:
        batch.append(r)
        if len(batch) == meters:
            t0 = _cpu()
            await store.append_readings(batch)
            cpu += _cpu() - t0
            n += len(batch)
            batch = []
            if n == warmup:
                size0 = await asyncio.get_running_loop().run_in_executor(None, _db_bytes, path)
    # what delivery costs the store: two sinks reading every row back, a page each in turn
    t0 = _cpu()
    after = {"mqtt": 0, "influxdb": 0}
    while True:
        got = 0
        for sink, seq in after.items():
            rows = await store.pending(sink, 500, after=seq)
            if rows:
                after[sink] = rows[-1].seq
                got += len(rows)
        if not got:
            break
    read_cpu = _cpu() - t0
    await store.close()
    size1 = _db_bytes(path)
    return {"bytes_per_reading": (size1 - size0) / (n - warmup), "cpu_s_per_1000": cpu / n * 1000,
            "read_cpu_s_per_1000": read_cpu / n * 1000, "file_bytes": size1, "readings": n}


def _run(store_cls: Any, label: str, args: argparse.Namespace, ct_meter: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="amr-store-size-") as tmp:
        return asyncio.run(_measure(store_cls, Path(tmp) / "s.db", args.meters, args.readings,
                                    args.warmup, ct_meter))


def _v1_direct(args: argparse.Namespace, ct_meter: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="amr-store-size-") as tmp:
        p = Path(tmp) / "a.db"
        write_v1_store(p, "bench-gw", readings(args.meters, args.warmup, ct_meter))
        size0 = _db_bytes(p)
        q = Path(tmp) / "b.db"
        write_v1_store(q, "bench-gw", readings(args.meters, args.readings, ct_meter))
        size1 = _db_bytes(q)
        return {"bytes_per_reading": (size1 - size0) / (args.readings - args.warmup), "cpu_s_per_1000": float("nan"),
                "read_cpu_s_per_1000": float("nan"), "file_bytes": size1, "readings": args.readings}


def _migration(args: argparse.Namespace) -> dict[str, float]:
    """Convert a schema-1 store of ``--readings`` CT-meter readings in place; time it."""
    import logging

    from gateway.storemigrate import migrate

    with tempfile.TemporaryDirectory(prefix="amr-store-size-") as tmp:
        p = Path(tmp) / "old.db"
        write_v1_store(p, "bench-gw", readings(args.meters, args.readings, True))
        before = p.stat().st_size
        conn = sqlite3.connect(p, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        t0, c0 = time.monotonic(), _cpu()
        n = migrate(conn, p, logging.getLogger("bench"))
        wall, cpu = time.monotonic() - t0, _cpu() - c0
        conn.close()
        return {"readings": n, "wall_s": wall, "cpu_s": cpu, "bytes_before": before, "bytes_after": p.stat().st_size}


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def main(argv: list[str] | None = None) -> int:
    """Print the figures; exit 1 when schema 2 misses 300 bytes per reading."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=200, help="meters per slot (default 200)")
    ap.add_argument("--readings", type=int, default=40_000, help="readings per variant (default 40,000)")
    ap.add_argument("--warmup", type=int, default=10_000, help="readings before the first size (default 10,000)")
    ap.add_argument("--old-rev", default=OLD_REV, help=f"git revision of the schema-1 store (default {OLD_REV})")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    if args.warmup % args.meters or args.readings % args.meters:
        ap.error("--readings and --warmup must be multiples of --meters")
    from gateway.store import Store
    old = _old_store_module(args.old_rev)
    results: dict[str, dict[str, float]] = {}
    t_start = time.monotonic()
    for ct_meter, kind in ((False, "primary"), (True, "CT meter")):
        v1 = _run(old.Store, "v1", args, ct_meter) if old is not None else _v1_direct(args, ct_meter)
        v2 = _run(Store, "v2", args, ct_meter)
        results[f"schema 1, {kind}"] = v1
        results[f"schema 2, {kind}"] = v2
    print(f"store size per reading: 15-point profile, {args.meters} meters, {args.readings:,} readings per variant "
          f"(growth after {args.warmup:,}), synchronous=FULL, WAL checkpointed; schema 1 from "
          f"{'git ' + args.old_rev if old is not None else 'write_v1_store (no git: no CPU figure)'}; "
          f"load {os.getloadavg()[0]:.2f}")
    print()
    print(f"{'variant':<24} {'bytes/reading':>13} {'commit CPU-s/1k':>15} {'2 sinks read CPU-s/1k':>21} "
          f"{'store CPU-s/1k':>14}")
    for name, r in results.items():
        r["store_cpu_s_per_1000"] = r["cpu_s_per_1000"] + r["read_cpu_s_per_1000"]
        print(f"{name:<24} {r['bytes_per_reading']:>13.0f} {r['cpu_s_per_1000']:>15.3f} "
              f"{r['read_cpu_s_per_1000']:>21.3f} {r['store_cpu_s_per_1000']:>14.3f}")
    for kind in ("primary", "CT meter"):
        a, b = results[f"schema 1, {kind}"], results[f"schema 2, {kind}"]
        print(f"  {kind}: schema 2 is {b['bytes_per_reading'] / a['bytes_per_reading']:.2f}× the bytes"
              + (f", {b['store_cpu_s_per_1000'] / a['store_cpu_s_per_1000']:.2f}× the store CPU (commit + 2 sinks "
                 "reading back)" if a["cpu_s_per_1000"] == a["cpu_s_per_1000"] else ""))
    worst = max(results["schema 2, primary"]["bytes_per_reading"], results["schema 2, CT meter"]["bytes_per_reading"])
    print()
    print(f"per meter-day and a 200-meter substation at the default retention (14 days realtime, 400 days "
          f"interval/daily), schema 2 at {worst:.0f} bytes/reading (the larger of the two kinds):")
    retention = {"realtime": StoreSettings().retention_realtime_days,
                 "interval": StoreSettings().retention_interval_days}
    total = 0.0
    rows = []
    for name, per_day, cls in SCHEDULES:
        day = worst * per_day
        sub = day * 200 * retention[cls]
        total += sub
        rows.append({"schedule": name, "readings_per_day": per_day, "bytes_per_meter_day": day,
                     "retention_days": retention[cls], "substation_bytes": sub})
        print(f"  {name:<18} {per_day:>5} readings/day  {_fmt_bytes(day):>9} per meter-day  "
              f"× 200 meters × {retention[cls]:g} days = {_fmt_bytes(sub)}")
    print(f"  all three schedules on every meter: {_fmt_bytes(total)}")
    mig = _migration(args)
    print()
    print(f"migration of a schema-1 store in place (python -m gateway.storemigrate, batches of 2,000, VACUUM at the "
          f"end): {mig['readings']:,.0f} readings in {mig['wall_s']:.1f} s ({mig['readings'] / mig['wall_s']:,.0f}/s, "
          f"CPU {mig['cpu_s']:.1f} s), file {_fmt_bytes(mig['bytes_before'])} → {_fmt_bytes(mig['bytes_after'])}")
    print(f"(ran {time.monotonic() - t_start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"variants": results, "schedules": rows, "total_bytes": total,
                                         "migration": mig}, indent=2))
    return 0 if worst <= 300 else 1




if __name__ == "__main__":
    raise SystemExit(main())
