"""Customer settlements: the signed sum of a customer's meters' stage consumption, per tariff.

A customer (户号, ``customers:`` in the configuration, :class:`~gateway.settings.CustomerSettings`)
is billed for Σ sign × stage consumption of its meters, per register (main + sub − deduct),
computed from each meter's own cycle (:func:`gateway.billing.view.cycle_view`), so every
meter's stage arithmetic (rollover, CT/PT change, exchange) counts exactly once and in one place.

Per stage and for the cycle total:

* ``consumption``: register → exact Decimal sum; ``None`` (withheld) when any meter's value
  for that register is withheld or the meter does not have the register — never a partial
  sum that looks final;
* ``quality``: the worst quality of every part's start and end (``missing`` for a boundary
  without a settlement), ``complete`` only when every part is complete;
* ``codes`` the union of the parts' flag codes, ``flags`` each part's sentences prefixed by
  its meter;
* two-part tariff inputs, under the names of a meter stage (:mod:`gateway.billing.demand`):
  ``max_demand_kw`` / ``max_demand_at`` / ``demand_source`` / ``demand_detail`` from the
  ``main`` meters' stages (one main: its figure and time; several: the sum, labelled
  ``sum_of_main_meters``, no time; None while the meter stages carry none), and
  ``power_factor`` = P / √(P² + Q²) of the signed sums, P = ``energy_import_kwh``, Q =
  ``energy_q1_kvarh`` + ``energy_q4_kvarh`` when summed, else ``energy_import_kvarh``, named in
  ``power_factor_registers`` with ``power_factor_kwh`` / ``power_factor_kvarh``;
  ``reactive_kvarh`` the signed quadrant sums.

Pure over a ``sqlite3.Connection`` (read pool), shared by the API, the bulk CSV and the MQTT
customer settlement message (:mod:`gateway.billing.customer_publish`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from gateway.billing import csvcolumns, view
from gateway.billing.settlement import NOT_CUMULATIVE
from gateway.settings import BillingPlan, CustomerSettings, Settings

CUSTOMER_SETTLEMENT_SCHEMA: Final = "amr.customer_settlement.v1"
#: A meter stage's two-part tariff fields copied into its part of a customer stage.
PART_FIELDS: Final = ("max_demand_kw", "max_demand_at", "demand_source", "power_factor", "power_factor_registers")
PF_PLACES: Final = Decimal("0.0001")


def customers_of(settings: Settings) -> dict[str, CustomerSettings]:
    """The configured customers, or one per meter ``customer`` field when none are (settings built in code)."""
    if settings.customers:
        return settings.customers
    from gateway.settings import CustomerMeter

    out: dict[str, list[CustomerMeter]] = {}
    for m in settings.meters.values():
        out.setdefault(m.customer, []).append(CustomerMeter(m.id, "main", 1))
    return {cid: CustomerSettings(id=cid, meters=tuple(ms), derived=True) for cid, ms in out.items()}


def customer_plan(settings: Settings, customer: CustomerSettings) -> BillingPlan | None:
    """The billing plan the customer settles on: that of its first meter on a plan (all agree, config checks)."""
    for cm in customer.meters:
        ms = settings.meters.get(cm.meter)
        if ms is not None and ms.billing and ms.billing in settings.billing:
            return settings.billing[ms.billing]
    return None


def customer_doc(settings: Settings, customer: CustomerSettings) -> dict[str, Any]:
    """The customer as ``GET /api/v1/customers`` lists it."""
    plan = customer_plan(settings, customer)
    return {
        "id": customer.id,
        "name": customer.name,
        "contract_capacity_kva": customer.contract_capacity_kva,
        "tariff": customer.tariff,
        "power_factor_class": customer.power_factor_class,
        "plan": plan.name if plan is not None else None,
        "derived": customer.derived,
        "meters": [{"meter": cm.meter, "role": cm.role, "sign": cm.sign,
                    "billing": settings.meters[cm.meter].billing if cm.meter in settings.meters else None}
                   for cm in customer.meters],
    }


def _pf(p: Decimal | None, q: Decimal | None) -> Decimal | None:
    """cos φ = P / √(P² + Q²), 4 decimals; None without both, or without active energy."""
    if p is None or q is None or p <= 0:
        return None
    return (p / (p * p + q * q).sqrt()).quantize(PF_PLACES, rounding=ROUND_HALF_UP)


def _as_decimal(v: object) -> Decimal | None:
    if v is None:
        return None
    return v if isinstance(v, Decimal) else Decimal(str(v))


def combine_stage(parts: Sequence[tuple[str, str, int, dict[str, Any]]], registers: Iterable[str]) -> dict[str, Any]:
    """One customer stage from its parts: (meter, role, sign, meter stage document) each (pure, exact)."""
    names = [r for r in registers if r not in NOT_CUMULATIVE]
    cons: dict[str, Decimal | None] = {}
    flags: list[str] = []
    for name in names:
        acc = Decimal(0)
        total: Decimal | None = None
        for _meter, _role, sign, st in parts:
            v = _as_decimal((st.get("consumption") or {}).get(name))
            if v is None:
                break
            acc += sign * v
        else:
            total = acc
        if total is None and not any(name in (st.get("consumption") or {}) for _, _, _, st in parts):
            continue                               # no part has this register at all: not a column of the sum
        cons[name] = total
    withheld = [n for n, v in cons.items() if v is None]
    if withheld:
        flags.append("withheld: " + ", ".join(withheld) + " (a meter's value is withheld or the meter does not have "
                     "the register; no partial sum is shown)")
    codes: list[str] = []
    for meter, _role, _sign, st in parts:
        codes.extend(st.get("codes") or ())
        flags.extend(f"{meter}: {f}" for f in st.get("flags") or ())
    first = parts[0][3] if parts else {}
    doc: dict[str, Any] = {
        "stage": first.get("stage"),
        "start": first.get("start"),
        "end": first.get("end"),
        "quality": csvcolumns.worst_quality(q for _, _, _, st in parts
                                            for q in (st.get("start_quality"), st.get("end_quality"))),
        "complete": bool(parts) and all(st.get("complete") for _, _, _, st in parts) and not withheld,
        "consumption": cons,
        "codes": list(dict.fromkeys(codes)),
        "flags": flags,
        "parts": [{"meter": meter, "role": role, "sign": sign, "start_quality": st.get("start_quality"),
                   "end_quality": st.get("end_quality"), "complete": st.get("complete"),
                   "codes": list(st.get("codes") or ()), "consumption": st.get("consumption") or {},
                   **{k: st.get(k) for k in PART_FIELDS}}
                  for meter, role, sign, st in parts],
    }
    doc.update(_demand(parts, cons))
    return doc


#: Reactive registers for the power factor of an importing customer, preferred first (as
#: :mod:`gateway.billing.demand` takes them for one meter): quadrants I + IV, else reactive import.
PF_REACTIVE_CHOICES: Final[tuple[tuple[str, ...], ...]] = (
    ("energy_q1_kvarh", "energy_q4_kvarh"),
    ("energy_import_kvarh",),
)


def _demand(parts: Sequence[tuple[str, str, int, dict[str, Any]]],
            cons: dict[str, Decimal | None]) -> dict[str, Any]:
    """The two-part tariff inputs of a customer stage (see the module docstring)."""
    mains = [st for _, role, _, st in parts if role == "main" and st.get("max_demand_kw") is not None]
    out: dict[str, Any] = {"max_demand_kw": None, "max_demand_at": None, "demand_source": None,
                           "demand_detail": None}
    if len(mains) == 1:
        out.update({"max_demand_kw": _as_decimal(mains[0]["max_demand_kw"]),
                    "max_demand_at": mains[0].get("max_demand_at"), "demand_source": mains[0].get("demand_source"),
                    "demand_detail": mains[0].get("demand_detail")})
    elif mains:
        out.update({"max_demand_kw": sum((_as_decimal(st["max_demand_kw"]) or Decimal(0) for st in mains),
                                         Decimal(0)), "demand_source": "sum_of_main_meters",
                    "demand_detail": {"meters": [m for m, role, _, st in parts
                                                 if role == "main" and st.get("max_demand_kw") is not None]}})
    p = cons.get("energy_import_kwh")
    registers: list[str] = []
    q: Decimal | None = None
    for choice in PF_REACTIVE_CHOICES:
        values = [cons.get(r) for r in choice]
        if all(v is not None for v in values):
            q = sum((v for v in values if v is not None), Decimal(0))
            registers = ["energy_import_kwh", *choice]
            break
    quads = {f"q{k}": cons.get(f"energy_q{k}_kvarh") for k in range(1, 5)}
    out["reactive_kvarh"] = quads if any(v is not None for v in quads.values()) else None
    out["power_factor"] = _pf(p, q)
    out["power_factor_registers"] = registers if q is not None and p is not None else []
    out["power_factor_kwh"] = p if q is not None else None
    out["power_factor_kvarh"] = q if p is not None else None
    return out


def customer_view(conn: sqlite3.Connection, settings: Settings, customer: CustomerSettings, label: str,
                  now: float) -> dict[str, Any]:
    """Customer ``customer``'s settlement for cycle ``label``: its stages, the cycle total, each meter's cycle."""
    tz = settings.gateway.timezone
    plan = customer_plan(settings, customer)
    base = customer_doc(settings, customer)
    if plan is None:
        return {**base, "customer": customer.id, "cycle": label, "timezone": tz, "stages": [], "cycle_total": None,
                "meter_cycles": [], "flags": ["no meter of this customer is on a billing plan"]}
    members = [(cm, settings.meters[cm.meter]) for cm in customer.meters if cm.meter in settings.meters]
    flags: list[str] = []
    cycles: list[tuple[str, str, int, dict[str, Any]]] = []
    for cm, ms in members:
        if ms.billing != plan.name:
            flags.append(f"{cm.meter} is not on plan {plan.name} (billing: {ms.billing}); left out of the sum")
            continue
        cycles.append((cm.meter, cm.role, cm.sign, view.cycle_view(conn, cm.meter, plan, label, tz, now, settings)))
    regs = list(plan.registers)
    n = len(cycles[0][3]["stages"]) if cycles else 0
    stages = [combine_stage([(m, r, s, cv["stages"][k]) for m, r, s, cv in cycles], regs) for k in range(n)]
    total = combine_stage([(m, r, s, cv["cycle_total"]) for m, r, s, cv in cycles], regs)
    total["stage"] = "total"
    first = cycles[0][3] if cycles else {}
    return {
        **base,
        "customer": customer.id,
        "cycle": label,
        "timezone": tz,
        "start": first.get("start"),
        "end": first.get("end"),
        "stages": stages,
        "cycle_total": total,
        "reconciled": all(cv["reconciliation"]["reconciled"] for _, _, _, cv in cycles) and bool(cycles),
        "flags": flags,
        "meter_cycles": [cv for _, _, _, cv in cycles],
    }


def customer_csv_rows(doc: dict[str, Any]) -> Iterable[list[object]]:
    """The customer CSV (:data:`gateway.billing.csvcolumns.STAGE_COLUMNS`): each meter's stages with its role
    and sign, then the customer's signed sums (``record`` = ``customer``)."""
    roles = {m["meter"]: (m["role"], m["sign"]) for m in doc.get("meters") or ()}
    for cv in doc.get("meter_cycles") or ():
        role, sign = roles.get(cv["meter"], (None, None))
        yield from view.stage_csv_rows(cv, role=role, sign=sign)
    sums = list(doc.get("stages") or ())
    if doc.get("cycle_total"):
        sums.append(doc["cycle_total"])
    for st in sums:
        cycles = doc.get("meter_cycles") or []
        k = st["stage"]
        ends: list[dict[str, Any]] = []
        for cv in cycles:
            items = cv["settlements"]
            ends.extend([items[0], items[-1]] if k == "total" else [items[k - 1], items[k]])
        stored = [e for e in ends if e.get("status") == "stored"]
        cell = {
            **st,
            "start_quality": csvcolumns.worst_quality(p.get("start_quality") for p in st["parts"]),
            "end_quality": csvcolumns.worst_quality(p.get("end_quality") for p in st["parts"]),
            "clock_state": csvcolumns.worst_clock_state(
                [csvcolumns.clock_state(e.get("gateway_clock")) for e in stored]) if ends else "",
            "multiplier": "",
            "meter_offset_s": [],
            "estimated_from": [csvcolumns.estimated_from_cell(e.get("estimated_from")) for e in stored],
            "supersedes": [csvcolumns.supersedes_cell(e.get("supersedes")) for e in stored],
        }
        yield csvcolumns.stage_row(customer=doc["customer"], meter=None, plan=doc.get("plan"), cycle=doc["cycle"],
                                   record="customer", role=None, sign=None, stage=cell,
                                   reconciled=doc.get("reconciled"), ends=[])


__all__ = [
    "CUSTOMER_SETTLEMENT_SCHEMA",
    "combine_stage",
    "customer_csv_rows",
    "customer_doc",
    "customer_plan",
    "customer_view",
    "customers_of",
]
