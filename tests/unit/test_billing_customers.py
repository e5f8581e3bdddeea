"""Customer settlements, KPIs counting and the versioned CSV columns (pure; issue 15 items 5, 8, 9).

* a customer stage is Σ sign × meter stage per register, exact in Decimal, withheld (None)
  when one part's value is withheld, with the worst quality of all parts' ends;
* the stage/customer CSV header is the same whatever tariffs the meters have;
* the ``customers`` section loads (roles, default signs, contract capacity into the review
  thresholds) and a configuration without it derives one customer per meter ``customer``.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.billing import csvcolumns, kpi
from gateway.billing.customers import combine_stage, customer_csv_rows
from gateway.billing.view import stage_csv_rows
from gateway.config import load_settings_from_text


def _stage(consumption: dict[str, Any], sq: str | None = "actual", eq: str | None = "meter_frozen",
           complete: bool = True, **extra: Any) -> dict[str, Any]:
    return {"stage": 1, "start": "2026-12-01T00:00:00Z", "end": "2026-12-11T00:00:00Z", "start_quality": sq,
            "end_quality": eq, "complete": complete, "consumption": consumption, "flags": [], "codes": [], **extra}


REGS = ("energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t2", "energy_import_kvarh", "demand_max_kw")


def test_signed_sum_is_exact_per_tariff() -> None:
    main = _stage({"energy_import_kwh": Decimal("12345.678"), "energy_import_kwh_t1": Decimal("0.1"),
                   "energy_import_kwh_t2": Decimal("999999.99"), "energy_import_kvarh": Decimal("5000.01")})
    sub = _stage({"energy_import_kwh": Decimal("0.002"), "energy_import_kwh_t1": Decimal("0.2"),
                  "energy_import_kwh_t2": Decimal("0.01"), "energy_import_kvarh": Decimal("0.01")})
    deduct = _stage({"energy_import_kwh": Decimal("2345.68"), "energy_import_kwh_t1": Decimal("0.3"),
                     "energy_import_kwh_t2": Decimal("1E+5"), "energy_import_kvarh": Decimal("1000")})
    doc = combine_stage([("a", "main", 1, main), ("b", "sub", 1, sub), ("c", "deduct", -1, deduct)], REGS)
    assert doc["consumption"] == {
        "energy_import_kwh": Decimal("10000.000"),
        "energy_import_kwh_t1": Decimal("0.0"),           # 0.1 + 0.2 - 0.3: exact, not 5.55e-17
        "energy_import_kwh_t2": Decimal("900000.00"),
        "energy_import_kvarh": Decimal("4000.02"),
    }
    assert "demand_max_kw" not in doc["consumption"]       # not cumulative: never differenced or summed
    assert doc["complete"] is True and doc["quality"] == "actual"
    assert [p["sign"] for p in doc["parts"]] == [1, 1, -1]
    # power factor of the signed sums: 10000 / sqrt(10000² + 4000.02²)
    assert doc["power_factor"] == Decimal("0.9285")
    assert doc["power_factor_registers"] == ["energy_import_kwh", "energy_import_kvarh"]
    assert (doc["power_factor_kwh"], doc["power_factor_kvarh"]) == (Decimal("10000.000"), Decimal("4000.02"))


def test_withheld_part_withholds_the_sum_and_worst_quality_wins() -> None:
    main = _stage({"energy_import_kwh": Decimal(100), "energy_import_kwh_t1": Decimal(40)}, sq="meter_frozen")
    sub = _stage({"energy_import_kwh": None, "energy_import_kwh_t1": Decimal(1)}, eq="late", complete=False,
                 codes=["negative"], flags=["negative: energy_import_kwh went down"])
    doc = combine_stage([("a", "main", 1, main), ("b", "deduct", -1, sub)], REGS)
    assert doc["consumption"] == {"energy_import_kwh": None, "energy_import_kwh_t1": Decimal(39)}
    assert doc["quality"] == "late" and doc["complete"] is False
    assert doc["codes"] == ["negative"] and "b: negative: energy_import_kwh went down" in doc["flags"]
    missing = combine_stage([("a", "main", 1, main), ("b", "sub", 1, _stage({}, sq=None))], REGS)
    assert missing["quality"] == "missing"
    # a meter without a tariff register: the customer's figure for it is withheld, never a partial sum
    no_t1 = combine_stage([("a", "main", 1, main), ("b", "sub", 1, _stage({"energy_import_kwh": Decimal(1)}))], REGS)
    assert no_t1["consumption"]["energy_import_kwh_t1"] is None and no_t1["complete"] is False


def test_power_factor_prefers_quadrants_one_and_four() -> None:
    a = _stage({"energy_import_kwh": Decimal(300), "energy_q1_kvarh": Decimal(120), "energy_q4_kvarh": Decimal(40),
                "energy_import_kvarh": Decimal(999)})
    b = _stage({"energy_import_kwh": Decimal(100), "energy_q1_kvarh": Decimal(20), "energy_q4_kvarh": Decimal(10),
                "energy_import_kvarh": Decimal(1)})
    doc = combine_stage([("a", "main", 1, a), ("b", "deduct", -1, b)],
                        ("energy_import_kwh", "energy_q1_kvarh", "energy_q4_kvarh", "energy_import_kvarh"))
    assert doc["power_factor_registers"] == ["energy_import_kwh", "energy_q1_kvarh", "energy_q4_kvarh"]
    assert doc["power_factor_kvarh"] == Decimal(130)         # (120 + 40) − (20 + 10)
    assert doc["power_factor"] == Decimal("0.8384")          # 200 / √(200² + 130²)
    assert doc["reactive_kvarh"] == {"q1": Decimal(100), "q2": None, "q3": None, "q4": Decimal(30)}


def test_demand_comes_from_the_main_meters() -> None:
    main = _stage({"energy_import_kwh": Decimal(10)}, max_demand_kw=Decimal("812.5"),
                  max_demand_at="2026-12-05T10:15:00+08:00", demand_source="meter")
    sub = _stage({"energy_import_kwh": Decimal(1)}, max_demand_kw=Decimal("99"))
    doc = combine_stage([("a", "main", 1, main), ("b", "deduct", -1, sub)], REGS)
    assert (doc["max_demand_kw"], doc["max_demand_at"], doc["demand_source"]) == (
        Decimal("812.5"), "2026-12-05T10:15:00+08:00", "meter")
    two = combine_stage([("a", "main", 1, main), ("b", "main", 1, {**sub, "max_demand_kw": Decimal("100")})], REGS)
    assert two["max_demand_kw"] == Decimal("912.5") and two["demand_source"] == "sum_of_main_meters"
    none = combine_stage([("a", "main", 1, _stage({"energy_import_kwh": Decimal(10)}))], REGS)
    assert none["max_demand_kw"] is None and none["power_factor"] is None


def _view(meter: str, consumption: dict[str, Any]) -> dict[str, Any]:
    settled = {"status": "stored", "multiplier": Decimal(40), "gateway_clock": {"synchronized": True},
               "meter_offset_s": Decimal("1.5"), "estimated_from": [], "supersedes": None}
    st = _stage(consumption)
    return {"meter": meter, "customer": "C1", "plan": "p", "cycle": "2026-12",
            "settlements": [settled, {**settled, "supersedes": {"id": 7}}],
            "stages": [st], "cycle_total": {**st, "stage": 0}, "reconciliation": {"reconciled": True}}


def _header_and_rows(rows: list[list[object]]) -> list[dict[str, str]]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csvcolumns.STAGE_COLUMNS)
    w.writerows(rows)
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def test_stage_and_customer_csv_columns_do_not_depend_on_the_tariffs() -> None:
    few = _view("a", {"energy_import_kwh": Decimal(5)})
    many = _view("b", {n: Decimal(i) for i, n in enumerate(csvcolumns.TARIFF_COLUMNS)})
    rows_few = list(stage_csv_rows(few))
    rows_many = list(stage_csv_rows(many))
    assert {len(r) for r in rows_few + rows_many} == {len(csvcolumns.STAGE_COLUMNS)}
    parsed = _header_and_rows(rows_few)
    assert [r["stage"] for r in parsed] == ["1", "total"]
    first = parsed[0]
    assert first["csv_version"] == "2" and first["record"] == "meter" and first["customer"] == "C1"
    assert first["energy_import_kwh"] == "5" and first["energy_import_kwh_t3"] == ""
    assert first["quality"] == "actual" and first["clock_state"] == "synchronized"
    assert first["multiplier"] == "40" and first["supersedes"] == "7" and first["meter_offset_s"] == "1.5;1.5"
    doc = {"customer": "C1", "plan": "p", "cycle": "2026-12", "reconciled": True,
           "meters": [{"meter": "a", "role": "main", "sign": 1}, {"meter": "b", "role": "deduct", "sign": -1}],
           "meter_cycles": [few, many],
           "stages": [combine_stage([("a", "main", 1, few["stages"][0]), ("b", "deduct", -1, many["stages"][0])],
                                    csvcolumns.TARIFF_COLUMNS)],
           "cycle_total": None}
    rows = _header_and_rows(list(customer_csv_rows(doc)))
    assert [(r["record"], r["meter"], r["role"], r["sign"]) for r in rows] == [
        ("meter", "a", "main", "1"), ("meter", "a", "main", "1"), ("meter", "b", "deduct", "-1"),
        ("meter", "b", "deduct", "-1"), ("customer", "", "", "")]
    customer = rows[-1]
    assert customer["record"] == "customer" and customer["energy_import_kwh"] == "5"   # 5 − 0
    assert customer["energy_import_kwh_t1"] == ""          # meter a has no t1: withheld, empty cell


def test_kpi_counts_on_time_apart_from_late() -> None:
    row: dict[str, Any] = dict.fromkeys(kpi.SETTLEMENT_KEYS, 0)
    for q in ("meter_frozen", "actual", "late", "manual", "estimated", "missing", None):
        kpi.count_boundary(row, q)
    assert row == {"settlements_due": 7, "settlements_captured": 3, "settlements_on_time": 2, "settlements_late": 1,
                   "settlements_manual": 1, "settlements_estimated": 1, "settlements_missing": 2}


CONFIG = """
gateway: {{id: gw1, timezone: Asia/Shanghai}}
buses:
  - {{id: b1, type: tcp, host: 127.0.0.1, port: 1502, protocol: modbus-tcp}}
