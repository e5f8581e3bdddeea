"""Customer settlements through the real API and mosquitto (issue 15 items 5, 8, 9).

Real peers on loopback: the shared mosquitto, two Modbus TCP and two DL/T 645 TCP simulated
meters, the gateway with its store, MQTT sink and HTTP API, on an accelerated clock from
2026-11-30 23:55 (+08:00) that holds at the 2026-12-01 and 2026-12-02 00:00 boundaries, so
stage 1 of the 2026-12 cycle has both ends (the rehearsal plan's stages start on the 2nd and
the 21st here: a day is as good as ten for the figures, and takes a tenth of the time). The
configuration has a ``customers`` section: C1 is two-part, ``m1`` main minus ``d2`` deducted
(d2 is C4's meter, C4 derived); C3 is ``d1``; ``m2``'s C2 is derived. Checked:

* ``GET /api/v1/customers`` lists the section's and the derived customers with roles and signs;
* C1's stage 1 per register = m1's stage 1 − d2's stage 1 exactly, as the meters' own routes
  give them; the quality is the worst of the parts; every meter's cycle is included;
* ``GET /api/v1/customers/C1/settlements?format=csv`` and the bulk ``GET /api/v1/settlements``
  CSV carry ``csv_version`` 2, the same header, and the same customer figures;
* MQTT ``amr/{gateway}/customers/C1/settlement`` (QoS 1, not retained) arrives with the same
  stage 1 figures as the API;
* ``amr-gateway export settlements --table customers`` gives the bulk CSV's figures;
* ``GET /api/v1/kpi?cycle=2026-12``: two boundaries due per meter so far, each on time.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from gateway.billing.csvcolumns import STAGE_COLUMNS, TARIFF_COLUMNS
from gateway.billing.rehearsal import HoldingClock, rehearsal_config_text
from gateway.config import load_settings_from_text
from gateway.model import loads_exact
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from tests.billingkit import capture_of, export, quality
from tests.servicefixtures import (  # noqa: F401  (fixtures)
    Broker,
    Subscriber,
    _mosquitto_fixture,
    await_until,
)

SH = ZoneInfo("Asia/Shanghai")
TOKEN = "customers-token"
CUSTOMERS = """customers:
  - id: C1
    name: East Works
    contract_capacity_kva: 800
    tariff: two_part
    meters:
      - {meter: m1, role: main}
      - {meter: d2, role: deduct}
  - id: C3
    meters:
      - {meter: d1, role: main}
