"""The billing review rules, the meter's event records and bus_failure, on hand-made observations.

Each rule: raises once with its evidence (values, times, thresholds, arithmetic), stays
silent while the condition persists, clears when it ends; per-customer and per-meter
overrides reach the rule; the configuration section parses them.
"""

from __future__ import annotations

from decimal import Decimal as D

from gateway.config import load_settings_from_text
from gateway.review.bus import fold_bus_failure
from gateway.review.rules import MeterContext, MeterState, Observation, RegisterValue, RuleEvent
from gateway.review.ruleset import evaluate
from gateway.review_thresholds import ReviewThresholds

T0 = 1_795_881_600.0  # 2026-11-29 00:00 +08:00
TZ = "Asia/Shanghai"
CTX = MeterContext(tz=TZ, identity="1|simulator")
HOUR = 3600.0


def obs(
    t: float, *, regs: dict[str, str] | None = None, values: dict[str, str] | None = None,
    records: dict[str, object] | None = None, failed: bool = False, power: str | None = None,
    meter: str = "m1",
) -> Observation:
    """An observation at ``t`` seconds after T0 (slot = read time)."""
    registers = {k: RegisterValue(D(v), D(v)) for k, v in (regs or {}).items()}
    return Observation(
        meter=meter, ts=T0 + t, slot=T0 + t, schedule="interval", interval_s=900.0,
        quality="timeout" if failed else "good", failed=failed, error="no reply" if failed else None,
        registers=registers, power_kw=None if power is None else D(power),
        values={k: D(v) for k, v in (values or {}).items()}, records=records or {},
    )


def run(st: MeterState, o: Observation, th: ReviewThresholds) -> list[RuleEvent]:
    events, errors = evaluate(st, o, CTX, th)
    assert not errors, errors
    return events


def kinds(events: list[RuleEvent]) -> list[tuple[str, str, str]]:
    return [(e.type, e.state, e.key) for e in events]


def only(events: list[RuleEvent], etype: str) -> list[RuleEvent]:
    return [e for e in events if e.type == etype]


# ----------------------------------------------------------------------------- zero_consumption
def test_zero_consumption_raises_for_an_active_customer_and_clears_when_it_consumes() -> None:
    th = ReviewThresholds(zero_window_s=12 * HOUR, zero_active_floor_kwh_per_day=D(10))
    st = MeterState()
    e = D(1000)
    got: list[RuleEvent] = []
    for h in range(0, 49):                      # two days at 24 kWh/day (1 kWh an hour)
        got += run(st, obs(h * HOUR, regs={"energy_import_kwh": f"{e + h}"}), th)
    assert only(got, "zero_consumption") == []
    stop = D(1048)
    for h in range(49, 60):                     # still since 48 h: 11 h, inside the window
        got += run(st, obs(h * HOUR, regs={"energy_import_kwh": f"{stop}"}), th)
    assert only(got, "zero_consumption") == []
    ev = run(st, obs(60 * HOUR, regs={"energy_import_kwh": f"{stop}"}), th)
    assert kinds(ev) == [("zero_consumption", "raised", "energy_import_kwh")]
    evd = ev[0].evidence
    assert evd["register_value"] == stop and evd["active_floor_kwh_per_day"] == D(10)
    assert evd["history_kwh_per_day"] == D(24) and evd["unchanged_s"] == D("43200.0")
    assert "arithmetic" in evd
    assert run(st, obs(62 * HOUR, regs={"energy_import_kwh": f"{stop}"}), th) == []   # no duplicate
    ev = run(st, obs(63 * HOUR, regs={"energy_import_kwh": f"{stop + 1}"}), th)
    assert kinds(ev) == [("zero_consumption", "cleared", "energy_import_kwh")]


def test_zero_consumption_ignores_a_customer_below_the_activity_floor() -> None:
    th = ReviewThresholds(zero_window_s=12 * HOUR, zero_active_floor_kwh_per_day=D(10))
    st = MeterState()
    got: list[RuleEvent] = []
    for h in range(0, 49):                      # 4.8 kWh/day: not active
        got += run(st, obs(h * HOUR, regs={"energy_import_kwh": f"{D(1000) + D(h) / 5}"}), th)
    for h in range(49, 80):
        got += run(st, obs(h * HOUR, regs={"energy_import_kwh": "1009.60"}), th)
    assert only(got, "zero_consumption") == []


