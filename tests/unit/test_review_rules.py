"""The review rules, one by one, on hand-made observations (no I/O, no clock).

Each rule: it raises with evidence, stays silent while the condition persists (no
duplicates), clears after the configured normal cycles, and respects its thresholds
(rollover, midnight guard, minimum expected energy, minimum history, …).
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import NOT_POLLED_BUS, NOT_POLLED_SCHEDULE, PointValue, Reading, loads_exact, passed_over, to_json
from gateway.review import rules
from gateway.review.rules import (
    MeterContext,
    MeterState,
    Observation,
    RegisterValue,
    RuleEvent,
    evaluate,
    observe_reading,
    rated_power_kw,
)
from gateway.review_thresholds import ReviewThresholds

T0 = 1_795_881_600.0  # 2026-11-29 00:00:00 +08:00: local midnight
TZ = "Asia/Shanghai"
TH = ReviewThresholds()
CTX = MeterContext(tz=TZ, identity="1|simulator")


def obs(
    k: int, *, energy: D | str | None = None, power: D | str | None = None, registers: dict[str, D] | None = None,
    failed: bool = False, voltages: dict[str, D] | None = None, clock: str | None = None, every: float = 900.0,
    ts_offset: float = 0.5, slot: float | None = None,
) -> Observation:
    """An observation at quarter ``k`` after T0 (read half a second after its slot)."""
    s = T0 + k * every if slot is None else slot
    regs: dict[str, RegisterValue] = {}
    if energy is not None:
        regs["energy_import_kwh"] = RegisterValue(D(energy), D(energy))
    for name, v in (registers or {}).items():
        regs[name] = RegisterValue(v, v)
    return Observation(
        meter="m1", ts=s + ts_offset, slot=s, schedule="interval", interval_s=every,
        quality="timeout" if failed else "good", failed=failed, error="no reply" if failed else None,
        registers=regs, power_kw=None if power is None else D(power), voltages=voltages or {}, meter_clock=clock,
    )


def run(state: MeterState, o: Observation, th: ReviewThresholds = TH, ctx: MeterContext = CTX) -> list[RuleEvent]:
    events, errors = evaluate(state, o, ctx, th)
    assert not errors, errors
    return events


def kinds(events: list[RuleEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.state, e.key) for e in events]


# ----------------------------------------------------------------------------- register_decrease
def test_register_decrease_raises_once_per_register_and_clears_after_normal_cycles() -> None:
    st = MeterState()
    t1 = "energy_import_kwh_t1"
    assert run(st, obs(0, energy="1000.00", registers={t1: D("300.00")})) == []
    ev = run(st, obs(1, energy="1000.50", registers={t1: D("299.00")}))
    assert kinds(ev) == [("register_decrease", "raised", t1)]
    e = ev[0].evidence
    assert e["before_raw"] == D("300.00") and e["after_raw"] == D("299.00") and e["decrease_raw"] == D("1.00")
    assert e["before_time"] and e["after_time"]
    # it persists (falls again): no duplicate
    assert run(st, obs(2, energy="1001.00", registers={t1: D("298.00")})) == []
    # two readings that do not fall → cleared (once)
    assert run(st, obs(3, energy="1001.50", registers={t1: D("298.50")})) == []
    ev = run(st, obs(4, energy="1002.00", registers={t1: D("298.90")}))
    assert kinds(ev) == [("register_decrease", "cleared", t1)]
    assert ev[0].evidence["raised_at"]
    assert run(st, obs(5, energy="1002.50", registers={t1: D("299.00")})) == []


def test_register_decrease_clears_at_once_when_back_above_where_it_fell_from() -> None:
    st = MeterState()
    run(st, obs(0, energy="500.00"))
    assert kinds(run(st, obs(1, energy="100.00"))) == [("register_decrease", "raised", "energy_import_kwh")]
    assert kinds(run(st, obs(2, energy="500.10"))) == [("register_decrease", "cleared", "energy_import_kwh")]


@pytest.mark.parametrize(("before", "after"), [("999999.98", "0.03"), ("99999999.99", "0.00"), ("99999000.00", "12.5")])
def test_a_configured_rollover_is_not_a_decrease(before: str, after: str) -> None:
    st = MeterState()
    run(st, obs(0, energy=before))
    assert run(st, obs(1, energy=after)) == []
    assert st.registers["energy_import_kwh"].raw == D(after)  # the baseline moved on


def test_a_fall_far_from_a_rollover_maximum_is_a_decrease() -> None:
    st = MeterState()
    run(st, obs(0, energy="999999.00"))  # near the top of 999999.99 …
    assert kinds(run(st, obs(1, energy="50000.00"))) == [("register_decrease", "raised", "energy_import_kwh")]


def test_decrease_tolerance_and_meter_swap() -> None:
    th = ReviewThresholds(decrease_tolerance=D("0.02"))
    st = MeterState()
    run(st, obs(0, energy="10.00"), th)
    assert run(st, obs(1, energy="9.99"), th) == []        # within the tolerance
    # a swap: another address under the same meter id — baselines restart, no event
    swapped = MeterContext(tz=TZ, identity="2|simulator")
    assert run(st, obs(2, energy="0.50"), th, swapped) == []
    assert kinds(run(st, obs(3, energy="0.40"), th, swapped)) == [("register_decrease", "raised", "energy_import_kwh")]


def test_a_late_older_reading_is_not_judged() -> None:
    st = MeterState()
    run(st, obs(1, energy="20.00"))
    assert run(st, obs(0, energy="10.00")) == []
    assert st.registers["energy_import_kwh"].raw == D("20.00")


# ----------------------------------------------------------------------------- meter_stopped
def test_meter_stopped_after_the_window_while_power_flows_then_clears() -> None:
    st = MeterState()
    run(st, obs(0, energy="100.00", power="40"))
    # one quarter unchanged: below the 2 × 15 min window
    assert run(st, obs(1, energy="100.00", power="40")) == []
    ev = run(st, obs(2, energy="100.00", power="40"))
    assert kinds(ev) == [("meter_stopped", "raised", "energy_import_kwh")]
    e = ev[0].evidence
    assert e["window_quarters"] == 2 and e["expected_kwh"] == D(20) and e["mean_power_kw"] == D(40)
    assert run(st, obs(3, energy="100.00", power="40")) == []  # persists: no duplicate
    assert run(st, obs(4, energy="110.00", power="40")) == []
    assert kinds(run(st, obs(5, energy="120.00", power="40"))) == [("meter_stopped", "cleared", "energy_import_kwh")]


def test_meter_stopped_needs_enough_expected_energy() -> None:
    st = MeterState()
    # 0.05 kW: 0.0125 kWh per quarter, so 0.04 kWh is only reached after four quarters
    got = [kinds(run(st, obs(k, energy="100.00", power="0.05"))) for k in range(5)]
    assert got == [[], [], [], [], [("meter_stopped", "raised", "energy_import_kwh")]]
    st = MeterState()
    for k in range(6):  # 0.01 kW: at most 0.0125 kWh in the whole run, below 0.04
        assert run(st, obs(k, energy="100.00", power="0.01")) == []
    # a coarse register (one step = 40 kWh primary): unchanged is normal for small loads
    st = MeterState()
    coarse = {"energy_import_kwh": RegisterValue(D("10.00"), D("40000.00"))}
    for k in range(4):
        o = obs(k, power="20")
        o = Observation(**{**{f: getattr(o, f) for f in o.__slots__}, "registers": coarse})
        assert run(st, o) == []


def test_meter_stopped_without_power_is_not_judged() -> None:
    st = MeterState()
    for k in range(5):
        assert run(st, obs(k, energy="100.00")) == []


# ----------------------------------------------------------------------------- meter_fast
def test_meter_fast_by_measured_power_erc28_then_erc29_levels_and_clear() -> None:
    st = MeterState()
    run(st, obs(0, energy="0.00", power="40"))           # 40 kW × 15 min = 10 kWh expected
    ev = run(st, obs(1, energy="20.00", power="40"))     # ratio ≈ 2.0: over tolerance (ERC28)
    assert kinds(ev) == [("meter_fast", "raised", "energy_import_kwh")]
    assert ev[0].evidence["erc"] == 28 and ev[0].evidence["mode"] == "measured_power"
    assert run(st, obs(2, energy="60.00", power="40")) == []  # ratio 4 (ERC29) while raised: no duplicate
    assert run(st, obs(3, energy="70.00", power="40")) == []
    assert kinds(run(st, obs(4, energy="80.00", power="40"))) == [("meter_fast", "cleared", "energy_import_kwh")]
    st = MeterState()
    run(st, obs(0, energy="0.00", power="40"))
    ev = run(st, obs(1, energy="50.00", power="40"))
    assert ev[0].evidence["erc"] == 29 and ev[0].evidence["level"] == "runs_too_fast"


def test_meter_fast_is_skipped_when_expected_energy_is_tiny() -> None:
    st = MeterState()
    run(st, obs(0, energy="0.00", power="0.01"))          # 0.0025 kWh expected < 0.01
    assert run(st, obs(1, energy="5.00", power="0.01")) == []


def test_meter_fast_takes_one_display_step_off_before_judging() -> None:
    st = MeterState()
    run(st, obs(0, energy="0.00", power="0.1"))            # 0.025 kWh expected
    assert run(st, obs(1, energy="0.04", power="0.1")) == []   # 0.04 − 0.01 = 0.03: ratio 1.2


def test_meter_fast_against_rated_power() -> None:
    rated = rated_power_kw(D("57.7"), D("6"), D(1))
    assert rated == D("1.0386")                            # 3 × 57.7 V × 6 A
    assert rated_power_kw(D("100"), D("6"), D(1), "line") == D(3).sqrt() * D("0.6")
    ctx = MeterContext(tz=TZ, identity="x", rated_kw=rated)
    st = MeterState()
    run(st, obs(0, energy="0.00"), ctx=ctx)
    assert run(st, obs(1, energy="0.30"), ctx=ctx) == []   # limit 1.0386 × 1.2 × 0.25 h ≈ 0.3116 kWh
    ev = run(st, obs(2, energy="0.70"), ctx=ctx)
    assert kinds(ev) == [("meter_fast", "raised", "energy_import_kwh")]
    assert ev[0].evidence["mode"] == "rated" and ev[0].evidence["rated_power_kw"] == rated


# ----------------------------------------------------------------------------- consumption_jump
def jump_day(st: MeterState, day: int, kwh: D, base: D) -> list[RuleEvent]:
    """Two adjacent readings at 10:00 and 10:15 local on ``day``: one interval of ``kwh``."""
    at10 = T0 + day * 86400 + 10 * 3600
    run(st, obs(0, energy=base, slot=at10))
    return run(st, obs(0, energy=base + kwh, slot=at10 + 900))


def test_consumption_jump_against_the_median_of_the_same_slot() -> None:
    st = MeterState()
    base = D("1000")
    for day, kwh in enumerate([D(10), D(12), D(11)]):
        assert jump_day(st, day, kwh, base + day * 100) == []
    ev = jump_day(st, 3, D(40), D(2000))                  # 40 > 3 × median 11
    assert kinds(ev) == [("consumption_jump", "raised", "energy_import_kwh")]
    e = ev[0].evidence
    assert e["median_kwh"] == D(11) and e["history_days"] == 3 and e["limit_kwh"] == D(33)
    assert jump_day(st, 4, D(50), D(3000)) == []          # persists
    assert jump_day(st, 5, D(10), D(4000)) == []
    assert kinds(jump_day(st, 6, D(10), D(5000))) == [("consumption_jump", "cleared", "energy_import_kwh")]
    assert [s for s, _, _ in st.new_intervals[:1]] == [T0 + 10 * 3600]


def test_consumption_jump_needs_history_and_adjacent_slots() -> None:
    st = MeterState()
    for day, kwh in enumerate([D(10), D(10)]):
        jump_day(st, day, kwh, D(100) * (day + 1))
    assert jump_day(st, 2, D(100), D(1000)) == []           # only 2 days of history (< 3)
    st = MeterState()
    for day in range(4):
        jump_day(st, day, D(10), D(100) * (day + 1))
    at = T0 + 5 * 86400 + 10 * 3600
    run(st, obs(0, energy="5000", slot=at))
    assert run(st, obs(0, energy="5100", slot=at + 1800)) == []   # a gap (30 min): not an interval


def test_consumption_jump_skips_an_interval_whose_read_came_late() -> None:
    """Adjacent slots, but the second read taken two periods after its slot (a bus that fell
    behind): its register holds three periods of consumption, which is not the slot's."""
    def history() -> MeterState:
        st = MeterState()
        for day, kwh in enumerate([D(10), D(12), D(11)]):
            assert jump_day(st, day, kwh, D(1000) + day * 100) == []
        return st

    at = T0 + 3 * 86400 + 10 * 3600
    st = history()
    run(st, obs(0, energy="2000", slot=at))
    kept = {k: list(v) for k, v in st.history.items()}
    assert run(st, obs(0, energy="2036", slot=at + 900, ts_offset=1800.5)) == []   # 36 > 3 × 11, read 30 min late
    assert {k: list(v) for k, v in st.history.items()} == kept                      # not kept as the slot's history
    st = history()
    run(st, obs(0, energy="2000", slot=at))
    ev = run(st, obs(0, energy="2036", slot=at + 900, ts_offset=200.5))             # within a quarter period: judged
    assert kinds(ev) == [("consumption_jump", "raised", "energy_import_kwh")]
    st = history()
    run(st, obs(0, energy="2000", slot=at, ts_offset=1350.5))                        # both reads 1.5 periods late:
    assert run(st, obs(0, energy="2036", slot=at + 900, ts_offset=1350.5)) == []    # one period apart, but another
    assert {k: list(v) for k, v in st.history.items()} == kept                      # time of day than the slot's


