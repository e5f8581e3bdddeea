"""``amr-gateway profile check FILE``: validate a meter profile and print its register plan.

A user writing a profile for a new meter wants two answers before a bus is wired: is the
file valid (the same strict, line-precise checks the gateway applies at load, through the
protocol's profile schema), and which requests will the gateway send (after merging
neighbouring registers into one read within the profile's limits). Exit 0 when the profile
is valid and plans, 2 (with every issue at its file and line) when not.

The plan is printed by its shape, not by protocol name: a plan with ``requests`` of
``function``/``address``/``count``/``points`` (Modbus) is shown as function code, first
register, register count and the points in each request; a plan with ``steps`` of ``di``
(DL/T 645) as one data identifier per request; a plan with ``batches`` of object
attribute descriptors over ``points`` that name their ``oad`` (DL/T 698.45) as one
request per batch. Any other plan shows its request count.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from drivers import registry
from gateway.errors import ConfigError, ConfigIssue
from gateway.profiles import load_profile
from gateway.settings import Profile


def add_profile_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``profile check FILE`` on the CLI's subcommands."""
    profile = sub.add_parser("profile", help="work with meter profiles (check one you wrote)")
    actions = profile.add_subparsers(dest="profile_action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a profile file and print its register plan "
                                             "(the requests after merging)")
    check.add_argument("file", type=Path, help="the profile, e.g. profiles/my-meter.yaml")


def cmd_profile(args: argparse.Namespace) -> int:
    """Run ``profile check``: print the verdict and plan; ConfigError (exit 2) when invalid."""
    profile = load_profile(args.file)
    protocol, plan = plan_profile(profile)
    for line in describe_check(profile, protocol, plan):
        print(line)
    return 0


def plan_profile(profile: Profile) -> tuple[str, Any]:
    """The first protocol of the profile's family that accepts it, and its compiled plan.

    ConfigError (at the profile's file) when no variant of the family can read the points
    or the points cannot be planned.
    """
    descriptor = registry.family(profile.protocol)
    points = list(profile.points.values())
    refusals: list[str] = []
    for variant in descriptor.variants:
        unfit = descriptor.check_profile(points, variant.name)
        if unfit is not None:
            refusals.append(f"{variant.name}: {unfit}")
            continue
        try:
            return variant.name, registry.compile_plan(variant.name, points, profile.limits)
        except ConfigError as exc:
            refusals.extend(f"{variant.name}: {i.message}" for i in exc.issues)
    raise ConfigError([ConfigIssue(profile.source, None, "the profile cannot be planned ("
                                   + "; ".join(refusals) + "); fix the points named")])


def describe_check(profile: Profile, protocol: str, plan: Any) -> list[str]:
    """The lines ``profile check`` prints: the verdict, then the plan as a table."""
    lines = [f"{profile.source}: valid {profile.protocol} profile \"{profile.name}\" with "
             f"{len(profile.points)} points"]
    requests = getattr(plan, "requests", None)
    steps = getattr(plan, "steps", None)
    batches, points = getattr(plan, "batches", None), getattr(plan, "points", None)
    if isinstance(requests, Sequence) and all(_is_register_request(r) for r in requests):
        registers = sum(int(r.count) for r in requests)
        lines.append(f"plan ({protocol}): {len(requests)} requests, {registers} registers per read")
        rows: list[tuple[str, ...]] = [("#", "function", "start", "count", "points")]
        for i, r in enumerate(requests, 1):
            names = ", ".join(f"{pp.point.name}@{int(r.address) + int(pp.offset)}" for pp in r.points)
            rows.append((str(i), str(r.function), f"{int(r.address)} (0x{int(r.address):04X})",
                         str(r.count), names))
        lines.extend(_table(rows))
    elif isinstance(steps, Sequence) and all(hasattr(s, "di") for s in steps):
        lines.append(f"plan ({protocol}): {len(steps)} requests (data identifiers)")
        dl_rows: list[tuple[str, ...]] = [("#", "DI", "points")]
        for i, s in enumerate(steps, 1):
            dl_rows.append((str(i), f"{int(s.di):08X}", ", ".join(s.names)))
        lines.extend(_table(dl_rows))
    elif isinstance(batches, Sequence) and isinstance(points, Sequence) \
            and all(hasattr(p, "oad") and hasattr(p, "name") for p in points):
        lines.append(f"plan ({protocol}): {len(batches)} requests (object attribute lists)")
        by_oad: dict[int, list[str]] = {}
        for p in points:
            by_oad.setdefault(int(p.oad), []).append(str(p.name))
        oad_rows: list[tuple[str, ...]] = [("#", "OADs", "points")]
        for i, batch in enumerate(batches, 1):
            oad_rows.append((str(i), str(len(batch)), ", ".join(
                f"{name}@{int(oad):08X}" for oad in batch for name in by_oad.get(int(oad), []))))
        lines.extend(_table(oad_rows))
    else:
        lines.append(f"plan ({protocol}): {plan.request_count} requests")
    return lines


def _is_register_request(r: object) -> bool:
    return all(hasattr(r, k) for k in ("function", "address", "count", "points"))


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


__all__ = ["add_profile_command", "cmd_profile", "describe_check", "plan_profile"]
