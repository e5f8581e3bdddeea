"""The ``meters`` section: each meter's bus, address, profile, ratios, schedules and billing plan."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

import yaml

from drivers import registry
from gateway.config.buses import BusRef, protocols_for
from gateway.config.context import LoadContext, peek_text
from gateway.config.convert import ident, positive_decimal
from gateway.errors import ConfigError
from gateway.profiles import available_profiles, is_valid_profile_name, load_profile, profile_file
from gateway.settings import (
    BillingPlan,
    BusSettings,
    MeterSettings,
    Profile,
    Ratio,
    ScheduleSettings,
)
from gateway.yamlpos import (
    Invalid,
    MapView,
    as_choice,
    as_text,
    describe,
    is_plain,
    quoted_list,
    scalar_text,
    suggest,
)

_METER_KEYS: Final = ("id", "customer", "bus", "address", "profile", "ct_ratio", "pt_ratio",
                      "schedules", "billing", "protocol", "rated_voltage_v", "rated_current_a")


def parse_ratio(text: str) -> Ratio:
    """A CT/PT ratio: ``200/5``, ``10000/100`` or a factor ``40``; ValueError if malformed."""
    parts = [p.strip() for p in text.split("/")]
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"not a ratio: {text!r}")
    try:
        values = [Decimal(p) for p in parts]
    except InvalidOperation:
        raise ValueError(f"not a ratio: {text!r}") from None
    if not all(v.is_finite() and v > 0 for v in values):
        raise ValueError(f"not a positive ratio: {text!r}")
    return Ratio(values[0], values[1] if len(values) == 2 else Decimal(1))


def _ratio(node: yaml.Node) -> Ratio:
    """A ratio node; an inverted one (``5/200``: secondary first) is refused with the fix."""
    try:
        ratio = parse_ratio(scalar_text(node))
    except (ValueError, Invalid):
        raise Invalid(f"must be a ratio such as 200/5 or a factor such as 40, not "
                      f"{describe(node)}") from None
    if ratio.primary < ratio.secondary:
        raise Invalid(f"{ratio} is inverted: write primary/secondary (the larger number first), "
                      f"e.g. {ratio.secondary}/{ratio.primary}")
    return ratio


def ratio_without_effect(m: MapView, profile: Profile, ratios: dict[str, Ratio]) -> None:
    """Refuse ``ct_ratio``/``pt_ratio`` on a meter whose profile reads only primary values.

    The multiplier applies only to points marked ``side: secondary``; on a profile with
    none, a ratio would be silently ignored, and the operator would believe the readings
    were scaled. It is an error, not a warning: a wrong belief about billed kWh is worse than
    a configuration that does not load. A ratio of 1 (``1``, ``5/5``) changes nothing and
    passes.
    """
    if any(point.side == "secondary" for point in profile.points.values()):
        return
    for key, ratio in ratios.items():
        if key in m and ratio.factor != 1:
            m.bad(key, f'has no effect: profile "{profile.name}" reads primary values (none of '
                  "its points is marked side: secondary), so the gateway multiplies nothing; "
                  f"remove {key}, or mark the points the meter shows before the CT/PT as "
                  "side: secondary in the profile")


def load_meters(
    ctx: LoadContext,
    top: MapView,
    buses: dict[str, BusRef],
    schedules: dict[str, ScheduleSettings],
    billing: dict[str, BillingPlan],
    search: list[Path],
) -> tuple[dict[str, MeterSettings], dict[str, Profile]]:
    """The ``meters`` section: meter id → MeterSettings, and the profiles the meters use."""
    out: dict[str, MeterSettings] = {}
    lines: dict[str, int | None] = {}
    addresses: dict[tuple[str, str], tuple[str, int | None]] = {}
    profiles: dict[str, Profile | None] = {}
    if "meters" not in top:
        top.req("meters", as_text, "a list of meters")
    for i, node in enumerate(ctx.seq(top.node("meters"), "meters",
                                     "each item starts with - id:")):
        meter_id = peek_text(node, "id")
        where = f'meter "{meter_id}"' if meter_id else f"meter #{i + 1}"
        m = MapView(ctx.issues, node, where, _METER_KEYS)
        if not m.ok:
            continue
        mid = m.req("id", ident, "a name such as c0001-main")
        customer = m.req("customer", as_text, "the customer number, e.g. C0001")
        bus_name = m.req("bus", as_text, f"one of {quoted_list(buses)}")
        profile_name = m.req("profile", as_text, "the profile's file name, e.g. chint-dtsu666")
        ref = buses.get(bus_name) if bus_name is not None else None
        bus = ref.settings if ref is not None else None
        if bus_name is not None and bus is None and bus_name not in ctx.declared_buses:
            m.bad("bus", f'"{bus_name}" is not a defined bus{suggest(bus_name, buses)}; use one '
                  f"of {quoted_list(buses)}")
        protocol = meter_protocol(ctx, m, bus)
        address = meter_address(ctx, m, protocol)
        ct = m.get("ct_ratio", _ratio, Ratio())
        pt = m.get("pt_ratio", _ratio, Ratio())
        sched = meter_schedules(ctx, m, schedules)
        plan = m.opt("billing", as_text)
        if plan is not None and plan not in billing:
            m.bad("billing", f'"{plan}" is not a defined billing plan{suggest(plan, billing)}; use '
                  f"one of {quoted_list(billing)}")
        profile = meter_profile(ctx, m, profile_name, protocol, bus, search, profiles)
        if profile is not None:
            ratio_without_effect(m, profile, {"ct_ratio": ct, "pt_ratio": pt})
        rated_v = m.opt("rated_voltage_v", positive_decimal)
        rated_a = m.opt("rated_current_a", positive_decimal)
        if mid is not None:
            if mid in lines:
                ctx.issues.add(m.value_line("id"), f'meter id "{mid}" is already used on line '
                               f"{lines[mid]}; give each meter a unique id")
                continue
            lines[mid] = m.value_line("id")
        if bus is not None and address is not None:
            key = (bus.id, address)
            if key in addresses:
                other, other_line = addresses[key]
                m.bad("address", f'{address} on bus "{bus.id}" is already used by meter "{other}" '
                      f"(line {other_line}); give each meter on a bus its own address")
                continue
            addresses[key] = (mid or where, m.value_line("id"))
        if mid is None or customer is None or bus is None or address is None or profile is None:
            continue
        override = m.opt("protocol", as_text)
        out[mid] = MeterSettings(
            id=mid, customer=customer, bus=bus.id, address=address, profile=profile.name,
            ct_ratio=ct, pt_ratio=pt, schedules=sched, billing=plan,
            protocol=override,
            rated_voltage_v=rated_v, rated_current_a=rated_a)
    return out, {k: v for k, v in profiles.items() if v is not None}


def meter_protocol(ctx: LoadContext, m: MapView, bus: BusSettings | None) -> str | None:
    """The meter's protocol: its own ``protocol`` override, which must fit the bus, or the bus's.

    An override of another family fits a serial bus when both protocols can share a line
    (a mixed RS-485 bus, :func:`drivers.registry.create_bus_drivers`).
    """
    if "protocol" not in m:
        return bus.protocol if bus is not None else None
    allowed = protocols_for(None if bus is None else bus.type)
    protocol = m.opt("protocol", as_choice(allowed))
    if protocol is None or bus is None:
        return None
    if registry.descriptor_for(protocol) is not registry.descriptor_for(bus.protocol):
        if bus.type == "serial" and registry.shares_line(protocol) and registry.shares_line(bus.protocol):
            return protocol
        sharing = [p for p in registry.protocol_names("serial") if registry.shares_line(p)]
        m.bad("protocol", f'{protocol} does not fit bus "{bus.id}", which speaks {bus.protocol}; '
              "use a protocol of the same family or move the meter to another bus (only a serial "
              f"bus carries meters of several protocols, and only of {', '.join(sharing) or 'none'})")
        return None
    return protocol


def meter_address(ctx: LoadContext, m: MapView, protocol: str | None) -> str | None:
    """The meter's address in its protocol's form, as the protocol's descriptor parses it."""
    node = m.node("address")
    if node is None:
        m.req("address", as_text, " or ".join(d.address_hint for d in registry.descriptors()))
        return None
    try:
        text = scalar_text(node).strip()
    except Invalid as exc:
        m.bad("address", str(exc))
        return None
    if protocol is None:
        return None
    try:
        return registry.descriptor_for(protocol).parse_address(text, protocol, is_plain(node))
    except registry.AddressError as exc:
        m.bad("address", str(exc))
        return None


