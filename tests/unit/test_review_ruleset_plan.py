"""The rules ruleset.evaluate leaves out for a meter (rules_for / idle_rules): only those whose
first test returns for every reading under the meter's thresholds and schedule period, so the
events and the rule memory are what running every rule (ALL_RULES) gives.

Shown three ways: which rules each setting leaves out (and that they run once it is set);
each left-out rule called anyway on readings whose fault would raise it returns nothing and
changes no state; and a faulty fleet judged through both paths side by side gives the same
events and the same MeterState after every reading.
"""

from __future__ import annotations

import copy
from decimal import Decimal as D

import pytest

from drivers.simulation.model import MeterModel
from gateway.review import rules
from gateway.review.rules import MeterContext, MeterState, observe_reading
from gateway.review.ruleset import ALL_RULES, evaluate, idle_rules, rules_for
from gateway.review_thresholds import ReviewThresholds
from tests.reviewkit import QUARTER, TZ, local_day, reading_from_model

ALWAYS = {"register_decrease", "meter_stopped", "meter_fast", "phase_loss", "zero_consumption",
          "tariff_sum_mismatch"}
"""Rules no configuration turns off: they run for every meter."""

#: every rule that can be left out, switched on
ACTIVE = ReviewThresholds(contract_kw=D(70), power_factor_reference=D("0.9"), low_pf_period_s=3600.0)
#: each rule that can be left out: the setting that leaves it out, and the fault that raises it
IDLE_CASES: list[tuple[str, dict[str, object], float | None, str]] = [
    ("demand_over_contract", {"contract_kw": None}, QUARTER, "demand_over"),
    ("low_power_factor", {"power_factor_reference": None}, QUARTER, "low_pf"),
    ("clock_deviation", {"clock_threshold_s": 0.0}, QUARTER, "clock_drift"),
    ("reverse_energy", {"consumer": False}, QUARTER, "reverse"),
    ("meter_events", {"meter_event_kinds": ()}, QUARTER, "cover_open"),
    ("consumption_jump", {"jump_min_interval_s": 2 * QUARTER}, QUARTER, "fast"),
    ("consumption_jump", {}, None, "fast"),
]


def _th(**changes: object) -> ReviewThresholds:
    return ReviewThresholds(meter_overrides={"m1": {
        "contract_kw": ACTIVE.contract_kw, "power_factor_reference": ACTIVE.power_factor_reference,
        "low_pf_period_s": ACTIVE.low_pf_period_s, **changes}}).for_meter("m1", None)


def test_with_every_setting_on_every_rule_runs_in_order() -> None:
    assert idle_rules(_th(), QUARTER) == frozenset()
    assert rules_for(_th(), QUARTER) == ALL_RULES


def test_the_defaults_leave_out_the_rules_without_their_setting() -> None:
    th = ReviewThresholds()
    assert idle_rules(th, QUARTER) == {"demand_over_contract", "low_power_factor"}
    assert idle_rules(th, 1.0) == {"demand_over_contract", "low_power_factor", "consumption_jump"}
    assert {name for name, _ in rules_for(th, 1.0)} >= ALWAYS
    # the plan is ALL_RULES' order, less the idle ones
    assert rules_for(th, 1.0) == tuple(r for r in ALL_RULES if r[0] not in idle_rules(th, 1.0))


@pytest.mark.parametrize(("rule", "changes", "interval_s", "fault"), IDLE_CASES,
                         ids=[f"{c[0]}-{c[2]}-{next(iter(c[1]), 'no-schedule')}" for c in IDLE_CASES])
def test_each_setting_leaves_out_its_rule_only(rule: str, changes: dict[str, object], interval_s: float | None,
                                               fault: str) -> None:
    assert idle_rules(_th(**changes), interval_s) == {rule}
    assert rule not in {name for name, _ in rules_for(_th(**changes), interval_s)}
    assert rule in {name for name, _ in rules_for(_th(), QUARTER)}


