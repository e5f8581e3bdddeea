"""The store's cost per committed reading, by the store's age and its SQLite page size.

``tcp_fleet.py`` measures a gateway whose store is seconds old: a few rows per meter, so
the ``(meter, kind, slot)`` index still keeps many meters on one leaf page. A gateway in
service has thousands of rows per meter; each reading's index entry then lands on its
meter's own leaf, and a commit writes about one whole page per reading to the WAL (and at
the next checkpoint to the database). This bench feeds the gateway's own
:class:`~gateway.store.Store` (writer thread, group commit, ``synchronous=FULL``) the way a
1,000-meter fleet at 1 s does — one reading per meter per slot, meters interleaved, groups
of ``--group`` readings per commit (20: what the 20-ms group window gathers at 1,000
readings/s) — first ``--slots``/2 slots to age the store, then the other half measured:
process CPU per reading (the loop's side and the writer thread together), and disk bytes
per reading (database + WAL) at the end.

Each ``--page-size`` is run in turn, ``--rounds`` times alternating, in a fresh store
(``gateway.store.PAGE_SIZE`` set before the store is created)::

    python -m bench.store_commit --slots 240 --page-size 4096,1024 --rounds 2

Run from the repository root. Timing claims belong here, not in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import gateway.store as store_module
from bench.pipeline_parts import _config
from gateway.config import load_settings_from_text
from gateway.model import PointResult, Reading
from gateway.runtime import build_meters
from gateway.settings import StoreSettings


def fleet_readings(meters: int, slots: int) -> list[Reading]:
    """One reading per meter per 1-s slot, meters interleaved (128 phases), as the gateway builds them."""
    settings = load_settings_from_text(_config(meters))
    runtimes = build_meters(settings)
    t0 = 1_796_000_000.0
    out: list[Reading] = []
    for k in range(slots):
        for i, rt in enumerate(runtimes.values()):
            names = rt.plans["s"][1]
            base = Decimal(1000 + k) / 100 + i
            results = {n: PointResult(base, "good") for n in names}
            slot = t0 + k + (i % 128) / 128
            out.append(rt.builder.build("s", slot, slot + 0.004, results))
    return out


def disk_bytes(folder: Path) -> int:
    """Bytes of the store's files (database and WAL) in ``folder``."""
    return sum(f.stat().st_size for f in folder.glob("s.sqlite*"))


async def one_run(readings: list[Reading], group: int, page_size: int) -> tuple[float, float]:
    """CPU µs per reading over the second half, and disk bytes per reading at the end."""
    store_module.PAGE_SIZE = page_size
    with tempfile.TemporaryDirectory(prefix="amr-store-commit-") as folder:
        store = await store_module.Store.open(Path(folder) / "s.sqlite", StoreSettings(synchronous="FULL"), "bench")
        got = await store.read(lambda c: int(c.execute("PRAGMA page_size").fetchone()[0]))
        if got != page_size:
            raise SystemExit(f"the store was made with page size {got}, not {page_size}")
        half = len(readings) // 2
        spent = 0.0
        for start, stop, timed in ((0, half, False), (half, len(readings), True)):
            c = time.process_time()
            for k in range(start, stop, group):
                for r in readings[k:k + group]:
                    store.submit_nowait(r, "realtime")
                await store.flush()
            if timed:
                spent = time.process_time() - c
        await store.close()
        size = disk_bytes(Path(folder))
    return 1e6 * spent / (len(readings) - half), size / len(readings)


def main(argv: list[str] | None = None) -> int:
    """Print each run, then the mean per page size and its ratio to the first."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=240, help="1-s slots; the first half ages the store")
    ap.add_argument("--group", type=int, default=20, help="readings per commit")
    ap.add_argument("--page-size", default="4096,1024", help="comma list of SQLite page sizes")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.page_size.split(",")]
    readings = fleet_readings(args.meters, args.slots)
    print(f"{args.meters} meters × {args.slots} slots, {args.group} readings per commit, "
          f"{args.slots // 2} rows per meter before the measured half", flush=True)
    cpu: dict[int, list[float]] = {s: [] for s in sizes}
    for rnd in range(args.rounds):
        for size in sizes:
            us, disk = asyncio.run(one_run(readings, args.group, size))
            cpu[size].append(us)
            print(f"round {rnd + 1} page {size}: {us:.1f} µs CPU per reading, {disk:.0f} B on disk per reading",
                  flush=True)
    first = sum(cpu[sizes[0]]) / len(cpu[sizes[0]])
    for size in sizes:
        mean = sum(cpu[size]) / len(cpu[size])
        print(f"page {size}: mean {mean:.1f} µs per reading ({mean / first:.2f} × page {sizes[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
