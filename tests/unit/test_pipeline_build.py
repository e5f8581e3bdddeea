"""ReadingBuilder.build: its path for a good Decimal (a profile point, plausible at a
glance) gives what the general path gives — the value, the object identity of an
unmultiplied value, the out-of-range flag and its message, NaN and infinities, strings,
failed points and points the profile lacks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SHIPPED_PROFILES_DIR
from gateway.model import PointResult, Quality, Reading
from gateway.pipeline import ReadingBuilder
from gateway.profiles import load_profile
from gateway.settings import MeterSettings, Ratio

_PROFILE = load_profile(SHIPPED_PROFILES_DIR / "simulator.yaml")
_NAMES = ["energy_import_kwh", "energy_export_kwh_t2", "voltage_v_l1", "power_kw", "power_factor", "frequency_hz",
          "current_a_l1", "demand_max_kw_at", "not_in_profile", "energy_import_not_in_profile"]


def _builder(ct: str, pt: str) -> ReadingBuilder:
    def ratio(text: str) -> Ratio:
        a, b = text.split("/")
        return Ratio(Decimal(a), Decimal(b))
    m = MeterSettings(id="m1", customer="C1", bus="b1", address="1", profile="simulator",
                      ct_ratio=ratio(ct), pt_ratio=ratio(pt))
    return ReadingBuilder(m, _PROFILE)


def _general(builder: ReadingBuilder) -> ReadingBuilder:
    """The same builder with no entries for the fast path: every point takes the general one."""
    other = _builder("1/1", "1/1")
    for slot in ReadingBuilder.__slots__:
        setattr(other, slot, getattr(builder, slot))
    other._fast = {}
    return other


def _outcome(builder: ReadingBuilder, results: dict[str, PointResult]) -> object:
    """What build gives (its text, and which values are their raw object), or the exception."""
    try:
        r: Reading = builder.build("s", 60.0, 60.5, results)
    except Exception as exc:  # both paths must fail alike
        return type(exc)
    return repr(r), [p.value is p.raw for p in r.points.values()]


_decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.sampled_from([Decimal("-0"), Decimal("-0.00"), Decimal("1E-400"), Decimal("-1E-400"), Decimal("1E+400"),
                     Decimal("39.99"), Decimal("40"), Decimal("70.00"), Decimal("70.01"), Decimal("1.0001"),
                     Decimal("1.00010000000000000001"), Decimal("-1.0001"), Decimal("sNaN"), Decimal("-Infinity")]),
)
_raws = st.one_of(_decimals, st.floats(), st.integers(-10**30, 10**30), st.text(max_size=3), st.none())
_qualities: st.SearchStrategy[Quality] = st.sampled_from(["good", "good", "good", "timeout", "invalid"])


@settings(max_examples=400)
@given(points=st.lists(st.tuples(st.sampled_from(_NAMES), _raws, _qualities,
                                 st.sampled_from([None, "no reply"])), max_size=8),
       ratios=st.sampled_from([("1/1", "1/1"), ("200/5", "10000/100"), ("5/5", "100/100")]))
def test_the_fast_path_builds_what_the_general_path_builds(
        points: list[tuple[str, object, Quality, str | None]], ratios: tuple[str, str]) -> None:
    builder = _builder(*ratios)
    results = {name: PointResult(raw, quality, reason) for name, raw, quality, reason in points}  # type: ignore[arg-type]
    assert _outcome(builder, results) == _outcome(_general(builder), results)


@pytest.mark.parametrize(("name", "raw", "message"), [
    ("energy_import_kwh", Decimal("-0.01"), "a cumulative register cannot be negative (-0.01)"),
    ("voltage_v_l1", Decimal("-230.1"), "a voltage cannot be negative (-230.1)"),
    ("frequency_hz", Decimal("70.01"), "70.01 is outside the physical range 40..70"),
    ("power_factor", Decimal("-1.002"), "-1.002 is outside the physical range -1.0001..1.0001"),
])
def test_an_implausible_value_is_flagged_with_its_reason(name: str, raw: Decimal, message: str) -> None:
    r = _builder("1/1", "1/1").build("s", 60.0, 60.5, {name: PointResult(raw), "power_kw": PointResult(Decimal(1))})
    assert (r.points[name].quality, r.points[name].reason) == ("invalid", message)
    assert (r.quality, r.error) == ("invalid", f"{name}: {message}")
    assert r.points["power_kw"].quality == "good"


def test_a_plausible_unmultiplied_value_is_its_raw_object() -> None:
    raw = Decimal("12345.67")
    r = _builder("5/5", "1/1").build("s", 60.0, 60.5, {"energy_import_kwh": PointResult(raw)})
    assert r.points["energy_import_kwh"].value is raw
    r = _builder("200/5", "1/1").build("s", 60.0, 60.5, {"energy_import_kwh": PointResult(raw)})
    assert r.points["energy_import_kwh"].value == raw * 40
