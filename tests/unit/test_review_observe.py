"""What the review rules see of a reading (observe_reading): every kind of point, once."""

from __future__ import annotations

from dataclasses import fields
from decimal import Decimal

from gateway.model import PointValue, Reading
from gateway.review.rules import RegisterValue, factor_taken, observe_reading


def _reading(points: dict[str, PointValue], quality: str = "good") -> Reading:
    return Reading(meter="m1", customer="c", bus="b", schedule="s", slot=100.0, ts=100.2, points=points,
                   quality=quality)


def test_every_kind_of_point_lands_where_the_rules_read_it() -> None:
    d = Decimal
    r = _reading({
        "energy_import_kwh": PointValue(d("12.5"), d("500.0"), "kWh"),
        "energy_export_t1_kwh": PointValue(3, 3.5, "kWh"),                 # an int raw, a float value
        "energy_import_t2_kwh": PointValue(d("NaN"), d("1"), "kWh"),        # not finite: left out
        "energy_import_t3_kwh": PointValue(None, None, "kWh", "timeout"),    # failed point
        "p_total": PointValue(d("7"), d("280"), "kW"),                     # the configured power point
        "power_kw": PointValue(d("1"), d("1"), "kW"),                      # not the power point here
        "voltage_v_l1": PointValue(d("230.1"), d("230.1"), "V"),
        "voltage_v_l2": PointValue("229.5", "229.5", "V"),                 # text: still a number
        "voltage_v_l4": PointValue(d("1"), d("1"), "V"),                   # not a phase
        "meter_clock": PointValue("2026-01-01T00:00:00", "2026-01-01T00:00:00", ""),
        "event_cover_open_count": PointValue(d("4"), d("4"), ""),
        "event_cover_open_start": PointValue("2025-12-31T23:00:00", "2025-12-31T23:00:00", ""),
        "demand_max_kw": PointValue(d("9.5"), d("380"), "kW"),
        "power_factor": PointValue(d("0.93"), d("0.93"), ""),
        "frequency_hz": PointValue(d("50.01"), d("50.01"), "Hz"),           # no rule reads it
        "voltage_v_l3": PointValue(d("231"), d("Infinity"), "V"),          # value not finite: left out
    })
    for _ in range(2):                       # the second time every name's role comes from the table
        obs = observe_reading(r, 1.0, "p_total")
        assert obs.registers == {"energy_import_kwh": RegisterValue(d("12.5"), d("500.0")),
                                 "energy_export_t1_kwh": RegisterValue(d(3), d("3.5"))}
        assert obs.power_kw == d("280")
        assert obs.voltages == {"l1": d("230.1"), "l2": d("229.5")}
        assert obs.meter_clock == "2026-01-01T00:00:00"
        assert obs.values == {"event_cover_open_count": d("4"), "demand_max_kw": d("380"), "power_factor": d("0.93")}
        assert obs.records == {"event_cover_open_start": "2025-12-31T23:00:00"}
        assert not obs.failed
    assert observe_reading(r, 1.0).power_kw == d("1")      # another power point, another table


def test_a_read_with_no_good_point_is_failed_only_for_a_failed_quality() -> None:
    pts = {"energy_import_kwh": PointValue(None, None, "kWh", "timeout")}
    assert observe_reading(_reading(pts, "timeout")).failed
    assert not observe_reading(_reading(pts, "invalid")).failed
    assert not observe_reading(_reading({"power_kw": PointValue(Decimal(1), Decimal(1), "kW")}, "timeout")).failed


def test_an_observed_register_is_a_whole_register_value() -> None:
    """observe_reading makes its RegisterValues without calling their __init__: every field is
    set (the factor too, not yet worked out), as RegisterValue(raw, value) sets it."""
    d = Decimal
    obs = observe_reading(_reading({"energy_import_kwh": PointValue(d("12.50"), d("500.0"), "kWh")}))
    got = obs.registers["energy_import_kwh"]
    made = RegisterValue(d("12.50"), d("500.0"))
    assert type(got) is RegisterValue
    for f in fields(RegisterValue):
        assert repr(getattr(got, f.name)) == repr(getattr(made, f.name)), f.name
    assert factor_taken(got) == d(40) and got.step == made.step == d("0.4")
