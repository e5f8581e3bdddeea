"""One meter's billing cycle as billing sees it: settlements, stage consumption, reconciliation.

Audited CT/PT changes inside the cycle are listed (``ratio_changes``) and split the stage
consumption they fall in (:func:`gateway.billing.settlement.stage_consumption`).

Shared by ``GET /api/v1/meters/{id}/settlements`` and ``amr-gateway export settlements``, so
the JSON, the CSV and the export say the same thing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, Final

from gateway.billing import db, demand
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
    """
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
        "plan": plan.name,
        "cycle": label,
        "timezone": tz,
        "start": iso_utc(c.start),
        "end": iso_utc(c.end),
        "settlements": items,
        "ratio_changes": [{k: ch.get(k) for k in RATIO_CHANGE_FIELDS} for ch in changes],
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


#: What the view shows of an audited CT/PT change (``billing_ratio_change``).
RATIO_CHANGE_FIELDS: Final = ("at", "old", "new", "read_at", "registers", "reason")

SETTLEMENT_CSV: Final = (
    "meter", "plan", "cycle", "boundary_index", "role", "boundary", "current", "revision", "quality", "source",
    "read_at", "frozen_at", "ct", "pt", "multiplier", "register", "raw", "value", "unit", "seq", "reason",
)
STAGE_CSV: Final = (
    "meter", "plan", "cycle", "stage", "start", "end", "start_quality", "end_quality", "complete", "register",
    "consumption", "reconciled", "flags",
    # two-part tariff inputs of the stage (gateway.billing.demand), the same on every row of a stage
    "max_demand_kw", "max_demand_at", "demand_source", "power_factor", "power_factor_registers",
)


def settlement_csv_rows(view: dict[str, Any]) -> Iterable[list[object]]:
    """One row per register of every settlement revision (current first, then its history)."""
    for item in view["settlements"]:
        revisions = [(True, item)] + [(False, h) for h in item["history"]]
        for current, rev in revisions:
            base = [view["meter"], view["plan"], view["cycle"], item["boundary_index"], item["role"],
                    item["boundary"], current if item["status"] == "stored" else None, rev.get("revision"),
                    rev.get("quality"), rev.get("source"), rev.get("read_at"), rev.get("frozen_at"), rev.get("ct"),
                    rev.get("pt"), rev.get("multiplier")]
            regs = rev.get("registers") or {}
            if not regs:
                yield [*base, None, None, None, None, rev.get("seq"), rev.get("reason") or item["status"]]
            for name, r in regs.items():
                yield [*base, name, r.get("raw"), r.get("value"), r.get("unit"), rev.get("seq"), rev.get("reason")]


def stage_csv_rows(view: dict[str, Any]) -> Iterable[list[object]]:
    """One row per register per stage, then the cycle total (stage ``total``)."""
    rec = view["reconciliation"]["reconciled"]
    for st in [*view["stages"], {**view["cycle_total"], "stage": "total"}]:
        for name, v in st["consumption"].items():
            yield [view["meter"], view["plan"], view["cycle"], st["stage"], st["start"], st["end"],
                   st["start_quality"], st["end_quality"], st["complete"], name, v, rec, "; ".join(st["flags"]),
                   st.get("max_demand_kw"), st.get("max_demand_at"), st.get("demand_source"),
                   st.get("power_factor"), "+".join(st.get("power_factor_registers") or [])]


__all__ = ["SETTLEMENT_CSV", "STAGE_CSV", "cycle_view", "settlement_csv_rows", "settlement_doc", "stage_csv_rows"]
