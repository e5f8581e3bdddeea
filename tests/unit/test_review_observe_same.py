"""observe_reading (per-name role table, finite Decimals taken as they are) against the
observe_reading it replaced, kept here verbatim as the reference: for any reading and any
power point, both observe the same. Pure functions, so no peer: hypothesis draws the
readings, names included, from the kinds the rules tell apart and the ones that look alike.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import PointValue, Reading
from gateway.review.rules import (
    FAILED_QUALITIES,
    PHASES,
    Observation,
    RegisterValue,
    is_cumulative_register,
    observe_reading,
    to_decimal,
)


def reference_observe(reading: Reading, interval_s: float | None = None,
                      power_point: str = "power_kw") -> Observation:
    """observe_reading as it was before the role table (main at 99e9c73), verbatim."""
    registers: dict[str, RegisterValue] = {}
    voltages: dict[str, Decimal] = {}
    values: dict[str, Decimal] = {}
    records: dict[str, object] = {}
    power: Decimal | None = None
    clock: str | None = None
    any_good = False
    for name, p in reading.points.items():
        if p.quality != "good" or p.raw is None:
            continue
        any_good = True
        if is_cumulative_register(name):
            raw, value = to_decimal(p.raw), to_decimal(p.value)
            if raw is not None and value is not None:
                registers[name] = RegisterValue(raw, value)
        elif name == power_point:
            power = to_decimal(p.value)
        elif name.startswith("voltage_v_l") and name[-2:] in PHASES:
            v = to_decimal(p.value)
            if v is not None:
                voltages[name[-2:]] = v
        elif name == "meter_clock":
            clock = str(p.raw)
        elif name.startswith("event_"):
            if name.endswith("_count"):
                c = to_decimal(p.value)
                if c is not None:
                    values[name] = c
            else:
                records[name] = p.value
        elif name.startswith(("demand_", "power_factor")):
            d = to_decimal(p.value)
            if d is not None:
                values[name] = d
    failed = reading.quality in FAILED_QUALITIES and not any_good
    return Observation(
        meter=reading.meter, ts=reading.ts, slot=reading.slot, schedule=reading.schedule,
        interval_s=interval_s, quality=reading.quality, failed=failed, error=reading.error,
        registers=registers, power_kw=power, voltages=voltages, meter_clock=clock,
        values=values, records=records,
    )


NAMES = ["energy_import_kwh", "energy_export_t2_kwh", "energy_imported", "power_kw", "p_total",
         "voltage_v_l1", "voltage_v_l3", "voltage_v_l4", "voltage_v_ln", "meter_clock", "meter_clock_x",
         "event_cover_open_count", "event_cover_open_start", "event_", "demand_max_kw", "demand_",
         "power_factor", "power_factor_l2", "frequency_hz", "x_vendor"]
POWER_POINTS = ["power_kw", "p_total", "voltage_v_l1", "energy_import_kwh", "meter_clock", "event_x_count",
                "demand_max_kw"]
VALUES = st.one_of(
    st.none(),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("-0"), Decimal("1E+3"), Decimal("sNaN"), Decimal("-Infinity")]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**12, 10**12),
    st.booleans(),
    st.sampled_from(["12.5", "abc", "NaN", "1e3", "", "2026-01-01T00:00:00"]),
)
POINTS = st.builds(PointValue, VALUES, VALUES, st.sampled_from(["kWh", "V", ""]),
                   st.sampled_from(["good", "good", "good", "timeout", "invalid"]))


def _same(a: Observation, b: Observation) -> bool:
    """Equal, with NaN and signed zeros told apart by their text (NaN is never == NaN)."""
    return repr(a) == repr(b)


@settings(max_examples=400, deadline=None)
@given(points=st.dictionaries(st.sampled_from(NAMES), POINTS, max_size=12),
       power_points=st.lists(st.sampled_from(POWER_POINTS), min_size=1, max_size=3),
       quality=st.sampled_from(["good", "timeout", "crc_error", "exception", "invalid"]))
def test_observe_reading_observes_what_the_one_it_replaced_did(points: dict[str, PointValue],
                                                               power_points: list[str], quality: str) -> None:
    r = Reading(meter="m1", customer="c", bus="b", schedule="s", slot=100.0, ts=100.2, points=points,
                quality=quality)  # type: ignore[arg-type]
    for power_point in power_points * 2:       # twice: the second time from the role table
        assert _same(observe_reading(r, 60.0, power_point), reference_observe(r, 60.0, power_point))