# ----------------------------------------------------------------------------- reverse_energy
def test_reverse_energy_raises_on_a_consumer_meter_only_and_clears() -> None:
    th = ReviewThresholds()
    st = MeterState()
    assert run(st, obs(0, regs={"energy_import_kwh": "100.00", "energy_export_kwh": "5.00"}), th) == []
    # a little back-feed (2 % of import): normal
    assert only(run(st, obs(HOUR, regs={"energy_import_kwh": "200.00", "energy_export_kwh": "7.00"}), th),
                "reverse_energy") == []
    ev = run(st, obs(2 * HOUR, regs={"energy_import_kwh": "200.00", "energy_export_kwh": "57.00"}), th)
    assert kinds(only(ev, "reverse_energy")) == [("reverse_energy", "raised", "")]
    evd = ev[0].evidence
    assert evd["export_kwh"] == D(50) and evd["import_kwh"] == D(0) and evd["limit_kwh"] == D(1)
    got = run(st, obs(3 * HOUR, regs={"energy_import_kwh": "300.00", "energy_export_kwh": "57.00"}), th)
    got += run(st, obs(4 * HOUR, regs={"energy_import_kwh": "400.00", "energy_export_kwh": "57.00"}), th)
    assert kinds(only(got, "reverse_energy")) == [("reverse_energy", "cleared", "")]
    # a generator (consumer: false by override) is never judged
    gen = ReviewThresholds(meter_overrides={"m1": {"consumer": False}}).for_meter("m1", "C1")
    st2 = MeterState()
    run(st2, obs(0, regs={"energy_import_kwh": "100.00", "energy_export_kwh": "5.00"}), gen)
    assert run(st2, obs(HOUR, regs={"energy_import_kwh": "100.00", "energy_export_kwh": "500.00"}), gen) == []


# ----------------------------------------------------------------------------- tariff_sum_mismatch
def test_tariff_sum_mismatch_beyond_resolution_times_tariffs() -> None:
    th = ReviewThresholds()
    st = MeterState()
    tariffs = {"energy_import_kwh_t1": "10.00", "energy_import_kwh_t2": "20.00",
               "energy_import_kwh_t3": "30.00", "energy_import_kwh_t4": "40.00"}
    # 0.04 = 4 tariffs × 0.01: rounding explains it
    assert run(st, obs(0, regs={**tariffs, "energy_import_kwh": "100.04"}), th) == []
    ev = run(st, obs(900, regs={**tariffs, "energy_import_kwh": "100.05"}), th)
    assert kinds(ev) == [("tariff_sum_mismatch", "raised", "energy_import_kwh")]
    evd = ev[0].evidence
    assert evd["sum_raw"] == D("100.00") and evd["difference_raw"] == D("0.05")
    assert evd["tolerance_raw"] == D("0.04") and evd["tariffs"] == 4
    fixed = {**tariffs, "energy_import_kwh_t4": "40.05"}
    got = run(st, obs(1800, regs={**fixed, "energy_import_kwh": "100.05"}), th)
    got += run(st, obs(2700, regs={**fixed, "energy_import_kwh": "100.05"}), th)
    assert kinds(got) == [("tariff_sum_mismatch", "cleared", "energy_import_kwh")]


def test_tariff_sum_is_compared_modulo_the_totals_capacity() -> None:
    """A 6-digit total that passed 999999.99 shows Σ tariffs − 10^6: no mismatch (found by the
    month rehearsal, where a meter in service since 2019 showed it at every reading)."""
    th = ReviewThresholds()
    ctx = MeterContext(tz=TZ, identity="1|dlt645-2007", capacities={"energy_import_kwh": D(10) ** 6})
    tariffs = {"energy_import_kwh_t1": "250000.00", "energy_import_kwh_t2": "750000.00",
               "energy_import_kwh_t3": "999000.00", "energy_import_kwh_t4": "997089.66"}   # Σ 2 996 089.66
    st = MeterState()
    events, _ = evaluate(st, obs(0, regs={**tariffs, "energy_import_kwh": "996089.66"}), ctx, th)
    assert only(events, "tariff_sum_mismatch") == []
    events, _ = evaluate(st, obs(900, regs={**tariffs, "energy_import_kwh": "996089.71"}), ctx, th)
    (raised,) = only(events, "tariff_sum_mismatch")             # 0.05 off a multiple of the capacity
    assert (raised.evidence["difference_raw"], raised.evidence["capacity_raw"]) == (D("0.05"), D(10) ** 6)
    plain = MeterState()                                         # without the capacity: 3 000 000 apart
    events, _ = evaluate(plain, obs(0, regs={**tariffs, "energy_import_kwh": "996089.66"}), CTX, th)
    assert kinds(only(events, "tariff_sum_mismatch")) == [("tariff_sum_mismatch", "raised", "energy_import_kwh")]