# ----------------------------------------------------------------------------- clock_deviation
def clock_at(slot: float, offset_s: float) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(slot + 0.5 + offset_s, ZoneInfo(TZ)).replace(tzinfo=None).isoformat(
        timespec="seconds")


def test_clock_deviation_raises_persists_and_clears() -> None:
    st = MeterState()
    noon = T0 + 12 * 3600
    ev = run(st, obs(0, slot=noon, clock=clock_at(noon, 400)))
    assert kinds(ev) == [("clock_deviation", "raised", "")]
    assert ev[0].evidence["deviation_s"] == D("399.5") and ev[0].evidence["threshold_s"] == D("300.0")
    assert run(st, obs(0, slot=noon + 60, clock=clock_at(noon + 60, 500))) == []
    assert run(st, obs(0, slot=noon + 120, clock=clock_at(noon + 120, 2))) == []
    assert kinds(run(st, obs(0, slot=noon + 180, clock=clock_at(noon + 180, 1)))) == [
        ("clock_deviation", "cleared", "")]


def test_clock_deviation_skips_midnight_and_threshold_zero_disables() -> None:
    st = MeterState()
    before_midnight = T0 + 86400 - 30.5                    # 23:59:30 local
    assert run(st, obs(0, slot=before_midnight, clock=clock_at(before_midnight, 900))) == []
    just_after = T0 + 86400 + 10                           # 00:00:10 gateway: still guarded
    assert run(st, obs(0, slot=just_after, clock=clock_at(just_after, 600))) == []
    after_midnight = T0 + 86400 + 120                      # 00:02:00 gateway, meter 10 min ahead
    assert run(st, obs(0, slot=after_midnight, clock=clock_at(after_midnight, 600))) != []
    st = MeterState()
    meter_at_2359 = T0 + 86400 - 100                       # gateway 23:58:20, meter 23:59:50
    assert run(st, obs(0, slot=meter_at_2359, clock=clock_at(meter_at_2359, 90), ts_offset=0.5),
               ReviewThresholds(clock_threshold_s=30)) == []
    st = MeterState()
    assert run(st, obs(0, slot=T0 + 3600, clock=clock_at(T0 + 3600, 3600)), ReviewThresholds(clock_threshold_s=0)) == []


