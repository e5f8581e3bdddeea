"""The versioned CSV column sets of settlement, stage and customer exports (``csv_version`` 2).

Billing imports these files into other programs, so a file's columns must not depend on the
data: the same header whatever tariffs a meter has, whatever registers a plan lists. Every
row starts with ``csv_version`` (a column, not a header comment: spreadsheet and database
importers keep a column and choke on comments); the API also sends it as the
``X-AMR-CSV-Version`` response header. A change that removes, renames or reorders a column
raises the version; a version only ever appends columns at the end for the same number.

* **Settlement CSV** (:data:`SETTLEMENT_COLUMNS`, one row per register of every settlement
  version, current first then the versions it superseded): long form, because each register
  carries ``raw``, ``value`` and ``unit``.
* **Stage CSV and customer CSV** (:data:`STAGE_COLUMNS`, the same header for both, one row per
  stage and one for the cycle total, ``stage`` = ``total``): ``record`` says whose row it is —
  ``meter`` (one meter's stage, with its ``role`` and ``sign`` in the customer) or
  ``customer`` (the signed sum; ``meter`` empty). Consumption is in the fixed tariff columns
  :data:`TARIFF_COLUMNS`, after CT×PT, empty where the meter does not have the register or
  the value is withheld (see ``flags`` / ``notes``).

docs/billing.md ("Customers, KPIs and CSV columns") lists every column with its meaning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from gateway.billing.settlement import rank

CSV_VERSION: Final = 2
CSV_VERSION_HEADER: Final = "X-AMR-CSV-Version"

#: Consumption columns of stage and customer CSV, in this order (canonical register names).
TARIFF_COLUMNS: Final = (
    "energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t2", "energy_import_kwh_t3",
    "energy_import_kwh_t4",
    "energy_export_kwh", "energy_export_kwh_t1", "energy_export_kwh_t2", "energy_export_kwh_t3",
    "energy_export_kwh_t4",
    "energy_import_kvarh", "energy_export_kvarh",
    "energy_q1_kvarh", "energy_q2_kvarh", "energy_q3_kvarh", "energy_q4_kvarh",
)
#: Two-part tariff inputs after the tariff columns (empty until the stage carries them).
DEMAND_COLUMNS: Final = ("max_demand_kw", "max_demand_at", "demand_source", "power_factor",
                          "power_factor_registers", "power_factor_kwh", "power_factor_kvarh")

#: The columns every export starts with, in this order.
COMMON_COLUMNS: Final = ("csv_version", "customer", "meter", "plan", "cycle")

SETTLEMENT_COLUMNS: Final = (
    *COMMON_COLUMNS, "boundary_index", "role", "boundary", "current", "id", "revision", "quality", "source",
    "read_at", "frozen_at", "ct", "pt", "multiplier", "clock_state", "meter_offset_s", "flags",
    "estimated_from", "supersedes", "entered_by", "confirmed_by", "register", "raw", "value", "unit", "seq",
    "reason",
)

STAGE_COLUMNS: Final = (
    *COMMON_COLUMNS, "record", "role", "sign", "stage", "start", "end", "start_quality", "end_quality",
    "quality", "complete", "reconciled", "flags", "multiplier", "clock_state", "meter_offset_s",
    "estimated_from", "supersedes", *TARIFF_COLUMNS, *DEMAND_COLUMNS, "notes",
)


def worst_quality(qualities: Iterable[str | None]) -> str:
    """The worst settlement quality of several (None, a boundary without a settlement, is ``missing``)."""
    items = [q or "missing" for q in qualities]
    return min(items, key=rank) if items else "missing"


def clock_state(gateway_clock: object) -> str:
    """``synchronized``, ``unsynchronized`` or ``unknown`` from a settlement's stored gateway clock state."""
    if isinstance(gateway_clock, Mapping):
        sync = gateway_clock.get("synchronized")
        if sync is True:
            return "synchronized"
        if sync is False:
            return "unsynchronized"
    return "unknown"


