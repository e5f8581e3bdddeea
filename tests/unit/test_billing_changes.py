"""Meter exchanges (换表) and operator-entered CT/PT changes (pure): the request checks, the records,
and the stage arithmetic — exact Decimal per tariff register, with one and several segments."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import pytest

from gateway.billing.corrections import CorrectionError
from gateway.billing.db import NearReading, effective
from gateway.billing.exchanges import change_body, check_request, ratio_in_force
from gateway.billing.settlement import Settlement, reconcile, stage_consumption
from gateway.model import iso_utc
from gateway.settings import BillingPlan, Ratio

D = Decimal
REGS = ("energy_import_kwh_t1", "energy_import_kwh_t2")
PLAN = BillingPlan("p", stages=(11, 21), registers=REGS)
NOW = 1_800_000_000.0
T0, T1, T2, T3 = NOW - 40_000, NOW - 30_000, NOW - 20_000, NOW - 10_000
NO_READINGS: tuple[NearReading | None, NearReading | None] = (None, None)


@dataclass
class _Profile:
    points: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Settings:
    ct_ratio: Ratio = field(default_factory=lambda: Ratio(D(200), D(5)))
    pt_ratio: Ratio = field(default_factory=Ratio)
    address: str = "000000000011"


@dataclass
class _Meter:
    id: str = "m1"
    profile: _Profile = field(default_factory=_Profile)
    settings: _Settings = field(default_factory=_Settings)


METER = cast(Any, _Meter())


def _settlement(t: float, regs: dict[str, str], mult: str) -> Settlement:
    body: dict[str, object] = {
        "quality": "actual", "multiplier": D(mult),
        "registers": {k: {"raw": D(v), "value": D(v) * D(mult), "unit": "kWh"} for k, v in regs.items()}}
    return Settlement(int(t), "m1", "p", "2026-12", 0, t, "actual", 0.0, body)


def _record(kind: str, doc: dict[str, object], changes: list[dict[str, Any]], rid: int,
            near: tuple[NearReading | None, NearReading | None] = NO_READINGS) -> dict[str, Any]:
    req = check_request(kind, doc, PLAN, "UTC", NOW)  # type: ignore[arg-type]
    return {**change_body(req, METER, changes, near, "token:1 (clerk)"), "id": rid}


def test_an_exchange_inside_a_stage_counts_both_meters_per_tariff_each_with_its_multiplier() -> None:
    ex = _record("exchange", {"at": iso_utc(T1), "old_final": {"energy_import_kwh_t1": "150.25",
                                                              "energy_import_kwh_t2": "60.10"},
                              "new_initial": {"energy_import_kwh_t1": "0.50", "energy_import_kwh_t2": 0},
                              "new_serial": "3412009876", "ct": "400/5"}, [], 1)
    assert (ex["old"]["multiplier"], ex["new"]["multiplier"]) == (D(40), D(80))
    assert ex["old_serial"] == "000000000011" and ex["new_serial"] == "3412009876"
    assert ex["registers"]["energy_import_kwh_t1"]["value_old"] == D("6010.00")
    start = _settlement(T0, {"energy_import_kwh_t1": "100.00", "energy_import_kwh_t2": "50.00"}, "40")
    end = _settlement(T3, {"energy_import_kwh_t1": "10.75", "energy_import_kwh_t2": "5.05"}, "80")
    st = stage_consumption(1, T0, T3, start, end, list(REGS), [ex])
    assert st.consumption == {
        "energy_import_kwh_t1": (D("150.25") - D("100.00")) * 40 + (D("10.75") - D("0.50")) * 80,
        "energy_import_kwh_t2": (D("60.10") - D("50.00")) * 40 + (D("5.05") - D(0)) * 80,
    }
    assert st.consumption["energy_import_kwh_t1"] == D("2830.0000")
    assert st.codes == ("exchange",) and st.complete
    assert st.flags[0].startswith("exchange: meter exchanged at")
    # the stages on either side are untouched, and the cycle reconciles across the exchange
    before = stage_consumption(1, T0, T1 - 1, start, start, list(REGS), [ex])
    assert before.codes == () and before.consumption["energy_import_kwh_t1"] == 0
    assert reconcile([st], st).reconciled


def test_several_changes_in_one_stage_are_summed_segment_by_segment() -> None:
    ratio = _record("ratio_change", {"at": iso_utc(T1), "ct": "300/5",
                                     "registers": {"energy_import_kwh_t1": "120.00", "energy_import_kwh_t2": "55.5"}},
                    [], 1)
    assert (ratio["old"]["multiplier"], ratio["new"]["multiplier"]) == (D(40), D(60))
    ex = _record("exchange", {"at": iso_utc(T2), "old_final": {"energy_import_kwh_t1": "130.01",
                                                              "energy_import_kwh_t2": "57"},
                              "new_initial": {"energy_import_kwh_t1": "1", "energy_import_kwh_t2": "2"},
                              "new_serial": "X2"}, [ratio], 2)
    assert ex["old"]["multiplier"] == D(60) == ex["new"]["multiplier"]     # the ratio in force is kept
    start = _settlement(T0, {"energy_import_kwh_t1": "100.00", "energy_import_kwh_t2": "50.00"}, "40")
    end = _settlement(T3, {"energy_import_kwh_t1": "3.33", "energy_import_kwh_t2": "2.01"}, "60")
    st = stage_consumption(1, T0, T3, start, end, list(REGS), [ratio, ex])
    assert st.consumption["energy_import_kwh_t1"] == \
        (D("120.00") - D("100.00")) * 40 + (D("130.01") - D("120.00")) * 60 + (D("3.33") - D(1)) * 60
    assert st.consumption["energy_import_kwh_t2"] == \
        (D("55.5") - D("50.00")) * 40 + (D(57) - D("55.5")) * 60 + (D("2.01") - D(2)) * 60
    assert st.codes == ("ratio_change", "exchange") and st.complete


def test_an_operator_record_replaces_the_automatic_one_of_the_same_change() -> None:
    auto = {"id": 7, "kind": "ratio_change", "meter": "m1", "at": iso_utc(T2), "at_epoch": D(repr(T2)),
            "old": {"ct": D(40), "pt": D(1), "multiplier": D(40)},
            "new": {"ct": D(80), "pt": D(1), "multiplier": D(80)},
            "registers": {"energy_import_kwh_t1": {"raw": D(130), "value_old": D(5200), "value_new": D(10400)}}}
    entered = _record("ratio_change", {"at": iso_utc(T1), "ct": "400/5",
                                       "registers": {"energy_import_kwh_t1": 120, "energy_import_kwh_t2": 55}},
                      [auto], 8)
    assert entered["supersedes"] == 7 and entered["old"]["multiplier"] == D(40)
    assert effective([auto, entered]) == [entered]
    assert ratio_in_force([auto, entered], T1 - 1, {"ct": D(1), "pt": D(1), "multiplier": D(1)})["multiplier"] == 40
    assert ratio_in_force([auto, entered], T1, {"ct": D(1), "pt": D(1), "multiplier": D(1)})["multiplier"] == 80


@pytest.mark.parametrize(("kind", "doc", "status", "says"), [
    ("exchange", {"at": iso_utc(NOW + 60), "old_final": {}, "new_initial": {}, "new_serial": "x"}, 400, "future"),
    ("exchange", {"at": iso_utc(T1), "old_final": {"energy_import_kwh_t1": 1},
                  "new_initial": {"energy_import_kwh_t1": 1, "energy_import_kwh_t2": 1}, "new_serial": "x"}, 400,
     "lacks energy_import_kwh_t2"),
    ("exchange", {"at": iso_utc(T1), "old_final": {"energy_import_kwh_t1": 1, "energy_import_kwh_t2": 1},
                  "new_initial": {"energy_import_kwh_t1": 1, "energy_import_kwh_t2": 1}}, 400, "new_serial"),
    ("exchange", {"at": iso_utc(T1), "old_final": {"energy_import_kwh_t9": 1}, "new_initial": {}, "new_serial": "x"},
     400, "unknown register"),
    ("ratio_change", {"at": iso_utc(T1), "ct": "400/5"}, 400, '"registers" is required'),
    ("ratio_change", {"at": iso_utc(T1), "registers": {"energy_import_kwh_t1": 1, "energy_import_kwh_t2": 1}}, 400,
     '"ct" and/or "pt"'),
    ("ratio_change", {"at": iso_utc(T1), "ct": "5/400", "registers": {}}, 400, "inverted"),
    ("ratio_change", {"at": iso_utc(T1), "ct": "200/5",
                      "registers": {"energy_import_kwh_t1": 1, "energy_import_kwh_t2": 1}}, 400, "already"),
])
def test_bad_requests_are_refused_with_what_to_send(kind: str, doc: dict[str, object], status: int,
                                                    says: str) -> None:
    with pytest.raises(CorrectionError) as exc:
        _record(kind, doc, [], 1)
    assert exc.value.status == status and says in str(exc.value), str(exc.value)


def test_changes_are_entered_in_order_and_must_agree_with_the_stored_readings() -> None:
    regs = {"energy_import_kwh_t1": "150", "energy_import_kwh_t2": "60"}
    first = _record("exchange", {"at": iso_utc(T2), "old_final": regs, "new_initial": regs, "new_serial": "a"}, [], 1)
    with pytest.raises(CorrectionError) as exc:
        _record("exchange", {"at": iso_utc(T1), "old_final": regs, "new_initial": regs, "new_serial": "b"}, [first], 2)
    assert exc.value.status == 409 and "not after the previous exchange" in str(exc.value)
    last: NearReading = (T1 - 60, 5, {"energy_import_kwh_t1": (D("150.01"), D("6000.40"), "kWh")})
    with pytest.raises(CorrectionError) as exc:
        _record("exchange", {"at": iso_utc(T1), "old_final": regs, "new_initial": regs, "new_serial": "b"}, [], 2,
                (last, None))
    assert exc.value.status == 409 and "lower than the meter's last recorded reading" in str(exc.value)
    after: NearReading = (T1 + 60, 6, {"energy_import_kwh_t1": (D("0.10"), D("4"), "kWh")})
    with pytest.raises(CorrectionError) as exc:
        _record("exchange", {"at": iso_utc(T1), "old_final": regs, "new_initial": {**regs, "energy_import_kwh_t1": 1},
                             "new_serial": "b"}, [], 2, (None, after))
    assert exc.value.status == 409 and "higher than the reading recorded after" in str(exc.value)


def test_an_exchange_at_a_boundary_belongs_to_the_stage_it_starts() -> None:
    """The settlement read at the exchange's instant is the old meter's final: the stage that
    ends there is the old meter's alone, the one that starts there spans the exchange."""
    regs = {"energy_import_kwh_t1": "150.00", "energy_import_kwh_t2": "60.00"}
    ex = _record("exchange", {"at": iso_utc(T1), "old_final": regs, "new_initial": {
        "energy_import_kwh_t1": "1.00", "energy_import_kwh_t2": "2.00"}, "new_serial": "n"}, [], 1)
    start = _settlement(T0, {"energy_import_kwh_t1": "100.00", "energy_import_kwh_t2": "50.00"}, "40")
    at_b = _settlement(T1, regs, "40")
    end = _settlement(T2, {"energy_import_kwh_t1": "3.00", "energy_import_kwh_t2": "2.50"}, "40")
    before = stage_consumption(1, T0, T1, start, at_b, list(REGS), [ex])
    after = stage_consumption(2, T1, T2, at_b, end, list(REGS), [ex])
    assert before.codes == () and before.consumption["energy_import_kwh_t1"] == D(50) * 40
    assert after.codes == ("exchange",) and after.complete
    assert after.consumption == {"energy_import_kwh_t1": D(2) * 40, "energy_import_kwh_t2": D("0.50") * 40}
