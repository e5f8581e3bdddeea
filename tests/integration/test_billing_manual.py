"""Manual readings (补抄) and operator confirmations on the real API, against simulated meters on
an accelerated clock held at the 2026-12-11 and 2026-12-12 00:00 boundaries (a one-day stage).

Real peers on loopback: a Modbus TCP simulator (``site``) and a DL/T 645 TCP simulator
(``skewed``, its clock 10 min fast through the simulator's ``clock_drift`` fault, beyond the
plan's ``max_meter_offset: 5m``), the gateway's SQLite store, its HTTP API with an operator and a
reader token from the token file, and the hash-chained audit log on disk. The gateway clock's
state comes from ``clock_check_command: "true"`` (synchronized), so only the meter offset makes
``skewed`` unverified.

* ``site`` is silenced over the 12-11 boundary (``missing``); an operator enters an on-site
  reading with a typo, then corrects it: quality ``manual`` (never ``actual``), each version
  naming the one it supersedes, all visible; the 12-11 → 12-12 stage uses the manual value.
* ``skewed``'s 12-11 → 12-12 stage is ``clock_unverified`` at both ends, not complete; confirming
  one end leaves it incomplete, confirming both makes it complete.
* Every bad request gets its 4xx and changes nothing (no settlement row, no audit entry).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.audit import AUDIT_FILE, verify
from gateway.billing.rehearsal import HoldingClock
from gateway.config import load_settings_from_text
from gateway.model import iso_utc, loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from gateway.tokens import Role, TokenFile
from tests.billingkit import SH, capture_of, quality
from tests.servicefixtures import await_until

pytestmark = pytest.mark.slow      # two held boundaries and a simulated day on a real fleet

B1 = datetime(2026, 12, 11, tzinfo=SH).timestamp()
B2 = datetime(2026, 12, 12, tzinfo=SH).timestamp()
REG = "energy_import_kwh"

CONFIG = """\
gateway: {{id: manual, timezone: Asia/Shanghai, data_dir: {data}, clock_check_command: "true"}}
buses:
  - {{id: tcp-site, type: tcp, host: 127.0.0.1, port: {p1}, protocol: modbus-tcp, timeout_ms: 500}}
  - {{id: tcp-skewed, type: tcp, host: 127.0.0.1, port: {p2}, protocol: dlt645, timeout_ms: 500}}
meters:
  - {{id: site, customer: C1, bus: tcp-site, address: 1, profile: simulator, schedules: [interval], billing: plan}}
  - {{id: skewed, customer: C2, bus: tcp-skewed, address: "000000000062", profile: dlt645-2007,
     schedules: [interval], billing: plan}}
schedules:
  interval: {{every: 1h, points: ["energy_import_kwh"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 12, 21], at: "00:00", tolerance: 15m, registers: [energy_import_kwh],
          max_meter_offset: 5m}}
