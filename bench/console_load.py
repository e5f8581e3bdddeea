"""The web console's data under load: 1,000 simulated meters, and one meter's year of 15-minute data.

What runs (in this process, loopback only):

* a real :class:`gateway.runtime.Gateway` (SQLite store, HTTP API with the console, no sinks)
  with ``--meters`` simulated Modbus TCP meters (default 1,000: ``--buses`` TCP endpoints of
  the gateway's own simulator, 100 unit ids each), every meter read every 60 s;
* once every meter has answered, one year of 15-minute readings (35,040, ``power_kw`` and the
  registers, copied from the meter's real newest reading) is added to the store for meter
  ``m0001`` — committed through the gateway's own store, so they are kept as the gateway
  keeps every reading (compact rows: values against the meter's reading shape);
* then, over HTTP with a bearer token, measured side by side in the same run:

  - ``GET /api/v1/console/overview`` (the overview page's data: 1,000 meter rows, the buses,
    the clock) against ``GET /api/v1/meters`` (the plain meter list) — ``--repeat`` times
    each, interleaved; median, p95 and max;
  - the requests the meter page makes with the range "1 year", as the page makes them: the
    latest values, then at once the year's series downsampled to 960 buckets, 7 days of
    intervals, the events and the cycle's settlements; the wall time of each load,
    ``--repeat`` loads; and the raw readings of that year
    (``/api/v1/meters/m0001/readings?limit=100000``), what a page without downsampling would
    have to fetch, for the ratio.

Targets (issue 19): the overview's data endpoint answers in ≤ 200 ms (p95), a meter page over
one year loads in ≤ 1 s (p95 of the page's requests as the page makes them). Exit 1 when one is missed.
The machine is shared: the load average is printed; re-run before trusting a miss.

Run from the repository root: ``python -m bench.console_load`` (≈ 2 min),
``--meters 200 --repeat 10`` for a quick look, ``--json FILE`` for every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config import load_settings_from_text
from gateway.model import PointValue, Reading, iso_utc, json_number, loads_exact, parse_iso
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from gateway.store import Store
from gateway.storecodec import PAYLOAD_SQL

TOKEN = "console-bench-token"
YEAR_S = 365 * 86400
STEP_S = 900
OVERVIEW_TARGET_S = 0.200
METER_PAGE_TARGET_S = 1.0


def config_text(data_dir: Path, meters: int, buses: int, api_port: int) -> str:
    per_bus = -(-meters // buses)
    lines = [f"gateway: {{id: console-bench, timezone: Asia/Shanghai, data_dir: {data_dir}}}", "buses:"]
    for b in range(buses):
        lines.append(f"  - {{id: tcp-{b:02d}, type: tcp, host: 127.0.0.1, port: {free_port()}, "
                     f"protocol: modbus-tcp, timeout_ms: 1000, concurrency: 4}}")
    lines.append("meters:")
    for i in range(1, meters + 1):
        b, unit = (i - 1) // per_bus, (i - 1) % per_bus + 1
        lines.append(f"  - {{id: m{i:04d}, customer: C{(i - 1) // 4 + 1:04d}, bus: tcp-{b:02d}, address: {unit}, "
                     "profile: simulator, schedules: [realtime], billing: plan}")
    lines += ["schedules:", '  realtime: {every: 60s, points: ["power_kw", "energy_*"]}',
              'billing:', '  plan: {cycle_day: 1, stages: [11, 21], at: "00:00"}',
              "influxdb: {enabled: false}", f'api: {{listen: "127.0.0.1:{api_port}"}}',
              "store: {synchronous: NORMAL, commit_interval_ms: 50}"]
    return "\n".join(lines) + "\n"


def _newest(conn: sqlite3.Connection, meter: str) -> str:
    """The published text of ``meter``'s newest good reading (on the store's reader connection)."""
    row = conn.execute(f"SELECT {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' "
                       "AND quality='good' ORDER BY seq DESC LIMIT 1", (meter,)).fetchone()
    assert row is not None, f"{meter} has no good reading to copy"
    return str(row[0])


def reading_of(payload: str) -> Reading:
    """The :class:`Reading` a published ``amr.reading.v1`` text was made from (values exact)."""
    doc = loads_exact(payload)
    assert isinstance(doc, dict)
    points: dict[str, PointValue] = {}
    for name, p in doc["points"].items():
        raw, value = p["raw"], p["value"]
        same = json_number(raw) == json_number(value)
        points[name] = PointValue(raw, raw if same else value, p["unit"], p["quality"], p.get("reason"))
    extra = {k: v for k, v in doc.items() if k not in _MESSAGE_KEYS}
    return Reading(meter=doc["meter"], customer=doc["customer"], bus=doc["bus"], schedule=doc["schedule"],
                   slot=parse_iso(doc["slot"]), ts=parse_iso(doc["ts"]), points=points, quality=doc["quality"],
                   error=doc.get("error"), ct=doc["multiplier"]["ct"], pt=doc["multiplier"]["pt"], extra=extra)


_MESSAGE_KEYS = {"schema", "gateway", "seq", "meter", "customer", "bus", "schedule", "slot", "ts", "quality",
                 "error", "multiplier", "points"}


async def add_year(store: Store, meter: str, now: float) -> int:
    """A year of 15-minute readings of ``meter`` ending now, copied from its newest reading with
    ``power_kw`` varied, committed through the store as the gateway commits a reading (its
    compact codec: values against the meter's reading shape)."""
    newest = reading_of(await store.read(_newest, meter))
    first = (int(now) // STEP_S) * STEP_S - YEAR_S
    n = YEAR_S // STEP_S
    for start in range(0, n, 2000):
        chunk = []
        for k in range(start, min(n, start + 2000)):
            slot = float(first + k * STEP_S)
            kw = Decimal(f"{50 + 30 * ((k % 96) / 96) + (k % 7):.3f}")
            points = dict(newest.points)
            p = points["power_kw"]
            points["power_kw"] = PointValue(kw, kw, p.unit, p.quality, p.reason)
            chunk.append(replace(newest, slot=slot, ts=slot, points=points, seq=None))
        await store.append_readings(chunk, "interval")
    return n


async def timed(session: aiohttp.ClientSession, url: str) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    async with session.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200, (url, resp.status, body[:300])
    return time.perf_counter() - t0, len(body), resp.status


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(statistics.median(xs) * 1000, 1),
            "p95_ms": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))] * 1000, 1),
            "max_ms": round(xs[-1] * 1000, 1), "n": len(xs)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"meters": args.meters, "buses": args.buses, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        settings = load_settings_from_text(config_text(data, args.meters, args.buses, port), "<console-bench>",
                                           Path(tmp), {"AMR_API_TOKEN": TOKEN})
        fleet = SimulatedFleet(settings, seed=3)
        await fleet.start()
        gw = Gateway(settings, enable_sinks=False)
        try:
            await gw.start()
            deadline = time.monotonic() + args.warmup
            while time.monotonic() < deadline:
                if all(m.stats.last_good_ts for m in gw.meters.values()):
                    break
                await asyncio.sleep(1.0)
            answered = sum(1 for m in gw.meters.values() if m.stats.last_good_ts)
            out["answered"] = answered
            print(f"{answered}/{args.meters} meters answered", flush=True)
            assert gw.store is not None
            t0 = time.perf_counter()
            out["year_rows"] = await add_year(gw.store, "m0001", gw.clock.time())
            print(f"added {out['year_rows']} readings to m0001 in {time.perf_counter() - t0:.1f} s", flush=True)
            base = f"http://127.0.0.1:{gw.api.port if gw.api else port}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as s:
                overview: list[float] = []
                plain: list[float] = []
                size = 0
                await timed(s, base + "/api/v1/console/overview")   # first call starts the bus samples
                for _ in range(args.repeat):
                    dt, size, _ = await timed(s, base + "/api/v1/console/overview")
                    overview.append(dt)
                    plain.append((await timed(s, base + "/api/v1/meters"))[0])
                out["overview"] = {**summary(overview), "bytes": size}
                out["meters_list"] = summary(plain)
                now = gw.clock.time()
                q_year = f"from={iso_utc(now + 1 - YEAR_S)}&to={iso_utc(now + 1)}"
                page = ["/api/v1/console/meters/m0001/latest",
                        f"/api/v1/console/meters/m0001/series?points=power_kw,power_kw_l1,power_kw_l2,power_kw_l3"
                        f"&buckets=960&{q_year}",
                        f"/api/v1/meters/m0001/intervals?from={iso_utc(now - 7 * 86400)}",
                        "/api/v1/events?meter=m0001", "/api/v1/meters/m0001/settlements"]
                loads: list[float] = []
                parts: dict[str, list[float]] = {p.split("?")[0]: [] for p in page}
                series_bytes = 0
                for _ in range(args.repeat):
                    # as the page does: latest values first, then the rest at once
                    t0 = time.perf_counter()
                    first = await timed(s, base + page[0])
                    rest = await asyncio.gather(*(timed(s, base + p) for p in page[1:]))
                    loads.append(time.perf_counter() - t0)
                    for p, (dt, n, _) in zip(page, [first, *rest], strict=True):
                        parts[p.split("?")[0]].append(dt)
                        if "series" in p:
                            series_bytes = n
                out["meter_page_year"] = {**summary(loads), "series_bytes": series_bytes,
                                          "parts": {k: summary(v) for k, v in parts.items()}}
                raw: list[float] = []
                raw_bytes = 0
                for _ in range(max(3, args.repeat // 10)):
                    dt, raw_bytes, _ = await timed(s, base + f"/api/v1/meters/m0001/readings?limit=100000&{q_year}")
                    raw.append(dt)
                out["raw_year_readings"] = {**summary(raw), "bytes": raw_bytes}
        finally:
            await gw.stop()
            await fleet.stop()
    out["load_after"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--buses", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds to wait for every meter's first answer")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = asyncio.run(run(args))
    ov, mp, raw, ml = out["overview"], out["meter_page_year"], out["raw_year_readings"], out["meters_list"]
    print(f"\nload average before {out['load_before'][0]:.2f}, after {out['load_after'][0]:.2f} (2 cores, shared)")
    print(f"overview data, {out['meters']} meters ({ov['bytes']} bytes): median {ov['median_ms']} ms, "
          f"p95 {ov['p95_ms']} ms, max {ov['max_ms']} ms (target p95 ≤ {OVERVIEW_TARGET_S * 1000:.0f} ms: "
          f"{ov['p95_ms'] / (OVERVIEW_TARGET_S * 1000):.2f} of it); /api/v1/meters side by side: median "
          f"{ml['median_ms']} ms (ratio {ov['median_ms'] / max(ml['median_ms'], 0.01):.2f})")
    print(f"meter page, 1 year ({out['year_rows']} readings; series {mp['series_bytes']} bytes): median "
          f"{mp['median_ms']} ms, p95 {mp['p95_ms']} ms, max {mp['max_ms']} ms (target p95 ≤ "
          f"{METER_PAGE_TARGET_S * 1000:.0f} ms: {mp['p95_ms'] / (METER_PAGE_TARGET_S * 1000):.2f} of it)")
    for k, v in mp["parts"].items():
        print(f"    {k}: median {v['median_ms']} ms, p95 {v['p95_ms']} ms")
    series_ms = next(v["median_ms"] for k, v in mp["parts"].items() if "series" in k)
    print(f"the same year as raw readings ({raw['bytes']} bytes): median {raw['median_ms']} ms "
          f"({raw['median_ms'] / max(series_ms, 0.01):.1f}× the downsampled series)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    ok = ov["p95_ms"] <= OVERVIEW_TARGET_S * 1000 and mp["p95_ms"] <= METER_PAGE_TARGET_S * 1000
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