def meter_schedules(ctx: LoadContext, m: MapView, schedules: dict[str, ScheduleSettings]) -> tuple[str, ...]:
    """The schedules that poll the meter (all of them when the meter lists none)."""
    node = m.node("schedules")
    if node is None:
        if not schedules:
            ctx.issues.add(m.line, f"{m.where}: no schedule polls this meter; define one "
                           "under schedules and list it in the meter's schedules")
        return tuple(schedules)
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    out: list[str] = []
    for item in items:
        try:
            name = as_text(item)
        except Invalid as exc:
            ctx.issues.add(item, f"{m.where}: schedules item {exc}")
            continue
        if name not in schedules:
            ctx.issues.add(item, f'{m.where}: schedule "{name}" is not defined'
                           f"{suggest(name, schedules)}; use one of {quoted_list(schedules)}")
            continue
        if name in out:
            ctx.issues.add(item, f'{m.where}: schedule "{name}" is listed twice; list it once')
            continue
        out.append(name)
    if not items:
        m.bad("schedules", "is empty; list at least one schedule")
    return tuple(out)


def meter_profile(
    ctx: LoadContext,
    m: MapView,
    name: str | None,
    protocol: str | None,
    bus: BusSettings | None,
    search: list[Path],
    cache: dict[str, Profile | None],
) -> Profile | None:
    """The meter's profile, loaded once per name, checked against the meter's protocol."""
    if name is None:
        return None
    if name not in cache:
        path = profile_file(name, search) if is_valid_profile_name(name) else None
        if path is None:
            names = available_profiles(search)
            m.bad("profile", f'"{name}" was not found{suggest(name, names)}; use one of '
                  f"{', '.join(names) or '(none)'} (searched {', '.join(map(str, search))})")
            return None
        try:
            cache[name] = load_profile(path)
        except ConfigError as exc:
            cache[name] = None
            ctx.profile_issues.extend(exc.issues)
    profile = cache.get(name)
    if profile is None or protocol is None or bus is None:
        return profile
    descriptor = registry.descriptor_for(protocol)
    family = descriptor.family
    if profile.protocol != family:
        m.bad("profile", f'"{name}" is a {profile.protocol} profile but the meter speaks '
              f"{protocol} (bus \"{bus.id}\"); choose a {family} profile or put the meter on a "
              f"{profile.protocol} bus")
        return None
    unfit = descriptor.check_profile(list(profile.points.values()), protocol)
    if unfit is not None:
        m.bad("profile", f'"{name}" {unfit}')
        return None
    return profile
