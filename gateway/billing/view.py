"""One meter's billing cycle as billing sees it: settlements, stage consumption, reconciliation.

Audited CT/PT changes and meter exchanges inside the cycle are listed (``ratio_changes``,
``exchanges``) and split the stage consumption they fall in (:func:`gateway.billing.settlement.stage_consumption`).

Shared by ``GET /api/v1/meters/{id}/settlements`` and ``amr-gateway export settlements``, so
the JSON, the CSV and the export say the same thing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, Final

from gateway.billing import csvcolumns, db, demand
from gateway.billing.cycles import Cycle, cycle
from gateway.billing.demand import Demand
from gateway.billing.intervals import energy_schedules, load_ends
from gateway.billing.settlement import Settlement, StageConsumption, reconcile, stage_consumption
from gateway.model import iso_utc
from gateway.settings import BillingPlan, Settings

_BODY_FIELDS: Final = ("quality", "source", "read_at", "frozen_at", "ct", "pt", "multiplier", "registers",
                       "reason", "revision", "estimated_from", "flags", "gateway_clock", "meter_clock",
                       "meter_offset_s", "entered_by", "note", "confirmed", "supersedes", "demand_period")


def _role(i: int, c: Cycle) -> str:
    if i == 0:
        return "cycle_start"
    if i == c.stages:
        return "cycle_end"
    return "stage_start"


def settlement_doc(s: Settlement) -> dict[str, Any]:
    """The stored fields of one settlement revision, with its seq."""
    doc: dict[str, Any] = {"id": s.id, **{k: s.body.get(k) for k in _BODY_FIELDS}}
    doc["estimated_from"] = s.body.get("estimated_from") or []
    doc["flags"] = s.body.get("flags") or []
    doc["seq"] = s.seq
    doc["stored_at"] = iso_utc(s.created)
    return doc


def _stage_doc(st: StageConsumption, two_part: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "stage": st.stage,
        "start": iso_utc(st.start),
        "end": iso_utc(st.end),
        "start_quality": st.start_quality,
        "end_quality": st.end_quality,
        "complete": st.complete,
        "consumption": dict(st.consumption),
        "flags": list(st.flags),
        "codes": list(st.codes),
        **(two_part or {}),
    }


def _computed_demand(conn: sqlite3.Connection, settings: Settings | None, meter: str, plan: BillingPlan,
                     start: float, end: float, now: float) -> Callable[[], Demand] | None:
    """How to compute a period's maximum demand from the meter's interval readings (None: no settings)."""
    if settings is None or meter not in settings.meters:
        return None
    ms = settings.meters[meter]

    def compute() -> Demand:
        scheds, regs, every = energy_schedules(settings, ms)
        cfg = plan.demand
        window = cfg.window_s
        slide = window if cfg.method == "block" else (cfg.slide_s or every or window)
        stop = min(end, now)
        if not scheds or demand.PF_ACTIVE not in regs:
            return Demand(None, None, None, {"method": cfg.method, "note": "the meter has no interval readings of "
                                             f"{demand.PF_ACTIVE} to compute demand from"})
        slots = demand.sample_slots(start, stop, window, slide)
        ends = load_ends(conn, meter, scheds, [demand.PF_ACTIVE], slots, start, stop) if slots else {}
        samples = {t: e.values[demand.PF_ACTIVE] for t, e in ends.items() if demand.PF_ACTIVE in e.values}
        ratios = {t: e.multiplier for t, e in ends.items()}
        return demand.computed_demand(samples, start, stop, window, slide, cfg.method, ratios)

    return compute


def cycle_view(conn: sqlite3.Connection, meter: str, plan: BillingPlan, label: str, tz: str,
               now: float, settings: Settings | None = None) -> dict[str, Any]:
    """The whole cycle ``label`` of one meter: every boundary, every stage, reconciliation.

    Each stage and the cycle total carry the two-part tariff inputs
    (:data:`gateway.billing.demand.TWO_PART_FIELDS`): maximum demand from the meter's end
    settlement, else computed from interval readings when ``settings`` is given.
    With ``settings``, the meter's customer is shown in the document and its CSV rows.
    """
    ms = settings.meters.get(meter) if settings is not None else None
    customer = ms.customer if ms is not None else None
    c = cycle(plan, label, tz)
    rows = db.for_meter(conn, meter, c.start, c.end) if db.table_exists(conn) else []
    by_ts = {s.boundary: s for s in rows}
    current: list[Settlement | None] = [by_ts.get(t) for t in c.boundaries]
    items: list[dict[str, Any]] = []
    for i, t in enumerate(c.boundaries):
        s = current[i]
        item: dict[str, Any] = {
            "boundary_index": i,
            "role": _role(i, c),
            "boundary": iso_utc(t),
            "status": "stored" if s is not None else ("pending" if t > now else "none"),
        }
        if s is not None:
            item.update(settlement_doc(s))
            item["history"] = [settlement_doc(h) for h in s.history]
        else:
            item.update(dict.fromkeys(("id", *_BODY_FIELDS)))
            item.update({"registers": {}, "estimated_from": [], "flags": [], "seq": None, "stored_at": None,
                         "history": []})
        items.append(item)
    regs = list(plan.registers)
    changes = db.ratio_changes(conn, meter, c.start, c.end) if db.table_exists(conn) else []
    stages = [stage_consumption(k, c.boundaries[k - 1], c.boundaries[k], current[k - 1], current[k], regs, changes)
              for k in range(1, c.stages + 1)]
    total = stage_consumption(0, c.start, c.end, current[0], current[-1], regs, changes)
    rec = reconcile(stages, total)
    stage_docs = [_stage_doc(st, _two_part(conn, settings, meter, plan, tz, now, st, current[st.stage]))
                  for st in stages]
    cycle_two_part = demand.cycle_from_stages(
        _two_part(conn, settings, meter, plan, tz, now, total, current[-1]), stage_docs)
    return {
        "meter": meter,
        "customer": customer,
        "plan": plan.name,
        "cycle": label,
        "timezone": tz,
        "start": iso_utc(c.start),
        "end": iso_utc(c.end),
        "settlements": items,
        "ratio_changes": [{k: ch.get(k) for k in RATIO_CHANGE_FIELDS} for ch in changes
                          if ch.get("kind") != "exchange"],
        "exchanges": [{k: ch.get(k) for k in EXCHANGE_FIELDS} for ch in changes if ch.get("kind") == "exchange"],
        "stages": stage_docs,
        "cycle_total": _stage_doc(total, cycle_two_part),
        "reconciliation": {
            "reconciled": rec.reconciled,
            "cycle_consumption": rec.cycle_consumption,
            "stage_sum": rec.stage_sum,
            "flags": list(rec.flags),
        },
    }


def _two_part(conn: sqlite3.Connection, settings: Settings | None, meter: str, plan: BillingPlan, tz: str,
              now: float, st: StageConsumption, last: Settlement | None) -> dict[str, Any]:
    return demand.two_part_inputs(st.start, st.end, None if last is None else last.body, st.consumption, tz,
                                  _computed_demand(conn, settings, meter, plan, st.start, st.end, now))


#: What the view shows of an audited CT/PT change (``billing_ratio_change``): the configuration's
#: record at a restart, or one an operator entered (``entered_by``, ``note``, and the automatic
#: record it ``supersedes``).
RATIO_CHANGE_FIELDS: Final = ("id", "at", "old", "new", "read_at", "registers", "reason", "entered_by", "note",
                              "supersedes")
#: What the view shows of a meter exchange (换表, :mod:`gateway.billing.exchanges`).
EXCHANGE_FIELDS: Final = ("id", "at", "old", "new", "old_serial", "new_serial", "registers", "entered_by", "note",
                          "supersedes")

#: The settlement and stage CSV columns (``csv_version`` 2, :mod:`gateway.billing.csvcolumns`).
SETTLEMENT_CSV: Final = csvcolumns.SETTLEMENT_COLUMNS
STAGE_CSV: Final = csvcolumns.STAGE_COLUMNS


def settlement_csv_rows(view: dict[str, Any]) -> Iterable[list[object]]:
    """One row per register of every settlement revision (current first, then its history)."""
    for item in view["settlements"]:
        revisions = [(True, item)] + [(False, h) for h in item["history"]]
        for current, rev in revisions:
            confirmed = rev.get("confirmed")
            base = [csvcolumns.CSV_VERSION, view.get("customer"), view["meter"], view["plan"], view["cycle"],
                    item["boundary_index"], item["role"], item["boundary"],
                    current if item["status"] == "stored" else None, rev.get("id"), rev.get("revision"),
                    rev.get("quality"), rev.get("source"), rev.get("read_at"), rev.get("frozen_at"), rev.get("ct"),
                    rev.get("pt"), rev.get("multiplier"),
                    csvcolumns.clock_state(rev.get("gateway_clock")) if item["status"] == "stored" else None,
                    rev.get("meter_offset_s"), csvcolumns.join(rev.get("flags") or ()),
                    csvcolumns.estimated_from_cell(rev.get("estimated_from")),
                    csvcolumns.supersedes_cell(rev.get("supersedes")), rev.get("entered_by"),
                    confirmed.get("by") if isinstance(confirmed, dict) else None]
            regs = rev.get("registers") or {}
            if not regs:
                yield [*base, None, None, None, None, rev.get("seq"), rev.get("reason") or item["status"]]
            for name, r in regs.items():
                yield [*base, name, r.get("raw"), r.get("value"), r.get("unit"), rev.get("seq"), rev.get("reason")]


def stage_csv_rows(view: dict[str, Any], *, role: str | None = None,
                   sign: int | None = None) -> Iterable[list[object]]:
    """One row per stage, then the cycle total (stage ``total``), in :data:`STAGE_CSV` order.

    ``role`` / ``sign``: the meter's place in its customer (customer CSV); None for a meter's own.
    """
    rec = view["reconciliation"]["reconciled"]
    items = view["settlements"]
    last = len(items) - 1
    rows = [(st, items[st["stage"] - 1], items[st["stage"]]) for st in view["stages"]]
    rows.append(({**view["cycle_total"], "stage": "total"}, items[0], items[last]))
    for doc, first, end in rows:
        st = {**doc, "quality": csvcolumns.worst_quality([doc["start_quality"], doc["end_quality"]])}
        yield csvcolumns.stage_row(customer=view.get("customer"), meter=view["meter"], plan=view["plan"],
                                   cycle=view["cycle"], record="meter", role=role, sign=sign, stage=st,
                                   reconciled=rec, ends=[first, end])


__all__ = ["SETTLEMENT_CSV", "STAGE_CSV", "cycle_view", "settlement_csv_rows", "settlement_doc", "stage_csv_rows"]
