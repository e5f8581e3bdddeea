"""Every per-reading review rule, in evaluation order, and the one evaluate the engine runs.

:mod:`gateway.review.rules` holds the shared machinery and the ERC rules; the billing
rules (:mod:`gateway.review.billing_rules`) and the meter's event records
(:mod:`gateway.review.meter_events`) are built on it, so they are joined here.
"""

from __future__ import annotations

from typing import Final

from gateway.identity_memo import IdentityMemo
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


def idle_rules(th: ReviewThresholds, interval_s: float | None) -> frozenset[str]:
    """The rules that return at their first test, touching nothing, for every reading under
    these thresholds and schedule period: each one's own first test, on configuration only.

    * ``demand_over_contract`` without ``contract_kw``;
    * ``low_power_factor`` without ``power_factor_reference``;
    * ``clock_deviation`` with ``clock_threshold_s`` 0 (disabled);
    * ``reverse_energy`` on a meter that is not a consumer's;
    * ``meter_events`` with no ``meter_event_kinds`` to watch;
    * ``consumption_jump`` for a reading of no aligned schedule (``interval_s`` None) or of
      one shorter than ``jump_min_interval_s``.
    """
    idle = set()
    if th.contract_kw is None:
        idle.add("demand_over_contract")
    if th.power_factor_reference is None:
        idle.add("low_power_factor")
    if th.clock_threshold_s == 0:
        idle.add("clock_deviation")
    if not th.consumer:
        idle.add("reverse_energy")
    if not th.meter_event_kinds:
        idle.add("meter_events")
    if interval_s is None or interval_s < th.jump_min_interval_s:
        idle.add("consumption_jump")
    return frozenset(idle)


_PLANS: IdentityMemo[ReviewThresholds, tuple[tuple[str, Rule], ...]] = IdentityMemo()
"""(thresholds, schedule period) → the rules to run: worked out once per meter and schedule
instead of calling rules that cannot act on every reading (bounded: a reload makes new
thresholds for every meter)."""


def rules_for(th: ReviewThresholds, interval_s: float | None) -> tuple[tuple[str, Rule], ...]:
    """:data:`ALL_RULES` in order, without the :func:`idle_rules` of ``th`` and ``interval_s``."""
    plan = _PLANS.get(th, interval_s)
    if plan is not None:
        return plan
    idle = idle_rules(th, interval_s)
    return _PLANS.put(th, tuple(r for r in ALL_RULES if r[0] not in idle), interval_s)


def evaluate(
    state: MeterState, obs: Observation, ctx: MeterContext, th: ReviewThresholds
) -> tuple[list[RuleEvent], list[tuple[str, Exception]]]:
    """Run every rule (:func:`gateway.review.rules.evaluate` with :data:`ALL_RULES`), but those
    that cannot act on a reading under ``th`` (:func:`rules_for`): same events, same state."""
    return rules.evaluate(state, obs, ctx, th, rules_for(th, obs.interval_s))