mqtt: {{enabled: false}}
influxdb: {{enabled: false}}
api: {{listen: "127.0.0.1:{api}"}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


async def call(port: int, method: str, path: str, token: str | None, body: object = None) -> tuple[int, Any]:
    """One API request; status and the decoded JSON body (exact decimals)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, \
            http.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, json=body) as resp:
        return resp.status, loads_exact(await resp.text())


def state(store: Path, data: Path) -> tuple[list[tuple[Any, ...]], int]:
    """Every settlement row (id, meter, boundary, quality, superseded_by) and the audit log's length."""
    conn = sqlite3.connect(store)
    try:
        rows = conn.execute("SELECT id, meter, boundary, quality, superseded_by FROM billing_settlement "
                            "ORDER BY id").fetchall()
    finally:
        conn.close()
    audit = data / AUDIT_FILE
    return rows, len(audit.read_text().splitlines()) if audit.exists() else 0


async def test_manual_reading_fills_a_missed_boundary_and_confirmations_complete_stages(tmp_path: Path) -> None:
    text = CONFIG.format(data=tmp_path, p1=free_port(), p2=free_port(), api=free_port())
    settings = load_settings_from_text(text, str(tmp_path / "config.yaml"), tmp_path, {})
    tokens = TokenFile(tmp_path)
    operator, _ = tokens.add("billing-clerk", Role.OPERATOR, "2026-12-01T00:00:00Z")
    reader, _ = tokens.add("dashboard", Role.READER, "2026-12-01T00:00:00Z")
    clock = HoldingClock(B1 - 2400, 600.0, [B1, B2])
    fleet = SimulatedFleet(settings, clock, seed=15)
    await fleet.start()
    await fleet.set_fault("skewed", "clock_drift", 600)
    gw = Gateway(settings, clock, enable_sinks=False)
    true_b1 = fleet.model("site").values_at(B1)[REG]
    manual_at = iso_utc(B1)
    try:
        await gw.start()
        assert gw.api is not None
        port = gw.api.port
        cap = capture_of(gw)
        await await_until(lambda: clock.time() >= B1 - 780, 30.0, "the clock at Dec 10 23:47")
        await fleet.stop_meter("site")
        await await_until(lambda: clock.holding == B1 and quality(cap, "site", B1) == "missing"
                          and quality(cap, "skewed", B1) == "meter_frozen", 30.0,
                          "B1 settled: site missing, skewed meter_frozen",
                          detail=lambda: (clock.holding, quality(cap, "site", B1), quality(cap, "skewed", B1)))
        status, doc = await call(port, "GET", "/api/v1/meters/skewed/settlements?cycle=2026-12", reader)
        assert status == 200
        skewed_b1 = doc["settlements"][1]
        assert skewed_b1["flags"] == ["clock_unverified"]
        status, doc = await call(port, "GET", "/api/v1/meters/site/settlements?cycle=2026-12", reader)
        site_missing_id = doc["settlements"][1]["id"]
        assert doc["settlements"][1]["quality"] == "missing" and site_missing_id is not None

        # ---- bad input: its 4xx, nothing changed
        good = {"registers": {REG: str(true_b1)}, "read_at": manual_at, "note": "补抄: read on site by the clerk"}
        before = state(gw.store_path, tmp_path)
        bad: list[tuple[str, str | None, object, int, str]] = [
            ("/api/v1/meters/nosuch/manual-readings", operator, good, 404, "nosuch"),
            ("/api/v1/meters/site/manual-readings", operator, {**good, "registers": {"energy_import_kwh_t9": 1}},
             400, "accepted: energy_import_kwh"),
            ("/api/v1/meters/site/manual-readings", operator, {**good, "read_at": iso_utc(B1 + 3600)}, 400,
             "in the future"),
            ("/api/v1/meters/site/manual-readings", operator, {**good, "registers": {REG: "12a"}}, 400,
             "must be a number"),
            ("/api/v1/meters/site/manual-readings", operator, {**good, "registers": {REG: True}}, 400,
             "must be a number"),
            ("/api/v1/meters/site/manual-readings", operator, {"registers": {REG: 1}}, 400, "read_at"),
            ("/api/v1/meters/site/manual-readings", operator, {**good, "boundary": "2026-12-11T05:00:00+08:00"},
             400, "not a boundary"),
            ("/api/v1/meters/site/manual-readings", reader, good, 403, ""),
            ("/api/v1/meters/site/manual-readings", None, good, 401, ""),
            (f"/api/v1/settlements/{skewed_b1['id']}/confirm", operator, {}, 400, "reason"),
            (f"/api/v1/settlements/{skewed_b1['id']}/confirm", operator, {"reason": "  "}, 400, "reason"),
            (f"/api/v1/settlements/{skewed_b1['id']}/confirm", reader, {"reason": "ok"}, 403, ""),
            (f"/api/v1/settlements/{site_missing_id}/confirm", operator, {"reason": "ok"}, 409, "needs no"),
            ("/api/v1/settlements/999999/confirm", operator, {"reason": "ok"}, 404, "999999"),
        ]
        for path, token, body, want, says in bad:
            status, reply = await call(port, "POST", path, token, body)
            assert status == want, (path, body, status, reply)
            assert says in json.dumps(reply, ensure_ascii=False), (path, reply)
        assert state(gw.store_path, tmp_path) == before

        # ---- a manual reading with a typo, then its correction: both versions stay
        status, first = await call(port, "POST", "/api/v1/meters/site/manual-readings", operator,
                                   {**good, "registers": {REG: str(true_b1 + 100)}})
        assert status == 201, first
        assert (first["quality"], first["source"], first["revision"]) == ("manual", "manual", 2)
        assert first["supersedes"]["quality"] == "missing" and first["supersedes"]["id"] == site_missing_id
        assert first["entered_by"].endswith("(billing-clerk)") and first["read_at"] == manual_at
        assert first["boundary"] == iso_utc(B1)
        status, fixed = await call(port, "POST", "/api/v1/meters/site/manual-readings", operator,
                                   {**good, "boundary": "2026-12-11T00:00:00+08:00"})
        assert status == 201, fixed
        assert fixed["supersedes"] == {"id": first["id"], "quality": "manual", "seq": first["seq"], "revision": 2}
        assert fixed["registers"][REG]["raw"] == true_b1 == fixed["registers"][REG]["value"]
        assert quality(cap, "site", B1) == "manual"

        # ---- on to the next boundary: site answers again, a live read there
        await fleet.start_meter("site")
        clock.release()
        clock.set_rate(12000.0)
        await await_until(lambda: clock.holding == B2 and quality(cap, "site", B2) == "actual"
                          and quality(cap, "skewed", B2) == "meter_frozen", 60.0,
                          "B2 settled: site actual, skewed meter_frozen",
                          detail=lambda: (clock.time(), quality(cap, "site", B2), quality(cap, "skewed", B2)))
        assert quality(cap, "site", B1) == "manual"          # the late retry never replaced it

        status, site = await call(port, "GET", "/api/v1/meters/site/settlements?cycle=2026-12", reader)
        assert status == 200
        b1 = site["settlements"][1]
        assert (b1["quality"], b1["id"], b1["note"]) == ("manual", fixed["id"], good["note"])
        assert [(h["quality"], h["revision"]) for h in b1["history"]] == [("missing", 1), ("manual", 2)]
        assert b1["history"][1]["registers"][REG]["raw"] == true_b1 + 100     # the typo stays visible
        stage = site["stages"][1]
        end = site["settlements"][2]
        assert (stage["start_quality"], stage["end_quality"], stage["complete"]) == ("manual", "actual", True)
        assert stage["consumption"][REG] == end["registers"][REG]["value"] - true_b1
        assert stage["consumption"][REG] > 0
        status, kpi = await call(port, "GET", "/api/v1/kpi?date=2026-12-11", reader)
        row = {r["meter"]: r for r in kpi["meters"]}["site"]
        assert (row["settlements_due"], row["settlements_manual"], row["settlements_missing"],
                row["settlements_captured"]) == (1, 1, 0, 0)

        # ---- confirmations of the clock_unverified stage ends
        status, skewed = await call(port, "GET", "/api/v1/meters/skewed/settlements?cycle=2026-12", reader)
        assert skewed["stages"][1]["codes"] == ["clock_unverified"] and skewed["stages"][1]["complete"] is False
        ends = [skewed["settlements"][1], skewed["settlements"][2]]
        assert all(e["flags"] == ["clock_unverified"] and e["confirmed"] is None for e in ends)
        reason = "meter clock checked on site: 10 min fast, registers match the display"
        status, c1 = await call(port, "POST", f"/api/v1/settlements/{ends[0]['id']}/confirm", operator,
                                {"reason": reason})
        assert status == 200, c1
        assert c1["confirmed"]["reason"] == reason and c1["confirmed"]["by"].endswith("(billing-clerk)")
        assert c1["supersedes"]["id"] == ends[0]["id"] and c1["registers"] == ends[0]["registers"]
        status, half = await call(port, "GET", "/api/v1/meters/skewed/settlements?cycle=2026-12", reader)
        assert half["stages"][1]["complete"] is False                # the end is still unconfirmed
        for again in (ends[0]["id"], c1["id"]):                     # superseded, or already confirmed
            status, reply = await call(port, "POST", f"/api/v1/settlements/{again}/confirm", operator,
                                       {"reason": reason})
            assert status == 409, reply
        status, c2 = await call(port, "POST", f"/api/v1/settlements/{ends[1]['id']}/confirm", operator,
                                {"reason": reason})
        assert status == 200, c2
        status, done = await call(port, "GET", "/api/v1/meters/skewed/settlements?cycle=2026-12", reader)
        st = done["stages"][1]
        assert st["complete"] is True and st["codes"] == []
        assert sum(f.startswith("clock_unverified confirmed") for f in st["flags"]) == 2
        b1s = done["settlements"][1]
        assert b1s["id"] == c1["id"] and [h["id"] for h in b1s["history"]] == [ends[0]["id"]]
        assert b1s["history"][0]["confirmed"] is None
    finally:
        await gw.stop()
        await fleet.stop()

    entries = [json.loads(line) for line in (tmp_path / AUDIT_FILE).read_text().splitlines()]
    writes = [(e["action"], e["subject"]) for e in entries if e["action"] in ("reading.manual", "settlement.confirm")]
    assert writes == [("reading.manual", f"site@{iso_utc(B1)}"), ("reading.manual", f"site@{iso_utc(B1)}"),
                      ("settlement.confirm", f"skewed@{iso_utc(B1)}"), ("settlement.confirm", f"skewed@{iso_utc(B2)}")]
    manual = [e for e in entries if e["action"] == "reading.manual"]
    assert manual[0]["before"]["quality"] == "missing" and manual[0]["after"]["quality"] == "manual"
    assert manual[1]["before"]["id"] == first["id"] and manual[1]["after"]["id"] == fixed["id"]
    assert all(e["actor"].endswith("(billing-clerk)") for e in entries if (e["action"], e["subject"]) in writes)
    assert verify(tmp_path / AUDIT_FILE).intact

    conn = sqlite3.connect(gw.store_path)        # published: every version reached the outbox
    try:
        published = [json.loads(p) for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE kind='settlement' AND meter='site' ORDER BY seq")]
    finally:
        conn.close()
    assert [p["quality"] for p in published if p["boundary"] == iso_utc(B1)] == ["missing", "manual", "manual"]
