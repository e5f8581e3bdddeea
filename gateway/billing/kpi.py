"""Read-completeness KPIs per meter, per bus and for the gateway, for one local day.

Definitions (docs/billing-rules.md §8, 采集成功率 per day and data type):

* **read completeness** = slots read good ÷ slots scheduled, over every schedule of the
  meter, for the slots of the day that have come (a day in progress counts the slots up to
  a minute ago: a younger slot may still be retrying);
  a slot counts once however many times it was retried.
* **interval completeness** = ``complete`` intervals ÷ intervals of the day on the
  meter's shortest energy schedule (see :mod:`gateway.billing.intervals`: both ends good).
* **settlement completeness** = boundaries of the day whose current settlement is real
  (``meter_frozen``, ``actual`` or ``late``) ÷ boundaries due that day; ``estimated`` and
  ``missing`` are counted apart, never as captured. A day without a boundary has none due
  (ratio ``null``).

Bus and gateway figures are sums of the meters' counts (not averages of ratios). Runs as
SQL over the outbox (counts and one slot list per meter), on a ``sqlite3.Connection``, so the
API, the daily MQTT ``kpi`` message and ``amr-gateway export`` share it.
"""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta
from typing import Any, Final

from gateway.billing import db
from gateway.billing.cycles import boundaries_between
from gateway.billing.intervals import energy_schedules, grid_for
from gateway.settings import Settings
from gateway.slots import slots_between, zone

CAPTURED: Final = frozenset({"meter_frozen", "actual", "late"})
#: A slot younger than this is still being read (retries, commit): not counted yet.
GRACE_S: Final = 60.0
COUNT_KEYS: Final = (
    "slots_scheduled", "slots_read_good", "intervals_expected", "intervals_complete",
    "settlements_due", "settlements_captured", "settlements_estimated", "settlements_missing",
)


def ratio(num: int, den: int) -> float | None:
    """num ÷ den rounded to 4 decimals; None when nothing was due."""
    return None if den == 0 else round(num / den, 4)


def day_bounds(day: date, tz: str) -> tuple[float, float]:
    """Local midnight of ``day`` and of the next day (epoch seconds)."""
    z = zone(tz)
    nxt = day + timedelta(days=1)
    return (datetime(day.year, day.month, day.day, tzinfo=z).timestamp(),
            datetime(nxt.year, nxt.month, nxt.day, tzinfo=z).timestamp())


def _with_ratios(row: dict[str, Any]) -> dict[str, Any]:
    row["read_completeness"] = ratio(row["slots_read_good"], row["slots_scheduled"])
    row["interval_completeness"] = ratio(row["intervals_complete"], row["intervals_expected"])
    row["settlement_completeness"] = ratio(row["settlements_captured"], row["settlements_due"])
    return row


def kpi_for_day(conn: sqlite3.Connection, settings: Settings, day: date, now: float) -> dict[str, Any]:
    """The KPI document for local ``day`` as of ``now`` (see the module docstring)."""
    tz = settings.gateway.timezone
    lo, hi = day_bounds(day, tz)
    upto = min(hi, now - GRACE_S)
    settled = db.settled_boundaries(conn, lo, hi) if db.table_exists(conn) else {}
    meters: list[dict[str, Any]] = []
    for m in settings.meters.values():
        row: dict[str, Any] = {"meter": m.id, "bus": m.bus, "customer": m.customer, **dict.fromkeys(COUNT_KEYS, 0)}
        good_by_sched: dict[str, int] = {}
        if upto > lo:
            for sched, n in conn.execute(
                "SELECT schedule, count(DISTINCT slot) FROM outbox WHERE meter=? AND kind='reading' "
                "AND slot>=? AND slot<? AND quality='good' GROUP BY schedule", (m.id, lo, upto),
            ):
                good_by_sched[str(sched)] = int(n)
        for sname in m.schedules:
            sched = settings.schedules.get(sname)
            if sched is None or upto <= lo:
                continue
            if sched.aligned:
                due = len(slots_between(lo, upto, sched.every_s, tz, sched.offset_s))
            else:
                due = int((upto - lo) // sched.every_s)
            row["slots_scheduled"] += due
            row["slots_read_good"] += min(due, good_by_sched.get(sname, 0))
        scheds, _regs, every = energy_schedules(settings, m)
        if scheds and every is not None:
            grid, nxt = grid_for(lo, hi, every, tz, now - GRACE_S)
            if grid:
                marks = ",".join("?" for _ in scheds)
                good = {float(s) for (s,) in conn.execute(
                    f"SELECT DISTINCT slot FROM outbox WHERE meter=? AND kind='reading' AND slot>=? AND slot<=? "
                    f"AND quality='good' AND schedule IN ({marks})", (m.id, lo, hi, *scheds))}
                row["intervals_expected"] = len(grid)
                row["intervals_complete"] = sum(1 for s in grid if s in good and nxt[s] in good)
        plan = settings.billing.get(m.billing) if m.billing else None
        if plan is not None:
            due_b = [b.ts for b in boundaries_between(plan, tz, lo - 1e-6, min(hi - 1e-6, now))]
            have = dict(settled.get(m.id, []))
            row["settlements_due"] = len(due_b)
            for t in due_b:
                q = have.get(t)
                if q in CAPTURED:
                    row["settlements_captured"] += 1
                elif q == "estimated":
                    row["settlements_estimated"] += 1
                else:
                    row["settlements_missing"] += 1
        meters.append(_with_ratios(row))
    buses: dict[str, dict[str, Any]] = {}
    total: dict[str, Any] = {"meters": 0, **dict.fromkeys(COUNT_KEYS, 0)}
    for row in meters:
        b = buses.setdefault(row["bus"], {"bus": row["bus"], "meters": 0, **dict.fromkeys(COUNT_KEYS, 0)})
        b["meters"] += 1
        total["meters"] += 1
        for k in COUNT_KEYS:
            b[k] += row[k]
            total[k] += row[k]
    return {
        "date": day.isoformat(),
        "timezone": tz,
        "meters": meters,
        "buses": [_with_ratios(b) for b in buses.values()],
        "gateway": _with_ratios(total),
    }


CSV_COLUMNS: Final = (
    "date", "scope", "id", "bus", "meters", *COUNT_KEYS,
    "read_completeness", "interval_completeness", "settlement_completeness",
)


def csv_rows(doc: dict[str, Any]) -> list[list[object]]:
    """One row per meter, per bus and one for the gateway."""
    out: list[list[object]] = []
    rest = (*COUNT_KEYS, "read_completeness", "interval_completeness", "settlement_completeness")
    for m in doc["meters"]:
        out.append([doc["date"], "meter", m["meter"], m["bus"], 1, *(m[k] for k in rest)])
    for b in doc["buses"]:
        out.append([doc["date"], "bus", b["bus"], b["bus"], b["meters"], *(b[k] for k in rest)])
    g = doc["gateway"]
    out.append([doc["date"], "gateway", None, None, g["meters"], *(g[k] for k in rest)])
    return out


__all__ = ["CSV_COLUMNS", "csv_rows", "day_bounds", "kpi_for_day", "ratio"]
