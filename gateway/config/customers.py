"""The ``customers`` section: customers (户号) and the signed meters their bills sum.

Each customer has an ``id`` (the 户号), an optional ``name``, ``contract_capacity_kva``, a
``tariff`` (``single`` or ``two_part``) and ``meters``, each a meter id with a ``role``
(``main``, ``sub`` or ``deduct``) and an optional ``sign`` (default +1 for main and sub, −1
for deduct). A customer settlement is the signed sum of its meters' stage consumption
(docs/billing.md, "Customers, KPIs and CSV columns").

Checks (each issue with file, line and the fix):

* an unknown meter (with the closest configured id), a meter listed twice in one customer, a
  role or sign outside the accepted ones, a customer id given twice, a customer without meters;
* a meter is *owned* by at most one customer (role ``main`` or ``sub``) and the owner must be
  the meter's own ``customer:`` field; a ``deduct`` entry may name another customer's meter
  (the tenant's sub-meter deducted from the main meter, 主表减分表);
* a meter whose ``customer:`` names a customer of the section must be listed by it;
* all meters of a customer on a billing plan must be on the same plan (a customer settles on
  one calendar).

Without a ``customers`` section every configuration keeps working: one customer is derived per
distinct meter ``customer`` field, each meter ``main`` with sign +1. With a section, a meter
whose ``customer`` names no customer of the section gets such a derived customer too, and a
warning is logged. A customer's ``contract_capacity_kva`` becomes the ``contract_kw`` of its
review thresholds (``demand_over_contract``) and its ``power_factor_class`` the reference of
``low_power_factor``, unless ``review: overrides: customers:`` sets them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import Decimal
from typing import Final, cast

import yaml

from gateway.config.context import LoadContext, peek_text
from gateway.config.convert import positive_decimal
from gateway.review_thresholds import POWER_FACTOR_CLASSES, ReviewThresholds
from gateway.settings import (
    DEFAULT_SIGN,
    CustomerMeter,
    CustomerRole,
    CustomerSettings,
    MeterSettings,
    TariffType,
)
from gateway.yamlpos import Invalid, MapView, as_choice, as_text, describe, quoted_list, scalar_text, suggest

log = logging.getLogger("gateway.config")

CUSTOMER_KEYS: Final = ("id", "name", "contract_capacity_kva", "tariff", "power_factor_class", "meters")
CUSTOMER_METER_KEYS: Final = ("meter", "role", "sign")
ROLES: Final = ("main", "sub", "deduct")
TARIFFS: Final = ("single", "two_part")


def _sign(node: yaml.Node) -> int:
    text = scalar_text(node).strip()
    if text in ("1", "+1"):
        return 1
    if text == "-1":
        return -1
    raise Invalid(f"must be 1 or -1, not {describe(node)}")


def derive_customers(meters: dict[str, MeterSettings]) -> dict[str, CustomerSettings]:
    """One customer per distinct meter ``customer`` field, each of its meters ``main`` (+1)."""
    out: dict[str, list[CustomerMeter]] = {}
    for m in meters.values():
        out.setdefault(m.customer, []).append(CustomerMeter(m.id, "main", 1))
    return {cid: CustomerSettings(id=cid, meters=tuple(ms), derived=True) for cid, ms in out.items()}


def load_customers(ctx: LoadContext, top: MapView, meters: dict[str, MeterSettings],
                   declared_meters: set[str]) -> dict[str, CustomerSettings]:
    """The ``customers`` section (customer id → CustomerSettings), or the derived customers.

    ``declared_meters``: every meter id written in ``meters`` (valid or not), so a meter that
    failed its own checks is not reported a second time as unknown here.
    """
    if "customers" not in top:
        return derive_customers(meters)
    out: dict[str, CustomerSettings] = {}
    lines: dict[str, int | None] = {}
    owner: dict[str, tuple[str, int | None]] = {}   # meter → (customer, line) for main/sub
    for i, node in enumerate(ctx.seq(top.node("customers"), "customers", "each item starts with - id:")):
        cid_text = peek_text(node, "id")
        where = f'customer "{cid_text}"' if cid_text else f"customer #{i + 1}"
        m = MapView(ctx.issues, node, where, CUSTOMER_KEYS)
        if not m.ok:
            continue
        cid = m.req("id", as_text, "the customer number (户号), e.g. C0001")
        name = m.opt("name", as_text)
        capacity = m.opt("contract_capacity_kva", positive_decimal)
        tariff = cast(TariffType, m.get("tariff", as_choice(TARIFFS), "single"))
        pf_class = m.opt("power_factor_class", as_choice(tuple(POWER_FACTOR_CLASSES)))
        entries = _customer_meters(ctx, m, cid or where, meters, declared_meters, owner)
        listed = m.node("meters")
        if listed is None:
            m.req("meters", as_text, "a list such as [{meter: c0001-main, role: main}]")
        elif isinstance(listed, yaml.SequenceNode) and not listed.value:
            m.bad("meters", "is empty; list at least the customer's main meter")
        if cid is None:
            continue
        if cid in lines:
            ctx.issues.add(m.value_line("id"), f'customer id "{cid}" is already used on line {lines[cid]}; '
                           "give each customer one entry and list all its meters there")
            continue
        lines[cid] = m.value_line("id")
        plans = {meters[e.meter].billing for e in entries if e.meter in meters and meters[e.meter].billing}
        if len(plans) > 1:
            m.bad("meters", f"are on different billing plans ({quoted_list(str(p) for p in plans)}); a customer "
                  "settles on one plan: put its meters on the same 'billing' plan")
        out[cid] = CustomerSettings(id=cid, name=name, contract_capacity_kva=capacity, tariff=tariff,
                                    meters=tuple(entries), power_factor_class=pf_class)
    _unlisted(ctx, top, meters, out, owner)
    return out


def _customer_meters(ctx: LoadContext, m: MapView, cid: str, meters: dict[str, MeterSettings],
                     declared: set[str], owner: dict[str, tuple[str, int | None]]) -> list[CustomerMeter]:
    """The ``meters`` list of one customer, checked (see the module docstring)."""
    out: list[CustomerMeter] = []
    seen: dict[str, int | None] = {}
    for j, node in enumerate(ctx.seq(m.node("meters"), f"{m.where}: meters",
                                     "each item such as - {meter: c0001-main, role: main}")):
        where = f"{m.where}: meters item {j + 1}"
        e = MapView(ctx.issues, node, where, CUSTOMER_METER_KEYS)
        if not e.ok:
            continue
        mid = e.req("meter", as_text, "a meter id from the meters section")
        role = cast(CustomerRole, e.get("role", as_choice(ROLES), "main"))
        if "role" not in e:
            ctx.issues.add(e.line, f'{where}: the required key "role" is missing; add it (main, sub or deduct)')
        sign = e.get("sign", _sign, DEFAULT_SIGN[role])
        if mid is None:
            continue
        line = e.value_line("meter")
        if mid not in meters:
            if mid not in declared:
                e.bad("meter", f'"{mid}" is not a configured meter{suggest(mid, meters)}; use one of '
                      f"{quoted_list(meters)}")
            continue
        if mid in seen:
            e.bad("meter", f'"{mid}" is listed twice in this customer (first on line {seen[mid]}); list each '
                  "meter once with one role")
            continue
        seen[mid] = line
        if role in ("main", "sub"):
            if mid in owner:
                other, other_line = owner[mid]
                e.bad("meter", f'"{mid}" is already a main or sub meter of customer "{other}" (line '
                      f"{other_line}); a meter belongs to one customer — list it in another as role: deduct "
                      "to subtract it there")
                continue
            owner[mid] = (cid, line)
            own = meters[mid].customer
            if own != cid:
                e.bad("meter", f'"{mid}" says customer: {own} in the meters section but is listed here under '
                      f'customer "{cid}"; make the two agree (the meter\'s customer tags its readings)')
        out.append(CustomerMeter(mid, role, sign))
    return out


def _unlisted(ctx: LoadContext, top: MapView, meters: dict[str, MeterSettings],
              out: dict[str, CustomerSettings], owner: dict[str, tuple[str, int | None]]) -> None:
    """Meters no customer owns: an error when their ``customer`` is in the section, else derived."""
    derived: dict[str, list[CustomerMeter]] = {}
    for mid, ms in meters.items():
        if mid in owner:
            continue
        if ms.customer in out:
            ctx.issues.add(top.key_line("customers"), f'customers: meter "{mid}" says customer: {ms.customer} but '
                           f'customer "{ms.customer}" does not list it; add {{meter: {mid}, role: main}} (or sub) to '
                           "its meters")
            continue
        derived.setdefault(ms.customer, []).append(CustomerMeter(mid, "main", 1))
    for cid, entries in derived.items():
        log.warning("customers: customer %s is not in the customers section; its meters (%s) are billed as one "
                    "customer with role main", cid, ", ".join(e.meter for e in entries))
        out[cid] = CustomerSettings(id=cid, meters=tuple(entries), derived=True)


def review_with_customers(review: ReviewThresholds, customers: dict[str, CustomerSettings]) -> ReviewThresholds:
    """``review`` with each customer's contract capacity and power-factor class (unless overridden).

    The ``demand_over_contract`` rule compares maximum demand (kW) with the contract capacity
    (kVA) × factor, as 基本电费 by capacity does, and ``low_power_factor`` judges the period
    power factor against the class's reference (0.90 / 0.85 / 0.80); an explicit ``review:
    overrides: customers: <id>:`` ``contract_kw`` / ``tariff_class`` / ``reference`` wins.
    """
    table = {k: dict(v) for k, v in review.customer_overrides.items()}
    changed = False
    for c in customers.values():
        defaults: dict[str, object] = {}
        if c.contract_capacity_kva is not None:
            defaults["contract_kw"] = Decimal(c.contract_capacity_kva)
        if c.power_factor_class is not None:
            defaults["power_factor_reference"] = POWER_FACTOR_CLASSES[c.power_factor_class]
        for key, value in defaults.items():
            entry = table.setdefault(c.id, {})
            if key not in entry:
                entry[key] = value
                changed = True
    return replace(review, customer_overrides=table) if changed else review


def unknown_override_customers(review: ReviewThresholds, customers: dict[str, CustomerSettings]) -> list[str]:
    """Sentences for ``review: overrides: customers`` ids that name no customer (with did-you-mean)."""
    return [f'review overrides customers: "{cid}" is not a customer{suggest(cid, customers)}; '
            f"the override applies to no meter (customers: {quoted_list(customers)})"
            for cid in review.customer_overrides if cid not in customers]


__all__ = ["CUSTOMER_KEYS", "CUSTOMER_METER_KEYS", "ROLES", "TARIFFS", "derive_customers", "load_customers",
           "review_with_customers", "unknown_override_customers"]
