"""The ``estimated`` fallback, against simulated meters on an accelerated clock.

Real peers on loopback (two Modbus TCP and two DL/T 645 TCP simulators, SQLite on disk, the
HTTP API, the ``amr-gateway export`` process). Scenario, per meter ``d1`` (DL/T 645) and
``m2`` (Modbus):

* the meter answers before the boundary (good readings before it), goes silent across it
  (the settlement is ``missing``), then answers **one** routine poll after the boundary and
  goes silent again before the settlement retry that poll triggers: a flaky line. There are
  now good readings on both sides of the boundary but still no value of the meter's own;
* with ``allow_estimated: true`` the settlement becomes ``estimated``: each register is the
  exact linear interpolation (rational arithmetic, rounded half-even to 4 decimals) between
  the nearest good reading before and the first good reading after the boundary, both named
  in ``estimated_from`` (seq and time); the KPI counts it as estimated, not captured;
  maximum demand (not cumulative) is never interpolated;
* with ``allow_estimated: false`` it stays ``missing`` and no ``estimated`` revision is
  ever stored;
* when the meter is back for good, a real value supersedes: ``meter_frozen`` by date
  (DL/T 645) or ``late`` (Modbus); the older revisions (missing, estimated) stay in the
  history in order, and the export's stage CSV equals the API's.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from gateway.billing.rehearsal import HoldingClock
from gateway.model import Reading, loads_exact, parse_iso
from gateway.polling import MeterRuntime
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from gateway.storecodec import PAYLOAD_SQL, register
from tests.billingkit import SH, api_get, capture_of, export, local, quality, rehearsal_settings, shown
from tests.servicefixtures import await_until

pytestmark = pytest.mark.slow      # 12–17 s per case: a boundary and its retries on a real fleet

FLAKY = ("d1", "m2")


def silence(fleet: SimulatedFleet, meter_id: str) -> None:
    """Make a simulated meter stop answering *now*, synchronously (no await in between).

    ``SimulatedFleet.stop_meter`` is a coroutine; called from a reading observer it would
    run only after the settlement retry the same reading triggers was queued. Both
    simulators keep a per-meter on/off flag that they check for every request.
    """
    owner: Any = fleet._owner[meter_id]
    if hasattr(owner, "meters"):                       # Modbus simulator
        owner.meters[meter_id].running = False
    else:                                              # DL/T 645 simulator
        owner._meter(meter_id).online = False


def good_readings(path: Path, meter: str) -> list[dict[str, Any]]:
    conn = register(sqlite3.connect(path))
    try:
        rows = conn.execute(f"SELECT {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND quality='good' "
                            "ORDER BY ts", (meter,)).fetchall()
    finally:
        conn.close()
    out: list[dict[str, Any]] = []
    for (p,) in rows:
        doc = loads_exact(p)
        assert isinstance(doc, dict)
        out.append(doc)
    return out


def expected_interpolation(r1: Decimal, t1: float, r2: Decimal, t2: float, at: float) -> Decimal:
    """Independent of the gateway's code: exact rational line, half-even to 4 decimals."""
    exact = Fraction(r1) + (Fraction(r2) - Fraction(r1)) * (Fraction(at) - Fraction(t1)) / (
        Fraction(t2) - Fraction(t1))
    n = round(exact * 10_000)
    return Decimal(n).scaleb(-4)


