"""The thresholds of the review rules: a configuration model (the ``review:`` section).

It lives in the core beside the other settings so that :mod:`gateway.settings` and the
configuration loader never import the review feature; :mod:`gateway.review.rules` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal


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
    #: correct meter may legitimately not have ticked yet.
    stopped_min_display_steps: int = 2

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
    #: Days of history (same local slot) the median is taken over.
    jump_history_days: int = 7
    #: Fewer days of history than this: no judgement.
    jump_min_history_days: int = 3
    #: Consumption below this (kWh, primary side) is never a jump (a near-zero median
    #: would otherwise flag noise).
    jump_min_kwh: Decimal = Decimal(1)
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

    def __post_init__(self) -> None:
        problems = []
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