def worst_clock_state(states: Iterable[str]) -> str:
    """The worst of several clock states (unsynchronized < unknown < synchronized); empty: ``unknown``."""
    order = {"unsynchronized": 0, "unknown": 1, "synchronized": 2}
    items = list(states)
    return min(items, key=lambda s: order.get(s, 1)) if items else "unknown"


def join(values: Iterable[object]) -> str:
    """Several values in one cell, ``;``-separated (None and empty skipped)."""
    return ";".join(str(v) for v in values if v is not None and v != "")


def estimated_from_cell(items: object) -> str:
    """``seq@ts`` of each reading an estimate was interpolated from."""
    if not isinstance(items, Sequence) or isinstance(items, str):
        return ""
    return join(f"{i.get('seq')}@{i.get('ts')}" for i in items if isinstance(i, Mapping))


def supersedes_cell(sup: object) -> str:
    """The id of the version a settlement superseded (empty when it is the first)."""
    if isinstance(sup, Mapping) and sup.get("id") is not None:
        return str(sup["id"])
    return ""


def _cell(v: object) -> object:
    """A list (``power_factor_registers``) as ``a+b``; anything else as it is."""
    if isinstance(v, list | tuple):
        return "+".join(str(x) for x in v)
    return v


def stage_row(*, customer: str | None, meter: str | None, plan: str | None, cycle: str, record: str,
              role: str | None, sign: int | None, stage: Mapping[str, Any], reconciled: bool | None,
              ends: Sequence[Mapping[str, Any] | None]) -> list[object]:
    """One stage (or cycle-total) row in :data:`STAGE_COLUMNS` order.

    ``stage`` is a stage document (``gateway.billing.view`` or ``gateway.billing.customers``);
    ``ends`` the settlement items of its start and end boundary (meter rows; empty for
    customer rows, whose per-end cells come from ``stage`` itself: ``multiplier`` …).
    """
    cons = stage.get("consumption") or {}
    end_docs = [e for e in ends if e is not None and e.get("status") == "stored"]
    if end_docs:
        mults = join(dict.fromkeys(str(e.get("multiplier")) for e in end_docs if e.get("multiplier") is not None))
        clock = worst_clock_state(clock_state(e.get("gateway_clock")) for e in end_docs)
        offsets = join(e.get("meter_offset_s") for e in end_docs)
        est = join(estimated_from_cell(e.get("estimated_from")) for e in end_docs)
        sup = join(supersedes_cell(e.get("supersedes")) for e in end_docs)
    else:
        mults = str(stage.get("multiplier") or "")
        clock = str(stage.get("clock_state") or ("unknown" if record == "meter" else ""))
        offsets = join(stage.get("meter_offset_s") or ())
        est = join(stage.get("estimated_from") or ())
        sup = join(stage.get("supersedes") or ())
    return [
        CSV_VERSION, customer, meter, plan, cycle, record, role, sign, stage.get("stage"), stage.get("start"),
        stage.get("end"), stage.get("start_quality"), stage.get("end_quality"), stage.get("quality"),
        stage.get("complete"), reconciled, join(stage.get("codes") or ()), mults, clock, offsets, est, sup,
        *(cons.get(name) for name in TARIFF_COLUMNS),
        *(_cell(stage.get(name)) for name in DEMAND_COLUMNS),
        " | ".join(str(f) for f in stage.get("flags") or ()),
    ]


__all__ = [
    "COMMON_COLUMNS",
    "CSV_VERSION",
    "CSV_VERSION_HEADER",
    "DEMAND_COLUMNS",
    "SETTLEMENT_COLUMNS",
    "STAGE_COLUMNS",
    "TARIFF_COLUMNS",
    "clock_state",
    "estimated_from_cell",
    "join",
    "stage_row",
    "supersedes_cell",
    "worst_clock_state",
    "worst_quality",
]
