"""The CT×PT rule and the ratio audit (gateway.multiplier), against a real SQLite store on disk.

The pipeline and billing both take their factors from this module; the last test checks
that a reading's value and a billing register's value come out as the same product.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from gateway.config import SHIPPED_PROFILES_DIR
from gateway.model import PointResult, loads_exact
from gateway.multiplier import (
    RATIO_CHANGE,
    audit_ratios,
    last_audit_at,
    last_ratio_change,
    point_factor,
    profile_factors,
    register_factor,
    scaling_for,
)
from gateway.pipeline import ReadingBuilder
from gateway.profiles import load_profile
from gateway.settings import MeterSettings, Ratio, StoreSettings
from gateway.store import Store

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)
CT, PT = Decimal(40), Decimal(100)


def meter(mid: str, ct: str = "200/5", pt: str = "10000/100") -> MeterSettings:
    """A meter with the given ratios (primary/secondary)."""
    def ratio(text: str) -> Ratio:
        a, b = text.split("/")
        return Ratio(Decimal(a), Decimal(b))
    return MeterSettings(id=mid, customer="C1", bus="b1", address="1", profile="simulator",
                         ct_ratio=ratio(ct), pt_ratio=ratio(pt))


def test_terminal_practice_which_ratio_each_point_takes() -> None:
    assert {p: scaling_for(p) for p in ("energy_import_kwh", "energy_export_kvarh_t2", "power_kw_l1",
                                        "power_kvar", "power_kva", "demand_max_kw")} == dict.fromkeys(
        ("energy_import_kwh", "energy_export_kvarh_t2", "power_kw_l1", "power_kvar", "power_kva",
         "demand_max_kw"), "ctpt")
    assert scaling_for("voltage_v_l1") == "pt"
    assert scaling_for("current_a_l3") == "ct"
    assert {scaling_for(p) for p in ("power_factor", "power_factor_l1", "frequency_hz", "demand_max_kw_at")} \
        == {"none"}


def test_point_factor_applies_only_to_secondary_points() -> None:
    assert point_factor("energy_import_kwh", True, CT, PT) == Decimal(4000)
    assert point_factor("voltage_v_l1", True, CT, PT) == PT
    assert point_factor("current_a_l1", True, CT, PT) == CT
    assert point_factor("power_factor", True, CT, PT) == 1
    assert point_factor("energy_import_kwh", False, CT, PT) == 1


def test_profile_and_register_factors_follow_the_profile_side() -> None:
    profile = load_profile(SHIPPED_PROFILES_DIR / "simulator.yaml")
    factors = profile_factors(profile, CT, PT)
    assert set(factors) == set(profile.points)
    assert factors["energy_import_kwh"] == CT * PT
    assert factors["voltage_v_l1"] == PT
    assert factors["current_a_l1"] == CT
    assert factors["frequency_hz"] == 1          # side: primary in the profile
    assert factors["power_factor"] == 1
    assert register_factor(profile, "energy_import_kwh", CT, PT) == CT * PT
    # a register the profile does not list (a freeze block's) counts as secondary
    assert "energy_import_kvarh_t9" not in profile.points
    assert register_factor(profile, "energy_import_kvarh_t9", CT, PT) == CT * PT


def test_a_reading_and_a_billing_register_get_the_same_value() -> None:
    profile = load_profile(SHIPPED_PROFILES_DIR / "simulator.yaml")
    m = meter("m1")
    raw = Decimal("1234.56")
    reading = ReadingBuilder(m, profile).build("interval", 0.0, 0.5, {"energy_import_kwh": PointResult(raw)})
    billed = raw * register_factor(profile, "energy_import_kwh", m.ct_ratio.factor, m.pt_ratio.factor)
    assert reading.points["energy_import_kwh"].value == billed == raw * 4000


async def test_ratio_changes_are_audited_once_and_read_back(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    try:
        first = [meter("m1"), meter("m2")]
        assert await audit_ratios(store, first, 100.0) == []        # first sighting: remembered only
        assert await audit_ratios(store, first, 200.0) == []        # unchanged
        same_factor = [meter("m1", ct="400/10"), meter("m2")]
        assert await audit_ratios(store, same_factor, 300.0) == []  # written differently, same factor
        changed = [meter("m1", ct="400/10"), meter("m2", ct="600/5")]
        (change,) = await audit_ratios(store, changed, 400.0)
        assert (change.meter, change.at) == ("m2", 400.0)
        assert (change.old_ct, change.old_pt, change.new_ct, change.new_pt) == (40, 100, 120, 100)
        assert (change.old_multiplier, change.new_multiplier) == (4000, 12000)
        assert await store.read(last_audit_at) == 400.0
        assert await audit_ratios(store, changed, 500.0) == []      # recorded once
        assert await store.read(last_ratio_change, "m2") == change
        assert await store.read(last_ratio_change, "m1") is None
        assert await store.read(last_audit_at) == 500.0              # the latest start, change or not
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "a.db")
    try:
        rows = conn.execute("SELECT ts, meter, kind, detail FROM audit").fetchall()
    finally:
        conn.close()
    assert [(ts, m, kind) for ts, m, kind, _ in rows] == [(400.0, "m2", RATIO_CHANGE)]
    detail = loads_exact(rows[0][3])
    assert detail == {"old": {"ct": 40, "pt": 100, "multiplier": 4000},
                      "new": {"ct": 120, "pt": 100, "multiplier": 12000}}


async def test_an_audit_row_without_factors_is_not_a_change_to_price(tmp_path: Path) -> None:
    """A store written by an earlier gateway holds ``{"from": ..., "to": ...}`` audit rows."""
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    try:
        assert await store.read(last_audit_at) is None
        await store.audit(400.0, "m1", RATIO_CHANGE, {"from": "ct=200/5;pt=1/1", "to": "ct=400/5;pt=1/1"})
        assert await store.read(last_ratio_change, "m1") is None
        m = replace(meter("m1"), ct_ratio=Ratio(Decimal(400), Decimal(5)))
        assert await audit_ratios(store, [m], 500.0) == []          # nothing remembered yet
    finally:
        await store.close()
