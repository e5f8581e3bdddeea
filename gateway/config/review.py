"""The ``review`` section: thresholds of the review rules (every key optional)."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import Conv, duration, positive_decimal
from gateway.review_thresholds import ReviewThresholds
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
                         "min_interval": "jump_min_interval_s"},
    "clock_deviation": {"threshold": "clock_threshold_s", "midnight_guard": "clock_midnight_guard_s"},
    "read_failure": {"after_polls": "read_failure_after"},
    "phase_loss": {"loss_fraction": "phase_loss_fraction", "normal_fraction": "phase_normal_fraction"},
    "points": {"energy_register": "energy_register", "power_point": "power_point",
               "power_sample_max_age": "power_sample_max_age_s"},
}
_REVIEW_KEYS: Final = ("enabled", "clear_after_normal_cycles", *_REVIEW_SECTIONS)


def load_review(ctx: LoadContext, node: yaml.Node | None) -> ReviewThresholds | None:
    """The ``review`` section: thresholds of the review rules (every key optional)."""
    m = MapView(ctx.issues, node, "review", _REVIEW_KEYS, line=1)
    d = ReviewThresholds()
    values: dict[str, object] = {
        "enabled": m.get("enabled", as_bool, d.enabled),
        "clear_after_normal_cycles": m.get("clear_after_normal_cycles", as_int(1, 100),
                                           d.clear_after_normal_cycles),
    }
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
        "jump_min_interval_s": duration(Decimal(1), Decimal(86400)),
        "clock_threshold_s": duration(Decimal(0), Decimal(86400)),
        "clock_midnight_guard_s": duration(Decimal(0), Decimal(3600)),
        "read_failure_after": as_int(1, 10000),
        "phase_loss_fraction": fraction,
        "phase_normal_fraction": fraction,
        "energy_register": as_text,
        "power_point": as_text,
        "power_sample_max_age_s": duration(Decimal(1), Decimal(86400)),
    }
    for section, keys in _REVIEW_SECTIONS.items():
        sub = MapView(ctx.issues, m.node(section), f"review {section}", tuple(keys), line=m.line)
        for key, field_name in keys.items():
            value = sub.opt(key, convs[field_name])
            if value is not None:
                if field_name.endswith("_s") and isinstance(value, Decimal):
                    values[field_name] = float(value)  # durations are float seconds
                else:
                    values[field_name] = value
    try:
        return ReviewThresholds(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        ctx.issues.add(m.line, f"{exc}")
        return None


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
