"""Issue 17's false-alarm run through real peers: a healthy simulated fleet, the running
gateway and its review, on an accelerated clock; prints how many review events it raised.

The fleet: ``--meters`` meters on ``--buses`` loopback TCP buses, alternately Modbus TCP (the
simulator profile, with its event counters) and DL/T 645 (the generic 2007 profile, with the
meter clock and every event counter), CT 50/5…400/5 and some behind a 10 kV PT, each a
:class:`~drivers.simulation.model.MeterModel` with the two-shift day, weekends, noise, power
factor and reactive energy and — ``--holidays``, on by default — China's public holidays
(National Day falls inside the default 30 days from 2026-09-20). Each customer has a contract
of 3 × its base load (``demand_over_contract``) and the general tariff class's power-factor
reference 0.85 (``low_power_factor``), so every rule judges. Read every simulated 15 minutes
(energies, demand, power, voltages, power factor, event counters; the meter clock on
DL/T 645), reviewed with the default thresholds, SQLite on disk.

It prints one JSON line: simulated days, meters, reads good/failed/skipped, events by type
(the point of the run: zero), real seconds and the rate actually achieved. The in-process
version that ``make test`` runs (the same load model and the real rules over
simulator-generated readings, 50 meters × 30 days and 400 days of cycles, no sockets) is
tests/unit/test_review_false_alarms.py; this run is the wire path at fleet size.

    python -m bench.review_fleet --meters 50 --days 30 --rate 7200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from drivers.simulation.model import CN_HOLIDAYS
from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet, base_kw_for

ZONE = ZoneInfo("Asia/Shanghai")
_CTS = ("50/5", "100/5", "200/5", "400/5")


def fleet_config(data: Path, meters: int, buses: int, protocols: str = "mixed") -> str:
    """The fleet's configuration text (ports picked free on loopback); ``protocols``:
    ``mixed`` (Modbus TCP and DL/T 645 buses alternately) or ``modbus`` (Modbus TCP only)."""
    lines = ["gateway: {id: review-fleet, timezone: Asia/Shanghai, data_dir: " + str(data) + "}", "buses:"]
    kinds = []
    for b in range(buses):
        kind = "modbus-tcp" if b % 2 == 0 or protocols == "modbus" else "dlt645"
        kinds.append(kind)
        lines.append(f"  - {{id: bus{b}, type: tcp, host: 127.0.0.1, port: {free_port()}, protocol: {kind}, "
                     "timeout_ms: 1000}")
    lines.append("meters:")
    for i in range(meters):
        b = i % buses
        kind = kinds[b]
        ct = _CTS[i % len(_CTS)]
        pt = ", pt_ratio: 10000/100" if i % 5 == 4 else ""
        if kind == "modbus-tcp":
            address, profile, schedule = str(i // buses + 1), "simulator", "mb"
        else:
            address, profile, schedule = f'"{i + 1:012d}"', "dlt645-2007", "dl"
        lines.append(f"  - {{id: m{i:03d}, customer: C{i:03d}, bus: bus{b}, address: {address}, profile: {profile}, "
                     f"ct_ratio: {ct}{pt}, schedules: [{schedule}]}}")
    common = '"energy_*", "demand_max_kw", "power_kw", "voltage_*", "power_factor", "event_*"'
    lines += [
        "schedules:",
        f"  mb: {{every: 15m, points: [{common}]}}",
        f"  dl: {{every: 15m, points: [{common}, \"meter_clock\"]}}",
        f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}",
        "influxdb: {enabled: false}",
        f'api: {{listen: "127.0.0.1:{free_port()}"}}',
        "review:",
        "  low_power_factor: {tariff_class: general_100kva}",
        "  overrides:",
        "    customers:",
    ]
    return "\n".join(lines) + "\n"


def with_contracts(text: str, data: Path, seed: int) -> str:
    """Add each customer's contract (3 × the meter's base load, as the fleet simulates it)."""
    settings = load_settings_from_text(text, "<bench>", data, {"AMR_API_TOKEN": "t"})
    extra = [f"      {m.customer}: {{demand_over_contract: {{contract_kw: {3 * base_kw_for(m, seed):.0f}}}}}"
             for m in settings.meters.values()]
    return text + "\n".join(extra) + "\n"


async def run(meters: int, buses: int, days: float, rate: float, start: str, seed: int,
              holidays: bool, protocols: str = "mixed") -> dict[str, object]:
    """Run the fleet for ``days`` simulated days; the figures as a dict."""
    with tempfile.TemporaryDirectory(prefix="amr-review-fleet-") as tmp:
        data = Path(tmp)
        text = with_contracts(fleet_config(data, meters, buses, protocols), data, seed)
        settings = load_settings_from_text(text, "<bench>", data, {"AMR_API_TOKEN": "t"})
        t0 = datetime.fromisoformat(start).replace(tzinfo=ZONE).timestamp()
        clock = ScaledClock(t0, rate)
        fleet = SimulatedFleet(settings, clock, seed=seed, holidays=CN_HOLIDAYS if holidays else frozenset())
        await fleet.start()
        gw = Gateway(settings, clock, enable_sinks=False)
        began = time.monotonic()
        try:
            await gw.start()
            assert gw.review is not None
            end = t0 + days * 86400
            for _ in range(int(days * 86400 / rate / 0.5) + 600):       # bounded: 0.5 s steps
                if clock.time() >= end:
                    break
                await asyncio.sleep(0.5)
            real = time.monotonic() - began
            await gw.review.drain(60.0)
            stats = [m.stats for m in gw.meters.values()]
            reads = {"good": sum(s.reads_ok for s in stats), "failed": sum(s.reads_failed for s in stats),
                     "skipped": sum(s.reads_skipped for s in stats)}
            overruns = sum(w.overruns for w in gw.workers.values())
            db = gw.store_path
        finally:
            await gw.stop()
            await fleet.stop()
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute("SELECT type, meter FROM review_event WHERE state='raised'").fetchall()
        finally:
            conn.close()
        simulated = (clock.time() - t0) / 86400
        return {
            "meters": meters, "buses": buses, "protocols": protocols, "simulated_days": round(simulated, 2),
            "rate": rate,
            "holidays": holidays, "reads": reads, "overruns": overruns,
            "expected_reads": int(simulated * 96 * meters),
            "events": dict(Counter(t for t, _ in rows)),
            "event_meters": sorted({m for _, m in rows})[:20],
            "real_s": round(real, 1), "achieved_days_per_real_min": round(simulated / real * 60, 2),
        }


def main() -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=50)
    ap.add_argument("--buses", type=int, default=10)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=7200.0, help="simulated seconds per real second")
    ap.add_argument("--start", default="2026-09-20T00:00:00", help="local start (Asia/Shanghai)")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--no-holidays", dest="holidays", action="store_false")
    ap.add_argument("--protocols", choices=("mixed", "modbus"), default="mixed")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run(a.meters, a.buses, a.days, a.rate, a.start, a.seed, a.holidays, a.protocols))))


if __name__ == "__main__":
    main()