# ----------------------------------------------------------------------------- demand_over_contract
def test_demand_over_contract_needs_a_contract_and_clears_below_it() -> None:
    plain = ReviewThresholds()
    assert run(MeterState(), obs(0, values={"demand_max_kw": "900"}), plain) == []
    th = ReviewThresholds(customer_overrides={"C1": {"contract_kw": D(500)}}).for_meter("m1", "C1")
    assert th.contract_kw == D(500)
    st = MeterState()
    assert run(st, obs(0, values={"demand_max_kw": "520"}), th) == []        # ≤ 500 × 1.05
    ev = run(st, obs(900, values={"demand_max_kw": "530"}), th)
    assert kinds(ev) == [("demand_over_contract", "raised", "")]
    assert ev[0].evidence["limit_kw"] == D("525.00") and ev[0].evidence["demand_kw"] == D(530)
    got = run(st, obs(1800, values={"demand_max_kw": "100"}), th)
    got += run(st, obs(2700, values={"demand_max_kw": "100"}), th)
    assert kinds(got) == [("demand_over_contract", "cleared", "")]


# ----------------------------------------------------------------------------- low_power_factor
def test_low_power_factor_per_period_against_the_tariff_class_reference() -> None:
    th = ReviewThresholds(low_pf_period_s=HOUR, power_factor_reference=D("0.90"))
    st = MeterState()
    run(st, obs(0, regs={"energy_import_kwh": "100.00", "energy_import_kvarh": "50.00"}), th)
    # 100 kWh, 30 kvarh → PF 0.9578: fine
    assert run(st, obs(HOUR, regs={"energy_import_kwh": "200.00", "energy_import_kvarh": "80.00"}), th) == []
    # 100 kWh, 75 kvarh → PF 0.8
    ev = run(st, obs(2 * HOUR, regs={"energy_import_kwh": "300.00", "energy_import_kvarh": "155.00"}), th)
    assert kinds(ev) == [("low_power_factor", "raised", "")]
    assert ev[0].evidence["power_factor"] == D("0.8000") and ev[0].evidence["reference"] == D("0.90")
    ev = run(st, obs(3 * HOUR, regs={"energy_import_kwh": "400.00", "energy_import_kvarh": "185.00"}), th)
    assert kinds(ev) == [("low_power_factor", "cleared", "")]


# ----------------------------------------------------------------------------- meter events
def test_a_counter_increase_raises_with_the_record_and_clears_once_the_record_ends() -> None:
    th = ReviewThresholds()
    st = MeterState()
    rec = {"event_cover_open_start": "2026-11-29T08:00:00", "event_cover_open_end": ""}
    assert run(st, obs(0, values={"event_cover_open_count": "3"}, records=rec), th) == []     # baseline
    ev = run(st, obs(900, values={"event_cover_open_count": "4"}, records=rec), th)
    assert kinds(ev) == [("cover_open", "raised", "cover_open")]
    assert ev[0].evidence["counter_before"] == D(3) and ev[0].evidence["counter_after"] == D(4)
    assert ev[0].evidence["record_start"] == "2026-11-29T08:00:00"
    # still open (no end time): not cleared however long
    for k in range(2, 6):
        assert run(st, obs(900 * k, values={"event_cover_open_count": "4"}, records=rec), th) == []
    closed = {**rec, "event_cover_open_end": "2026-11-29T09:10:00"}
    got = run(st, obs(900 * 6, values={"event_cover_open_count": "4"}, records=closed), th)
    got += run(st, obs(900 * 7, values={"event_cover_open_count": "4"}, records=closed), th)
    assert kinds(got) == [("cover_open", "cleared", "cover_open")]
    # voltage loss is per phase; a counter that falls (meter cleared) is a new baseline
    run(st, obs(900 * 8, values={"event_voltage_loss_l2_count": "7"}), th)
    ev = run(st, obs(900 * 9, values={"event_voltage_loss_l2_count": "8"}), th)
    assert kinds(ev) == [("voltage_loss", "raised", "voltage_loss_l2")]
    assert run(st, obs(900 * 10, values={"event_cover_open_count": "0"}), th) == []