"""


def local(month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(2026, month, day, hour, minute, tzinfo=SH).timestamp()


async def test_customer_settlement_api_csv_mqtt_and_cycle_kpi(tmp_path: Path, mosquitto: Broker) -> None:
    gw_id = f"cust-{uuid.uuid4().hex[:8]}"
    text = rehearsal_config_text(tmp_path, api_port=free_port()).replace("id: billing-rehearsal", f"id: {gw_id}")
    assert "stages: [11, 21]" in text
    text = text.replace("stages: [11, 21]", "stages: [2, 21]")
    text += f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}, topic_prefix: amr}}\n" + CUSTOMERS
    config = tmp_path / "config.yaml"
    config.write_text(text)
    settings = load_settings_from_text(text, str(config), tmp_path, {"AMR_API_TOKEN": TOKEN})
    assert sorted(settings.customers) == ["C1", "C2", "C3", "C4"]

    sub = Subscriber(mosquitto, f"amr/{gw_id}/customers/+/settlement", f"sub-{gw_id}").start()
    b1, b2 = local(12, 1), local(12, 2)
    clock = HoldingClock(local(11, 30, 23, 55), 600.0, [b1, b2])
    fleet = SimulatedFleet(settings, clock, seed=33)
    await fleet.start()
    gw = Gateway(settings, clock)
    docs: dict[str, Any] = {}
    try:
        await gw.start()
        cap = capture_of(gw)
        for b in (b1, b2):
            def held(b: float = b) -> bool:
                return clock.holding == b

            def settled(b: float = b) -> bool:
                return all(quality(cap, m, b) not in (None, "missing") for m in settings.meters)

            def seen(b: float = b) -> dict[str, str | None]:
                return {m: quality(cap, m, b) for m in settings.meters}

            await await_until(held, 90.0, f"the clock held at {b}")
            await await_until(settled, 30.0, "every meter's settlement of the boundary, on the held clock",
                              detail=seen)
            clock.release()
            clock.set_rate(20000.0)
        clock.set_rate(1.0)

        assert gw.api is not None
        port = gw.api.port
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async def get(path: str) -> tuple[str, dict[str, str]]:
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    assert resp.status == 200, (path, resp.status, await resp.text())
                    return await resp.text(), dict(resp.headers)

            for path in ("/api/v1/customers", "/api/v1/customers/C1/settlements?cycle=2026-12",
                         "/api/v1/meters/m1/settlements?cycle=2026-12", "/api/v1/meters/d2/settlements?cycle=2026-12",
                         "/api/v1/kpi?cycle=2026-12"):
                docs[path.split("?")[0]] = loads_exact((await get(path))[0])
            one_csv, one_headers = await get("/api/v1/customers/C1/settlements?cycle=2026-12&format=csv")
            bulk_csv, bulk_headers = await get("/api/v1/settlements?cycle=2026-12")
        c1_api = docs["/api/v1/customers/C1/settlements"]["stages"][0]
        def exact(m: Any) -> Any:
            return loads_exact(m.payload.decode())

        msgs = await await_until(
            lambda: sub.received(lambda ms: any(exact(m)["customer"] == "C1" and exact(m)["stages"]
                                                and exact(m)["stages"][0]["consumption"] == c1_api["consumption"]
                                                for m in ms)),
            30.0, "C1's customer settlement with stage 1 on MQTT", detail=sub.summary)
    finally:
        await gw.stop()
        await fleet.stop()
        sub.stop()

    assert msgs is not None
    listed = {c["id"]: c for c in docs["/api/v1/customers"]["customers"]}
    assert set(listed) == {"C1", "C2", "C3", "C4"}
    assert [(m["meter"], m["role"], m["sign"]) for m in listed["C1"]["meters"]] == [("m1", "main", 1),
                                                                                    ("d2", "deduct", -1)]
    assert listed["C1"]["tariff"] == "two_part" and listed["C1"]["contract_capacity_kva"] == 800
    assert listed["C2"]["derived"] is True and listed["C1"]["derived"] is False

    # the signed sum, exact, per register, against the meters' own stage figures
    m1 = docs["/api/v1/meters/m1/settlements"]["stages"][0]
    d2 = docs["/api/v1/meters/d2/settlements"]["stages"][0]
    c1 = docs["/api/v1/customers/C1/settlements"]
    stage1 = c1["stages"][0]
    assert m1["complete"] and d2["complete"] and stage1["complete"]
    common = set(m1["consumption"]) & set(d2["consumption"])
    assert "energy_import_kwh" in common and len(common) >= 5
    for reg in common:
        assert stage1["consumption"][reg] == m1["consumption"][reg] - d2["consumption"][reg], reg
        assert isinstance(stage1["consumption"][reg], Decimal)
    assert stage1["consumption"]["energy_import_kwh"] > 0
    worst = min((m1["start_quality"], m1["end_quality"], d2["start_quality"], d2["end_quality"]),
                key=["missing", "estimated", "late", "manual", "actual", "meter_frozen"].index)
    assert stage1["quality"] == worst
    assert [cv["meter"] for cv in c1["meter_cycles"]] == ["m1", "d2"]

    # CSV: version 2, one header, the customer's row equals the JSON
    assert one_headers["X-AMR-CSV-Version"] == bulk_headers["X-AMR-CSV-Version"] == "2"
    rows = list(csv.DictReader(io.StringIO(one_csv)))
    assert list(rows[0]) == list(STAGE_COLUMNS) and {r["csv_version"] for r in rows} == {"2"}
    mine = [r for r in rows if r["record"] == "customer" and r["stage"] == "1"]
    assert len(mine) == 1
    for reg in TARIFF_COLUMNS:
        v = stage1["consumption"].get(reg)
        assert mine[0][reg] == ("" if v is None else str(v)), reg
    bulk = list(csv.DictReader(io.StringIO(bulk_csv)))
    assert list(bulk[0]) == list(STAGE_COLUMNS)
    assert {r["customer"] for r in bulk if r["record"] == "customer"} == {"C1", "C2", "C3", "C4"}
    assert [r for r in bulk if r["record"] == "customer" and r["customer"] == "C1" and r["stage"] == "1"] == mine

    # `amr-gateway export settlements --table customers`: the bulk CSV's customer figures, from the store
    exported = list(csv.DictReader(io.StringIO(await asyncio.to_thread(
        export, config, "settlements", "--table", "customers", "--cycle", "2026-12"))))
    assert list(exported[0]) == list(STAGE_COLUMNS)
    key = ("customer", "record", "meter", "stage", *TARIFF_COLUMNS)
    assert [[r[k] for k in key] for r in exported] == [[r[k] for k in key] for r in bulk]

    # MQTT: the customer topic, QoS 1, not retained, same figures as the API
    c1_msgs = [m for m in msgs if m.json()["customer"] == "C1"]
    assert all(m.topic == f"amr/{gw_id}/customers/C1/settlement" and m.qos == 1 and not m.retain for m in c1_msgs)
    last = loads_exact(c1_msgs[-1].payload.decode())
    assert isinstance(last, dict)
    assert last["schema"] == "amr.customer_settlement.v1" and last["gateway"] == gw_id
    assert last["stages"][0]["consumption"] == stage1["consumption"]
    assert {m.json()["customer"] for m in msgs} >= {"C1", "C3"}

    # KPI per cycle: Dec 1 and Dec 2 due so far, each on time (meter_frozen or actual)
    kpi = docs["/api/v1/kpi"]
    for row in kpi["meters"]:
        assert (row["settlements_due"], row["settlements_on_time"], row["settlements_late"],
                row["settlements_missing"]) == (2, 2, 0, 0), row
        assert row["on_time_rate"] == 1.0
    kc = {r["customer"]: r for r in kpi["customers"]}
    assert kc["C1"]["meters"] == 2 and kc["C1"]["settlements_due"] == 4
    assert kpi["gateway"]["settlements_due"] == 8 and kpi["gateway"]["on_time_rate"] == 1.0