meters:
  - {{id: m1, customer: C1, bus: b1, address: 1, profile: simulator, billing: p}}
  - {{id: m2, customer: C2, bus: b1, address: 2, profile: simulator, billing: p}}
  - {{id: m3, customer: C3, bus: b1, address: 3, profile: simulator}}
schedules:
  interval: {{every: 15m, points: ["energy_*"]}}
billing:
  p: {{cycle_day: 1, stages: [11, 21]}}
{extra}
"""


def test_customers_section_loads_with_default_signs_and_contract_capacity(tmp_path: Path) -> None:
    extra = """customers:
  - id: C1
    name: East Plant
    contract_capacity_kva: 800
    tariff: two_part
    power_factor_class: general_100kva
    meters:
      - {meter: m1, role: main}
      - {meter: m2, role: deduct}
  - id: C2
    meters:
      - {meter: m2, role: sub}
"""
    s = load_settings_from_text(CONFIG.format(extra=extra), "<t>", tmp_path)
    c1 = s.customers["C1"]
    assert (c1.name, c1.contract_capacity_kva, c1.tariff, c1.derived) == ("East Plant", Decimal(800), "two_part", False)
    assert [(m.meter, m.role, m.sign) for m in c1.meters] == [("m1", "main", 1), ("m2", "deduct", -1)]
    assert s.customers["C3"].derived and [m.meter for m in s.customers["C3"].meters] == ["m3"]
    assert c1.power_factor_class == "general_100kva"
    assert s.review.for_meter("m1", "C1").contract_kw == Decimal(800)
    assert s.review.for_meter("m1", "C1").power_factor_reference == Decimal("0.85")
    assert s.review.for_meter("m2", "C2").contract_kw is None
    assert s.review.for_meter("m2", "C2").power_factor_reference is None


def test_without_customers_section_one_customer_per_meter_customer(tmp_path: Path) -> None:
    s = load_settings_from_text(CONFIG.format(extra=""), "<t>", tmp_path)
    assert sorted(s.customers) == ["C1", "C2", "C3"]
    assert all(c.derived and [m.role for m in c.meters] == ["main"] for c in s.customers.values())


def test_every_csv_column_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "billing.md").read_text(encoding="utf-8")
    section = text[text.index("### CSV columns"):]
    for columns in (csvcolumns.SETTLEMENT_COLUMNS, csvcolumns.STAGE_COLUMNS):
        positions = [section.find(f"`{c}`", section.find("| 1 | `csv_version`")) for c in columns]
        assert -1 not in positions, [c for c, p in zip(columns, positions, strict=True) if p == -1]
    assert len(csvcolumns.STAGE_COLUMNS) == 46 and len(csvcolumns.SETTLEMENT_COLUMNS) == 31


def test_success_rate_counts_skipped_polls_as_failures() -> None:
    from gateway.polling import MeterStats

    assert MeterStats(reads_ok=3, reads_failed=1, reads_skipped=1).success_rate() == 0.6
    assert MeterStats(reads_skipped=2).success_rate() == 0.0
    assert MeterStats().success_rate() is None


def test_customer_settlement_topic() -> None:
    from gateway.settings import MqttSettings
    from gateway.sinks.mqtt import MqttSink
    from gateway.store import OutboxRow

    sink = MqttSink(MqttSettings(topic_prefix="amr"), "gw1")
    row = OutboxRow(5, "customer_settlement", None, 0.0, '{"customer": "C0001/a", "stages": []}')
    assert sink.topic_for(row) == "amr/gw1/customers/C0001_a/settlement"
    assert sink.topic_for(OutboxRow(6, "settlement", "m1", 0.0, "{}")) == "amr/gw1/meters/m1/settlement"
