"""Review rules across a recorded meter change and a register rollover (pure): the ratio in force at
each reading, the exchange / CT-PT change barrier, and a rollover within the profile's capacity."""

from __future__ import annotations

from decimal import Decimal as D

from gateway.model import loads_exact, to_json
from gateway.review.rules import MeterContext, MeterState, Observation, RegisterValue, RuleEvent, evaluate, note_change
from gateway.review_thresholds import ReviewThresholds

T0 = 1_795_881_600.0
TH = ReviewThresholds()
CTX = MeterContext(tz="Asia/Shanghai", identity="1|simulator")
REG = "energy_import_kwh"


def obs(k: int, raw: str, factor: str = "1", power: str | None = None) -> Observation:
    """A reading at quarter ``k``: the register as shown (``raw``) and its value × ``factor``."""
    s = T0 + k * 900
    return Observation(meter="m1", ts=s + 0.5, slot=s, schedule="interval", interval_s=900.0, quality="good",
                       failed=False, registers={REG: RegisterValue(D(raw), D(raw) * D(factor))},
                       power_kw=None if power is None else D(power))


def run(state: MeterState, o: Observation, ctx: MeterContext = CTX) -> list[RuleEvent]:
    events, errors = evaluate(state, o, ctx, TH)
    assert not errors, errors
    return events


def test_a_ct_change_at_a_restart_is_no_meter_fast_the_ratio_in_force_at_each_reading_counts() -> None:
    st = MeterState()
    # 40 kW primary for 15 min = 10 kWh; CT×PT 40 → 80 between quarters 1 and 2
    assert run(st, obs(0, "100.00", "40", power="40")) == []
    assert run(st, obs(1, "100.25", "40", power="40")) == []        # 0.25 × 40 = 10 kWh
    assert run(st, obs(2, "100.375", "80", power="40")) == []       # 0.125 × 80 = 10 kWh, not 8030 − 4010
    assert run(st, obs(3, "100.50", "80", power="40")) == []
    # the old way (difference of values under two ratios) would have been 4030 kWh in a quarter
    assert D("100.375") * 80 - D("100.25") * 40 > 4000


def test_a_recorded_exchange_is_no_register_decrease_and_no_meter_fast() -> None:
    st = MeterState()
    run(st, obs(0, "98765.40", power="1"))
    run(st, obs(1, "98765.65", power="1"))
    note_change(st, T0 + 2 * 900)                       # the exchange, recorded just before quarter 2's read
    assert run(st, obs(2, "0.10", power="1")) == []     # the new meter's register: not a decrease
    assert run(st, obs(3, "0.35", power="1")) == []     # judged against the new meter from here
    assert run(st, obs(4, "50.00", power="1"))[0].type == "meter_fast"   # rules still work afterwards
    # without the record the same readings are a decrease
    other = MeterState()
    run(other, obs(0, "98765.40"))
    assert [e.type for e in run(other, obs(2, "0.10"))] == ["register_decrease"]


def test_the_change_barrier_survives_a_restart_of_the_rule_memory() -> None:
    st = MeterState()
    run(st, obs(0, "500.00"))
    note_change(st, T0 + 900)
    back = MeterState.from_doc(loads_exact(to_json(st.to_doc())))  # type: ignore[arg-type]
    assert back.change_at == T0 + 900
    assert run(back, obs(1, "3.00")) == []


def test_a_rollover_within_the_profile_capacity_is_not_a_decrease() -> None:
    ctx = MeterContext(tz="Asia/Shanghai", identity="1|x", capacities={REG: D(10) ** 5})
    st = MeterState()
    run(st, obs(0, "97000.00"), ctx)                    # 5 digits: wraps at 100000; not near a rollover_at
    assert run(st, obs(1, "1500.00"), ctx) == []        # 4500 kWh through the wrap: a rollover
    st = MeterState()
    run(st, obs(0, "97000.00"))                         # without the capacity, the same fall is a decrease
    assert [e.type for e in run(st, obs(1, "1500.00"))] == ["register_decrease"]
    st = MeterState()
    run(st, obs(0, "40000.00"), ctx)                    # a wrap of more than half the capacity is a decrease
    assert [e.type for e in run(st, obs(1, "1500.00"), ctx)] == ["register_decrease"]
