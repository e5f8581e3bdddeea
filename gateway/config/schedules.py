"""The ``schedules`` section: named polling schedules and the points each polls."""

from __future__ import annotations

from decimal import Decimal
from typing import Final, cast

from gateway.config.context import LoadContext
from gateway.config.convert import DAY_S, duration, fmt_s
from gateway.profiles import pattern_matches_anything
from gateway.settings import SchedulePriority, ScheduleSettings
from gateway.yamlpos import MapView, as_bool, as_choice, scalar_text

_SCHEDULE_KEYS: Final = ("every", "points", "aligned", "priority", "offset")
_REALTIME_BELOW_S: Final = 300


def load_schedules(ctx: LoadContext, top: MapView) -> dict[str, ScheduleSettings]:
    """The ``schedules`` section: schedule name → ScheduleSettings."""
    out: dict[str, ScheduleSettings] = {}
    for name, m in ctx.named_entries(top, "schedules", "schedule", _SCHEDULE_KEYS):
        every = m.req("every", duration(Decimal(1)), "a duration such as 15m")
        aligned = m.get("aligned", as_bool, True)
        offset = m.get("offset", duration(Decimal(0)), Decimal(0))
        points = schedule_patterns(ctx, m, "points")
        default_priority = "realtime" if every is not None and every < _REALTIME_BELOW_S \
            else "interval"
        priority = m.get("priority", as_choice(("settlement", "interval", "realtime")),
                         default_priority)
        if every is None:
            continue
        if aligned and DAY_S % every != 0:
            m.bad("every", f"{scalar_text(m.values['every'])} does not divide a day, so aligned "
                  "slots would shift every day; use a divisor of 24h such as 5m, 15m or 1h, "
                  "or set aligned: false")
        if offset >= every:
            m.bad("offset", f"must be shorter than every ({fmt_s(every)})")
        out[name] = ScheduleSettings(name=name, every_s=float(every), points=points,
                                     aligned=aligned,
                                     priority=cast(SchedulePriority, priority),
                                     offset_s=float(offset))
    return out


def schedule_patterns(ctx: LoadContext, m: MapView, key: str) -> tuple[str, ...]:
    """A schedule's point patterns (``*`` when none is given); patterns matching no point reported."""
    out: list[str] = []
    for item, pattern in ctx.text_items(m, key):
        if not pattern_matches_anything(pattern):
            ctx.issues.add(item, f'{m.where}: "{pattern}" matches no point name; use a '
                           'pattern such as "energy_*" or "voltage_v_l?", or x_<name> for a '
                           "vendor extra")
            continue
        out.append(pattern)
    return tuple(out) or ("*",)