def test_an_unreadable_meter_clock_raises() -> None:
    st = MeterState()
    ev = run(st, obs(0, slot=T0 + 3600, clock="2026-13-45T99:00:00"))
    assert kinds(ev) == [("clock_deviation", "raised", "")] and ev[0].evidence["problem"] == "invalid meter clock"


# ----------------------------------------------------------------------------- read_failure
def test_read_failure_after_n_polls_and_read_recovered() -> None:
    st = MeterState()
    run(st, obs(0, energy="10.00"))
    assert run(st, obs(1, failed=True)) == []
    assert run(st, obs(2, failed=True)) == []
    ev = run(st, obs(3, failed=True))
    assert kinds(ev) == [("read_failure", "raised", "")]
    assert ev[0].evidence["failed_polls"] == 3 and ev[0].evidence["last_good_registers"] == {
        "energy_import_kwh": D("10.00")}
    st.active[("read_failure", "")].event_id = 41          # what the engine records
    assert run(st, obs(4, failed=True)) == []               # no duplicate
    ev = run(st, obs(5, energy="10.50"))
    assert kinds(ev) == [("read_recovered", "cleared", "")]
    assert ev[0].raised_id == 41 and ev[0].evidence["failed_polls"] == 4
    assert run(st, obs(6, failed=True)) == []                # counting starts afresh


