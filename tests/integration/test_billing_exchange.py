"""A meter exchange (换表) and a CT change entered mid-stage on a running gateway, on simulated meters.

Real peers on loopback: two Modbus TCP and two DL/T 645 TCP simulators, the gateway's SQLite
store, its HTTP API with an operator and a reader token, the session's mosquitto, and the
hash-chained audit log on disk. An accelerated clock holds at the 2026-12-11 00:00 boundary, at
06:00 that day (the changes) and at the 12-12 00:00 boundary (stage 2 is that one day), and
in between at every 15-minute poll slot until all four meters' readings of it are in (so each
register is sampled at the instant its reading is stamped, however loaded the host):

* ``m2`` (Modbus) is exchanged at 06:00 through the CLI (``amr-gateway meter exchange``, which
  posts to the API): the simulator then shows the new meter's registers (its initial values plus
  what flows after). Stage 2 = (old final − start) + (end − new initial) per register, exactly,
  code ``exchange``, complete;
* ``d1`` (DL/T 645, CT 300/5 × PT 100) gets a CT change to 600/5 at 06:00 through the API with
  the registers it showed then, and the gateway is restarted under the new ratio: the automatic
  record of that restart names the operator's (``explained_by``), and stage 2 = (at change −
  start) × 6000 + (end − at change) × 12000 per register, exactly, code ``ratio_change``;
* ``m1`` is swapped at 06:00 as well but entered only at 06:30, after the review raised
  ``register_decrease`` for the new meter's first readings: the late record closes that event
  (the reply names it) and stage 2 is priced across the exchange like ``m2``'s;
* bad requests get their 4xx and change nothing (no record, no audit entry);
* ``meter_exchange`` and ``ratio_change`` review events are stored and arrive on MQTT; the
  review rules raise no ``register_decrease`` or ``meter_fast`` for either meter;
* the audit log holds both writes (and the configuration's record) and verifies.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.audit import AUDIT_FILE, verify
from gateway.billing import view
from gateway.billing.capture import BillingCapture
from gateway.billing.rehearsal import HoldingClock, rehearsal_config_text
from gateway.billing.settlement import NOT_CUMULATIVE
from gateway.config import load_settings_from_text
from gateway.model import iso_utc, loads_exact
from gateway.ports import free_port
from gateway.review.rules import is_cumulative_register
from gateway.runtime import Gateway
from gateway.settings import Settings
from gateway.simulator.fleet import SimulatedFleet
from gateway.tokens import Role, TokenFile
from tests.billingkit import SH, SlotSteps, capture_of
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    Subscriber,
    _mosquitto_fixture,
    await_until,
)

pytestmark = pytest.mark.slow      # three held instants, a restart and a simulated day on a real fleet

B1 = datetime(2026, 12, 11, tzinfo=SH).timestamp()
TX = datetime(2026, 12, 11, 6, tzinfo=SH).timestamp()
TX2 = datetime(2026, 12, 11, 6, 30, tzinfo=SH).timestamp()
B2 = datetime(2026, 12, 12, tzinfo=SH).timestamp()
AT = iso_utc(TX)


def settled(cap: BillingCapture, t: float) -> bool:
    got = {m: k.quality for (m, b), k in cap.current.items() if b == t}
    return len(got) == 4 and all(q in ("meter_frozen", "actual") for q in got.values())


async def call(port: int, path: str, token: str | None, body: object) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, \
            http.post(f"http://127.0.0.1:{port}{path}", headers=headers, json=body) as resp:
        return resp.status, loads_exact(await resp.text())


def records(store: Path, data: Path) -> tuple[int, int]:
    """How many change records are stored and how long the audit log is."""
    conn = sqlite3.connect(store)
    try:
        n = conn.execute("SELECT count(*) FROM billing_ratio_change").fetchone()[0]
    finally:
        conn.close()
    audit = data / AUDIT_FILE
    return int(n), len(audit.read_text().splitlines()) if audit.exists() else 0


def load(text: str, tmp: Path) -> Settings:
    return load_settings_from_text(text, str(tmp / "config.yaml"), tmp, {})


async def test_exchange_and_ct_change_mid_stage_are_priced_per_part_evented_and_audited(
        tmp_path: Path, mosquitto: Broker) -> None:
    gw_id = f"changes-{uuid.uuid4().hex[:8]}"
    api_port = free_port()
    text = rehearsal_config_text(tmp_path, api_port=api_port).replace("stages: [11, 21]", "stages: [11, 12]")
    text = text.replace("id: billing-rehearsal", f"id: {gw_id}")
    # rated values: meter_fast judges d1 against rated power × CT × PT (a difference of values under
    # two ratios would be far beyond it)
    text = text.replace("pt_ratio: 10000/100, schedules", "pt_ratio: 10000/100, rated_voltage_v: 220, "
                        "rated_current_a: 60, schedules")
    text += f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}}}\n"
    before, after = load(text, tmp_path), load(text.replace("ct_ratio: 300/5", "ct_ratio: 600/5"), tmp_path)
    plan = before.billing["plan"]
    cumulative = [n for n in plan.registers if n not in NOT_CUMULATIVE]
    tokens = TokenFile(tmp_path)
    operator, _ = tokens.add("meter-fitter", Role.OPERATOR, "2026-12-01T00:00:00Z")
    reader, _ = tokens.add("dashboard", Role.READER, "2026-12-01T00:00:00Z")
    sub = Subscriber(mosquitto, f"amr/{gw_id}/meters/+/event", f"sub-{gw_id}").start()
    clock = HoldingClock(B1 - 600, 600.0, [B1, TX, B2])
    steps = SlotSteps(clock, ("m1", "m2", "d1", "d2"))     # every read sampled and stamped at its slot
    fleet = SimulatedFleet(before, clock, seed=11)
    await fleet.start()
    m1, m2, d1 = fleet.model("m1"), fleet.model("m2"), fleet.model("d1")
    try:
        gw = Gateway(before, clock)
        steps.watch(gw)
        await gw.start()
        try:
            assert gw.api is not None and gw.api.port == api_port
            cap = capture_of(gw)
            await steps.run_to(B1)
            await await_until(lambda: settled(cap, B1), 30.0, "B1 settled")
            clock.set_rate(20_000.0)
            await steps.run_to(TX)            # the 06:00 polls (the old meter's final) go first
            old_final = {n: m2.values_at(TX)[n] for n in cumulative}
            at_change = {n: d1.values_at(TX)[n] for n in cumulative}
            # the new meter's registers: tariffs that sum to the total, nothing exported yet
            initial = {n: Decimal("0.00") for n in cumulative} | {
                "energy_import_kwh": Decimal("0.50"), "energy_import_kwh_t1": Decimal("0.10"),
                "energy_import_kwh_t2": Decimal("0.20"), "energy_import_kwh_t3": Decimal("0.15"),
                "energy_import_kwh_t4": Decimal("0.05")}

            # ---- bad input: its 4xx, nothing changed
            good_ex = {"at": AT, "old_final": {n: str(v) for n, v in old_final.items()},
                       "new_initial": {n: str(v) for n, v in initial.items()}, "new_serial": "3412009876"}
            good_rc = {"at": AT, "ct": "600/5", "registers": {n: str(v) for n, v in at_change.items()}}
            lower = {**good_ex["old_final"], "energy_import_kwh": "0.01"}
            start = records(gw.store_path, tmp_path)
            bad: list[tuple[str, str | None, object, int, str]] = [
                ("/api/v1/meters/m2/exchanges", operator, {**good_ex, "at": iso_utc(TX + 3600)}, 400, "future"),
                ("/api/v1/meters/m2/exchanges", operator, {**good_ex, "old_final": lower}, 409,
                 "lower than the meter's last recorded reading"),
                ("/api/v1/meters/m2/exchanges", operator,
                 {**good_ex, "new_initial": {**good_ex["new_initial"], "energy_import_kwh_t9": 1}}, 400,
                 "unknown register"),
                ("/api/v1/meters/nosuch/exchanges", operator, good_ex, 404, "nosuch"),
                ("/api/v1/meters/m2/exchanges", reader, good_ex, 403, ""),
                ("/api/v1/meters/m2/exchanges", None, good_ex, 401, ""),
                ("/api/v1/meters/d1/ratio-changes", operator, {"at": AT, "ct": "600/5"}, 400,
                 '"registers" is required'),
                ("/api/v1/meters/d1/ratio-changes", operator, {**good_rc, "ct": "300/5"}, 400, "already"),
                ("/api/v1/meters/d1/ratio-changes", reader, good_rc, 403, ""),
            ]
            for path, token, body, want, says in bad:
                status, reply = await call(api_port, path, token, body)
                assert status == want, (path, body, status, reply)
                assert says in str(reply.get("error", "") if isinstance(reply, dict) else reply), (path, reply)
            assert records(gw.store_path, tmp_path) == start

            # ---- the exchange through the CLI (posting to this gateway's API)
            argv = [sys.executable, "-m", "gateway.cli", "meter", "exchange", "m2", "--url",
                    f"http://127.0.0.1:{api_port}", "--at", AT, "--new-serial", "3412009876", "--note", "换表",
                    *(a for n, v in old_final.items() for a in ("--old-final", f"{n}={v}")),
                    *(a for n, v in initial.items() for a in ("--new-initial", f"{n}={v}"))]
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE,
                                                        env={**os.environ, "AMR_API_TOKEN": operator})
            out, err = await asyncio.wait_for(proc.communicate(), 60.0)
            assert proc.returncode == 0, err.decode()
            ex = loads_exact(out.decode())
            assert isinstance(ex, dict) and ex["kind"] == "exchange" and ex["new_serial"] == "3412009876"
            assert ex["entered_by"].endswith("(meter-fitter)") and ex["note"] == "换表"
            # the fitter swaps the meter: from just after 06:00 the simulator shows the new one
            healthy = m2.values_at(TX + 1)
            m2.faults.offsets.append((TX + 1, {n: initial[n] - healthy[n] for n in cumulative}))
            again = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.PIPE,
                                                         env={**os.environ, "AMR_API_TOKEN": operator})
            _, err = await asyncio.wait_for(again.communicate(), 60.0)
            assert again.returncode == 1 and "not after the previous exchange" in err.decode()

            # ---- the CT change through the API
            status, rc = await call(api_port, "/api/v1/meters/d1/ratio-changes", operator, good_rc)
            assert status == 201, rc
            assert (rc["old"]["multiplier"], rc["new"]["multiplier"]) == (6000, 12000)
        finally:
            await gw.stop()
        gw = Gateway(after, clock)             # the engineer's new configuration, still at 06:00
        steps.watch(gw)
        await gw.start()
        try:
            cap = capture_of(gw)
            await await_until(lambda: cap.ratio_changes == 1, 30.0, "the configuration's record of the change")
            # m1's meter is swapped at 06:00 too, but entered only at 06:30, after two polls of the
            # new meter raised register_decrease: the late record closes it
            m1_final = {n: m1.values_at(TX)[n] for n in cumulative}
            healthy = m1.values_at(TX + 1)
            m1.faults.offsets.append((TX + 1, {n: initial[n] - healthy[n] for n in cumulative}))
            engine = gw.review
            assert engine is not None
            await steps.run_to(TX2)

            def stored_decrease() -> int | None:
                """The id of m1's raised register_decrease once the engine has stored it, else None."""
                cond = engine.state("m1").active.get(("register_decrease", "energy_import_kwh"))
                return None if cond is None else cond.event_id

            # raised in the engine's state first, stored (and given its id) a moment later: wait for both
            decrease = await await_until(stored_decrease, 30.0, "register_decrease of m1's new meter, stored")
            status, late = await call(api_port, "/api/v1/meters/m1/exchanges", operator, {
                "at": AT, "new_serial": "m1-new", "old_final": {n: str(v) for n, v in m1_final.items()},
                "new_initial": {n: str(v) for n, v in initial.items()}})
            assert status == 201, late
            closed = late["closed_events"]          # every register's decrease the review rules watch (12)
            watched = [n for n in cumulative if is_cumulative_register(n)]     # not the quadrant registers
            assert decrease in closed and len(closed) == len(watched) == 12
            await steps.run_to(B2)
            await await_until(lambda: settled(cap, B2), 60.0, "B2 settled",
                              detail=lambda: {m: k.quality for (m, b), k in cap.current.items() if b == B2})
            assert gw.review is not None
            await gw.review.drain(10.0)
            want = {("m1", "meter_exchange"), ("m2", "meter_exchange"), ("d1", "ratio_change")}
            msgs = await await_until(lambda: sub.received(lambda ms: want <= {
                (m.json().get("meter"), m.json().get("type")) for m in ms}), 30.0, "the change events on MQTT",
                detail=sub.summary)
        finally:
            await gw.stop()
    finally:
        await fleet.stop()
        sub.stop()

    conn = sqlite3.connect(gw.store_path)
    try:
        docs = {m: view.cycle_view(conn, m, plan, "2026-12", "Asia/Shanghai", B2 + 60) for m in ("m1", "m2", "d1")}
        work = dict(conn.execute("SELECT event_id, state FROM review_work").fetchall())
        rows = [(m, loads_exact(b)) for m, b in conn.execute("SELECT meter, body FROM billing_ratio_change "
                                                             "ORDER BY id")]
        events = conn.execute("SELECT meter, type, state, ts FROM review_event WHERE meter IN ('m1', 'm2', 'd1')"
                              ).fetchall()
    finally:
        conn.close()

    r_b1, r_b2 = m2.values_at(B1), m2.values_at(B2)
    st = docs["m2"]["stages"][1]
    assert st["codes"] == ["exchange"] and st["complete"], st
    for n in cumulative:
        assert st["consumption"][n] == (old_final[n] - r_b1[n]) + (r_b2[n] - initial[n]), n
    assert st["consumption"]["energy_import_kwh"] > 0
    assert docs["m2"]["stages"][0]["codes"] == []

    st = docs["m1"]["stages"][1]
    assert st["codes"] == ["exchange"] and st["complete"], st
    for n in cumulative:
        assert st["consumption"][n] == ((m1_final[n] - m1.values_at(B1)[n]) + (m1.values_at(B2)[n] - initial[n])) \
            * 4000, n
    assert all(work[e] == "closed" for e in closed)

    d_b1, d_b2 = d1.values_at(B1), d1.values_at(B2)
    st = docs["d1"]["stages"][1]
    assert st["codes"] == ["ratio_change"] and st["complete"], st
    for n in cumulative:
        assert st["consumption"][n] == (at_change[n] - d_b1[n]) * 6000 + (d_b2[n] - at_change[n]) * 12000, n
    (shown,) = docs["d1"]["ratio_changes"]
    assert shown["entered_by"].endswith("(meter-fitter)") and shown["id"] == rc["id"]
    (exchange,) = docs["m2"]["exchanges"]
    assert exchange["id"] == ex["id"] and exchange["new_serial"] == "3412009876"
    assert docs["m2"]["ratio_changes"] == [] and docs["d1"]["exchanges"] == []

    assert [(m, b.get("kind"), b.get("explained_by")) for m, b in rows] == [
        ("m2", "exchange", None), ("d1", "ratio_change", None), ("d1", "ratio_change", rc["id"]),
        ("m1", "exchange", None)]
    types = {(m, t) for m, t, _, _ in events}
    assert {("m2", "meter_exchange"), ("d1", "ratio_change")} <= types
    m1_events = [e for e in events if e[0] == "m1"]
    events = [e for e in events if e[0] != "m1"]
    # nothing judged across the changes
    assert not [e for e in events if e[1] in ("register_decrease", "meter_fast", "reverse_energy",
                                              "tariff_sum_mismatch")], events
    # m1: only the decreases of the new meter's first readings before the late record (closed above),
    # nothing after it
    assert not [e for e in m1_events if e[1] != "meter_exchange" and e[3] > TX2], m1_events
    on_mqtt = {(m.json()["meter"], m.json()["type"]) for m in msgs if m.json().get("type") in
               ("meter_exchange", "ratio_change")}
    assert on_mqtt == want

    entries = [json.loads(line) for line in (tmp_path / AUDIT_FILE).read_text().splitlines()]
    writes = [(e["action"], e["subject"], e["actor"].split(":")[0]) for e in entries
              if e["action"].startswith("meter.")]
    assert writes == [("meter.exchange", "m2", "token"), ("meter.ratio_change", "d1", "token"),
                      ("meter.ratio_change", "d1", "gateway"), ("meter.exchange", "m1", "token")]
    closes = [e for e in entries if e["action"] == "event.close"]
    assert sorted((int(e["subject"]), e["after"]["state"]) for e in closes) == [(e, "closed") for e in sorted(closed)]
    assert verify(tmp_path / AUDIT_FILE).intact