def test_the_plan_follows_new_thresholds_and_each_schedule_period() -> None:
    a, b = _th(), _th(contract_kw=None)
    assert rules_for(a, QUARTER) == ALL_RULES
    assert "demand_over_contract" not in {n for n, _ in rules_for(b, QUARTER)}
    assert "consumption_jump" not in {n for n, _ in rules_for(a, 1.0)}
    assert rules_for(a, QUARTER) == ALL_RULES            # a's other period: its own plan


def _calls(rule: str, th: ReviewThresholds, interval_s: float | None, fault: str) -> list[bool]:
    """Call ``rule`` on every reading of a day with ``fault`` on (after three healthy days, with
    the interval and state the other rules leave); for each call, whether it did anything
    (an event, or a change of the state). Asserts that nothing failed."""
    fn = dict(ALL_RULES)[rule]
    model = MeterModel(11, base_kw=40.0, timezone=TZ, epoch=local_day(0))
    start = local_day(3) + 12 * 3600
    model.set_fault(fault, start + 8 * QUARTER)
    st = MeterState()
    ctx = MeterContext(tz=TZ, identity="m1|sim")
    did: list[bool] = []
    t = local_day(0)
    while t < start + 96 * QUARTER:
        obs = observe_reading(reading_from_model("m1", model, t), interval_s, th.power_point)
        if t >= start:
            iv = rules.energy_interval(st, obs, th)
            before = copy.deepcopy(st)
            out = fn(st, obs, iv, ctx, th)
            did.append(bool(out) or st != before)
        _events, errors = rules.evaluate(st, obs, ctx, th, ALL_RULES)
        assert not errors
        t += QUARTER
    return did


@pytest.mark.parametrize(("rule", "changes", "interval_s", "fault"), IDLE_CASES,
                         ids=[f"{c[0]}-{c[2]}-{next(iter(c[1]), 'no-schedule')}" for c in IDLE_CASES])
def test_a_left_out_rule_would_have_done_nothing(rule: str, changes: dict[str, object], interval_s: float | None,
                                                 fault: str) -> None:
    """Called anyway on readings with the fault that raises it, the left-out rule returns no
    event and leaves the state as it was, every time; with its setting on, the same readings
    make it act (raise, or keep what it judges by)."""
    assert not any(_calls(rule, _th(**changes), interval_s, fault))
    assert any(_calls(rule, _th(), QUARTER, fault))


def test_the_plan_judges_a_faulty_fleet_as_every_rule_does() -> None:
    """Meters with rules left out (the defaults, and each setting off), faults switched on and
    off: the same events and the same state after every reading as with ALL_RULES."""
    overrides: dict[str, dict[str, object]] = {f"m{k}": dict(c[1]) for k, c in enumerate(IDLE_CASES[:6], 1)}
    th0 = ReviewThresholds(meter_overrides=overrides)
    meters = ["m0", *overrides]
    models = {m: MeterModel(30 + k, base_kw=40.0, timezone=TZ, epoch=local_day(0)) for k, m in enumerate(meters)}
    faults = ["demand_over", "low_pf", "clock_drift", "reverse", "cover_open", "fast", "backwards", "phase_loss"]
    planned = {m: MeterState() for m in meters}
    every = {m: MeterState() for m in meters}
    ctx = MeterContext(tz=TZ, identity="sim")
    t, end = local_day(0), local_day(4)
    k = 0
    raised = 0
    while t < end:
        if k % 16 == 0:
            for i, m in enumerate(meters):
                f = faults[(k // 16 + i) % len(faults)]
                if (k // 16) % 2:
                    models[m].clear_fault(f, t)
                else:
                    models[m].set_fault(f, t)
        for m in meters:
            th = th0.for_meter(m, None)
            for interval_s in (QUARTER, 1.0):
                reading = reading_from_model(m, models[m], t + (0.0 if interval_s == QUARTER else 1.0))
                obs = observe_reading(reading, interval_s, th.power_point)
                got, errors = evaluate(planned[m], obs, ctx, th)
                want, errors_all = rules.evaluate(every[m], obs, ctx, th, ALL_RULES)
                assert not errors and not errors_all
                assert got == want
                assert planned[m] == every[m]
                raised += len(got)
        t += QUARTER
        k += 1
    assert raised > 50