def test_slots_the_gateway_passed_over_are_no_failed_polls_of_the_meter() -> None:
    """The scheduler fell behind (suspended, starved, clock stepped forward) or the bus still had
    the meter's earlier poll queued: the meter was not asked, so those rows neither count
    towards read_failure nor answer for the meter; a dead meter skipped until its next probe
    still counts (it did fail)."""
    def skipped(k: int, error: str) -> Observation:
        return replace(obs(k, failed=True), error=error)

    gap = f"{NOT_POLLED_SCHEDULE}interval fell behind (the gateway was suspended or starved)"
    overrun = f"{NOT_POLLED_BUS}rs485 ran late and the meter's poll of an earlier slot was still waiting (overrun)"
    assert passed_over(gap) and passed_over(overrun) and not passed_over("no reply") and not passed_over(None)
    st = MeterState()
    run(st, obs(0, energy="10.00"))
    for k in range(1, 7):                                  # a whole process stall: six slots passed over
        assert run(st, skipped(k, gap)) == []
    assert run(st, skipped(7, overrun)) == [] and st.failures == 0
    assert run(st, obs(8, failed=True)) == [] and run(st, obs(9, failed=True)) == []
    assert run(st, skipped(10, gap)) == []                 # neither counts nor answers
    ev = run(st, obs(11, failed=True))
    assert kinds(ev) == [("read_failure", "raised", "")] and ev[0].evidence["failed_polls"] == 3
    dead = MeterState()
    run(dead, obs(0, energy="10.00"))
    run(dead, obs(1, failed=True))
    run(dead, obs(2, failed=True))
    ev = run(dead, skipped(3, "not polled: the meter failed 2 polls in a row; next probe at 00:47:00 UTC"))
    assert kinds(ev) == [("read_failure", "raised", "")]


