"""The ``review`` section: thresholds of the review rules (every key optional).

``review: overrides: customers: {<customer id>: {...}}`` and ``meters: {<meter id>: {...}}``
take the same subsections as ``review:`` itself and change them for one customer's meters
or one meter (the meter's override wins). Contract capacity and the power-factor reference
live here until a ``customers:`` section carries them (issue 15):
``demand_over_contract: {contract_kw: …}`` and ``low_power_factor: {tariff_class: …}`` or
``{reference: 0.9}``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import Conv, duration, positive_decimal
from gateway.review_thresholds import METER_EVENT_KINDS, POWER_FACTOR_CLASSES, ReviewThresholds
from gateway.yamlpos import Invalid, MapView, as_bool, as_choice, as_decimal, as_int, as_text, describe

#: review: YAML key → ReviewThresholds field, per subsection (units in gateway/review/rules.py)
_REVIEW_SECTIONS: Final[dict[str, dict[str, str]]] = {
    "register_decrease": {"tolerance": "decrease_tolerance", "rollover_at": "rollover_at",
                          "rollover_window": "rollover_window"},
    "meter_stopped": {"window_quarters": "stopped_window_quarters",
                      "min_expected_kwh": "stopped_min_expected_kwh",
                      "min_display_steps": "stopped_min_display_steps"},
    "meter_fast": {"min_expected_kwh": "fast_min_expected_kwh",
                   "over_tolerance_ratio": "fast_over_tolerance_ratio",
                   "runaway_ratio": "fast_runaway_ratio", "rated_margin": "fast_rated_margin",
                   "rated_voltage_is": "rated_voltage_is"},
    "consumption_jump": {"factor": "jump_factor", "history_days": "jump_history_days",
                         "min_history_days": "jump_min_history_days", "min_kwh": "jump_min_kwh",
                         "min_display_steps": "jump_min_display_steps",
                         "min_interval": "jump_min_interval_s"},
    "clock_deviation": {"threshold": "clock_threshold_s", "midnight_guard": "clock_midnight_guard_s"},
    "read_failure": {"after_polls": "read_failure_after"},
    "phase_loss": {"loss_fraction": "phase_loss_fraction", "normal_fraction": "phase_normal_fraction"},
    "points": {"energy_register": "energy_register", "power_point": "power_point",
               "power_sample_max_age": "power_sample_max_age_s"},
    "zero_consumption": {"window": "zero_window_s", "active_floor_kwh_per_day": "zero_active_floor_kwh_per_day",
                         "history_days": "zero_history_days", "min_display_steps": "zero_min_display_steps"},
    "reverse_energy": {"window": "reverse_window_s", "min_kwh": "reverse_min_kwh",
                       "fraction_of_import": "reverse_fraction_of_import", "consumer": "consumer"},
    "tariff_sum_mismatch": {"steps_per_tariff": "tariff_sum_steps_per_tariff"},
    "demand_over_contract": {"demand_point": "demand_point", "factor": "demand_contract_factor",
                             "contract_kw": "contract_kw"},
    "low_power_factor": {"period": "low_pf_period_s", "min_kwh": "low_pf_min_kwh",
                         "min_display_steps": "low_pf_min_display_steps",
                         "reactive_register": "reactive_register", "reference": "power_factor_reference",
                         "tariff_class": "power_factor_reference"},
    "meter_events": {"kinds": "meter_event_kinds"},
    "bus_failure": {"min_meters": "bus_failure_min_meters"},
    "period_change": {"mom_factor": "period_mom_factor", "yoy_factor": "period_yoy_factor",
                      "min_kwh": "period_min_kwh"},
}
_REVIEW_KEYS: Final = ("enabled", "clear_after_normal_cycles", "overrides", *_REVIEW_SECTIONS)
_OVERRIDE_KEYS: Final = ("clear_after_normal_cycles", *_REVIEW_SECTIONS)


def load_review(ctx: LoadContext, node: yaml.Node | None) -> ReviewThresholds | None:
    """The ``review`` section: thresholds of the review rules (every key optional)."""
    m = MapView(ctx.issues, node, "review", _REVIEW_KEYS, line=1)
    d = ReviewThresholds()
    values: dict[str, object] = {
        "enabled": m.get("enabled", as_bool, d.enabled),
        "clear_after_normal_cycles": m.get("clear_after_normal_cycles", as_int(1, 100),
                                           d.clear_after_normal_cycles),
    }
    values.update(_sections(ctx, m, "review"))
    ov = MapView(ctx.issues, m.node("overrides"), "review overrides", ("customers", "meters"), line=m.line)
    for scope, field_name in (("customers", "customer_overrides"), ("meters", "meter_overrides")):
        who = MapView(ctx.issues, ov.node(scope), f"review overrides {scope}", None, line=ov.line)
        table: dict[str, dict[str, object]] = {}
        for name in who:
            one = MapView(ctx.issues, who.node(name), f"review overrides {scope} {name}", _OVERRIDE_KEYS,
                          line=who.line)
            entry = _sections(ctx, one, f"review overrides {scope} {name}")
            cycles = one.opt("clear_after_normal_cycles", as_int(1, 100))
            if cycles is not None:
                entry["clear_after_normal_cycles"] = cycles
            table[name] = entry
        values[field_name] = table
    try:
        return ReviewThresholds(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        ctx.issues.add(m.line, f"{exc}")
        return None


def _sections(ctx: LoadContext, m: MapView, where: str) -> dict[str, object]:
    """The threshold subsections of ``m`` (``review:`` or one override) as field values."""
    values: dict[str, object] = {}
    fraction = _decimal_in(Decimal(0), Decimal(1))
    convs: dict[str, Conv[object]] = {
        "decrease_tolerance": _decimal_in(Decimal(0), None),
        "rollover_at": _decimal_list,
        "rollover_window": fraction,
        "stopped_window_quarters": as_int(1, 96 * 7),
        "stopped_min_expected_kwh": _decimal_in(Decimal(0), None),
        "stopped_min_display_steps": as_int(0, 1000),
        "fast_min_expected_kwh": _decimal_in(Decimal(0), None),
        "fast_over_tolerance_ratio": positive_decimal,
        "fast_runaway_ratio": positive_decimal,
        "fast_rated_margin": positive_decimal,
        "rated_voltage_is": as_choice(("phase", "line")),
        "jump_factor": positive_decimal,
        "jump_history_days": as_int(1, 400),
        "jump_min_history_days": as_int(1, 400),
        "jump_min_kwh": _decimal_in(Decimal(0), None),
        "jump_min_display_steps": as_int(0, 1000),
        "low_pf_min_display_steps": as_int(0, 100000),
        "jump_min_interval_s": duration(Decimal(1), Decimal(86400)),
        "clock_threshold_s": duration(Decimal(0), Decimal(86400)),
        "clock_midnight_guard_s": duration(Decimal(0), Decimal(3600)),
        "read_failure_after": as_int(1, 10000),
        "phase_loss_fraction": fraction,
        "phase_normal_fraction": fraction,
        "energy_register": as_text,
        "power_point": as_text,
        "power_sample_max_age_s": duration(Decimal(1), Decimal(86400)),
        "zero_window_s": duration(Decimal(60), Decimal(86400 * 60)),
        "zero_active_floor_kwh_per_day": _decimal_in(Decimal(0), None),
        "zero_history_days": as_int(1, 400),
        "zero_min_display_steps": as_int(0, 1000),
        "reverse_window_s": duration(Decimal(1), Decimal(86400 * 31)),
        "reverse_min_kwh": _decimal_in(Decimal(0), None),
        "reverse_fraction_of_import": fraction,
        "consumer": as_bool,
        "tariff_sum_steps_per_tariff": as_int(0, 1000),
        "demand_point": as_text,
        "demand_contract_factor": positive_decimal,
        "contract_kw": positive_decimal,
        "low_pf_period_s": duration(Decimal(60), Decimal(86400 * 62)),
        "low_pf_min_kwh": _decimal_in(Decimal(0), None),
        "reactive_register": as_text,
        "power_factor_reference": fraction,
        "meter_event_kinds": _event_kinds,
        "bus_failure_min_meters": as_int(1, 10000),
        "period_mom_factor": positive_decimal,
        "period_yoy_factor": positive_decimal,
        "period_min_kwh": _decimal_in(Decimal(0), None),
    }
    for section, keys in _REVIEW_SECTIONS.items():
        sub = MapView(ctx.issues, m.node(section), f"{where} {section}", tuple(keys), line=m.line)
        for key, field_name in keys.items():
            conv = _tariff_class if key == "tariff_class" else convs[field_name]
            value = sub.opt(key, conv)
            if value is not None:
                if field_name.endswith("_s") and isinstance(value, Decimal):
                    values[field_name] = float(value)  # durations are float seconds
                else:
                    values[field_name] = value
    return values


def _tariff_class(node: yaml.Node) -> Decimal:
    name = as_text(node)
    if name not in POWER_FACTOR_CLASSES:
        raise Invalid(f"must be one of {', '.join(POWER_FACTOR_CLASSES)} (power-factor reference "
                      f"{', '.join(str(v) for v in POWER_FACTOR_CLASSES.values())}), not {describe(node)}")
    return POWER_FACTOR_CLASSES[name]


def _event_kinds(node: yaml.Node) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise Invalid(f"must be a list of event kinds ({', '.join(METER_EVENT_KINDS)}), not {describe(node)}")
    kinds = tuple(as_text(item) for item in node.value)
    unknown = [k for k in kinds if k not in METER_EVENT_KINDS]
    if unknown:
        raise Invalid(f"must name known meter event kinds, not {', '.join(unknown)}; "
                      f"known: {', '.join(METER_EVENT_KINDS)}")
    return kinds


def _decimal_in(lo: Decimal, hi: Decimal | None) -> Conv[Decimal]:
    def convert(node: yaml.Node) -> Decimal:
        value = as_decimal(node)
        if value < lo or (hi is not None and value > hi):
            upper = f" and at most {hi}" if hi is not None else ""
            raise Invalid(f"must be at least {lo}{upper}, not {describe(node)}")
        return value

    return convert


def _decimal_list(node: yaml.Node) -> tuple[Decimal, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise Invalid(f"must be a list of register maxima such as [999999.99], not {describe(node)}")
    return tuple(positive_decimal(item) for item in node.value)