# ----------------------------------------------------------------------------- bus_failure
def test_a_whole_bus_failing_is_one_bus_event_and_the_meters_read_failures_are_suppressed() -> None:
    th = ReviewThresholds(read_failure_after=2)
    meters = ["a", "b", "c"]
    states = {m: MeterState() for m in meters}
    bus_state = MeterState()
    out: list[tuple[str, str, str]] = []

    def poll(t: float, m: str, failed: bool) -> None:
        o = obs(t, meter=m, failed=failed, regs=None if failed else {"energy_import_kwh": "1.00"})
        events = run(states[m], o, th)
        mine, bus = fold_bus_failure("rs1", bus_state, meters, states, o, events, th)
        out.extend((m, e.type, e.state) for e in mine)
        out.extend(("bus:rs1", e.type, e.state) for e in bus)

    for k in range(4):
        for m in meters:
            poll(k * 60.0, m, True)
    assert out == [("bus:rs1", "bus_failure", "raised")]
    raised = next(iter(bus_state.active.values()))
    assert raised.evidence["meters"] == meters
    assert not any(("read_failure", "") in states[m].active for m in meters)
    out.clear()
    poll(300.0, "a", False)                   # the bus works again
    assert out == [("bus:rs1", "bus_failure", "cleared")]
    out.clear()
    # b, tried again and still silent, counts afresh: its own read_failure after 2 more polls
    poll(301.0, "b", True)
    assert out == []
    poll(302.0, "b", True)
    assert out == [("b", "read_failure", "raised")]
    # c, skipped by the poller's dead-meter backoff ("not polled"), is not judged on that
    out.clear()
    for k in range(3):
        o = Observation(meter="c", ts=T0 + 310 + k, slot=T0 + 310 + k, schedule="interval", interval_s=900.0,
                        quality="timeout", failed=True, error="not polled: the meter failed 3 polls in a row")
        events = run(states["c"], o, th)
        mine, bus = fold_bus_failure("rs1", bus_state, meters, states, o, events, th)
        out.extend(("c", e.type, e.state) for e in mine + bus)
    assert out == []


def test_one_meter_failing_alone_is_its_own_read_failure() -> None:
    th = ReviewThresholds(read_failure_after=2)
    states = {m: MeterState() for m in ("a", "b")}
    bus_state = MeterState()
    seen = []
    for k in range(3):
        for m in ("a", "b"):
            o = obs(k * 60.0, meter=m, failed=m == "a", regs=None if m == "a" else {"energy_import_kwh": "1.00"})
            mine, bus = fold_bus_failure("rs1", bus_state, ["a", "b"], states, o, run(states[m], o, th), th)
            seen += [(m, e.type) for e in mine + bus]
    assert seen == [("a", "read_failure")]


# ----------------------------------------------------------------------------- configuration
def test_review_overrides_from_configuration_reach_each_meter() -> None:
    text = """
gateway: {id: gw1}
buses: []
meters: []
review:
  demand_over_contract: {factor: 1.1}
  low_power_factor: {tariff_class: general_100kva, period: 1d}
  zero_consumption: {window: 2d, active_floor_kwh_per_day: 50}
  overrides:
    customers:
      C1:
        demand_over_contract: {contract_kw: 800}
        low_power_factor: {tariff_class: industrial_160kva}
    meters:
      M1:
        demand_over_contract: {contract_kw: 400}
        reverse_energy: {consumer: false}
"""
    th = load_settings_from_text(text).review
    assert th.demand_contract_factor == D("1.1") and th.power_factor_reference == D("0.85")
    assert th.zero_window_s == 2 * 86400 and th.zero_active_floor_kwh_per_day == D(50)
    c1 = th.for_meter("M2", "C1")
    assert c1.contract_kw == D(800) and c1.power_factor_reference == D("0.90") and c1.consumer
    m1 = th.for_meter("M1", "C1")
    assert m1.contract_kw == D(400) and m1.power_factor_reference == D("0.90") and not m1.consumer
    assert th.for_meter("M3", "C9") is th