def test_a_partly_answered_poll_is_not_a_read_failure() -> None:
    r = Reading("m1", "C1", "b", "interval", T0, T0 + 1, {
        "energy_import_kwh": PointValue(D("5.00"), D("5.00"), "kWh"),
        "power_kw": PointValue(None, None, "kW", "timeout", "no reply"),
    }, quality="timeout")
    o = observe_reading(r, 900.0)
    assert not o.failed and o.registers["energy_import_kwh"].raw == D("5.00") and o.power_kw is None
    r2 = Reading("m1", "C1", "b", "interval", T0, T0 + 1, {
        "energy_import_kwh": PointValue(None, None, "kWh", "timeout")}, quality="timeout")
    assert observe_reading(r2, 900.0).failed


# ----------------------------------------------------------------------------- phase_loss
def volts(l1: str, l2: str, l3: str) -> dict[str, D]:
    return {"l1": D(l1), "l2": D(l2), "l3": D(l3)}


def test_phase_loss_one_phase_collapses_then_returns() -> None:
    st = MeterState()
    assert run(st, obs(0, voltages=volts("220.1", "219.5", "221.0"))) == []
    ev = run(st, obs(1, voltages=volts("220.1", "12.0", "221.0")))
    assert kinds(ev) == [("phase_loss", "raised", "l2")]
    assert ev[0].evidence["voltage_v"] == D("12.0") and ev[0].evidence["reference"] == "other_phases"
    assert run(st, obs(2, voltages=volts("220.1", "0.0", "221.0"))) == []
    assert run(st, obs(3, voltages=volts("220.1", "219.0", "221.0"))) == []
    assert kinds(run(st, obs(4, voltages=volts("220.1", "219.0", "221.0")))) == [("phase_loss", "cleared", "l2")]


def test_phase_loss_is_not_an_outage_and_uses_the_nominal_when_known() -> None:
    st = MeterState()
    assert run(st, obs(0, voltages=volts("3.0", "2.0", "1.0"))) == []     # all low: an outage
    ctx = MeterContext(tz=TZ, identity="x", nominal_v=D("5770"))           # 57.7 V × PT 100
    st = MeterState()
    ev = run(st, obs(0, voltages=volts("5800", "5700", "3000")), ctx=ctx)
    assert kinds(ev) == [("phase_loss", "raised", "l3")] and ev[0].evidence["reference_v"] == D("5770")
    st = MeterState()
    assert run(st, obs(0, voltages=volts("4000", "4000", "3000")), ctx=ctx) == []  # others not normal