@pytest.mark.parametrize("allow", [True, False], ids=["allowed", "not-allowed"])
async def test_flaky_meter_across_a_boundary_estimated_only_when_allowed(tmp_path: Path, allow: bool) -> None:
    settings, config = rehearsal_settings(tmp_path, allow_estimated=allow)
    b = local(2026, 12, 11)
    clock = HoldingClock(local(2026, 12, 10, 23, 20), 600.0, [b])
    fleet = SimulatedFleet(settings, clock, seed=11)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    answered_after: dict[str, float] = {}
    armed: set[str] = set()

    def flaky(m: MeterRuntime, r: Reading) -> None:
        # the first good poll after the boundary, then silence again before the retry runs
        if m.id in armed and r.quality == "good" and r.ts > b:
            silence(fleet, m.id)
            armed.discard(m.id)
            answered_after[m.id] = r.ts

    docs: dict[str, Any] = {}
    try:
        await gw.start()
        gw.observers.append(flaky)
        cap = capture_of(gw)
        await await_until(lambda: clock.time() >= local(2026, 12, 10, 23, 47), 30.0, "the clock at Dec 10 23:47")
        for m in FLAKY:
            await fleet.stop_meter(m)
        await await_until(lambda: clock.holding == b, 30.0, "the clock held at the boundary")
        await await_until(lambda: {quality(cap, m, b) for m in FLAKY} == {"missing"}
                          and quality(cap, "m1", b) == "actual" and quality(cap, "d2", b) == "meter_frozen", 30.0,
                          "the boundary settled: the flaky meters missing, m1 actual, d2 meter_frozen",
                          detail=lambda: {m: quality(cap, m, b) for m in (*FLAKY, "m1", "d2")})
        clock.release()
        await await_until(lambda: clock.time() >= b + 1800, 30.0, "the clock half an hour past the boundary")
        # Bring them back one simulated second before a poll slot, with the clock held there:
        # nothing else (no settlement retry) can reach the meters before that poll.
        slot = (int(clock.time()) // 900 + 2) * 900
        clock.add_hold(slot - 1)
        await await_until(lambda: clock.holding == slot - 1, 30.0, "the clock held a second before the poll slot")
        armed.update(FLAKY)
        for m in FLAKY:
            await fleet.start_meter(m)
        clock.release()
        await await_until(lambda: set(answered_after) == set(FLAKY), 30.0, "every flaky meter answering once",
                          detail=lambda: answered_after)
        if allow:
            await await_until(lambda: {quality(cap, m, b) for m in FLAKY} == {"estimated"}, 30.0,
                              "the flaky meters' settlements estimated",
                              detail=lambda: {m: quality(cap, m, b) for m in FLAKY})
        else:
            # give the retries that the good poll triggered (and the next ones) time to fail
            last = max(answered_after.values())
            await await_until(lambda: clock.time() >= last + 2700, 30.0, "45 simulated minutes after the last answer")
            assert {quality(cap, m, b) for m in FLAKY} == {"missing"}
        for m in FLAKY:
            status, text = await api_get(gw, f"/api/v1/meters/{m}/settlements?cycle=2026-12")
            assert status == 200, text
            docs[m + "/before"] = loads_exact(text)
        status, text = await api_get(gw, "/api/v1/kpi?date=2026-12-11")
        assert status == 200, text
        docs["kpi"] = loads_exact(text)

        for m in FLAKY:                                     # back for good
            await fleet.start_meter(m)
        await await_until(lambda: quality(cap, "d1", b) == "meter_frozen" and quality(cap, "m2", b) == "late",
                          40.0, "d1 meter_frozen and m2 late",
                          detail=lambda: (quality(cap, "d1", b), quality(cap, "m2", b)))
        for m in FLAKY:
            status, text = await api_get(gw, f"/api/v1/meters/{m}/settlements?cycle=2026-12")
            docs[m] = loads_exact(text)
        status, stages_csv = await api_get(gw, "/api/v1/meters/d1/settlements?cycle=2026-12&format=csv&table=stages")
        assert status == 200
    finally:
        await gw.stop()
        await fleet.stop()

    for m in FLAKY:
        before = docs[m + "/before"]["settlements"][1]
        after = docs[m]["settlements"][1]
        readings = good_readings(gw.store_path, m)
        prior = [r for r in readings if parse_iso(r["ts"]) < b]
        later = [r for r in readings if parse_iso(r["ts"]) > b]
        assert prior and later                               # good readings on both sides
        assert abs(parse_iso(later[0]["ts"]) - answered_after[m]) < 0.001   # stored to the millisecond
        history = [h["quality"] for h in after["history"]]
        if allow:
            assert (before["quality"], before["source"]) == ("estimated", "interpolated")
            assert [h["quality"] for h in before["history"]] == ["missing"]
            r1, r2 = prior[-1], later[0]                     # the nearest good readings around b
            named = before["estimated_from"]
            assert [(e["seq"], e["ts"]) for e in named] == [(r1["seq"], r1["ts"]), (r2["seq"], r2["ts"])]
            t1, t2 = parse_iso(r1["ts"]), parse_iso(r2["ts"])
            assert t1 < b < t2
            mult = settings.meters[m].multiplier
            regs = before["registers"]
            cumulative = [n for n in settings.billing["plan"].registers if n != "demand_max_kw"]
            assert set(regs) == {n for n in cumulative if n in r1["points"]} and regs
            assert "demand_max_kw" not in regs              # a maximum is never interpolated
            for name, reg in regs.items():
                want = expected_interpolation(r1["points"][name]["raw"], t1, r2["points"][name]["raw"], t2, b)
                assert reg["raw"] == want, (m, name, reg["raw"], want)
                assert reg["value"] == want * mult, (m, name)
                assert r1["points"][name]["raw"] <= reg["raw"] <= r2["points"][name]["raw"]
            assert history == ["missing", "estimated"]
            assert after["history"][1]["registers"] == regs            # kept as it was
            assert after["history"][1]["estimated_from"] == named
            kpi = {r["meter"]: r for r in docs["kpi"]["meters"]}[m]
            assert (kpi["settlements_due"], kpi["settlements_estimated"], kpi["settlements_captured"]) == (1, 1, 0)
        else:
            assert before["quality"] == "missing" and before["history"] == []
            assert history == ["missing"]
            kpi = {r["meter"]: r for r in docs["kpi"]["meters"]}[m]
            assert (kpi["settlements_due"], kpi["settlements_missing"], kpi["settlements_estimated"]) == (1, 1, 0)
        assert after["quality"] == ("meter_frozen" if m == "d1" else "late")
        assert after["estimated_from"] == []
        if after["quality"] == "meter_frozen":
            frozen = fleet.model(m).frozen_daily(datetime.fromtimestamp(b, SH).date())
            assert all(reg["raw"] == shown(n, frozen[n]) for n, reg in after["registers"].items())
            assert "demand_max_kw" in after["registers"] and "energy_import_kvarh" in after["registers"]

    conn = sqlite3.connect(gw.store_path)
    try:
        stored = [q for (q,) in conn.execute("SELECT quality FROM billing_settlement WHERE boundary=? AND meter IN "
                                             "('d1', 'm2') ORDER BY id", (b,))]
        published = [json.loads(p)["quality"] for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE kind='settlement' AND meter='d1' ORDER BY seq")
            if json.loads(p)["boundary"] == "2026-12-10T16:00:00.000Z"]
    finally:
        conn.close()
    assert ("estimated" in stored) is allow
    assert published == (["missing", "estimated", "meter_frozen"] if allow else ["missing", "meter_frozen"])

    # gap 5: `amr-gateway export settlements --table stages` writes the API's stage CSV
    exported = await asyncio.to_thread(export, config, "settlements", "--table", "stages", "--meter", "d1",
                                       "--cycle", "2026-12")
    assert exported == stages_csv
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert rows and set(rows[0]) >= {"csv_version", "stage", "energy_import_kwh", "start_quality", "end_quality",
                                     "reconciled", "flags"}
    stage1 = next(r for r in rows if r["stage"] == "1")    # csv_version 2: one row per stage, tariff columns
    assert stage1["end_quality"] == "meter_frozen"
    assert stage1["start_quality"] == ""     # the gateway first saw d1 on Dec 10
    assert [r["stage"] for r in rows] == ["1", "2", "3", "total"]
    assert {r["reconciled"] for r in rows} == {"False"}
