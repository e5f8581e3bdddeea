"""Every review rule against its simulator fault: raised with its evidence within the rule's
window, cleared after recovery.

The meters are the simulator's load model (drivers/simulation/model.py) with the fault
switched on and off through its run-time switch; readings are made from what the model
shows every simulated 15 minutes and judged by the rules and the bus folding exactly as the
engine does (tests/reviewkit.py says why no sockets here; the live path is
tests/integration/test_review_faults_live.py).
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from drivers.simulation.model import MeterModel
from gateway.review.rules import RuleEvent
from gateway.review_thresholds import ReviewThresholds
from tests.reviewkit import QUARTER, Fleet, days, hours, local_day

#: contract and power-factor reference for the faulty meter, as per-meter overrides
TH = ReviewThresholds(
    low_pf_period_s=hours(6),
    meter_overrides={"m1": {"contract_kw": D(70), "power_factor_reference": D("0.85")}},
)
ON = local_day(2) + hours(12)          # a Thursday noon, after two days of history

# fault, amount, event type raised, raise window, clear window (simulated seconds)
CASES: list[tuple[str, float | None, str, float, float]] = [
    ("backwards", None, "register_decrease", QUARTER, 3 * QUARTER),
    ("stop", None, "meter_stopped", 3 * QUARTER, 3 * QUARTER),
    ("fast", None, "meter_fast", 2 * QUARTER, 3 * QUARTER),
    ("clock_drift", None, "clock_deviation", QUARTER, 3 * QUARTER),
    ("silent", None, "read_failure", 3 * QUARTER, QUARTER),
    ("phase_loss", 2, "phase_loss", QUARTER, 3 * QUARTER),
    ("phase_loss", 3, "voltage_loss", QUARTER, 3 * QUARTER),
    ("zero_load", None, "zero_consumption", days(1) + QUARTER, 2 * QUARTER),
    ("reverse", None, "reverse_energy", hours(2) + QUARTER, hours(3) + QUARTER),
    ("demand_over", 100, "demand_over_contract", QUARTER, 3 * QUARTER),
    ("low_pf", None, "low_power_factor", hours(12) + QUARTER, hours(12) + QUARTER),
    ("tariff_mismatch", None, "tariff_sum_mismatch", QUARTER, 3 * QUARTER),
    ("cover_open", None, "cover_open", QUARTER, 3 * QUARTER),
    ("terminal_cover_open", None, "terminal_cover_open", QUARTER, 3 * QUARTER),
    ("programming", None, "programming", QUARTER, 3 * QUARTER),
    ("meter_clear", None, "meter_clear", QUARTER, 3 * QUARTER),
    ("demand_clear", None, "demand_clear", QUARTER, 3 * QUARTER),
    ("time_set", None, "clock_set", QUARTER, 3 * QUARTER),
    ("current_reversal", None, "current_reversal", QUARTER, 3 * QUARTER),
]


def fleet() -> Fleet:
    models = {m: MeterModel(seed, base_kw=40.0, timezone="Asia/Shanghai", epoch=local_day(0))
              for m, seed in (("m1", 11), ("m2", 12))}
    return Fleet(models, {"rs1": ["m1", "m2"]}, TH)


def of(events: list[tuple[str, RuleEvent]], etype: str, state: str) -> list[RuleEvent]:
    return [e for m, e in events if e.type == etype and e.state == state and m == "m1"]


@pytest.mark.parametrize(("fault", "amount", "etype", "raise_s", "clear_s"), CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_fault_raises_its_event_with_evidence_and_recovery_clears_it(
    fault: str, amount: float | None, etype: str, raise_s: float, clear_s: float
) -> None:
    f = fleet()
    before = f.run(local_day(0), ON)
    assert before == [], f"the healthy fleet raised {[(m, e.type) for m, e in before]}"
    f.models["m1"].set_fault(fault, ON, amount)
    during = f.run(ON, ON + raise_s + 1)
    raised = of(during, etype, "raised")
    assert raised, f"{fault}: {etype} not raised within {raise_s:g} s"
    keys = {e.key for e in raised}
    assert len(keys) == len(raised), "one event per condition"
    assert all(e.evidence and e.message and e.ts >= ON for e in raised)
    off = ON + raise_s + 1 + days(1) if fault == "zero_load" else ON + raise_s + 1
    if off > ON + raise_s + 1:
        during += f.run(ON + raise_s + 1, off)
        assert of(during, etype, "raised") == raised                        # once per condition
    f.models["m1"].clear_fault(fault, off)
    cleared_type = "read_recovered" if etype == "read_failure" else etype
    # (a condition may end before the switch-off: a total that went back climbs past where it fell)
    cleared = of(during + f.run(off, off + clear_s + 1), cleared_type, "cleared")
    assert {e.key for e in cleared} == keys, f"{fault}: {etype} not cleared within {clear_s:g} s of recovery"
    assert len(cleared) == len(keys)
    assert not any((etype, k) in f.states["m1"].active for k in keys)


def test_every_meter_of_a_bus_silent_is_one_bus_failure_naming_them() -> None:
    f = fleet()
    f.run(local_day(0), ON)
    for m in ("m1", "m2"):
        f.models[m].set_fault("silent", ON)
    got = f.run(ON, ON + 4 * QUARTER)
    assert [(m, e.type, e.state) for m, e in got] == [("bus:rs1", "bus_failure", "raised")]
    assert got[0][1].evidence["meters"] == ["m1", "m2"]
    for m in ("m1", "m2"):
        f.models[m].clear_fault("silent", ON + 4 * QUARTER)
    got = f.run(ON + 4 * QUARTER, ON + 6 * QUARTER)
    assert [(m, e.type, e.state) for m, e in got] == [("bus:rs1", "bus_failure", "cleared")]


def test_the_fault_evidence_carries_the_rule_arithmetic() -> None:
    f = fleet()
    f.run(local_day(0), ON)
    f.models["m1"].set_fault("demand_over", ON, 100)
    ev = of(f.run(ON, ON + 2 * QUARTER), "demand_over_contract", "raised")[0].evidence
    assert ev["contract_kw"] == D(70) and ev["limit_kw"] == D("73.50") and ev["demand_kw"] == D(100)


def test_zero_load_for_a_stage_is_a_stage_change_cleared_two_stages_later() -> None:
    """stage_change / cycle_change from the model's registers at the stage boundaries (what
    the billing settlement records hold), with zero_load switched on for one stage."""
    from datetime import datetime

    from gateway.review.periods import PeriodUse, judge_periods
    from gateway.review.rules import MeterState
    from tests.reviewkit import ZONE

    model = MeterModel(21, base_kw=80.0, timezone="Asia/Shanghai", epoch=local_day(0))
    bounds = [datetime(2026, 9, d, tzinfo=ZONE).timestamp() for d in (1, 11, 21)]
    bounds += [datetime(2026, 10, d, tzinfo=ZONE).timestamp() for d in (1, 11, 21)]
    model.set_fault("zero_load", bounds[2])
    model.clear_fault("zero_load", bounds[3])
    st, periods, seen = MeterState(), [], []
    for k in range(1, len(bounds)):
        used = model.values_at(bounds[k])["energy_import_kwh"] - model.values_at(bounds[k - 1])["energy_import_kwh"]
        periods.append(PeriodUse("stage", "2026-09" if k < 4 else "2026-10", (k - 1) % 3 + 1, bounds[k - 1],
                                 bounds[k], used))
        seen += [(e.type, e.state, e.key, k) for e in judge_periods(st, "m1", periods, bounds[k], TH)]
    assert seen == [("stage_change", "raised", "mom", 3), ("stage_change", "cleared", "mom", 5)]
