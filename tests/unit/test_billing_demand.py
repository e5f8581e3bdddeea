"""Two-part tariff arithmetic (gateway.billing.demand): demand windows, gaps, meter records, power factor."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.billing import demand
from gateway.billing.demand import Demand, MeterDemand, computed_demand, meter_demand, power_factor

T0 = 1_767_196_800.0          # 2026-01-01 00:00 +08:00
Q = 900.0


def series(kwh_per_slot: list[str], start: float = T0, step: float = Q, first: str = "1000") -> dict[float, Decimal]:
    """Cumulative register samples at start, start+step, … from per-slot consumption."""
    out = {start: Decimal(first)}
    acc = Decimal(first)
    for k, d in enumerate(kwh_per_slot, start=1):
        acc += Decimal(d)
        out[start + k * step] = acc
    return out


def test_block_demand_is_the_largest_window_times_four_at_its_end() -> None:
    s = series(["2.5", "3.25", "1", "3.25"])
    d = computed_demand(s, T0, T0 + 4 * Q, Q, Q, "block")
    assert d.value == Decimal("13.00") and d.at == T0 + 2 * Q          # first of the two equal maxima
    assert d.source == "computed"
    assert d.detail == {"method": "block", "window_minutes": 15, "slide_minutes": 15, "windows": 4, "gaps": 0}


def test_block_demand_counts_gaps_and_never_fills_them() -> None:
    s = series(["2", "9", "3", "4"])
    del s[T0 + 2 * Q]                       # the reading that ends the 9 kWh window is missing
    d = computed_demand(s, T0, T0 + 4 * Q, Q, Q, "block")
    assert d.value == Decimal("16") and d.at == T0 + 4 * Q             # 4 kWh in the last window
    assert d.detail["gaps"] == 2 and "understated" in d.detail["note"]
    none = computed_demand({}, T0, T0 + 4 * Q, Q, Q, "block")
    assert none.value is None and none.source is None and none.detail["gaps"] == 4


def test_sliding_demand_finds_a_peak_that_straddles_block_edges() -> None:
    # 5-minute readings: 2 kWh per 5 min, except a burst of 3 kWh in the three 5-minute
    # steps from 00:10 to 00:25 (straddles the 00:15 block edge)
    per5 = ["2", "2", "3", "3", "3", "2", "2", "2", "2"]
    s = series(per5, step=300.0)
    block = computed_demand(s, T0, T0 + 2700, Q, Q, "block")
    sliding = computed_demand(s, T0, T0 + 2700, Q, 300.0, "sliding")
    assert block.value == Decimal("32") and block.at == T0 + 1800       # 3+3+2 in 00:15-00:30
    assert sliding.value == Decimal("36") and sliding.at == T0 + 1500   # 3+3+3 in 00:10-00:25
    assert sliding.detail["windows"] == 7 and sliding.detail["slide_minutes"] == 5


def test_sample_slots_are_the_window_ends() -> None:
    assert demand.sample_slots(T0, T0 + 2 * Q, Q, Q) == [T0, T0 + Q, T0 + 2 * Q]
    assert demand.sample_slots(T0, T0 + Q, Q, 300.0) == [T0, T0 + Q]


def test_a_window_that_goes_down_is_a_gap() -> None:
    s = {T0: Decimal(10), T0 + Q: Decimal(9), T0 + 2 * Q: Decimal(10)}
    d = computed_demand(s, T0, T0 + 2 * Q, Q, Q, "block")
    assert d.value == Decimal(4) and d.detail["gaps"] == 1


def test_a_window_across_a_ct_change_is_a_gap() -> None:
    s = series(["2", "9", "3"])
    ratios = {T0: "200/5", T0 + Q: "200/5", T0 + 2 * Q: "400/5", T0 + 3 * Q: "400/5"}
    d = computed_demand(s, T0, T0 + 3 * Q, Q, Q, "block", ratios)
    assert d.value == Decimal(12) and d.at == T0 + 3 * Q and d.detail["gaps"] == 1


def test_power_factor_is_exact_to_four_decimals() -> None:
    assert power_factor(Decimal(12000), Decimal(5700)) == Decimal("0.9033")
    assert power_factor(Decimal(3), Decimal(4)) == Decimal("0.6000")
    assert power_factor(Decimal(1), Decimal(0)) == Decimal("1.0000")
    assert power_factor(Decimal(0), Decimal(5)) is None
    assert power_factor(None, Decimal(5)) is None


def test_power_factor_uses_q1_plus_q4_and_names_them() -> None:
    cons = {"energy_import_kwh": Decimal(12000), "energy_q1_kvarh": Decimal(5400),
            "energy_q2_kvarh": Decimal(0), "energy_q3_kvarh": Decimal(0), "energy_q4_kvarh": Decimal(300),
            "energy_import_kvarh": Decimal(9999)}
    out = demand.power_factor_inputs(cons)
    assert out["power_factor"] == Decimal("0.9033")
    assert out["power_factor_registers"] == ["energy_import_kwh", "energy_q1_kvarh", "energy_q4_kvarh"]
    assert out["power_factor_kvarh"] == Decimal(5700) and out["power_factor_kwh"] == Decimal(12000)
    assert out["reactive_kvarh"] == {"q1": Decimal(5400), "q2": Decimal(0), "q3": Decimal(0), "q4": Decimal(300)}


def test_power_factor_falls_back_to_combined_reactive_and_says_so() -> None:
    cons = {"energy_import_kwh": Decimal(3), "energy_import_kvarh": Decimal(4), "energy_q1_kvarh": None}
    out = demand.power_factor_inputs(cons)
    assert out["power_factor"] == Decimal("0.6000")
    assert out["power_factor_registers"] == ["energy_import_kwh", "energy_import_kvarh"]
    assert demand.power_factor_inputs({"energy_q1_kvarh": Decimal(1)})["power_factor"] is None


DAY = 86400.0
S1, S2, S3, END = T0, T0 + 10 * DAY, T0 + 20 * DAY, T0 + 31 * DAY      # stages 1-11, 11-21, 21-1


def test_meter_demand_inside_the_stage_counts() -> None:
    cur = MeterDemand(Decimal("51.2"), S2 + 3600, "current", period_start=S1)
    d = meter_demand(S2, S3, cur, None)
    assert d == Demand(Decimal("51.2"), S2 + 3600, "meter", {"record": "current"})


def test_meter_demand_without_reset_instants_says_what_it_assumes() -> None:
    d = meter_demand(S2, S3, MeterDemand(Decimal("9"), S2 + 60, "current"), None)
    assert d is not None and d.value == Decimal(9) and "does not tell its demand resets" in d.detail["note"]


def test_meter_demand_before_the_stage_says_nothing_of_it() -> None:
    cur = MeterDemand(Decimal("51.2"), S1 + 3600, "current", period_start=S1)
    assert meter_demand(S2, S3, cur, None) is None
    assert meter_demand(S2, S3, MeterDemand(Decimal(0), None, "current"), None) is None


def test_cycle_end_uses_the_settlement_day_record_not_the_reset_register() -> None:
    """The known bug: the register read at the cycle end was just reset (0); the record holds the cycle."""
    reset_register = MeterDemand(Decimal(0), None, "current", period_start=END)
    closed = MeterDemand(Decimal("63.5"), S3 + 7200, "settlement_day", period_start=S1, period_end=END)
    assert meter_demand(S1, END, reset_register, closed) == Demand(Decimal("63.5"), S3 + 7200, "meter",
                                                                   {"record": "settlement_day"})
    assert meter_demand(S3, END, reset_register, closed) is not None            # the last stage too
    assert meter_demand(S2, S3, reset_register, closed) is None                 # not for a stage before it


def test_a_reset_inside_the_stage_takes_the_larger_part() -> None:
    mid = S2 + 5 * DAY
    closed = MeterDemand(Decimal("40"), S2 + DAY, "settlement_day", period_start=S1, period_end=mid)
    bigger = MeterDemand(Decimal("45"), mid + DAY, "current", period_start=mid)
    smaller = MeterDemand(Decimal("30"), mid + DAY, "current", period_start=mid)
    assert meter_demand(S2, S3, bigger, closed) == Demand(Decimal("45"), mid + DAY, "meter", {"record": "current"})
    assert meter_demand(S2, S3, smaller, closed) == Demand(Decimal("40"), S2 + DAY, "meter",
                                                           {"record": "settlement_day"})
    before = MeterDemand(Decimal("40"), S1 + DAY, "settlement_day", period_start=S1, period_end=mid)
    assert meter_demand(S2, S3, bigger, before) is None         # [S2, reset)'s maximum is unknown
    late_start = MeterDemand(Decimal("40"), S2 + DAY, "settlement_day", period_start=S2 + 1, period_end=mid)
    assert meter_demand(S2, S3, bigger, late_start) is None     # two resets in the stage


def test_meter_figures_and_two_part_inputs_from_a_settlement_body() -> None:
    body = {
        "quality": "meter_frozen",
        "registers": {"demand_max_kw": {"raw": Decimal("0.0000"), "value": Decimal("0.0000"), "unit": "kW"}},
        "demand_period": {"raw": Decimal("0.5125"), "value": Decimal("41.0000"), "unit": "kW",
                          "at": "2026-01-23T10:30", "period_start": "2025-12-31T16:00:00Z",
                          "period_end": "2026-01-31T16:00:00Z", "record": "settlement_day"},
    }
    cur, closed = demand.meter_figures(body, "Asia/Shanghai")
    assert closed is not None and closed.at == T0 + 22 * DAY + 10.5 * 3600 and closed.period_end == END
    assert cur is not None and cur.at is None and cur.period_start == END
    out = demand.two_part_inputs(S3, END, body, {"energy_import_kwh": Decimal(3), "energy_import_kvarh": Decimal(4)},
                                 "Asia/Shanghai", None)
    assert out["max_demand_kw"] == Decimal("41.0000") and out["demand_source"] == "meter"
    assert out["max_demand_at"] == "2026-01-23T02:30:00.000Z" and out["power_factor"] == Decimal("0.6000")
    assert set(out) == set(demand.TWO_PART_FIELDS)
    computed = Demand(Decimal(7), S2 + Q, "computed", {"method": "block"})
    out2 = demand.two_part_inputs(S2, S3, body, {}, "Asia/Shanghai", lambda: computed)
    assert out2["demand_source"] == "computed" and out2["max_demand_kw"] == Decimal(7)
    empty = demand.two_part_inputs(S2, S3, None, {}, "Asia/Shanghai", None)
    assert empty["max_demand_kw"] is None and empty["demand_source"] is None


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01T10:15", T0 + 10.25 * 3600), ("1767233700", 1767233700.0), ("", None), (None, None), ("x", None),
])
def test_meter_time_reads_local_iso_or_unix_seconds(text: str | None, expected: float | None) -> None:
    assert demand.meter_time(text, "Asia/Shanghai") == expected


def test_the_plan_demand_key_is_loaded() -> None:
    from pathlib import Path

    from gateway.config import load_settings_from_text

    text = ("gateway: {id: gw1}\nbuses: []\nmeters: []\nbilling:\n"
            "  s: {demand: {method: sliding, window_minutes: 15, slide_minutes: 5}}\n  b: {}\n")
    settings = load_settings_from_text(text, "gateway.yaml", Path("."), {})
    s, b = settings.billing["s"].demand, settings.billing["b"].demand
    assert (s.method, s.window_s, s.slide_s) == ("sliding", 900.0, 300.0)
    assert (b.method, b.window_s, b.slide_s) == ("block", 900.0, None)
