"""The simulated meter model: pure, monotonic, tariff-consistent, energy agrees with power."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.simulation.model import ENERGY_POINTS, MODEL_POINTS, TARIFF_TABLE, MeterModel

T0 = 1767225600.0          # 2026-01-01 00:00 UTC = 08:00 Asia/Shanghai
TZ = ZoneInfo("Asia/Shanghai")


def test_every_point_present_and_decimal() -> None:
    v = MeterModel(7).values_at(T0 + 12345.6)
    assert set(v) == set(MODEL_POINTS)
    assert all(isinstance(x, Decimal) for x in v.values())


def test_deterministic_across_instances_and_call_order() -> None:
    a, b = MeterModel(42), MeterModel(42)
    times = [T0 + 86400 * 40 + 17, T0 - 3600.5, T0 + 5 * 86400 + 901.25]
    first = [a.values_at(t) for t in times]
    second = [b.values_at(t) for t in reversed(times)][::-1]
    assert first == second
    assert MeterModel(43).values_at(times[0]) != first[0]


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    t=st.floats(T0 - 30 * 86400, T0 + 400 * 86400),
    dt=st.floats(0, 10 * 86400),
)
def test_energy_monotonic_and_total_is_sum_of_tariffs(seed: int, t: float, dt: float) -> None:
    m = MeterModel(seed)
    v1, v2 = m.values_at(t), m.values_at(t + dt)
    for name in ENERGY_POINTS:
        assert v2[name] >= v1[name], name
    for v in (v1, v2):
        for base in ("energy_import_kwh", "energy_export_kwh"):
            assert v[base] == sum(v[f"{base}_t{k}"] for k in range(1, 5))
            assert v[base] == v[base].quantize(Decimal("0.01"))


def test_registers_equal_initial_values_at_epoch_and_advance() -> None:
    m = MeterModel(3, epoch=T0)
    start = m.values_at(T0)
    later = m.values_at(T0 + 86400)
    assert later["energy_import_kwh"] > start["energy_import_kwh"]
    # One day of a ~40 kW load: a few hundred kWh, never absurd.
    day = later["energy_import_kwh"] - start["energy_import_kwh"]
    assert Decimal(100) < day < Decimal(2000)


def test_tariff_table_and_tariff_registers_advance_only_in_their_hours() -> None:
    m = MeterModel(11)
    assert len(TARIFF_TABLE) == 24 and set(TARIFF_TABLE) == {1, 2, 3, 4}
    # 2026-01-05 (a Monday) 02:00–03:00 local is valley (4): only t4 may move.
    t = datetime(2026, 1, 5, 2, 0, tzinfo=TZ).timestamp()
    assert m.tariff_at(t) == 4
    a, b = m.values_at(t), m.values_at(t + 3600)
    for k in (1, 2, 3):
        assert a[f"energy_import_kwh_t{k}"] == b[f"energy_import_kwh_t{k}"]
    assert b["energy_import_kwh_t4"] > a["energy_import_kwh_t4"]
    assert m.tariff_at(datetime(2026, 1, 5, 10, 30, tzinfo=TZ).timestamp()) == 1
    assert m.tariff_at(datetime(2026, 1, 5, 11, 30, tzinfo=TZ).timestamp()) == 2
    assert m.tariff_at(datetime(2026, 1, 5, 13, 0, tzinfo=TZ).timestamp()) == 3


@pytest.mark.parametrize("seed", [0, 1, 99, 123456])
def test_energy_over_an_hour_matches_power_within_quantisation(seed: int) -> None:
    m = MeterModel(seed, base_kw=400.0)
    start = datetime(2026, 3, 10, 9, 0, tzinfo=TZ).timestamp()
    net_kwh = Decimal(0)
    for slot in range(4):                       # power is constant per 15-minute slot
        net_kwh += m.values_at(start + slot * 900 + 1)["power_kw"] / 4
    a, b = m.values_at(start), m.values_at(start + 3600)
    delta = (b["energy_import_kwh"] - a["energy_import_kwh"]) - (
        b["energy_export_kwh"] - a["energy_export_kwh"])
    # each of 8 tariff registers is quantised down to 0.01 at both ends
    assert abs(delta - net_kwh) <= Decimal("0.08")
    assert net_kwh > 0


def test_power_phases_sum_and_reactive_follow_power() -> None:
    v = MeterModel(5).values_at(T0 + 1000)
    assert v["power_kw_l1"] + v["power_kw_l2"] + v["power_kw_l3"] == v["power_kw"]
    assert 0 < v["power_kvar"] < v["power_kw"]
    assert Decimal("0.8") < v["power_factor"] < 1
    assert Decimal(200) < v["voltage_v_l1"] < Decimal(240)
    assert Decimal("49.9") <= v["frequency_hz"] <= Decimal("50.1")


def test_secondary_side_scales_with_ct_and_pt() -> None:
    plain = MeterModel(9, base_kw=4000.0)
    ctpt = MeterModel(9, base_kw=4000.0, ct=Decimal(40), pt=Decimal(100))
    assert ctpt.multiplier == Decimal(4000)
    t = T0 + 3 * 86400 + 50
    p1, p2 = plain.values_at(t)["power_kw"], ctpt.values_at(t)["power_kw"]
    assert abs(p1 / 4000 - p2) < Decimal("0.00001")
    v2 = ctpt.values_at(t)
    assert Decimal(55) < v2["voltage_v_l1"] < Decimal(60)       # 100 V / √3 secondary
    assert MeterModel(9, multiplier=Decimal(80)).multiplier == 80
    with pytest.raises(ValueError, match="disagrees"):
        MeterModel(9, multiplier=Decimal(7), ct=Decimal(2), pt=Decimal(3))


def test_frozen_daily_is_values_at_local_midnight() -> None:
    m = MeterModel(21)
    day = date(2026, 2, 14)
    midnight = datetime(2026, 2, 14, tzinfo=TZ).timestamp()
    assert m.frozen_daily(day) == m.values_at(midnight)
    assert m.local_midnight(day) == midnight


def test_demand_max_is_month_maximum_of_completed_slots() -> None:
    m = MeterModel(8)
    month_start = datetime(2026, 4, 1, tzinfo=TZ).timestamp()
    assert m.values_at(month_start + 10)["demand_max_kw"] == 0
    assert m.values_at(month_start - 10)["demand_max_kw"] > 0     # March's maximum
    highest_net = Decimal(0)
    last = Decimal(0)
    t = month_start
    for _ in range(3 * 96):                      # three days, slot by slot
        highest_net = max(highest_net, m.values_at(t + 1)["power_kw"])
        t += 900
        demand = m.values_at(t + 1)["demand_max_kw"]
        assert demand >= highest_net            # import demand >= net power
        assert demand >= last                   # a maximum never falls within the month
        last = demand
    assert last < highest_net * Decimal("1.05")  # back-feed is at most 3 %


def test_dst_zone_is_consistent() -> None:
    m = MeterModel(4, timezone="Europe/Berlin", epoch=T0)
    # across the 2026-03-29 spring-forward day and the 2026-10-25 fall-back day
    prev = m.values_at(datetime(2026, 3, 28, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    t = prev_t = datetime(2026, 3, 28, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    for _ in range(3 * 24):
        t += 3600
        cur = m.values_at(t)
        assert cur["energy_import_kwh"] >= prev["energy_import_kwh"]
        prev = cur
    assert t > prev_t
    oct_day = date(2026, 10, 25)
    assert m.frozen_daily(oct_day)["energy_import_kwh"] < m.frozen_daily(
        date(2026, 10, 26))["energy_import_kwh"]
