"""Every review rule through real peers: a fault switched on in the DL/T 645 simulator at run
time, the running gateway reading it over loopback TCP, the review raising the event with its
evidence within the rule's window, and clearing it after the fault is switched off.

One simulated DL/T 645-2007 meter (the generic profile; CT 100/5) read every simulated 15
minutes on an accelerated clock (an hour a second), its thresholds shortened by review
overrides where a rule's default window is a day (zero_consumption: 2 h after a day of
history; low_power_factor: 6 h periods). The contract (600 kVA: the fault shows 90 kW × 20)
and the power-factor class (0.85) are the customer's, from the ``customers:`` section.
Meter event faults also check that the event carries the meter's last record, read by the
poller through the driver's event-record capability (start, end once over, and the
registers kept in it). The pure rule-by-rule version with the same faults is
tests/unit/test_review_faults.py; the demo fleet's cover opening and bus failure are
tests/integration/test_review_faults_live.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ScaledClock
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from tests.reviewlive import Running, running_review, stored_events
from tests.servicefixtures import await_until

pytestmark = pytest.mark.slow                  # about two minutes in all: simulated days at an hour a second

RATE = 3600.0                                  # a simulated hour every second
START = 1_796_227_260.0                        # 2026-12-03 00:01 +08:00, a Thursday
METER = "m1"
HOUR = 3600.0

CONFIG = """
gateway: {{id: live-review, timezone: Asia/Shanghai, data_dir: {data}}}
buses:
  - {{id: tcp-dlt645, type: tcp, host: 127.0.0.1, port: {port}, protocol: dlt645, timeout_ms: 800}}
  - {{id: tcp-modbus, type: tcp, host: 127.0.0.1, port: {mb_port}, protocol: modbus-tcp, timeout_ms: 800}}
meters:
  - {{id: m1, customer: C1, bus: tcp-dlt645, address: "000000000007", profile: dlt645-2007, ct_ratio: 100/5,
     schedules: [interval]{billing}}}
  - {{id: m2, customer: C2, bus: tcp-modbus, address: 1, profile: simulator, ct_ratio: 100/5, schedules: [alarms]}}
schedules:
  interval: {{every: 15m, points: ["energy_*", "demand_max_kw", "power_kw", "voltage_*", "power_factor",
                                   "meter_clock", "event_*"]}}
  alarms: {{every: 15m, points: ["energy_*", "event_*"]}}
customers:
  - {{id: C1, contract_capacity_kva: 600, power_factor_class: general_100kva, meters: [{{meter: m1, role: main}}]}}
  - {{id: C2, meters: [{{meter: m2, role: main}}]}}
{billing_plans}mqtt: {{host: 127.0.0.1, port: {mqtt}}}
influxdb: {{enabled: false}}
api: {{listen: "127.0.0.1:{api}"}}
review:
  overrides:
    meters:
      m1:
        zero_consumption: {{window: 2h, history_days: 2}}
        low_power_factor: {{period: 6h}}
