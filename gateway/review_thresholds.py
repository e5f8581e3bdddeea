"""The thresholds of the review rules: a configuration model (the ``review:`` section).

It lives in the core beside the other settings so that :mod:`gateway.settings` and the
configuration loader never import the review feature; :mod:`gateway.review.rules` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from typing import Final, Literal

#: Power-factor reference (力调 考核标准) by tariff class: 0.90 for high-voltage industrial
#: supply of 160 kVA and more, 0.85 for other industrial and commercial supply of 100 kVA and
#: more, 0.80 for agricultural supply (the 功率因数调整电费办法 classes).
POWER_FACTOR_CLASSES: Final[Mapping[str, Decimal]] = {
    "industrial_160kva": Decimal("0.90"),
    "general_100kva": Decimal("0.85"),
    "agricultural": Decimal("0.80"),
}

#: The meter's own event records the ``meter_event`` rule watches: point name stem → event
#: type (the stems are the DL/T 645 profiles' point names: ``event_time_set_count`` is the
#: 校时 counter, raising ``clock_set``). A profile maps ``event_<stem>_count`` (the counter) and optionally
#: ``event_<stem>_start`` / ``event_<stem>_end`` and any other ``event_<stem>_*`` points (the
#: last record); voltage loss is per phase (``voltage_loss_l1`` … → type ``voltage_loss``).
METER_EVENT_KINDS: Final[Mapping[str, str]] = {
    "cover_open": "cover_open",
    "terminal_cover_open": "terminal_cover_open",
    "programming": "programming",
    "meter_clear": "meter_clear",
    "demand_clear": "demand_clear",
    "time_set": "clock_set",
    "voltage_loss_l1": "voltage_loss",
    "voltage_loss_l2": "voltage_loss",
    "voltage_loss_l3": "voltage_loss",
    "current_reversal": "current_reversal",
    "current_reversal_l1": "current_reversal",
    "current_reversal_l2": "current_reversal",
    "current_reversal_l3": "current_reversal",
}


@dataclass(frozen=True, slots=True)
class ReviewThresholds:
    """Every threshold of the review rules, with its unit (defaults follow 1376.1 practice).

    1376.1 implementations disagree on units (docs/billing-rules.md §5, "Units caveat"), so
    each field names its unit in its name or its comment and nothing is implied.
    """

    enabled: bool = True
    #: Consecutive normal evaluations before a raised condition is cleared (ERC28/29: 2–3).
    clear_after_normal_cycles: int = 2

    # register_decrease (ERC27) ---------------------------------------------------------
    #: A fall smaller than this (register display units, kWh or kvarh, on the raw value) is
    #: ignored; 0 flags any fall. Raise it only for meters whose float registers jitter.
    decrease_tolerance: Decimal = Decimal(0)
    #: Register maxima at which a register wraps to zero (display units): 999999.99 is the
    #: DL/T 645-2007 XXXXXX.XX format, 99999999.99 an 8+2-digit display.
    rollover_at: tuple[Decimal, ...] = (Decimal("999999.99"), Decimal("99999999.99"))
    #: A fall is a rollover when the old value was within this fraction of a maximum and the
    #: new one within this fraction above zero (0.01 = the top and bottom 1 %).
    rollover_window: Decimal = Decimal("0.01")

    # energy rules: which points ---------------------------------------------------------
    #: The cumulative register the energy rules judge (forward active total, as ERC28–30).
    energy_register: str = "energy_import_kwh"
    #: The instantaneous total active power point (kW) the energy rules compare with.
    power_point: str = "power_kw"
    #: A power sample older than this (seconds) before an interval's end is not used when no
    #: sample falls inside the interval.
    power_sample_max_age_s: float = 900.0

    # meter_stopped (ERC30) --------------------------------------------------------------
    #: 停走阈值: the register must stay unchanged for this many 15-minute periods.
    stopped_window_quarters: int = 2
    #: ... while power × time over that window is at least this (kWh, primary side).
    stopped_min_expected_kwh: Decimal = Decimal("0.04")
    #: ... and at least this many display steps of the register (× CT × PT): below that a
    #: correct meter may legitimately not have ticked yet. 5: a total kept as the sum of four
    #: tariff registers, each shown rounded down, can lag the energy by up to four steps.
    stopped_min_display_steps: int = 5

    # meter_fast (ERC28/29) --------------------------------------------------------------
    #: Skip the power comparison when power × Δt is below this (kWh), as 1376.1 does.
    fast_min_expected_kwh: Decimal = Decimal("0.01")
    #: 电能量超差阈值 (ERC28): ΔE ÷ (P × Δt) above this ratio raises ``meter_fast``.
    fast_over_tolerance_ratio: Decimal = Decimal("1.5")
    #: 电能表飞走阈值 (ERC29): above this ratio the evidence says "runs too fast".
    fast_runaway_ratio: Decimal = Decimal("3.0")
    #: With rated values configured, ΔE above rated power × this margin × Δt raises.
    fast_rated_margin: Decimal = Decimal("1.2")
    #: Whether a meter's ``rated_voltage_v`` is the phase voltage (57.7 in "3×57.7/100 V",
    #: rated power = 3 × U × Imax) or the line voltage (rated power = √3 × U × Imax).
    rated_voltage_is: Literal["phase", "line"] = "phase"

    # consumption_jump (§6 环比) ----------------------------------------------------------
    #: An interval's consumption above this multiple of the same slot's median raises.
    jump_factor: Decimal = Decimal(3)
    #: Days of history (same local slot) the median is taken over. 21: a week-long holiday
    #: (National Day, Spring Festival: up to 9 days) stays a minority of the history, so the
    #: first working day after it is not a jump against a holiday median.
    jump_history_days: int = 21
    #: Fewer days of history than this: no judgement.
    jump_min_history_days: int = 3
    #: Consumption below this (kWh, primary side) is never a jump (a near-zero median
    #: would otherwise flag noise).
    jump_min_kwh: Decimal = Decimal(1)
    #: ... nor is consumption of at most this many display steps of the register (× CT ×
    #: PT): behind a large CT × PT a quarter hour may show one tick or none, so a median of 0
    #: and then one tick is quantisation, not a jump.
    jump_min_display_steps: int = 2
    #: Schedules polled more often than this (seconds) are not judged by the jump rule nor
    #: kept as its history: the 环比 comparison is made on load-profile intervals (15 min
    #: and longer), and a same-slot history of 1-second readings would hold 86,400 slots a
    #: day per meter.
    jump_min_interval_s: float = 900.0

    # clock_deviation (ERC12) ------------------------------------------------------------
    #: 校时阈值: |meter clock − gateway clock| above this (seconds) raises; 0 disables.
    clock_threshold_s: float = 300.0
    #: No judgement while either clock is within this many seconds of local midnight
    #: (60 → 23:59:00–00:00:59), where a meter's date and time may straddle the day change.
    clock_midnight_guard_s: float = 60.0

    # read_failure (ERC31) ---------------------------------------------------------------
    #: Consecutive failed polls (timeout or CRC error on every point) that raise.
    read_failure_after: int = 3

    # phase_loss (失压/断相) -----------------------------------------------------------------
    #: A phase below this fraction of the reference (nominal, or the mean of the other two
    #: phases when no nominal is configured) is lost. DL/T 645 meters' 失压 default is 0.78,
    #: 断相 ≈ 0.6; a phase that "collapsed" (the event's meaning) suggests the latter.
    phase_loss_fraction: Decimal = Decimal("0.6")
    #: The other phases count as normal at or above this fraction of the reference (and,
    #: without a nominal, within this fraction of each other); a lost phase is back when it
    #: reaches it too.
    phase_normal_fraction: Decimal = Decimal("0.85")

    # zero_consumption -------------------------------------------------------------------
    #: The judged register unchanged this long (seconds) while the meter answers raises ...
    zero_window_s: float = 86400.0
    #: ... when the customer was active: its mean consumption over the history before the
    #: standstill at least this (kWh per day, primary side) ...
    zero_active_floor_kwh_per_day: Decimal = Decimal(10)
    #: ... taken over up to this many days (at least one whole day is needed) ...
    zero_history_days: int = 7
    #: ... and that use over the window comes to at least this many display steps of the
    #: register (× CT × PT): a small customer behind a large CT × PT may not tick in a day.
    zero_min_display_steps: int = 5

    # reverse_energy ---------------------------------------------------------------------
    #: The export register is judged over windows of this length (seconds) ...
    reverse_window_s: float = 3600.0
    #: ... and raises when it advanced more than this (kWh, primary) ...
    reverse_min_kwh: Decimal = Decimal(1)
    #: ... and more than this fraction of the import over the same window plus two display
    #: steps (a little back-feed inside a slot is normal on many sites).
    reverse_fraction_of_import: Decimal = Decimal("0.05")
    #: Whether meters are consumer meters (no export expected); a generator's meter sets it
    #: false in its override.
    consumer: bool = True

    # tariff_sum_mismatch ----------------------------------------------------------------
    #: |Σ tariff registers − total| above this many display steps per tariff register raises
    #: (1: the meter's resolution × number of tariffs, what rounding can explain).
    tariff_sum_steps_per_tariff: int = 1

    # demand_over_contract ---------------------------------------------------------------
    #: The maximum-demand point (kW, primary) judged against the contract capacity.
    demand_point: str = "demand_max_kw"
    #: Demand above contract capacity × this factor raises.
    demand_contract_factor: Decimal = Decimal("1.05")
    #: The contract capacity (kW; kVA contracts: capacity × the reference power factor);
    #: None: not judged. Set per customer or per meter (``review: overrides``).
    contract_kw: Decimal | None = None

    # low_power_factor -------------------------------------------------------------------
    #: The period (seconds) whose power factor ΔkWh ÷ √(ΔkWh² + Δkvarh²) is judged.
    low_pf_period_s: float = 86400.0
    #: A period with less active energy than this (kWh, primary) is not judged.
    low_pf_min_kwh: Decimal = Decimal(1)
    #: The period runs on until its active energy is at least this many display steps of the
    #: register (× CT × PT), so the registers' rounding moves the power factor by ≤ 2 %.
    low_pf_min_display_steps: int = 50
    #: The reactive register the period power factor is taken from (import: Q1 + Q4).
    reactive_register: str = "energy_import_kvarh"
    #: The power-factor reference (0.90 / 0.85 / 0.80, see POWER_FACTOR_CLASSES); None: not
    #: judged. Set per customer or per meter (``power_factor_reference`` or ``tariff_class``).
    power_factor_reference: Decimal | None = None

    # meter events ------------------------------------------------------------------------
    #: The event-record stems watched (keys of METER_EVENT_KINDS).
    meter_event_kinds: tuple[str, ...] = tuple(METER_EVENT_KINDS)

    # bus_failure -------------------------------------------------------------------------
    #: A bus with at least this many meters, all failing at once, raises one ``bus_failure``.
    bus_failure_min_meters: int = 2

    # stage_change / cycle_change (环比 / 同比) ---------------------------------------------
    #: A stage's consumption outside [1 ÷ factor, factor] × the previous stage's (环比), per
    #: day of the stage, raises ``stage_change``; a cycle's the same against the previous
    #: cycle. 2.0 leaves room for holidays and seasons.
    period_mom_factor: Decimal = Decimal("2.0")
    #: The same band against the same period a year earlier (同比); seasons repeat, so it is
    #: narrower.
    period_yoy_factor: Decimal = Decimal("1.6")
    #: Periods with less than this consumption (kWh, primary) on both sides are not judged.
    period_min_kwh: Decimal = Decimal(100)

    #: Overrides of any field above by customer id and by meter id (meter wins).
    customer_overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict, hash=False)
    meter_overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict, hash=False)

    def for_meter(self, meter: str, customer: str | None) -> ReviewThresholds:
        """These thresholds with the customer's, then the meter's overrides applied."""
        changes: dict[str, object] = {}
        if customer is not None:
            changes.update(self.customer_overrides.get(customer, {}))
        changes.update(self.meter_overrides.get(meter, {}))
        if not changes:
            return self
        return replace(self, **changes)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        problems = []
        names = {f.name for f in fields(self)} - {"customer_overrides", "meter_overrides"}
        for scope, table in (("customer", self.customer_overrides), ("meter", self.meter_overrides)):
            for who, values in table.items():
                unknown = sorted(set(values) - names)
                if unknown:
                    problems.append(f"{scope} {who}: unknown override(s) {', '.join(unknown)}")
        unknown_kinds = sorted(set(self.meter_event_kinds) - set(METER_EVENT_KINDS))
        if unknown_kinds:
            problems.append(f"unknown meter event kinds {', '.join(unknown_kinds)}; known: "
                            f"{', '.join(METER_EVENT_KINDS)}")
        if self.period_mom_factor <= 1 or self.period_yoy_factor <= 1:
            problems.append("period_mom_factor and period_yoy_factor must be above 1")
        if self.clear_after_normal_cycles < 1:
            problems.append("clear_after_normal_cycles must be at least 1")
        if self.stopped_window_quarters < 1:
            problems.append("stopped_window_quarters must be at least 1")
        if self.read_failure_after < 1:
            problems.append("read_failure_after must be at least 1")
        if self.jump_min_history_days < 1 or self.jump_history_days < self.jump_min_history_days:
            problems.append("jump_history_days must be at least jump_min_history_days, itself at least 1")
        if not Decimal(0) < self.phase_loss_fraction < self.phase_normal_fraction <= 1:
            problems.append("0 < phase_loss_fraction < phase_normal_fraction <= 1 must hold")
        if self.fast_over_tolerance_ratio <= 1 or self.fast_runaway_ratio < self.fast_over_tolerance_ratio:
            problems.append("1 < fast_over_tolerance_ratio <= fast_runaway_ratio must hold")
        if self.clock_threshold_s < 0 or self.clock_midnight_guard_s < 0:
            problems.append("clock thresholds cannot be negative")
        if problems:
            raise ValueError("review thresholds: " + "; ".join(problems))
