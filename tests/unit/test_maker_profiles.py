"""The profiles written from makers' public register maps: each loads, plans, and says its source.

CHINT DTSU666-H, Eastron SDM120, Acrel ADW300, Carlo Gavazzi EM24, Janitza UMG 96RM,
Schneider PM5xxx, ABB B23/B24 and Socomec DIRIS A-40 (Siemens PAC3200 has tariff 1 and 2
energies and no total: its own test).
Each header names the maker's document and its version (or that no public source states
it) and marks what is unconfirmed; the points checked here are the ones billing and the
review rules read, at the addresses and encodings the headers cite.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from drivers.modbus.points import RegisterPoint
from gateway.config import SHIPPED_PROFILES_DIR
from gateway.profilecheck import plan_profile
from gateway.profiles import load_profile

# name -> (function, energy_import_kwh (address, type, word order, scale), requests)
EXPECTED = {
    "chint-dtsu666-h": (3, (2166, "f32", "big", Decimal(1)), 3),
    "eastron-sdm120": (4, (0x0048, "f32", "big", Decimal(1)), 7),
    "acrel-adw300": (3, (62, "i32", "big", Decimal("0.01")), 2),
    "carlo-gavazzi-em24": (4, (0x003E, "i32", "little", Decimal("0.1")), 2),
    "janitza-umg96rm": (3, (19068, "f32", "big", Decimal("0.001")), 5),
    "schneider-pm5000": (3, (3203, "i64", "big", Decimal("0.001")), 9),
    "abb-b23": (3, (0x5000, "u64", "big", Decimal("0.01")), 5),
    "socomec-diris-a40": (3, (0xC652, "u32", "big", Decimal(1)), 3),
}


def _header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_maker_profile_loads_plans_and_names_its_document(name: str) -> None:
    path = SHIPPED_PROFILES_DIR / f"{name}.yaml"
    profile = load_profile(path)
    function, (address, rtype, word_order, scale), requests = EXPECTED[name]
    points = {k: p for k, p in profile.points.items() if isinstance(p, RegisterPoint)}
    assert len(points) == len(profile.points) >= 10
    energy = points["energy_import_kwh"]
    assert (energy.function, energy.address, energy.type, energy.word_order, energy.scale) == \
        (function, address, rtype, word_order, scale)
    assert {"energy_export_kwh", "power_kw", "voltage_v_l1", "current_a_l1"} <= set(points)
    assert all(p.side == "primary" for p in points.values())
    protocol, plan = plan_profile(profile)
    assert protocol == "modbus-rtu" and plan.request_count == requests
    header = _header(path)
    assert "Maker's document:" in header and "version" in header
    assert "Confirmed in" in header and "Unconfirmed" in header


def test_pac3200_names_its_document_and_reads_both_tariffs_energies_as_such() -> None:
    path = SHIPPED_PROFILES_DIR / "siemens-pac3200.yaml"
    points = load_profile(path).points
    energy = points["energy_import_kwh_t1"]
    assert isinstance(energy, RegisterPoint)
    assert (energy.function, energy.address, energy.type, energy.scale) == (4, 801, "f64", Decimal("0.001"))
    assert "energy_import_kwh" not in points  # tariff 1 is not the total when tariff 2 runs
    tariff2 = points["energy_import_kwh_t2"]
    assert isinstance(tariff2, RegisterPoint)
    assert (tariff2.function, tariff2.address, tariff2.type) == (4, 805, "f64")
    header = _header(path)
    assert "Maker's document:" in header and "Confirmed in" in header and "Unconfirmed" in header