"""


#: daily stages (a boundary every midnight), so stage_change judges a day against the day before
DAILY = "billing:\n  daily: {cycle_day: 1, stages: [" + ", ".join(str(d) for d in range(2, 29)) + "]}\n"


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    daily = bool(getattr(request, "param", False))
    rate = 2 * RATE if daily else RATE          # five simulated days in about a minute
    text = CONFIG.format(data=tmp_path, port=free_port(), mb_port=free_port(), api=free_port(), mqtt=free_port(),
                         billing=", billing: daily" if daily else "", billing_plans=DAILY if daily else "")
    settings = load_settings_from_text(text, "<test>", tmp_path, {"AMR_API_TOKEN": "t"})
    clock = ScaledClock(START, rate)
    async with running_review(settings, clock, 3) as running:
        yield running


events = stored_events


def real_s(simulated_s: float) -> float:
    return simulated_s / RATE + 15.0           # + headroom for a loaded host


# fault, amount, event type, its key, simulated history before the fault, raise window, clear window
CASES: list[tuple[str, float | None, str, str, float, float, float]] = [
    ("backwards", None, "register_decrease", "energy_import_kwh", HOUR, HOUR, 2 * HOUR),
    ("stop", None, "meter_stopped", "energy_import_kwh", HOUR, 2 * HOUR, 2 * HOUR),
    ("fast", None, "meter_fast", "energy_import_kwh", HOUR, 2 * HOUR, 2 * HOUR),
    ("clock_drift", None, "clock_deviation", "", HOUR, HOUR, 2 * HOUR),
    ("silent", None, "read_failure", "", HOUR, 2 * HOUR, 2 * HOUR),
    ("phase_loss", 2, "phase_loss", "l2", HOUR, HOUR, 2 * HOUR),
    ("zero_load", None, "zero_consumption", "energy_import_kwh", 25 * HOUR, 4 * HOUR, 2 * HOUR),
    ("reverse", None, "reverse_energy", "", HOUR, 3 * HOUR, 4 * HOUR),
    ("demand_over", 90, "demand_over_contract", "", HOUR, HOUR, 2 * HOUR),
    ("low_pf", None, "low_power_factor", "", HOUR, 14 * HOUR, 14 * HOUR),
    ("tariff_mismatch", None, "tariff_sum_mismatch", "energy_import_kwh", HOUR, HOUR, 2 * HOUR),
]
# meter event faults: fault, amount, event type, key (the record's stem)
EVENT_CASES: list[tuple[str, float | None, str, str]] = [
    ("cover_open", None, "cover_open", "cover_open"),
    ("terminal_cover_open", None, "terminal_cover_open", "terminal_cover_open"),
    ("programming", None, "programming", "programming"),
    ("meter_clear", None, "meter_clear", "meter_clear"),
    ("demand_clear", None, "demand_clear", "demand_clear"),
    ("time_set", None, "clock_set", "time_set"),
    ("phase_loss", 3, "voltage_loss", "voltage_loss_l3"),
    ("current_reversal", 2, "current_reversal", "current_reversal_l2"),
]


async def _healthy_for(r: Running, simulated_s: float) -> None:
    """Wait until the meter has been read healthy for ``simulated_s``, counted from its first
    good reading: not from the clock's start, as the fleet and the gateway take real time to
    start (on a loaded host a second of it is a simulated hour, and zero_consumption's day of
    history, from the meter's first daily mark, would then not be there yet)."""
    first = await await_until(lambda: r.engine.state(METER).last_good_ts, real_s(HOUR), "the first good reading")
    assert first is not None
    until = first + simulated_s
    await await_until(lambda: r.clock.time() >= until and (r.engine.state(METER).last_good_ts or 0.0) >= until - 900,
                      real_s(simulated_s), f"{simulated_s / HOUR:g} h of healthy readings")


@pytest.mark.parametrize(("fault", "amount", "etype", "key", "history_s", "raise_s", "clear_s"), CASES,
                         ids=[c[2] for c in CASES])
async def test_a_simulator_fault_raises_its_event_live_and_recovery_clears_it(
    running: Running, fault: str, amount: float | None, etype: str, key: str, history_s: float,
    raise_s: float, clear_s: float,
) -> None:
    r = running
    await _healthy_for(r, history_s)
    # (only the rule under test: at an hour a second, a host pause of 0.1 s is 6 simulated
    # minutes between a register's sampling and the reading's time stamp, which other rules
    # comparing energy with time may see; bench/README.md, review fleet)
    assert [e["type"] for e in events(r.gw.store_path, METER) if e["type"] == etype] == [], \
        f"the healthy meter raised {etype}"
    await r.fleet.set_fault(METER, fault, amount)
    await await_until(lambda: (etype, key) in r.engine.state(METER).active, real_s(raise_s), f"{etype} raised")
    await r.fleet.clear_fault(METER, fault)
    cleared = "read_recovered" if etype == "read_failure" else etype
    await await_until(lambda: (etype, key) not in r.engine.state(METER).active, real_s(clear_s),
                      f"{cleared} after recovery")
    assert await r.engine.drain()
    got = [(e["type"], e["state"], e["key"]) for e in events(r.gw.store_path, METER)]
    assert (etype, "raised", key) in got
    assert (cleared, "cleared", key) in got
    assert got.index((etype, "raised", key)) < got.index((cleared, "cleared", key))
    raised = next(e for e in events(r.gw.store_path, METER) if e["type"] == etype and e["state"] == "raised")
    assert raised["evidence"], "the event carries its evidence"
    if etype == "demand_over_contract":          # the customer's contract capacity
        assert raised["evidence"]["contract_kw"] == 600 and raised["evidence"]["demand_kw"] == 1800
    if etype == "low_power_factor":              # the customer's power-factor class
        assert raised["evidence"]["reference"] == Decimal("0.85")


@pytest.mark.parametrize(("fault", "amount", "etype", "stem"), EVENT_CASES, ids=[c[0] for c in EVENT_CASES])
async def test_a_meter_event_is_raised_with_its_last_record_read_from_the_meter(
    running: Running, fault: str, amount: float | None, etype: str, stem: str,
) -> None:
    r = running
    await await_until(lambda: stem in r.engine.state(METER).counters, real_s(HOUR), f"the first {stem} counter")
    await r.fleet.set_fault(METER, fault, amount)
    switched_on = r.clock.time()
    await await_until(lambda: (etype, stem) in r.engine.state(METER).active, real_s(HOUR), f"{etype} raised")
    await r.fleet.clear_fault(METER, fault)
    await await_until(lambda: (etype, stem) not in r.engine.state(METER).active, real_s(2 * HOUR),
                      f"{etype} cleared")
    assert await r.engine.drain()
    got = [e for e in events(r.gw.store_path, METER) if e["type"] == etype]
    assert [(e["state"], e["key"]) for e in got] == [("raised", stem), ("cleared", stem)]
    ev = got[0]["evidence"]
    assert ev["counter_after"] == ev["counter_before"] + 1
    record = ev["record"]
    assert record.get("start"), f"the {stem} record's start, read from the meter: {record}"
    start = record["start"]
    assert isinstance(start, str) and start.startswith("2026-12-0")
    assert abs(_local_epoch(start) - switched_on) <= 15 * 60 + 60
    if stem in ("cover_open", "terminal_cover_open", "voltage_loss_l3", "current_reversal_l2"):
        assert "energy_import_kwh" in record, f"the registers kept in the record: {record}"


async def test_a_modbus_meters_alarm_counter_rising_is_its_event_and_clears(running: Running) -> None:
    """The Modbus simulator profile's event (alarm) counters: a rise is the event (no record:
    a Modbus meter keeps none the gateway reads), cleared once no further rise is counted."""
    r, meter = running, "m2"
    await await_until(lambda: "cover_open" in r.engine.state(meter).counters, real_s(HOUR), "m2's counters")
    await r.fleet.set_fault(meter, "cover_open")
    await await_until(lambda: ("cover_open", "cover_open") in r.engine.state(meter).active, real_s(HOUR),
                      "cover_open raised on the Modbus meter")
    await r.fleet.clear_fault(meter, "cover_open")
    await await_until(lambda: ("cover_open", "cover_open") not in r.engine.state(meter).active, real_s(2 * HOUR),
                      "cover_open cleared on the Modbus meter")
    assert await r.engine.drain()
    got = [e for e in events(r.gw.store_path, meter) if e["type"] == "cover_open"]
    assert [e["state"] for e in got] == ["raised", "cleared"]
    assert (got[0]["evidence"]["counter_before"], got[0]["evidence"]["counter_after"]) == (0, 1)


@pytest.mark.parametrize("running", [True], indirect=True, ids=["daily-stages"])
async def test_a_day_of_zero_load_is_a_stage_change_against_the_day_before_cleared_two_stages_later(
    running: Running,
) -> None:
    """stage_change (环比) through the billing settlement records of daily stages: the
    simulator's zero_load for the whole of Saturday 5 December, judged when that stage
    closes (against Friday), cleared when a stage is within the band of the one before
    (Monday against Sunday). Two simulated hours a second here."""
    r = running
    day5, day6 = _local_epoch("2026-12-05T00:00:00"), _local_epoch("2026-12-06T00:00:00")
    def real_s(simulated_s: float) -> float:
        return simulated_s / (2 * RATE) + 15.0

    await await_until(lambda: r.clock.time() >= day5, real_s(day5 - START), "Saturday 00:00")
    await r.fleet.set_fault(METER, "zero_load")
    await await_until(lambda: r.clock.time() >= day6, real_s(day6 - day5), "Sunday 00:00")
    await r.fleet.clear_fault(METER, "zero_load")
    await await_until(lambda: ("stage_change", "mom") in r.engine.state(METER).active, real_s(6 * HOUR),
                      "stage_change raised for Saturday")
    # stage_change is judged by the engine's hourly housekeeping, not from the reading queue that
    # drain() waits for: the condition ends first, its event is stored after, so wait for that
    def stored() -> list[dict[str, Any]]:
        return [e for e in events(r.gw.store_path, METER) if e["type"] == "stage_change"]

    await await_until(lambda: ("stage_change", "mom") not in r.engine.state(METER).active
                      and any(e["state"] == "cleared" for e in stored()), real_s(2 * 86400 + 6 * HOUR),
                      "stage_change cleared two stages later, and stored")
    assert await r.engine.drain()
    got = stored()
    assert [(e["state"], e["key"]) for e in got] == [("raised", "mom"), ("cleared", "mom")]
    assert got[0]["evidence"], "the two stages and their ratio"


def _local_epoch(text: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
