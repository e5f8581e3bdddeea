"""The ``billing`` section: billing plans (cycle day, stage days, boundary time, registers)."""

from __future__ import annotations

import re
from datetime import time
from decimal import Decimal
from typing import Final

import yaml

from gateway.config.context import LoadContext
from gateway.config.convert import DAY_S, duration
from gateway.profiles import is_valid_point_name
from gateway.settings import BillingPlan, DemandSettings
from gateway.yamlpos import Invalid, MapView, as_bool, as_choice, as_int, describe, scalar_text, suggest

_BILLING_KEYS: Final = ("cycle_day", "stages", "at", "tolerance", "allow_estimated", "registers",
                         "max_meter_offset", "demand")
#: A plan's ``demand`` mapping: how maximum demand is computed where the meter gives none.
_DEMAND_KEYS: Final = ("method", "window_minutes", "slide_minutes")


def load_billing(ctx: LoadContext, top: MapView) -> dict[str, BillingPlan]:
    """The ``billing`` section: plan name → BillingPlan."""
    out: dict[str, BillingPlan] = {}
    for name, m in ctx.named_entries(top, "billing", "billing plan", _BILLING_KEYS):
        cycle_day = m.get("cycle_day", _day_of_month, 1)
        stages = billing_stages(ctx, m, cycle_day)
        at = m.get("at", _time_of_day, time(0, 0))
        tolerance = m.get("tolerance", duration(Decimal(1), DAY_S), Decimal(900))
        registers = billing_registers(ctx, m)
        out[name] = BillingPlan(name=name, cycle_day=cycle_day, stages=stages, at=at,
                                tolerance_s=float(tolerance),
                                allow_estimated=m.get("allow_estimated", as_bool, False),
                                max_meter_offset_s=float(m.get("max_meter_offset", duration(Decimal(0), DAY_S),
                                                               Decimal(300))),
                                demand=billing_demand(ctx, m),
                                **({"registers": registers} if registers else {}))
    return out


def billing_demand(ctx: LoadContext, m: MapView) -> DemandSettings:
    """A plan's ``demand``: ``{method: block|sliding, window_minutes: 15, slide_minutes: 1}``.

    ``window_minutes`` must divide a day (windows stay aligned to the day's boundaries);
    ``slide_minutes`` (sliding only) must divide the window; without it the meter's energy
    read interval is the slide.
    """
    d = MapView(ctx.issues, m.node("demand"), f"{m.where} demand", _DEMAND_KEYS)
    method = d.get("method", as_choice(("block", "sliding")), "block")
    window = d.get("window_minutes", as_int(1, 60), 15)
    slide = d.opt("slide_minutes", as_int(1, 60))
    if 1440 % window:
        d.bad("window_minutes", f"must divide a day (1, 5, 15, 30, 60 …) so windows stay aligned, not {window}")
    if slide is not None and (method != "sliding" or window % slide):
        d.bad("slide_minutes", "applies to method: sliding only and must divide window_minutes "
              f"({window}), not {slide}")
        slide = None
    return DemandSettings("sliding" if method == "sliding" else "block", float(window * 60),
                          None if slide is None else float(slide * 60))


def billing_stages(ctx: LoadContext, m: MapView, cycle_day: int) -> tuple[int, ...]:
    """A plan's stage boundary days, checked against its cycle day and ordered within the cycle."""
    node = m.node("stages")
    if node is None:
        return ()
    if not isinstance(node, yaml.SequenceNode):
        m.bad("stages", f"must be a list of days of the month such as [11, 21], not "
              f"{describe(node)}")
        return ()
    days: list[int] = []
    ok = True
    for item in node.value:
        try:
            day = _day_of_month(item)
        except Invalid as exc:
            ctx.issues.add(item, f"{m.where}: stage day {exc}")
            ok = False
            continue
        if day == cycle_day:
            ctx.issues.add(item, f"{m.where}: stage day {day} is the cycle start day "
                           "(cycle_day); list only the boundaries inside the cycle")
            ok = False
        elif day in days:
            ctx.issues.add(item, f"{m.where}: stage day {day} is listed twice; list each "
                           "boundary day once")
            ok = False
        else:
            days.append(day)
    order = sorted(days, key=lambda d: (d - cycle_day) % 31)
    if ok and days != order:
        m.bad("stages", f"must be listed in the order they occur in a cycle starting on day "
              f"{cycle_day}; write [{', '.join(map(str, order))}]")
    return tuple(order)


def billing_registers(ctx: LoadContext, m: MapView) -> tuple[str, ...]:
    """A plan's registers: canonical point names (empty: the BillingPlan default)."""
    out: list[str] = []
    for item, name in ctx.text_items(m, "registers"):
        if not is_valid_point_name(name):
            ctx.issues.add(item, f'{m.where}: "{name}" is not a point name'
                           f"{suggest(name, _register_names())}; use a canonical register "
                           "such as energy_import_kwh_t1")
            continue
        out.append(name)
    return tuple(out)


def _time_of_day(node: yaml.Node) -> time:
    text = scalar_text(node).strip()
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", text)
    if m:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        if h < 24 and mi < 60 and s < 60:
            return time(h, mi, s)
    raise Invalid(f'must be a local time of day such as "00:00" or "23:30", not {describe(node)}')


def _day_of_month(node: yaml.Node) -> int:
    try:
        day = as_int()(node)
    except Invalid:
        raise Invalid(f"must be a day of the month between 1 and 28, not {describe(node)}") from None
    if not 1 <= day <= 28:
        raise Invalid(f"must be a day of the month between 1 and 28 (days 29 to 31 do not occur in "
                      f"every month), not {day}")
    return day


def _register_names() -> list[str]:
    return list(BillingPlan("x").registers)
