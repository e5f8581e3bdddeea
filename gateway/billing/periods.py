"""Completed stages and cycles of a meter with their consumption, for the review's 环比/同比 rule.

The composition root hands :func:`period_source` to the review engine (the two features do
not import each other); each call reads, in the store's connection, the cycles that matter
to the newest completed stage and cycle — the current and previous cycle and those of a year
earlier — with the billing's own stage arithmetic (:func:`gateway.billing.view.cycle_view`:
settlements, CT/PT changes, qualities). A stage or cycle whose consumption is withheld
(a settlement missing, an unexplained CT/PT difference) is left out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from decimal import Decimal

from gateway.billing.cycles import cycle_at, prev_label
from gateway.billing.view import cycle_view
from gateway.model import parse_iso
from gateway.settings import BillingPlan

#: (kind "stage" | "cycle", cycle label, stage index (0: the cycle), start, end, kWh)
PeriodRow = tuple[str, str, int, float, float, Decimal]


def period_source(
    plans: Mapping[str, BillingPlan], tz: str, register: str = "energy_import_kwh",
) -> Callable[[sqlite3.Connection, str, float], list[PeriodRow]]:
    """A function (connection, meter, now) → the meter's completed periods, oldest first.

    ``plans``: meter id → its billing plan (meters without one have no periods).
    """

    def periods(conn: sqlite3.Connection, meter: str, now: float) -> list[PeriodRow]:
        plan = plans.get(meter)
        if plan is None:
            return []
        label = cycle_at(plan, now, tz).label
        back = [label]
        for _ in range(13):
            back.append(prev_label(back[-1]))
        # a year before the previous and the current cycle, then those two
        labels = [back[13], back[12], back[1], back[0]]
        out: list[PeriodRow] = []
        for lab in labels:
            view = cycle_view(conn, meter, plan, lab, tz, now)
            for st in view["stages"]:
                kwh = st["consumption"].get(register)
                if st["complete"] and kwh is not None and parse_iso(st["end"]) <= now:
                    out.append(("stage", lab, int(st["stage"]), parse_iso(st["start"]), parse_iso(st["end"]), kwh))
            total = view["cycle_total"]
            kwh = total["consumption"].get(register)
            if total["complete"] and kwh is not None and parse_iso(total["end"]) <= now:
                out.append(("cycle", lab, 0, parse_iso(total["start"]), parse_iso(total["end"]), kwh))
        return out

    return periods