@given(st.lists(st.integers(0, 3000), min_size=3, max_size=3), st.sampled_from([None, D("220"), D("2200")]))
def test_phase_loss_raises_exactly_where_the_rule_says_whatever_the_shortcut(volts_int: list[int],
                                                                            nominal: D | None) -> None:
    """On a fresh meter, phase_loss raises for exactly the phases below the loss fraction of
    their reference while the other two are normal (an oracle written out here), so the
    all-phases-fine shortcut can never hide a loss."""
    v = {ph: D(x) / 10 for ph, x in zip(("l1", "l2", "l3"), volts_int, strict=True)}
    th = TH
    expected = []
    for ph in ("l1", "l2", "l3"):
        others = [v[o] for o in ("l1", "l2", "l3") if o != ph]
        if nominal is not None:
            ref, normal = nominal, all(o >= th.phase_normal_fraction * nominal for o in others)
        else:
            ref = sum(others, D(0)) / 2
            normal = min(others) > 0 and min(others) >= th.phase_normal_fraction * max(others)
        if ref > 0 and v[ph] < th.phase_loss_fraction * ref and normal:
            expected.append(("phase_loss", "raised", ph))
    ctx = MeterContext(tz=TZ, identity="x", nominal_v=nominal)
    got = [k for k in kinds(run(MeterState(), obs(0, voltages=v), ctx=ctx)) if k[0] == "phase_loss"]
    assert got == expected


# ----------------------------------------------------------------------------- engine-facing
def test_a_failing_rule_is_reported_and_the_others_still_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> list[RuleEvent]:
        raise RuntimeError("bug")

    monkeypatch.setattr(rules, "RULES", (("meter_fast", boom), *rules.RULES))
    st = MeterState()
    evaluate(st, obs(0, energy="10.00"), CTX, TH)
    events, errors = evaluate(st, obs(1, energy="5.00"), CTX, TH)
    assert [n for n, _ in errors] == ["meter_fast"]
    assert kinds(events) == [("register_decrease", "raised", "energy_import_kwh")]
    assert st.registers["energy_import_kwh"].raw == D("5.00")


def test_state_document_round_trips_exactly() -> None:
    st = MeterState()
    run(st, obs(0, energy="12345.67", power="1.5", registers={"energy_export_kwh": D("0.01")}))
    run(st, obs(1, energy="12345.67", power="1.5"))
    doc = loads_exact(to_json(st.to_doc()))
    assert isinstance(doc, dict)
    back = MeterState.from_doc(doc)
    assert back.registers == st.registers and back.energy == st.energy and back.stopped_ref == st.stopped_ref
    assert back.stopped_expected == st.stopped_expected and back.identity == "1|simulator"


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="phase_loss_fraction"):
        ReviewThresholds(phase_loss_fraction=D("0.9"), phase_normal_fraction=D("0.85"))
    with pytest.raises(ValueError, match="read_failure_after"):
        ReviewThresholds(read_failure_after=0)
    off = ReviewThresholds(enabled=False, read_failure_after=1)
    assert evaluate(MeterState(), obs(0, failed=True), CTX, off) == ([], [])


def test_consumption_jump_ignores_schedules_faster_than_min_interval() -> None:
    st = MeterState()
    t = T0 + 10 * 3600
    for k in range(5):                                   # 1-second readings, 1 kWh each
        assert run(st, obs(0, energy=D(100 + k), slot=t + k, every=1.0)) == []
    assert st.history == {} and st.new_intervals == []


def test_power_samples_older_than_the_last_energy_value_are_forgotten() -> None:
    st = MeterState()
    for k in range(300):
        run(st, obs(k, energy=D(100 + k), power="40"))
    assert len(st.power) <= 2                            # not 256
    assert st.energy is not None and st.power[-1][0] == st.energy.ts
    st2 = MeterState()
    for k in range(5):
        run(st2, obs(k, power="40"))                     # no energy register: kept (capped)
    assert len(st2.power) == 5
