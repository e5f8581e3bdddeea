"""Read-completeness KPIs per meter, per bus and for the gateway, for one local day.

Definitions (docs/billing-rules.md §8, 采集成功率 per day and data type):

* **read completeness** = slots read good ÷ slots scheduled, over every schedule of the
  meter, for the slots of the day that have come (a day in progress counts the slots up to
  a minute ago: a younger slot may still be retrying);
  a slot counts once however many times it was retried.
* **interval completeness** = ``complete`` intervals ÷ intervals of the day on the
  meter's shortest energy schedule (see :mod:`gateway.billing.intervals`: both ends good).
* **settlement completeness** = boundaries of the day whose current settlement is real
  (``meter_frozen``, ``actual`` or ``late``) ÷ boundaries due that day; ``estimated``, ``manual``
  (an operator's on-site reading) and ``missing`` are counted apart, never as captured. A day
  without a boundary has none due (ratio ``null``).

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
#: Obtained at the boundary within the plan's tolerance (抄表准时): the meter's freeze or a live read.
ON_TIME: Final = frozenset({"meter_frozen", "actual"})
#: A slot younger than this is still being read (retries, commit): not counted yet.
GRACE_S: Final = 60.0
COUNT_KEYS: Final = (
    "slots_scheduled", "slots_read_good", "intervals_expected", "intervals_complete",
    "settlements_due", "settlements_captured", "settlements_estimated", "settlements_manual", "settlements_missing",
    "settlements_on_time", "settlements_late",
)
#: The settlement counts (the cycle KPI has only these).
SETTLEMENT_KEYS: Final = (
    "settlements_due", "settlements_captured", "settlements_on_time", "settlements_late", "settlements_manual",
    "settlements_estimated", "settlements_missing",
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
    row["on_time_rate"] = ratio(row["settlements_on_time"], row["settlements_due"])
    return row


def count_boundary(row: dict[str, Any], quality: str | None) -> None:
    """Count one due boundary whose current settlement has ``quality`` (None: no settlement)."""
    row["settlements_due"] += 1
    if quality in CAPTURED:
        row["settlements_captured"] += 1
    if quality in ON_TIME:
        row["settlements_on_time"] += 1
    elif quality == "late":
        row["settlements_late"] += 1
    elif quality == "estimated":
        row["settlements_estimated"] += 1
    elif quality == "manual":               # entered by an operator: had, but not read by the gateway
        row["settlements_manual"] += 1
    elif quality not in CAPTURED:
        row["settlements_missing"] += 1


def _by_customer(settings: Settings, meters: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each customer's counts: the sums over its meters (any role)."""
    from gateway.billing.customers import customers_of

    by_meter = {row["meter"]: row for row in meters}
    out: list[dict[str, Any]] = []
    for c in customers_of(settings).values():
        row: dict[str, Any] = {"customer": c.id, "meters": 0, **dict.fromkeys(keys, 0)}
        for cm in c.meters:
            m = by_meter.get(cm.meter)
            if m is None:
                continue
            row["meters"] += 1
            for k in keys:
                row[k] += m[k]
        out.append(row)
    return out


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
            for t in due_b:
                count_boundary(row, have.get(t))
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
        "customers": [_with_ratios(c) for c in _by_customer(settings, meters, COUNT_KEYS)],
        "gateway": _with_ratios(total),
    }


def _settlement_ratios(row: dict[str, Any]) -> dict[str, Any]:
    row["settlement_completeness"] = ratio(row["settlements_captured"], row["settlements_due"])
    row["on_time_rate"] = ratio(row["settlements_on_time"], row["settlements_due"])
    return row


def kpi_for_cycle(conn: sqlite3.Connection, settings: Settings, label: str, now: float) -> dict[str, Any]:
    """Settlement KPIs of billing cycle ``label`` (YYYY-MM) as of ``now``: per meter, customer and gateway.

    Due: every boundary of the meter's plan's cycle ``label`` (start, stage boundaries and end)
    at or before ``now``. Meters on no billing plan are left out.
    """
    from gateway.billing.cycles import cycle

    tz = settings.gateway.timezone
    meters: list[dict[str, Any]] = []
    for m in settings.meters.values():
        plan = settings.billing.get(m.billing) if m.billing else None
        if plan is None:
            continue
        c = cycle(plan, label, tz)
        row: dict[str, Any] = {"meter": m.id, "bus": m.bus, "customer": m.customer, "plan": plan.name,
                               **dict.fromkeys(SETTLEMENT_KEYS, 0)}
        settled = dict(db.settled_boundaries(conn, c.start, c.end + 1e-3).get(m.id, [])) \
            if db.table_exists(conn) else {}
        for t in c.boundaries:
            if t <= now:
                count_boundary(row, settled.get(t))
        meters.append(_settlement_ratios(row))
    total: dict[str, Any] = {"meters": len(meters), **dict.fromkeys(SETTLEMENT_KEYS, 0)}
    for row in meters:
        for k in SETTLEMENT_KEYS:
            total[k] += row[k]
    return {
        "cycle": label,
        "timezone": tz,
        "meters": meters,
        "customers": [_settlement_ratios(c) for c in _by_customer(settings, meters, SETTLEMENT_KEYS)],
        "gateway": _settlement_ratios(total),
    }


CSV_COLUMNS: Final = (
    "date", "scope", "id", "bus", "meters", *COUNT_KEYS,
    "read_completeness", "interval_completeness", "settlement_completeness", "on_time_rate",
)
CYCLE_CSV_COLUMNS: Final = ("cycle", "scope", "id", "meters", *SETTLEMENT_KEYS, "settlement_completeness",
                            "on_time_rate")


def csv_rows(doc: dict[str, Any]) -> list[list[object]]:
    """One row per meter, per bus, per customer and one for the gateway."""
    out: list[list[object]] = []
    rest = (*COUNT_KEYS, "read_completeness", "interval_completeness", "settlement_completeness", "on_time_rate")
    for m in doc["meters"]:
        out.append([doc["date"], "meter", m["meter"], m["bus"], 1, *(m[k] for k in rest)])
    for b in doc["buses"]:
        out.append([doc["date"], "bus", b["bus"], b["bus"], b["meters"], *(b[k] for k in rest)])
    for c in doc.get("customers") or ():
        out.append([doc["date"], "customer", c["customer"], None, c["meters"], *(c[k] for k in rest)])
    g = doc["gateway"]
    out.append([doc["date"], "gateway", None, None, g["meters"], *(g[k] for k in rest)])
    return out


def cycle_csv_rows(doc: dict[str, Any]) -> list[list[object]]:
    """One row per meter, per customer and one for the gateway (:data:`CYCLE_CSV_COLUMNS`)."""
    rest = (*SETTLEMENT_KEYS, "settlement_completeness", "on_time_rate")
    out: list[list[object]] = [[doc["cycle"], "meter", m["meter"], 1, *(m[k] for k in rest)] for m in doc["meters"]]
    out.extend([doc["cycle"], "customer", c["customer"], c["meters"], *(c[k] for k in rest)] for c in doc["customers"])
    g = doc["gateway"]
    out.append([doc["cycle"], "gateway", None, g["meters"], *(g[k] for k in rest)])
    return out


__all__ = ["CSV_COLUMNS", "CYCLE_CSV_COLUMNS", "ON_TIME", "SETTLEMENT_KEYS", "count_boundary", "csv_rows",
           "cycle_csv_rows", "day_bounds", "kpi_for_cycle", "kpi_for_day", "ratio"]
