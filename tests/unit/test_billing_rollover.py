"""Register rollover and unexplained decreases in stage consumption (pure), and where the
capacity comes from (the profile point, or the protocol's default)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from drivers.capacity import RegisterCapacity, capacity_of, format_capacity
from gateway.billing.settlement import Settlement, reconcile, stage_consumption
from gateway.profiles import load_profile

D = Decimal
SIX_TWO = {"energy_import_kwh": {"digits": 6, "decimals": 2}}


def _settlement(idx: int, quality: str, regs: dict[str, str], mult: str, capacity: bool = True) -> Settlement:
    body: dict[str, object] = {
        "quality": quality, "multiplier": D(mult),
        "registers": {k: {"raw": D(v), "value": D(v) * D(mult), "unit": "kWh"} for k, v in regs.items()}}
    if capacity:
        body["capacity"] = SIX_TWO
    return Settlement(idx, "m1", "p", "2026-12", idx, float(idx), quality, 0.0, body)


def test_a_register_that_rolls_over_is_counted_exactly_and_flagged() -> None:
    a = _settlement(0, "meter_frozen", {"energy_import_kwh": "999999.99"}, "40")
    b = _settlement(1, "meter_frozen", {"energy_import_kwh": "0.12"}, "40")
    st = stage_consumption(1, 0.0, 1.0, a, b, ["energy_import_kwh"])
    assert st.consumption == {"energy_import_kwh": D("0.13") * 40}
    assert st.consumption["energy_import_kwh"] == D("5.20")
    assert st.codes == ("rollover",)
    assert st.complete
    assert st.flags[0].startswith("rollover: energy_import_kwh rolled over")
    assert "999999.99 → 0.12" in st.flags[0]
    # the cycle reconciles through the rollover
    rec = reconcile([st], st)
    assert rec.reconciled


def test_a_plain_decrease_is_negative_never_complete() -> None:
    a = _settlement(0, "actual", {"energy_import_kwh": "1000.50"}, "40")
    b = _settlement(1, "actual", {"energy_import_kwh": "1000.00"}, "40")
    st = stage_consumption(1, 0.0, 1.0, a, b, ["energy_import_kwh"])
    assert st.consumption == {"energy_import_kwh": D("-0.50") * 40}
    assert st.codes == ("negative",) and not st.complete
    assert st.flags[0].startswith("negative: energy_import_kwh went down")
    assert not reconcile([st], st).reconciled


def test_a_decrease_near_the_capacity_is_not_taken_for_a_rollover() -> None:
    # 400000.00 → 100.00 would be a 600100 kWh rollover: more than half the capacity, so negative
    a = _settlement(0, "actual", {"energy_import_kwh": "400000.00"}, "1")
    b = _settlement(1, "actual", {"energy_import_kwh": "100.00"}, "1")
    st = stage_consumption(1, 0.0, 1.0, a, b, ["energy_import_kwh"])
    assert st.codes == ("negative",) and not st.complete


def test_without_a_known_capacity_a_decrease_is_negative() -> None:
    a = _settlement(0, "actual", {"energy_import_kwh": "999999.99"}, "1", capacity=False)
    b = _settlement(1, "actual", {"energy_import_kwh": "0.12"}, "1", capacity=False)
    st = stage_consumption(1, 0.0, 1.0, a, b, ["energy_import_kwh"])
    assert st.codes == ("negative",) and not st.complete
    assert st.consumption["energy_import_kwh"] == D("-999999.87")


def test_capacity_defaults_to_the_dlt645_format_and_a_profile_can_set_it(tmp_path: Path) -> None:
    assert format_capacity("XXXXXX.XX") == RegisterCapacity(6, 2)
    assert format_capacity("XX.XXXX") == RegisterCapacity(2, 4)
    assert format_capacity("YYMMDDhhmm") is None
    assert RegisterCapacity(6, 2).modulus == D(1000000)
    repo = Path(__file__).resolve().parents[2]
    builtin = load_profile(repo / "drivers" / "dlt645" / "profiles" / "dlt645-2007.yaml")
    assert capacity_of(builtin.points["energy_import_kwh"]) == RegisterCapacity(6, 2)
    dl = tmp_path / "dl.yaml"
    dl.write_text('name: dl\nprotocol: dlt645\npoints:\n'
                  '  energy_import_kwh: {di: "00010000", format: XXXXXX.XX, unit: kWh, '
                  'capacity: {digits: 8, decimals: 2}}\n')
    assert capacity_of(load_profile(dl).points["energy_import_kwh"]) == RegisterCapacity(8, 2)
    mb = tmp_path / "mb.yaml"
    mb.write_text("name: mb\nprotocol: modbus\npoints:\n"
                  "  energy_import_kwh: {address: 0x100, type: u32, scale: 0.01, unit: kWh, "
                  "capacity: {digits: 7, decimals: 2}}\n"
                  "  energy_export_kwh: {address: 0x102, type: u32, scale: 0.01, unit: kWh}\n")
    prof = load_profile(mb)
    assert capacity_of(prof.points["energy_import_kwh"]) == RegisterCapacity(7, 2)
    assert capacity_of(prof.points["energy_export_kwh"]) is None       # Modbus: no default
