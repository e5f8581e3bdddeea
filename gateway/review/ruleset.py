"""Every per-reading review rule, in evaluation order, and the one evaluate the engine runs.

:mod:`gateway.review.rules` holds the shared machinery and the ERC rules; the billing
rules (:mod:`gateway.review.billing_rules`) and the meter's event records
(:mod:`gateway.review.meter_events`) are built on it, so they are joined here.
"""

from __future__ import annotations

from typing import Final

from gateway.review import billing_rules, meter_events, rules
from gateway.review.rules import MeterContext, MeterState, Observation, Rule, RuleEvent
from gateway.review_thresholds import ReviewThresholds

ALL_RULES: Final[tuple[tuple[str, Rule], ...]] = (
    *rules.RULES,
    ("zero_consumption", billing_rules.zero_consumption),
    ("reverse_energy", billing_rules.reverse_energy),
    ("tariff_sum_mismatch", billing_rules.tariff_sum_mismatch),
    ("demand_over_contract", billing_rules.demand_over_contract),
    ("low_power_factor", billing_rules.low_power_factor),
    ("meter_events", meter_events.meter_events),
)


def evaluate(
    state: MeterState, obs: Observation, ctx: MeterContext, th: ReviewThresholds
) -> tuple[list[RuleEvent], list[tuple[str, Exception]]]:
    """Run every rule (:func:`gateway.review.rules.evaluate` with :data:`ALL_RULES`)."""
    return rules.evaluate(state, obs, ctx, th, ALL_RULES)
